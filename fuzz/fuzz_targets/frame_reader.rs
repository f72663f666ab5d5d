//! The connection reader (§7) on arbitrary client byte streams cut at arbitrary points: it
//! never panics, the chunking never changes what comes out, and once everything is dropped
//! every byte it charged to the memory budget (§8) has been released.
#![no_main]
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use relay_server::admission::budget::Budget;
use relay_server::ws::peer::{Peer, PeerLimits, Role};
use relay_server::ws::reader::{Inbound, MessageReader, Oversize, ReaderConfig};
use tokio::io::{AsyncRead, ReadBuf};

/// Hands out `data` at most `step` bytes per read, then EOF.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    step: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (self.data.len() - self.pos).min(self.step).min(buf.remaining());
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

fn run(data: &[u8], step: usize, max: usize, oversize: Oversize) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let budget = Budget::new(1 << 30);
    let out = rt.block_on(async {
        let peer = Peer::new(
            Role::Binary,
            PeerLimits {
                heartbeat_interval: Duration::from_secs(30),
                heartbeat_timeout: Duration::from_secs(30),
                write_timeout: Duration::from_secs(10),
                queue_bytes: 1 << 20,
            },
        );
        let cfg = ReaderConfig {
            max_message: max,
            read_timeout: Duration::from_secs(30),
            oversize,
        };
        let src = Chunked {
            data: data.to_vec(),
            pos: 0,
            step,
        };
        let mut reader = MessageReader::new(src, bytes::Bytes::new(), cfg, budget.meter());
        let mut out = Vec::new();
        let mut held = Vec::new();
        loop {
            match reader.next(&peer).await {
                Ok(Inbound::Message(m)) => {
                    out.push(format!("m{:?}", &m[..]));
                    held.push(m);
                }
                Ok(Inbound::Oversize(s)) => out.push(format!("o{:?}", &s[..])),
                Err(end) => {
                    out.push(format!("e{end:?}"));
                    break;
                }
            }
        }
        drop(reader);
        drop(held);
        out
    });
    assert_eq!(budget.used(), 0, "every charged byte is released");
    out
}

fuzz_target!(|data: &[u8]| {
    let [cut, sel, rest @ ..] = data else {
        return;
    };
    let max = [16usize, 600, 70_000][usize::from(*sel) % 3];
    let oversize = if sel & 0x80 != 0 {
        Oversize::Discard
    } else {
        Oversize::Close
    };
    let whole = run(rest, usize::MAX, max, oversize);
    let chunked = run(rest, usize::from(*cut).max(1), max, oversize);
    assert_eq!(whole, chunked);
});
