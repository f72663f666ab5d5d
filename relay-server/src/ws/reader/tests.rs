//! The reader against byte streams written by hand (tokio's in-memory duplex), every frame
//! encoded by the test kit's raw client: message boundaries whatever the chunking, the size
//! rules of both legs, protocol errors, the read deadline, and the budget charge.

use std::time::Duration;

use relay_testkit::raw::{encode_frame, OpCode};
use tokio::io::{AsyncWriteExt, DuplexStream};

use super::*;
use crate::admission::budget::Budget;
use crate::ws::peer::{PeerLimits, Role};

const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

fn frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    encode_frame(fin, op, payload, Some(KEY))
}

fn peer() -> Peer {
    Peer::new(
        Role::Phone,
        PeerLimits {
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            queue_bytes: 1 << 20,
        },
    )
}

struct Rig {
    reader: MessageReader<DuplexStream>,
    client: DuplexStream,
    budget: Arc<Budget>,
    peer: Peer,
}

use std::sync::Arc;

fn rig(max: usize, oversize: Oversize) -> Rig {
    let (client, server) = tokio::io::duplex(1 << 20);
    let budget = Budget::new(1 << 30);
    let cfg = ReaderConfig {
        max_message: max,
        read_timeout: Duration::from_secs(30),
        oversize,
    };
    Rig {
        reader: MessageReader::new(server, Bytes::new(), cfg, budget.meter()),
        client,
        budget,
        peer: peer(),
    }
}

impl Rig {
    async fn send(&mut self, bytes: &[u8]) {
        self.client.write_all(bytes).await.unwrap();
    }

    async fn next(&mut self) -> Result<Inbound, ReadEnd> {
        tokio::time::timeout(Duration::from_secs(5), self.reader.next(&self.peer))
            .await
            .expect("the reader answered")
    }

    async fn message(&mut self) -> Bytes {
        match self.next().await {
            Ok(Inbound::Message(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn messages_come_out_whole_whatever_the_chunking() {
    let payloads: Vec<Vec<u8>> = [0usize, 1, 125, 126, 4000, 65535, 65536, 200_000]
        .iter()
        .map(|&n| (0..n).map(|i| b'!' + (i % 94) as u8).collect())
        .collect();
    let mut stream = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let op = if i % 2 == 0 {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        stream.extend(frame(true, op, p));
    }
    for chunk in [1usize, 3, 7, 1000, 1 << 20] {
        let mut r = rig(256 << 10, Oversize::Close);
        let writer_stream = stream.clone();
        let mut client = std::mem::replace(&mut r.client, tokio::io::duplex(1).0);
        let writer = tokio::spawn(async move {
            for c in writer_stream.chunks(chunk) {
                client.write_all(c).await.unwrap();
            }
            client
        });
        for p in &payloads {
            assert_eq!(&r.message().await[..], &p[..], "chunk {chunk}");
        }
        drop(writer.await.unwrap());
    }
}

#[tokio::test]
async fn fragments_reassemble_with_pings_in_between_and_pings_are_answered() {
    let mut r = rig(1024, Oversize::Close);
    let mut s = frame(false, OpCode::Text, b"{\"a\":");
    s.extend(frame(true, OpCode::Ping, b"hi"));
    s.extend(frame(false, OpCode::Continuation, b" [1, "));
    s.extend(frame(true, OpCode::Continuation, b"2]}"));
    r.send(&s).await;
    assert_eq!(&r.message().await[..], b"{\"a\": [1, 2]}");
}

#[tokio::test]
async fn a_phone_message_over_the_limit_is_1009_by_its_head_or_its_fragments() {
    let mut r = rig(100, Oversize::Close);
    r.send(&frame(true, OpCode::Text, &[b'x'; 101])).await;
    assert_eq!(r.next().await, Err(ReadEnd::Violation(Close::TOO_BIG)));

    let mut r = rig(100, Oversize::Close);
    r.send(&frame(false, OpCode::Text, &[b'x'; 60])).await;
    r.send(&frame(true, OpCode::Continuation, &[b'x'; 41]))
        .await;
    assert_eq!(r.next().await, Err(ReadEnd::Violation(Close::TOO_BIG)));
}

#[tokio::test]
async fn a_binary_message_over_the_limit_is_discarded_and_reported_with_its_first_512_bytes() {
    let mut r = rig(1000, Oversize::Discard);
    let big: Vec<u8> = (0..5000u32).map(|i| (i % 200) as u8).collect();
    let mut s = frame(true, OpCode::Text, &big);
    s.extend(frame(true, OpCode::Text, b"{\"after\":1}"));
    r.send(&s).await;
    assert_eq!(
        r.next().await,
        Ok(Inbound::Oversize(Bytes::copy_from_slice(&big[..512])))
    );
    // The stream stays in step: the next message arrives whole.
    assert_eq!(&r.message().await[..], b"{\"after\":1}");
}

#[tokio::test]
async fn a_fragmented_oversize_binary_message_is_reported_once_and_discarded() {
    let mut r = rig(1000, Oversize::Discard);
    let part: Vec<u8> = (0..400u32).map(|i| (i % 97) as u8).collect();
    let mut s = frame(false, OpCode::Text, &part);
    s.extend(frame(false, OpCode::Continuation, &part));
    s.extend(frame(true, OpCode::Ping, b""));
    s.extend(frame(false, OpCode::Continuation, &part)); // 1200 > 1000
    s.extend(frame(false, OpCode::Continuation, &part));
    s.extend(frame(true, OpCode::Continuation, &part));
    s.extend(frame(true, OpCode::Binary, b"next"));
    r.send(&s).await;
    let mut expected = part.clone();
    expected.extend(&part);
    assert_eq!(
        r.next().await,
        Ok(Inbound::Oversize(Bytes::copy_from_slice(&expected[..512])))
    );
    assert_eq!(&r.message().await[..], b"next");
}

#[tokio::test]
async fn a_short_oversize_message_reports_what_there_was() {
    // Over a tiny limit but under 512 bytes: the whole (unmasked) message is the report.
    let mut r = rig(10, Oversize::Discard);
    r.send(&frame(true, OpCode::Text, b"{\"conn_id\":\"c-1\"}"))
        .await;
    assert_eq!(
        r.next().await,
        Ok(Inbound::Oversize(Bytes::from_static(
            b"{\"conn_id\":\"c-1\"}"
        )))
    );
}

#[tokio::test]
async fn a_discarded_message_is_never_buffered() {
    let mut r = rig(64 << 10, Oversize::Discard);
    let total = 20 << 20;
    let head = {
        let mut h = vec![0x81, 0x80 | 127];
        h.extend_from_slice(&(total as u64).to_be_bytes());
        h.extend_from_slice(&KEY);
        h
    };
    let mut client = std::mem::replace(&mut r.client, tokio::io::duplex(1).0);
    let writer = tokio::spawn(async move {
        client.write_all(&head).await.unwrap();
        let block = vec![b'x'; 64 << 10];
        for _ in 0..(total / block.len()) {
            client.write_all(&block).await.unwrap();
        }
        client
            .write_all(&frame(true, OpCode::Text, b"\"ok\""))
            .await
            .unwrap();
        client
    });
    assert!(matches!(r.next().await, Ok(Inbound::Oversize(s)) if s.len() == 512));
    let mut peak = 0;
    let msg = loop {
        peak = peak.max(r.budget.used());
        match tokio::time::timeout(Duration::from_millis(1), r.reader.next(&r.peer)).await {
            Ok(m) => break m,
            Err(_) => continue,
        }
    };
    assert_eq!(msg, Ok(Inbound::Message(Bytes::from_static(b"\"ok\""))));
    assert!(
        peak < 1 << 20,
        "held at most {peak} bytes of a 20 MiB message"
    );
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn protocol_errors_are_1002() {
    for bad in [
        encode_frame(true, OpCode::Text, b"x", None), // unmasked
        frame(true, OpCode::Continuation, b"x"),      // nothing to continue
        {
            let mut s = frame(false, OpCode::Text, b"a");
            s.extend(frame(true, OpCode::Text, b"b")); // a new message inside one
            s
        },
        {
            let mut f = frame(true, OpCode::Text, b"x");
            f[0] |= 0x20; // RSV2
            f
        },
        frame(false, OpCode::Ping, b""),
    ] {
        let mut r = rig(1024, Oversize::Close);
        r.send(&bad).await;
        assert_eq!(
            r.next().await,
            Err(ReadEnd::Violation(Close::PROTOCOL_ERROR))
        );
    }
}

#[tokio::test]
async fn messages_before_a_protocol_error_are_delivered_first() {
    let mut r = rig(1024, Oversize::Close);
    let mut s = frame(true, OpCode::Text, b"1");
    s.extend(encode_frame(true, OpCode::Text, b"x", None));
    r.send(&s).await;
    assert_eq!(&r.message().await[..], b"1");
    assert_eq!(
        r.next().await,
        Err(ReadEnd::Violation(Close::PROTOCOL_ERROR))
    );
}

#[tokio::test]
async fn text_must_be_utf8_and_binary_need_not() {
    let mut r = rig(1024, Oversize::Close);
    r.send(&frame(true, OpCode::Binary, &[0xff, 0xfe])).await;
    assert_eq!(&r.message().await[..], &[0xff, 0xfe]);
    r.send(&frame(true, OpCode::Text, &[0xff, 0xfe])).await;
    assert_eq!(r.next().await, Err(ReadEnd::Violation(Close::INVALID_UTF8)));
}

#[tokio::test]
async fn close_frames_end_reading_with_their_code() {
    let mut r = rig(1024, Oversize::Close);
    r.send(&frame(true, OpCode::Close, &[0x11, 0x51, b'o', b'k']))
        .await;
    assert_eq!(
        r.next().await,
        Err(ReadEnd::PeerClosed(Some(CloseCode::from_wire(4433))))
    );
    let mut r = rig(1024, Oversize::Close);
    drop(std::mem::replace(&mut r.client, tokio::io::duplex(1).0));
    assert_eq!(r.next().await, Err(ReadEnd::Vanished));
}

#[test]
fn close_frames_are_checked() {
    assert_eq!(close_frame(&[]), ReadEnd::PeerClosed(None));
    assert_eq!(close_frame(&[3]), ReadEnd::Violation(Close::PROTOCOL_ERROR));
    assert_eq!(
        close_frame(&[0x03, 0xe8]),
        ReadEnd::PeerClosed(Some(CloseCode::NORMAL))
    );
    assert_eq!(
        close_frame(&[0x03, 0xed]),
        ReadEnd::Violation(Close::PROTOCOL_ERROR)
    ); // 1005
    assert_eq!(
        close_frame(&[0x0f, 0xa0, 0xff]),
        ReadEnd::Violation(Close::INVALID_UTF8)
    );
}

#[tokio::test(start_paused = true)]
async fn a_stalled_message_is_1008_and_an_idle_connection_is_not() {
    let mut r = rig(1024, Oversize::Close);
    // Idle for an hour: nothing.
    assert!(
        tokio::time::timeout(Duration::from_secs(3600), r.reader.next(&r.peer))
            .await
            .is_err()
    );
    // Half a message, then silence: 1008 exactly at the deadline.
    let f = frame(true, OpCode::Text, b"{\"slow\":true}");
    r.send(&f[..4]).await;
    let t0 = Instant::now();
    assert_eq!(
        r.reader.next(&r.peer).await,
        Err(ReadEnd::Violation(Close::TOO_SLOW))
    );
    assert_eq!(t0.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_covers_a_whole_fragmented_message_not_each_fragment() {
    let mut r = rig(1024, Oversize::Close);
    r.send(&frame(false, OpCode::Text, b"[1,")).await;
    let t0 = Instant::now();
    let mut client = std::mem::replace(&mut r.client, tokio::io::duplex(1).0);
    tokio::spawn(async move {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            client
                .write_all(&frame(false, OpCode::Continuation, b"1,"))
                .await
                .unwrap();
        }
        client
    });
    assert_eq!(
        r.reader.next(&r.peer).await,
        Err(ReadEnd::Violation(Close::TOO_SLOW))
    );
    assert_eq!(t0.elapsed(), Duration::from_secs(30));
}

#[tokio::test]
async fn every_byte_read_is_charged_until_the_last_message_holding_it_is_dropped() {
    let mut r = rig(1 << 20, Oversize::Close);
    let mut s = frame(true, OpCode::Text, &[b'a'; 1000]);
    s.extend(frame(true, OpCode::Text, &[b'b'; 1000]));
    s.extend(&frame(true, OpCode::Text, &[b'c'; 1000])[..500]);
    r.send(&s).await;
    let a = r.message().await;
    let b = r.message().await;
    assert!(r.budget.used() >= 2000, "{}", r.budget.used());
    drop(a);
    assert!(r.budget.used() >= 1000, "b is still charged");
    drop(b);
    // The partial third frame is still held by the reader.
    let pending = tokio::time::timeout(Duration::from_millis(50), r.reader.next(&r.peer)).await;
    assert!(pending.is_err());
    assert!(
        r.budget.used() >= 500 && r.budget.used() < 1000,
        "{}",
        r.budget.used()
    );
    drop(r.reader);
    assert_eq!(r.budget.used(), 0);
}

#[tokio::test]
async fn prefix_bytes_are_read_first() {
    let (client, server) = tokio::io::duplex(1024);
    let budget = Budget::new(1 << 20);
    let cfg = ReaderConfig {
        max_message: 1024,
        read_timeout: Duration::from_secs(30),
        oversize: Oversize::Close,
    };
    let prefix = Bytes::from(frame(true, OpCode::Text, b"\"early\""));
    let mut reader = MessageReader::new(server, prefix, cfg, budget.meter());
    let p = peer();
    assert_eq!(
        reader.next(&p).await,
        Ok(Inbound::Message(Bytes::from_static(b"\"early\"")))
    );
    drop(client);
}
