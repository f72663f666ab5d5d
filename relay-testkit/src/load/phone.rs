//! The fake phones of `echo` mode: they send load messages, check what comes back and time it.
//!
//! Closed-loop, one task per phone keeps `window` messages in flight: each reply triggers the next
//! send, so reads and writes never compete. Open-loop, a writer task sends on a fixed schedule
//! whatever the replies do and a reader task takes them in.
//!
//! Open-loop timestamps are the *actual* send times, not the scheduled ones: tokio's timer fires
//! up to a millisecond late, which would swamp the sub-millisecond latencies being compared. So
//! that a stalled generator cannot hide behind this, how late each send was is tracked and
//! reported separately (`max_send_lag`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastwebsockets::{Frame, OpCode, Payload};
use tokio::sync::{mpsc, Notify};
use tokio::time::{interval_at, timeout_at};

use super::conn::{self, Upgraded};
use super::message::{self, Stamp};
use super::seq::SeqChecker;
use super::stats::{RunCtx, Tally};

/// What one phone saw over its life.
#[derive(Debug, Default, Clone)]
pub struct PhoneOutcome {
    pub sent: u64,
    /// Data messages that came back, whatever their content.
    pub arrived: u64,
    pub checker: SeqChecker,
    /// Messages that came back with the wrong size or not in the load format.
    pub corrupt: u64,
    /// Open-loop: the latest any send left after its scheduled time, in ns.
    pub max_send_lag_ns: u64,
    pub error: Option<String>,
}

impl PhoneOutcome {
    /// Messages sent that never came back.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.arrived)
    }

    /// Makes a failed phone visible on the progress line.
    fn count_failure(&self, ctx: &RunCtx) {
        if self.error.is_some() {
            ctx.live.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Checks one returned message and records its round trip.
    fn on_message(&mut self, ctx: &RunCtx, tally: &mut Tally, payload: &[u8], now_ns: u64) {
        self.arrived += 1;
        match message::decode(payload) {
            Some(stamp) if payload.len() == ctx.size => {
                self.checker.check(stamp.seq);
                tally.on_received(ctx, now_ns, stamp.sent_ns);
            }
            _ => self.corrupt += 1,
        }
    }
}

/// Encodes message `seq` into `buf`. `size` is validated up front, so this cannot fail for any
/// sequence number or timestamp a run can reach.
fn encode(buf: &mut Vec<u8>, ctx: &RunCtx, seq: u64, sent_ns: u64) -> Result<(), String> {
    if message::encode(buf, ctx.size, Stamp { seq, sent_ns }) {
        Ok(())
    } else {
        Err(format!("message {seq} does not fit in {} bytes", ctx.size))
    }
}

/// Closed-loop phone: `window` messages in flight until the window closes, then drain.
pub async fn closed_loop(conn: Upgraded, ctx: Arc<RunCtx>, window: usize) -> PhoneOutcome {
    let mut ws = conn.into_ws();
    let mut out = PhoneOutcome::default();
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(ctx.size);

    let result: Result<(), String> = async {
        tokio::time::sleep_until(ctx.start.into()).await;
        for _ in 0..window {
            let now_ns = ctx.now_ns();
            encode(&mut buf, &ctx, out.sent, now_ns)?;
            send(&mut ws, &mut buf).await?;
            out.sent += 1;
            tally.on_sent(&ctx, now_ns);
        }
        // One timer for the whole run, not one per read: re-arming a timeout per message would
        // put the timer wheel on the hot path.
        let drain_over = tokio::time::sleep_until(ctx.drain_deadline.into());
        tokio::pin!(drain_over);
        loop {
            if out.arrived >= out.sent && ctx.now_ns() >= ctx.measure_end_ns {
                return Ok(());
            }
            let frame = tokio::select! {
                biased;
                frame = ws.read_frame() => frame,
                // Drain wait over: whatever is still out is reported lost.
                _ = &mut drain_over => return Ok(()),
            };
            let frame = frame.map_err(|e| format!("phone connection failed: {e}"))?;
            match frame.opcode {
                OpCode::Text | OpCode::Binary => {
                    let now_ns = ctx.now_ns();
                    out.on_message(&ctx, &mut tally, &frame.payload, now_ns);
                    if now_ns < ctx.measure_end_ns {
                        encode(&mut buf, &ctx, out.sent, now_ns)?;
                        send(&mut ws, &mut buf).await?;
                        out.sent += 1;
                        tally.on_sent(&ctx, now_ns);
                    }
                }
                OpCode::Close => {
                    return Err(format!("phone {}", conn::unexpected_close(&frame.payload)))
                }
                _ => {}
            }
        }
    }
    .await;

    tally.flush(&ctx);
    match result {
        Ok(()) => conn::close(&mut ws).await,
        Err(e) => out.error = Some(e),
    }
    out.count_failure(&ctx);
    out
}

async fn send(ws: &mut conn::Ws, buf: &mut [u8]) -> Result<(), String> {
    // Borrowed mutably so the client mask is applied in place, without a copy.
    ws.write_frame(Frame::text(Payload::BorrowedMut(buf)))
        .await
        .map_err(|e| format!("phone failed to send: {e}"))
}

/// What the two tasks of an open-loop phone share.
#[derive(Default)]
struct Pair {
    sent: AtomicU64,
    arrived: AtomicU64,
    /// The writer has sent its last load message.
    writer_done: AtomicBool,
    /// The writer is sending close: a close from the server is now the expected reply.
    closing: AtomicBool,
    /// Reader → writer: everything sent has come back.
    all_back: Notify,
}

/// Open-loop phone: one message every `period`, the first at `first`, until the window closes.
pub async fn open_loop(
    conn: Upgraded,
    ctx: Arc<RunCtx>,
    first: Instant,
    period: Duration,
) -> PhoneOutcome {
    let (reader, writer) = conn.into_split();
    let pair = Arc::new(Pair::default());
    // Pongs and close replies owed by the reader are written by the writer.
    let (owed_tx, owed_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(open_writer(
        writer,
        Arc::clone(&ctx),
        Arc::clone(&pair),
        first,
        period,
        owed_rx,
    ));
    let mut out = open_reader(reader, &ctx, &pair, owed_tx).await;
    match writer.await {
        Ok(writer) => {
            out.sent = writer.sent;
            out.max_send_lag_ns = writer.max_send_lag_ns;
            out.error = out.error.or(writer.error);
        }
        Err(e) => {
            out.sent = pair.sent.load(Ordering::SeqCst);
            out.error = out.error.or(Some(format!("phone writer task failed: {e}")));
        }
    }
    out.count_failure(&ctx);
    out
}

async fn open_writer(
    mut ws: fastwebsockets::WebSocketWrite<conn::WriteHalf>,
    ctx: Arc<RunCtx>,
    pair: Arc<Pair>,
    first: Instant,
    period: Duration,
    mut owed: mpsc::UnboundedReceiver<Frame<'static>>,
) -> WriterOutcome {
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(ctx.size);
    let mut seq = 0u64;
    let mut max_lag = Duration::ZERO;
    // The default (burst) catch-up keeps the offered rate fixed when the writer falls behind.
    let mut ticks = interval_at(first.into(), period);

    let sending: Result<bool, String> = async {
        loop {
            tokio::select! {
                biased;
                frame = owed.recv() => match frame {
                    Some(frame) => {
                        let is_close = frame.opcode == OpCode::Close;
                        ws.write_frame(frame).await.map_err(|e| format!("phone failed to answer: {e}"))?;
                        if is_close {
                            // The server closed first; the reader reports why.
                            return Ok(false);
                        }
                    }
                    // The reader has ended (error or close); it reports why.
                    None => return Ok(false),
                },
                tick = ticks.tick() => {
                    if ctx.ns(tick.into_std()) >= ctx.measure_end_ns {
                        return Ok(true);
                    }
                    let now = Instant::now();
                    max_lag = max_lag.max(now.saturating_duration_since(tick.into_std()));
                    let sent_ns = ctx.ns(now);
                    encode(&mut buf, &ctx, seq, sent_ns)?;
                    ws.write_frame(Frame::text(Payload::BorrowedMut(&mut buf)))
                        .await
                        .map_err(|e| format!("phone failed to send: {e}"))?;
                    seq += 1;
                    pair.sent.store(seq, Ordering::SeqCst);
                    tally.on_sent(&ctx, sent_ns);
                }
            }
        }
    }
    .await;
    tally.flush(&ctx);
    pair.writer_done.store(true, Ordering::SeqCst);

    let error = match sending {
        Ok(true) => {
            // Drain: wait for the reader to see everything back (bounded), then close.
            if pair.arrived.load(Ordering::SeqCst) < seq {
                let _ = timeout_at(ctx.drain_deadline.into(), pair.all_back.notified()).await;
            }
            pair.closing.store(true, Ordering::SeqCst);
            let _ = ws.write_frame(Frame::close(1000, b"")).await;
            // Keep answering until the reader has the close reply and drops its sender.
            while let Some(frame) = owed.recv().await {
                if frame.opcode != OpCode::Close {
                    let _ = ws.write_frame(frame).await;
                }
            }
            None
        }
        Ok(false) => None,
        Err(e) => Some(e),
    };
    WriterOutcome {
        sent: seq,
        max_send_lag_ns: u64::try_from(max_lag.as_nanos()).unwrap_or(u64::MAX),
        error,
    }
}

/// What the writer half of an open-loop phone saw.
struct WriterOutcome {
    sent: u64,
    max_send_lag_ns: u64,
    error: Option<String>,
}

async fn open_reader(
    mut ws: fastwebsockets::FragmentCollectorRead<conn::ReadStream>,
    ctx: &RunCtx,
    pair: &Pair,
    owed: mpsc::UnboundedSender<Frame<'static>>,
) -> PhoneOutcome {
    let mut out = PhoneOutcome::default();
    let mut tally = Tally::default();
    let mut hand_over = |frame: Frame<'_>| {
        let owned = Frame::new(
            true,
            frame.opcode,
            None,
            Payload::Owned(frame.payload.to_vec()),
        );
        // A closed channel means the writer is gone; the connection is ending anyway.
        let _ = owed.send(owned);
        std::future::ready(Ok::<(), Infallible>(()))
    };
    // The writer closes at the drain deadline at the latest; allow its close handshake on top.
    let deadline = ctx.drain_deadline + conn::CLOSE_TIMEOUT;

    // One timer for the whole run (see closed_loop).
    let give_up = tokio::time::sleep_until(deadline.into());
    tokio::pin!(give_up);

    loop {
        let frame = tokio::select! {
            biased;
            frame = ws.read_frame(&mut hand_over) => frame,
            _ = &mut give_up => break,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                out.error = Some(format!("phone connection failed: {e}"));
                break;
            }
        };
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                out.on_message(ctx, &mut tally, &frame.payload, ctx.now_ns());
                pair.arrived.store(out.arrived, Ordering::SeqCst);
                if pair.writer_done.load(Ordering::SeqCst)
                    && out.arrived >= pair.sent.load(Ordering::SeqCst)
                {
                    pair.all_back.notify_one();
                }
            }
            OpCode::Close => {
                if !pair.closing.load(Ordering::SeqCst) {
                    out.error = Some(format!("phone {}", conn::unexpected_close(&frame.payload)));
                }
                break;
            }
            _ => {}
        }
    }
    tally.flush(ctx);
    out
}
