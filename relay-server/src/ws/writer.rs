//! One connection's writer task: drains the peer's queue into vectored writes, answers pings
//! ahead of the queue, runs the heartbeat, and ends the connection with a close frame.
//!
//! Everything queued is taken in one go and written with one `write_vectored` (one syscall for
//! many messages, no copy of their bytes). The queue lock is never held across an await.

use std::io::{self, IoSlice};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::FutureExt;
use tracing::error;

use bytes::Bytes;
use relay_core::{Close, Conn};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use super::frame::{frame_head, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use super::heartbeat::Heartbeat;
use crate::metrics::PanicPoint;

use super::peer::{permits_for, CloseRequest, OutMsg, Peer, BATCH, BATCH_BYTES, CLOSE_LINGER};

/// Why the writer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterEnd {
    /// Our close frame went out.
    Closed(Close),
    /// A write failed (the peer is gone).
    Failed,
    /// A write blocked longer than the write timeout (§7).
    WriteTimeout,
}

/// Work taken from the outbox in one go.
struct Batch {
    pong: Option<Bytes>,
    ping: bool,
    messages: Vec<OutMsg>,
    bytes: usize,
    close: Option<Close>,
}

impl Peer {
    /// Takes the next batch: at most [`BATCH`] messages and about [`BATCH_BYTES`] bytes (at
    /// least one message). Its bytes stay counted in `queued_bytes` until the next call, i.e.
    /// until they are written: a phone's backlog includes what its writer is still writing.
    fn take_batch(&self, into: &mut Vec<OutMsg>) -> Batch {
        let mut ob = self.outbox();
        let written = std::mem::take(&mut ob.in_flight);
        ob.queued_bytes = ob.queued_bytes.saturating_sub(written);
        let pong = ob.pong.take();
        let ping = std::mem::take(&mut ob.ping);
        let mut bytes = 0;
        let mut close = None;
        if let Some(req) = ob.close {
            if req.urgent {
                ob.queue.clear();
                ob.queued_bytes = 0;
                ob.in_flight = 0;
            }
        }
        let binary = self.inner.inbox.is_some();
        let mut accounted = 0;
        while into.len() < BATCH && bytes < BATCH_BYTES {
            let Some(m) = ob.queue.pop_front() else { break };
            bytes += m.len();
            // Binary inbox bytes are accounted in permits (clamped per message).
            accounted += if binary {
                permits_for(m.len(), self.inner.limits.queue_bytes) as usize
            } else {
                m.len()
            };
            into.push(m);
        }
        ob.in_flight = accounted;
        if ob.queue.is_empty() {
            close = ob.close.map(|r| r.close);
        }
        Batch {
            pong,
            ping,
            messages: std::mem::take(into),
            bytes: accounted,
            close,
        }
    }

    /// The writer task: runs until the close frame is out or the socket fails, then marks the
    /// connection finished. Shutdown (`shared.shutdown` flipping to true) closes with 1001
    /// "shutting down".
    ///
    /// A panic inside the writer is caught here (issue 11): it is counted and logged once,
    /// the connection is closed 1011 "internal error" when no frame was half written (else
    /// the socket is just dropped), and everything ends as after any other close.
    pub async fn run_writer<W: AsyncWrite + Unpin>(
        self,
        mut sink: W,
        shared: std::sync::Arc<crate::shared::Shared>,
    ) -> WriterEnd {
        let mid_write = AtomicBool::new(false);
        let looped = AssertUnwindSafe(self.write_loop(
            &mut sink,
            shared.shutdown.clone(),
            &shared.opts.faults,
            &mid_write,
        ))
        .catch_unwind()
        .await;
        let end = match looped {
            Ok(end) => end,
            Err(_) => {
                let at = crate::logging::panics::take_location();
                shared.metrics.panics.inc(PanicPoint::Writer);
                error!(
                    conn_id = %self.id(),
                    reason = "writer",
                    err = %at,
                    "connection task panicked; closing it 1011, nothing else is affected"
                );
                self.request_close(CloseRequest {
                    close: Close::INTERNAL_ERROR,
                    by_binary: false,
                    urgent: true,
                });
                if mid_write.load(Ordering::Acquire) {
                    // A frame may be half written: a close frame now would corrupt the stream.
                    WriterEnd::Failed
                } else {
                    let mut batch = Batch {
                        pong: None,
                        ping: false,
                        messages: Vec::new(),
                        bytes: 0,
                        close: Some(Close::INTERNAL_ERROR),
                    };
                    let write = write_batch(&mut sink, &mut batch);
                    match tokio::time::timeout(self.inner.limits.write_timeout, write).await {
                        Ok(Ok(())) => WriterEnd::Closed(Close::INTERNAL_ERROR),
                        _ => WriterEnd::Failed,
                    }
                }
            }
        };
        if end == WriterEnd::WriteTimeout {
            // The socket is stuck: nothing more can be written, not even a close frame.
            self.request_close(CloseRequest {
                close: Close::WRITE_TIMEOUT,
                by_binary: false,
                urgent: true,
            });
        }
        self.stop_sending();
        if let WriterEnd::Closed(_) = end {
            // Give the peer a moment to answer our close frame, then stop the reader.
            let _ = sink.flush().await;
            tokio::select! {
                _ = self.reader_gone() => {}
                _ = tokio::time::sleep(CLOSE_LINGER) => {}
            }
        }
        let _ = sink.shutdown().await;
        self.finish();
        end
    }

    /// The writer's loop, until the close frame is out, the socket fails or a write times out.
    async fn write_loop<W: AsyncWrite + Unpin>(
        &self,
        sink: &mut W,
        mut shutdown: watch::Receiver<bool>,
        faults: &Option<std::sync::Arc<crate::faults::Faults>>,
        mid_write: &AtomicBool,
    ) -> WriterEnd {
        let limits = self.inner.limits;
        let mut spare: Vec<OutMsg> = Vec::new();
        let mut beat = Heartbeat::new(limits, Instant::now());
        let heartbeat = sleep_until(beat.deadline());
        tokio::pin!(heartbeat);
        let mut shutdown_requested = false;
        loop {
            let mut batch = self.take_batch(&mut spare);
            let idle = batch.pong.is_none()
                && !batch.ping
                && batch.messages.is_empty()
                && batch.close.is_none();
            if idle {
                spare = batch.messages;
                if self.inner.reader_gone.load(Ordering::Acquire) {
                    // The peer vanished: nobody is left to write to.
                    return WriterEnd::Failed;
                }
                // Shutdown may have begun while a write was in progress (or before this writer
                // started); the select below only sees it flip while idle.
                if !shutdown_requested && *shutdown.borrow() {
                    shutdown_requested = true;
                    self.close(Close::SHUTTING_DOWN);
                    continue;
                }
                let wake = beat.deadline();
                if heartbeat.deadline() != wake {
                    heartbeat.as_mut().reset(wake);
                }
                tokio::select! {
                    _ = self.inner.wake_writer.notified() => {}
                    _ = &mut heartbeat => self.heartbeat(&mut beat),
                    changed = shutdown.changed(), if !*shutdown.borrow() => {
                        if changed.is_err() || *shutdown.borrow() {
                            self.close(Close::SHUTTING_DOWN);
                        }
                    }
                }
                continue;
            }
            if !batch.messages.is_empty() {
                crate::faults::hit(faults, PanicPoint::Writer);
            }
            mid_write.store(true, Ordering::Release);
            let result =
                tokio::time::timeout(limits.write_timeout, write_batch(sink, &mut batch)).await;
            mid_write.store(false, Ordering::Release);
            // Whatever was written or dropped no longer counts against the inbox.
            self.release_inbox(batch.bytes);
            batch.messages.clear();
            spare = batch.messages;
            if spare.capacity() > BATCH {
                spare.shrink_to(BATCH);
            }
            match result {
                Err(_) => return WriterEnd::WriteTimeout,
                Ok(Err(_)) => return WriterEnd::Failed,
                Ok(Ok(())) => {}
            }
            if let Some(close) = batch.close {
                return WriterEnd::Closed(close);
            }
            // A writer that is never idle must still ping and check pongs (§7).
            if Instant::now() >= beat.deadline() {
                self.heartbeat(&mut beat);
            }
        }
    }
}

/// Writes pong, ping, messages and close of one batch with as few syscalls as the kernel
/// allows: one vectored write of every frame head and payload part, no copy of the payloads.
///
/// The frame heads live in one heap buffer made per batch (not in this future's state),
/// so an idle connection's writer task stays small.
async fn write_batch<W: AsyncWrite + Unpin>(sink: &mut W, batch: &mut Batch) -> io::Result<()> {
    let close_payload: Option<Vec<u8>> = batch.close.map(|c| {
        let mut p = Vec::with_capacity(2 + c.reason.len());
        p.extend_from_slice(&c.code.as_u16().to_be_bytes());
        p.extend_from_slice(c.reason.as_bytes());
        p
    });
    // Frames in wire order: pong first (§7: answer pings whatever is queued), ping, the
    // messages, and the close frame last. Each frame is an opcode and up to three parts.
    let empty: &[u8] = &[];
    let mut frames: Vec<(u8, [&[u8]; 3])> = Vec::with_capacity(batch.messages.len() + 3);
    if let Some(p) = &batch.pong {
        frames.push((OP_PONG, [p, empty, empty]));
    }
    if batch.ping {
        frames.push((OP_PING, [empty, empty, empty]));
    }
    for m in &batch.messages {
        frames.push(match m {
            OutMsg::Whole(b) => (OP_TEXT, [b, empty, empty]),
            OutMsg::Spliced {
                prefix,
                body,
                suffix,
            } => (OP_TEXT, [prefix, body, suffix]),
        });
    }
    if let Some(p) = &close_payload {
        frames.push((OP_CLOSE, [p, empty, empty]));
    }
    let mut heads = vec![0u8; 10 * frames.len()];
    let mut head_lens = Vec::with_capacity(frames.len());
    for ((op, parts), head_buf) in frames.iter().zip(heads.chunks_exact_mut(10)) {
        let len = parts.iter().map(|p| p.len()).sum();
        head_lens.push(frame_head(*op, len, head_buf));
    }
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(4 * frames.len());
    for (((_, parts), head_buf), n) in frames.iter().zip(heads.chunks_exact(10)).zip(&head_lens) {
        slices.push(IoSlice::new(&head_buf[..*n]));
        for part in parts.iter().filter(|p| !p.is_empty()) {
            slices.push(IoSlice::new(part));
        }
    }
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    while !rest.is_empty() {
        let written = sink.write_vectored(rest).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, written);
    }
    sink.flush().await
}
