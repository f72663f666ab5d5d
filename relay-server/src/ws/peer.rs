//! One WebSocket connection's outbound state: its queue, its liveness flags, and the [`Conn`]
//! the registry holds.
//!
//! A [`Peer`] is cheap to clone. Sending never blocks: it appends to a FIFO under this
//! connection's own mutex and wakes the writer task (`writer.rs`), which drains it. Nothing
//! here does I/O or holds the queue lock across an await.
//!
//! Budgets (§7): a phone's queue is capped in bytes; going over closes the phone 1011 "phone
//! backlog full" and drops what was queued, so a stalled phone never delays anyone else. A
//! binary's queue (the "binary inbox") is capped by a byte semaphore; phones that find it
//! full wait ([`Peer::send_backpressured`]) and nothing is dropped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use relay_core::{envelope, Close, Conn, ConnId, SendError};
use tokio::sync::{Notify, Semaphore};
use tokio::time::{sleep_until, Instant};

/// Most messages written in one vectored write.
pub(super) const BATCH: usize = 64;
/// About how many bytes one write takes from the queue: more rarely fits one syscall, and
/// what a blocked write holds should stay small.
pub(super) const BATCH_BYTES: usize = 256 << 10;
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

    pub fn label(self) -> crate::metrics::Role {
        match self {
            Role::Binary => crate::metrics::Role::Binary,
            Role::Phone => crate::metrics::Role::Phone,
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
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) id: ConnId,
    /// Which shard of the per-message counters this connection's reader counts on.
    pub(super) shard: usize,
    pub(super) role: Role,
    /// Phones: the constant part of their envelopes (§4.1), made once.
    pub(super) envelope_prefix: Bytes,
    pub(super) limits: PeerLimits,
    pub(super) outbox: Mutex<Outbox>,
    pub(super) wake_writer: Notify,
    /// Binaries only: byte permits of the inbox. Closed when the writer ends.
    pub(super) inbox: Option<Semaphore>,
    pub(super) pongs: AtomicU64,
    pub(super) pong_arrived: Notify,
    /// Set when the reader must stop (the writer ended or the close handshake lingered).
    pub(super) done: AtomicBool,
    pub(super) done_notify: Notify,
    /// Set when the reader has stopped (the writer need not linger for a close answer).
    pub(super) reader_gone: AtomicBool,
    pub(super) reader_gone_notify: Notify,
}

#[derive(Default)]
pub(super) struct Outbox {
    pub(super) queue: VecDeque<OutMsg>,
    /// Bytes queued, including the batch the writer is writing (`in_flight`).
    pub(super) queued_bytes: usize,
    /// Bytes of the batch the writer took last and may still be writing.
    pub(super) in_flight: usize,
    pub(super) close: Option<CloseRequest>,
    pub(super) pong: Option<Bytes>,
    pub(super) ping: bool,
    pub(super) finished: bool,
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
    pub fn new(role: Role, limits: PeerLimits) -> Self {
        let inbox = (role == Role::Binary).then(|| Semaphore::new(limits.queue_bytes));
        let id = ConnId::random();
        let envelope_prefix = match role {
            Role::Phone => envelope::to_binary_prefix(&id),
            Role::Binary => Bytes::new(),
        };
        static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);
        Peer {
            inner: Arc::new(Inner {
                id,
                shard: NEXT_SHARD.fetch_add(1, Ordering::Relaxed),
                role,
                envelope_prefix,
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

    pub(super) fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.inner
            .outbox
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn role(&self) -> Role {
        self.inner.role
    }

    /// This connection's shard of the per-message counters.
    pub fn shard(&self) -> usize {
        self.inner.shard
    }

    /// This phone's message `frame` as the envelope its binary gets (§4.1): the phone's bytes
    /// between the prefix made once per phone and the constant suffix. Never a token.
    pub fn envelope(&self, frame: Bytes) -> OutMsg {
        OutMsg::Spliced {
            prefix: self.inner.envelope_prefix.clone(),
            body: frame,
            suffix: Bytes::from_static(envelope::TO_BINARY_SUFFIX),
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

    pub(super) fn release_inbox(&self, bytes: usize) {
        if let Some(sem) = &self.inner.inbox {
            if bytes > 0 && !sem.is_closed() {
                sem.add_permits(bytes);
            }
        }
    }

    pub(super) fn request_close(&self, req: CloseRequest) {
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
        if req.urgent {
            // Drop the queue now, not when the writer next looks: what it holds is released
            // at once (the memory budget's shedder relies on it).
            ob.queue.clear();
            ob.queued_bytes = 0;
            ob.in_flight = 0;
        }
        drop(ob);
        self.inner.wake_writer.notify_one();
    }

    /// Bytes waiting in this connection's queue.
    pub fn queued_bytes(&self) -> usize {
        self.outbox().queued_bytes
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

    pub(super) async fn reader_gone(&self) {
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
    pub(super) fn stop_sending(&self) {
        {
            let mut ob = self.outbox();
            ob.finished = true;
            ob.queue.clear();
            ob.queued_bytes = 0;
            ob.in_flight = 0;
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

pub(super) fn permits_for(len: usize, budget: usize) -> u32 {
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
            ob.in_flight = 0;
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
