//! One WebSocket connection's outbound side: its queue, its writer task, its liveness.
//!
//! A [`Peer`] is the [`Conn`] the registry holds. Sending never blocks: it appends to a FIFO
//! under this connection's own mutex and wakes the writer. The writer drains everything
//! queued into one vectored write (one syscall for many messages, no copy of their bytes),
//! answers pings ahead of the queue, sends heartbeat pings, and ends the connection with a
//! close frame. It never holds the queue lock across an await.
//!
//! Budgets (§7): a phone's queue is capped in bytes; going over closes the phone 1011 "phone
//! backlog full" and drops what was queued, so a stalled phone never delays anyone else. A
//! binary's queue (the "binary inbox") is capped by a byte semaphore; phones that find it
//! full wait ([`Peer::send_backpressured`]) and nothing is dropped.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use relay_core::{envelope, Close, Conn, ConnId, SendError, Token};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::{sleep_until, Instant};

/// Most messages written in one vectored write.
const BATCH: usize = 64;
/// How long to wait for the peer's answer to our close frame before dropping the socket.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// One outgoing text message: whole, or a phone's envelope spliced from a constant prefix,
/// the phone's own bytes and a suffix (§4.1), written with vectored I/O so the phone's bytes
/// are never copied.
#[derive(Clone, Debug)]
pub enum OutMsg {
    Whole(Bytes),
    Spliced {
        prefix: Bytes,
        body: Bytes,
        suffix: Bytes,
    },
}

impl OutMsg {
    pub fn len(&self) -> usize {
        match self {
            OutMsg::Whole(b) => b.len(),
            OutMsg::Spliced {
                prefix,
                body,
                suffix,
            } => prefix.len() + body.len() + suffix.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Bytes> for OutMsg {
    fn from(b: Bytes) -> Self {
        OutMsg::Whole(b)
    }
}

/// The binary a message was for is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection is gone")]
pub struct Gone;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Binary,
    Phone,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Binary => "binary",
            Role::Phone => "phone",
        }
    }
}

/// Liveness and write limits for one connection (§7).
#[derive(Clone, Copy, Debug)]
pub struct PeerLimits {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub write_timeout: Duration,
    /// Phones: byte budget of the outbox. Binaries: byte budget of the inbox semaphore.
    pub queue_bytes: usize,
}

/// A connection handle: cheap to clone, shared by the registry, the reader and the writer.
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
}

struct Inner {
    id: ConnId,
    role: Role,
    token: Option<Token>,
    /// Phones: the constant parts of their envelopes (§4.1), made once.
    envelope_prefix: Bytes,
    envelope_token_suffix: Bytes,
    limits: PeerLimits,
    outbox: Mutex<Outbox>,
    wake_writer: Notify,
    /// Binaries only: byte permits of the inbox. Closed when the writer ends.
    inbox: Option<Semaphore>,
    pongs: AtomicU64,
    pong_arrived: Notify,
    /// Set when the reader must stop (the writer ended or the close handshake lingered).
    done: AtomicBool,
    done_notify: Notify,
    /// Set when the reader has stopped (the writer need not linger for a close answer).
    reader_gone: AtomicBool,
    reader_gone_notify: Notify,
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<OutMsg>,
    queued_bytes: usize,
    close: Option<CloseRequest>,
    pong: Option<Bytes>,
    ping: bool,
    finished: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseRequest {
    pub close: Close,
    /// Asked for by the binary (§4.2): the phone's departure sends no close notice.
    pub by_binary: bool,
    /// Send at once, dropping what is queued (errors), rather than after the queue.
    pub urgent: bool,
}

impl Peer {
    pub fn new(role: Role, token: Option<Token>, limits: PeerLimits) -> Self {
        let inbox = (role == Role::Binary).then(|| Semaphore::new(limits.queue_bytes));
        let id = ConnId::random();
        let (envelope_prefix, envelope_token_suffix) = match role {
            Role::Phone => (
                envelope::to_binary_prefix(&id),
                envelope::to_binary_suffix(token.as_ref()),
            ),
            Role::Binary => (Bytes::new(), Bytes::new()),
        };
        Peer {
            inner: Arc::new(Inner {
                id,
                role,
                token,
                envelope_prefix,
                envelope_token_suffix,
                limits,
                outbox: Mutex::new(Outbox::default()),
                wake_writer: Notify::new(),
                inbox,
                pongs: AtomicU64::new(0),
                pong_arrived: Notify::new(),
                done: AtomicBool::new(false),
                done_notify: Notify::new(),
                reader_gone: AtomicBool::new(false),
                reader_gone_notify: Notify::new(),
            }),
        }
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.inner
            .outbox
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn role(&self) -> Role {
        self.inner.role
    }

    /// The phone's `X-Pyrycode-Token`, already JSON-escaped.
    pub fn token(&self) -> Option<&Token> {
        self.inner.token.as_ref()
    }

    /// This phone's message `frame` as the envelope its binary gets (§4.1): the phone's bytes
    /// between the prefix and suffix made once per phone, carrying the token if `with_token`.
    pub fn envelope(&self, frame: Bytes, with_token: bool) -> OutMsg {
        OutMsg::Spliced {
            prefix: self.inner.envelope_prefix.clone(),
            body: frame,
            suffix: if with_token {
                self.inner.envelope_token_suffix.clone()
            } else {
                Bytes::from_static(b"}")
            },
        }
    }

    /// Queues `msg` for a binary, waiting while its inbox is full (§7 back-pressure).
    /// Fails only if the binary is gone.
    pub async fn send_backpressured(&self, msg: impl Into<OutMsg>) -> Result<(), Gone> {
        let msg = msg.into();
        let Some(sem) = &self.inner.inbox else {
            return self.push(msg, 0);
        };
        let need = permits_for(msg.len(), self.inner.limits.queue_bytes);
        match sem.acquire_many(need).await {
            Ok(permit) => permit.forget(),
            Err(_) => return Err(Gone),
        }
        self.push(msg, need as usize)
    }

    fn push(&self, msg: OutMsg, accounted: usize) -> Result<(), Gone> {
        let mut ob = self.outbox();
        if ob.finished || ob.close.is_some() {
            drop(ob);
            self.release_inbox(accounted);
            return Err(Gone);
        }
        ob.queued_bytes += accounted;
        ob.queue.push_back(msg);
        drop(ob);
        self.inner.wake_writer.notify_one();
        Ok(())
    }

    fn release_inbox(&self, bytes: usize) {
        if let Some(sem) = &self.inner.inbox {
            if bytes > 0 && !sem.is_closed() {
                sem.add_permits(bytes);
            }
        }
    }

    fn request_close(&self, req: CloseRequest) {
        let mut ob = self.outbox();
        if ob.finished {
            return;
        }
        match &mut ob.close {
            None => ob.close = Some(req),
            // An error may hurry up a close already waiting behind the queue.
            Some(existing) if req.urgent && !existing.urgent => existing.urgent = true,
            Some(_) => return,
        }
        drop(ob);
        self.inner.wake_writer.notify_one();
    }

    /// Closes at once, dropping whatever is queued: for errors (§5: 1007, 1008, 1009, 1011).
    pub fn close_now(&self, close: Close) {
        self.request_close(CloseRequest {
            close,
            by_binary: false,
            urgent: true,
        });
    }

    /// A close the binary asked for: after everything already queued, no close notice (§4.2).
    pub fn close_by_binary(&self, close: Close) {
        self.request_close(CloseRequest {
            close,
            by_binary: true,
            urgent: false,
        });
    }

    /// The close this side asked for, if any (for the close notice's code, §4.3).
    pub fn close_request(&self) -> Option<CloseRequest> {
        self.outbox().close
    }

    /// Answers a peer's ping ahead of everything queued (§7). Only the latest is kept.
    pub fn pong(&self, payload: Bytes) {
        let mut ob = self.outbox();
        if ob.finished {
            return;
        }
        ob.pong = Some(payload);
        drop(ob);
        self.inner.wake_writer.notify_one();
    }

    /// The reader saw a pong.
    pub fn record_pong(&self) {
        self.inner.pongs.fetch_add(1, Ordering::AcqRel);
        self.inner.pong_arrived.notify_waiters();
    }

    /// The liveness probe of §6.2: ping now and wait up to `timeout` for a pong.
    pub async fn probe(&self, timeout: Duration) -> bool {
        let before = self.inner.pongs.load(Ordering::Acquire);
        {
            let mut ob = self.outbox();
            if ob.finished {
                return false;
            }
            ob.ping = true;
        }
        self.inner.wake_writer.notify_one();
        let deadline = Instant::now() + timeout;
        loop {
            let arrived = self.inner.pong_arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.inner.pongs.load(Ordering::Acquire) > before {
                return true;
            }
            if self.is_done() {
                return false;
            }
            let done = self.inner.done_notify.notified();
            tokio::select! {
                _ = arrived => {}
                _ = done => return false,
                _ = sleep_until(deadline) => return false,
            }
        }
    }

    /// True once the connection is over and its reader should stop.
    pub fn is_done(&self) -> bool {
        self.inner.done.load(Ordering::Acquire)
    }

    /// Resolves once the connection is over.
    pub async fn done(&self) {
        loop {
            let n = self.inner.done_notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_done() {
                return;
            }
            n.await;
        }
    }

    /// The reader has stopped: tell the writer to finish without waiting for the peer.
    pub fn mark_reader_gone(&self) {
        self.inner.reader_gone.store(true, Ordering::Release);
        self.inner.reader_gone_notify.notify_waiters();
        self.inner.wake_writer.notify_one();
    }

    async fn reader_gone(&self) {
        loop {
            let n = self.inner.reader_gone_notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.inner.reader_gone.load(Ordering::Acquire) {
                return;
            }
            n.await;
        }
    }

    fn set_done(&self) {
        self.inner.done.store(true, Ordering::Release);
        self.inner.done_notify.notify_waiters();
    }

    /// Later sends fail and what is queued is dropped; phones waiting for this binary's inbox
    /// are released.
    fn stop_sending(&self) {
        {
            let mut ob = self.outbox();
            ob.finished = true;
            ob.queue.clear();
            ob.queued_bytes = 0;
        }
        if let Some(sem) = &self.inner.inbox {
            sem.close();
        }
    }

    /// Marks the connection over: later sends fail, waiting senders are released, the
    /// reader is told to stop.
    pub fn finish(&self) {
        self.stop_sending();
        self.set_done();
        self.inner.pong_arrived.notify_waiters();
    }
}

fn permits_for(len: usize, budget: usize) -> u32 {
    // A message larger than the whole budget takes all of it (it must still get through).
    u32::try_from(len.clamp(1, budget.max(1))).unwrap_or(u32::MAX)
}

impl Conn for Peer {
    fn id(&self) -> &ConnId {
        &self.inner.id
    }

    fn send(&self, msg: Bytes) -> Result<(), SendError> {
        if let Some(sem) = &self.inner.inbox {
            let need = permits_for(msg.len(), self.inner.limits.queue_bytes);
            return match sem.try_acquire_many(need) {
                Ok(permit) => {
                    permit.forget();
                    // On failure the message is already dropped; the caller only learns why.
                    self.push(OutMsg::Whole(msg), need as usize)
                        .map_err(|Gone| SendError::Closed(Bytes::new()))
                }
                Err(tokio::sync::TryAcquireError::Closed) => Err(SendError::Closed(msg)),
                Err(tokio::sync::TryAcquireError::NoPermits) => Err(SendError::Full(msg)),
            };
        }
        let mut ob = self.outbox();
        if ob.finished || ob.close.is_some() {
            return Err(SendError::Closed(msg));
        }
        if ob.queued_bytes + msg.len() > self.inner.limits.queue_bytes {
            ob.queue.clear();
            ob.queued_bytes = 0;
            ob.close = Some(CloseRequest {
                close: Close::BACKLOG_FULL,
                by_binary: false,
                urgent: true,
            });
            drop(ob);
            self.inner.wake_writer.notify_one();
            return Err(SendError::Full(msg));
        }
        ob.queued_bytes += msg.len();
        ob.queue.push_back(OutMsg::Whole(msg));
        drop(ob);
        self.inner.wake_writer.notify_one();
        Ok(())
    }

    fn close(&self, close: Close) {
        self.request_close(CloseRequest {
            close,
            by_binary: false,
            urgent: false,
        });
    }
}

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
    fn take_batch(&self, into: &mut Vec<OutMsg>) -> Batch {
        let mut ob = self.outbox();
        let pong = ob.pong.take();
        let ping = std::mem::take(&mut ob.ping);
        let mut bytes = 0;
        let mut close = None;
        if let Some(req) = ob.close {
            if req.urgent {
                ob.queue.clear();
                ob.queued_bytes = 0;
            }
        }
        while into.len() < BATCH {
            let Some(m) = ob.queue.pop_front() else { break };
            bytes += m.len();
            into.push(m);
        }
        if self.inner.inbox.is_some() {
            // Binary inbox bytes are accounted in permits (clamped per message).
            let permits: usize = into
                .iter()
                .map(|m| permits_for(m.len(), self.inner.limits.queue_bytes) as usize)
                .sum();
            ob.queued_bytes = ob.queued_bytes.saturating_sub(permits);
            bytes = permits;
        } else {
            ob.queued_bytes = ob.queued_bytes.saturating_sub(bytes);
        }
        if ob.queue.is_empty() {
            close = ob.close.map(|r| r.close);
        }
        Batch {
            pong,
            ping,
            messages: std::mem::take(into),
            bytes,
            close,
        }
    }

    /// The writer task: runs until the close frame is out or the socket fails, then marks the
    /// connection finished. `shutdown` flipping to true closes with 1001 "shutting down".
    pub async fn run_writer<W: AsyncWrite + Unpin>(
        self,
        mut sink: W,
        mut shutdown: watch::Receiver<bool>,
    ) -> WriterEnd {
        let limits = self.inner.limits;
        let mut spare: Vec<OutMsg> = Vec::new();
        let mut beat = Heartbeat::new(limits, Instant::now());
        let heartbeat = sleep_until(beat.deadline());
        tokio::pin!(heartbeat);
        let mut shutdown_requested = false;
        let end = loop {
            let mut batch = self.take_batch(&mut spare);
            let idle = batch.pong.is_none()
                && !batch.ping
                && batch.messages.is_empty()
                && batch.close.is_none();
            if idle {
                spare = batch.messages;
                if self.inner.reader_gone.load(Ordering::Acquire) {
                    // The peer vanished: nobody is left to write to.
                    break WriterEnd::Failed;
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
            let result =
                tokio::time::timeout(limits.write_timeout, write_batch(&mut sink, &mut batch))
                    .await;
            // Whatever was written or dropped no longer counts against the inbox.
            self.release_inbox(batch.bytes);
            batch.messages.clear();
            spare = batch.messages;
            if spare.capacity() > BATCH {
                spare.shrink_to(BATCH);
            }
            match result {
                Err(_) => break WriterEnd::WriteTimeout,
                Ok(Err(_)) => break WriterEnd::Failed,
                Ok(Ok(())) => {}
            }
            if let Some(close) = batch.close {
                break WriterEnd::Closed(close);
            }
            // A writer that is never idle must still ping and check pongs (§7).
            if Instant::now() >= beat.deadline() {
                self.heartbeat(&mut beat);
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
}

/// The heartbeat schedule of one connection (§7): a ping every interval, and a deadline for
/// its pong.
struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    next_ping: Instant,
    /// The unanswered ping: its pong deadline and the pong count when it went out.
    awaiting: Option<(Instant, u64)>,
}

enum Beat {
    Nothing,
    Ping,
    TimedOut,
}

impl Heartbeat {
    fn new(limits: PeerLimits, now: Instant) -> Self {
        Heartbeat {
            interval: limits.heartbeat_interval,
            timeout: limits.heartbeat_timeout,
            next_ping: now + limits.heartbeat_interval,
            awaiting: None,
        }
    }

    /// When something is next due.
    fn deadline(&self) -> Instant {
        match self.awaiting {
            Some((deadline, _)) => deadline.min(self.next_ping),
            None => self.next_ping,
        }
    }

    fn tick(&mut self, now: Instant, pongs: u64) -> Beat {
        if let Some((deadline, seen)) = self.awaiting {
            if pongs > seen {
                self.awaiting = None;
            } else if now >= deadline {
                return Beat::TimedOut;
            }
        }
        if now >= self.next_ping {
            self.next_ping = now + self.interval;
            if self.awaiting.is_none() {
                self.awaiting = Some((now + self.timeout, pongs));
                return Beat::Ping;
            }
        }
        Beat::Nothing
    }
}

impl Peer {
    fn heartbeat(&self, beat: &mut Heartbeat) {
        match beat.tick(Instant::now(), self.inner.pongs.load(Ordering::Acquire)) {
            Beat::Nothing => {}
            Beat::Ping => self.outbox().ping = true,
            Beat::TimedOut => self.close_now(Close::HEARTBEAT_TIMEOUT),
        }
    }
}

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// An unmasked server frame head (RFC 6455 §5.2) with FIN set, for a payload of `len` bytes.
fn frame_head(opcode: u8, len: usize, out: &mut [u8]) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_pings_every_interval_and_times_out_without_a_pong() {
        let limits = PeerLimits {
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            queue_bytes: 1,
        };
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(limits, t0);
        assert!(matches!(hb.tick(t0, 0), Beat::Nothing));
        assert_eq!(hb.deadline(), t0 + Duration::from_secs(30));
        assert!(matches!(
            hb.tick(t0 + Duration::from_secs(30), 0),
            Beat::Ping
        ));
        assert_eq!(hb.deadline(), t0 + Duration::from_secs(40));
        // A pong arrives: no timeout, next ping at 60 s.
        assert!(matches!(
            hb.tick(t0 + Duration::from_secs(40), 1),
            Beat::Nothing
        ));
        assert!(matches!(
            hb.tick(t0 + Duration::from_secs(60), 1),
            Beat::Ping
        ));
        // No pong this time: timed out at 70 s.
        assert!(matches!(
            hb.tick(t0 + Duration::from_secs(69), 1),
            Beat::Nothing
        ));
        assert!(matches!(
            hb.tick(t0 + Duration::from_secs(70), 1),
            Beat::TimedOut
        ));
    }

    #[test]
    fn frame_heads_use_the_shortest_length_form() {
        let mut h = [0u8; 10];
        assert_eq!(frame_head(OP_TEXT, 125, &mut h), 2);
        assert_eq!(&h[..2], &[0x81, 125]);
        assert_eq!(frame_head(OP_TEXT, 126, &mut h), 4);
        assert_eq!(&h[..4], &[0x81, 126, 0, 126]);
        assert_eq!(frame_head(OP_CLOSE, 65535, &mut h), 4);
        assert_eq!(&h[..4], &[0x88, 126, 0xff, 0xff]);
        assert_eq!(frame_head(OP_TEXT, 65536, &mut h), 10);
        assert_eq!(&h[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }
}
