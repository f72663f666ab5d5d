//! What every WebSocket connection does, binary or phone: split the socket, start the writer,
//! run a reader loop that only the end of the connection can interrupt, and close properly.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use relay_core::{Close, Conn};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::error;

use crate::logging::panics::Guarded;
use crate::metrics::{CloseReason, Label, PanicPoint};
use crate::shared::Shared;
use crate::ws::peer::{CloseRequest, Peer};
use crate::ws::reader::{Inbound, MessageReader, Oversize, ReadEnd, ReaderConfig};
use crate::ws::writer::WriterEnd;

/// How a connection ended.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    pub read: ReadEnd,
    /// The close our side had asked for before reading ended (relay or binary initiated).
    pub relay_close: Option<CloseRequest>,
    pub writer: WriterEnd,
}

impl Ended {
    /// How the connection ended, as the `closes_total{reason}` label (§5 rows).
    pub fn close_reason(&self) -> CloseReason {
        if let Some(req) = self.relay_close {
            if req.by_binary {
                return CloseReason::ByBinary;
            }
            return CloseReason::of(req.close);
        }
        match self.read {
            ReadEnd::PeerClosed(_) => CloseReason::PeerClosed,
            ReadEnd::Vanished => CloseReason::Vanished,
            ReadEnd::Violation(close) => CloseReason::of(close),
            ReadEnd::Stopped => match self.writer {
                WriterEnd::WriteTimeout => CloseReason::WriteTimeout,
                WriterEnd::Closed(close) => CloseReason::of(close),
                WriterEnd::Failed => CloseReason::Vanished,
            },
        }
    }

    /// The close code and a short reason for the disconnect log line (§10 fields
    /// `close_code`, `reason`): our close if we sent one first, else the peer's.
    pub fn log_fields(&self) -> (u16, &'static str) {
        if let Some(req) = self.relay_close {
            return (
                req.close.code.as_u16(),
                req.close.reason_or("closed by request"),
            );
        }
        match self.read {
            ReadEnd::PeerClosed(Some(code)) => (code.as_u16(), "closed by peer"),
            ReadEnd::PeerClosed(None) => (1001, "closed by peer without a code"),
            ReadEnd::Vanished => (1001, "connection lost"),
            ReadEnd::Violation(close) => (close.code.as_u16(), close.reason),
            ReadEnd::Stopped => match self.writer {
                WriterEnd::WriteTimeout => (1011, "write timeout"),
                _ => (1001, "connection lost"),
            },
        }
    }
}

/// Closes the connection 1011 if its task unwinds (issue 11), and counts and logs that once;
/// what the connection holds elsewhere is released by the owners' own guards.
struct PanicGuard<'a> {
    shared: &'a Shared,
    peer: &'a Peer,
    /// What the task was doing: reading, or handing a message to its role.
    stage: PanicPoint,
}

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let at = crate::logging::panics::take_location();
        let m = &self.shared.metrics;
        m.panics.inc(self.stage);
        m.closed(self.peer.role().label(), CloseReason::InternalError);
        error!(
            conn_id = %self.peer.id(),
            reason = self.stage.as_str(),
            err = %at,
            "connection task panicked; closing it 1011, nothing else is affected"
        );
        self.peer.close_now(Close::INTERNAL_ERROR);
        self.peer.mark_reader_gone();
    }
}

/// Runs one connection: `on_message` gets every whole data message (or over-size report) in
/// order; awaiting it applies back-pressure to this socket. `max_message` and `oversize` are
/// the connection's leg's size rule (§7). Returns how it ended once the writer is done.
#[allow(clippy::too_many_arguments)]
pub async fn run<R, W, F, Fut>(
    shared: &Arc<Shared>,
    peer: &Peer,
    read: R,
    write: W,
    prefix: Bytes,
    max_message: usize,
    oversize: Oversize,
    mut on_message: F,
) -> Ended
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    F: FnMut(Inbound) -> Fut,
    Fut: Future<Output = Result<(), Close>>,
{
    let writer = tokio::spawn(Guarded(Box::pin(
        peer.clone().run_writer(write, shared.clone()),
    )));
    let mut guard = PanicGuard {
        shared,
        peer,
        stage: PanicPoint::Reader,
    };
    let cfg = ReaderConfig {
        max_message,
        read_timeout: shared.opts.message_read_timeout,
        oversize,
    };
    let mut reader = MessageReader::new(read, prefix, cfg, shared.budget.meter());
    let end = loop {
        // `next` is cancel-safe; it only ever loses the race once the connection is over.
        guard.stage = PanicPoint::Reader;
        let next = tokio::select! {
            biased;
            _ = peer.done() => Err(ReadEnd::Stopped),
            r = reader.next(peer) => r,
        };
        match next {
            Ok(msg) => {
                crate::faults::hit(&shared.opts.faults, PanicPoint::Reader);
                guard.stage = PanicPoint::Routing;
                if let Err(close) = on_message(msg).await {
                    break ReadEnd::Violation(close);
                }
            }
            Err(end) => break end,
        }
    };
    let relay_close = peer.close_request();
    match end {
        ReadEnd::PeerClosed(code) => {
            // Answer the close with the peer's own code (RFC 6455 §5.5.1).
            let code = code.unwrap_or(relay_core::CloseCode::NORMAL);
            peer.close_now(Close::new(code, ""));
        }
        ReadEnd::Violation(close) => peer.close_now(close),
        ReadEnd::Vanished | ReadEnd::Stopped => {}
    }
    if !matches!(end, ReadEnd::Violation(_)) {
        peer.mark_reader_gone();
    } else {
        // Keep reading until the peer answers our close (or the writer gives up).
        tokio::select! {
            _ = peer.done() => {}
            _ = drain(&mut reader, peer) => {}
        }
        peer.mark_reader_gone();
    }
    let writer_end = writer.await.unwrap_or(WriterEnd::Failed);
    drop(reader);
    let ended = Ended {
        read: end,
        relay_close,
        writer: writer_end,
    };
    shared
        .metrics
        .closed(peer.role().label(), ended.close_reason());
    ended
}

async fn drain<R: AsyncRead + Unpin>(reader: &mut MessageReader<R>, peer: &Peer) {
    while reader.next(peer).await.is_ok() {}
}
