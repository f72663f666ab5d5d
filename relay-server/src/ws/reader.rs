//! One connection's inbound side: RFC 6455 frames off the socket, whole messages out (§7).
//!
//! Owns the read half of the socket and everything about reading: frame parsing and
//! unmasking, reassembly of fragments under the message size limit, the per-message read
//! deadline, answering pings (through the peer's writer, ahead of its queue) and recording
//! pongs, and charging every byte read to the memory budget (§8).
//!
//! Messages come out as slices of one chunk per socket read (no copy; the chunk carries the
//! budget charge, see `admission/budget.rs`). Fragmented messages are copied once into their
//! own buffer. An over-size message on the binary leg is discarded as it arrives, never
//! buffered: only its first [`SNIFF`] bytes are kept, so the binary can be told which phone it
//! was for (§7 "Message size").
//!
//! [`MessageReader::next`] is cancel-safe: all state lives in the reader, and a read that is
//! dropped half-way loses no byte.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use relay_core::{Close, CloseCode};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use super::frame::{parse_head, unmask, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_TEXT};
use super::peer::Peer;
use crate::admission::budget::Meter;

/// How many leading bytes of an over-size binary-leg message are kept (§7).
pub const SNIFF: usize = 512;
/// Buffer for the first read after an idle spell: most messages are small.
const FIRST_READ: usize = 4 << 10;
/// Buffer for reads while a message is arriving.
const READ_CHUNK: usize = 16 << 10;

/// How reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// The peer sent a close frame, with this code if it had one.
    PeerClosed(Option<CloseCode>),
    /// The socket ended without a close frame.
    Vanished,
    /// The peer broke a rule: close it with this.
    Violation(Close),
    /// Our side is done with the connection (the writer ended).
    Stopped,
}

/// What the reader hands its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A whole data message (text or binary opcode).
    Message(Bytes),
    /// A message over the limit, being discarded ([`Oversize::Discard`]): its first bytes, up
    /// to [`SNIFF`], unmasked. Whatever else arrives of it is dropped.
    Oversize(Bytes),
}

/// What an over-size message does to its connection (§7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Oversize {
    /// Close 1009 "message too big" (phones).
    Close,
    /// Discard it as it arrives and report it (binaries).
    Discard,
}

#[derive(Clone, Copy, Debug)]
pub struct ReaderConfig {
    /// Largest whole message, in bytes.
    pub max_message: usize,
    /// §7 read deadline: a frame or message must arrive whole within this of its first byte.
    pub read_timeout: Duration,
    pub oversize: Oversize,
}

enum Event {
    /// A single-frame data message: its payload's range in the current chunk.
    Data {
        range: Range<usize>,
        text: bool,
    },
    /// A reassembled fragmented message.
    Assembled {
        bytes: Bytes,
        text: bool,
    },
    Ping(Bytes),
    Pong,
    Oversize(Bytes),
    End(ReadEnd),
}

/// A fragmented message being reassembled.
struct Partial {
    buf: BytesMut,
    text: bool,
}

/// An over-size message being discarded.
struct Discard {
    /// Payload bytes of the current frame still to come.
    frame_left: u64,
    /// The current frame is the message's last.
    fin: bool,
    mask: [u8; 4],
    /// Payload bytes of the current frame already seen (the mask's phase).
    frame_seen: usize,
    /// The first bytes, while fewer than [`SNIFF`] have been kept and reported.
    sniff: Option<BytesMut>,
}

pub struct MessageReader<R> {
    io: R,
    /// Bytes read and not yet consumed by [`Self::scan`]: the start of an incomplete frame.
    buf: BytesMut,
    /// Parsed from the last chunk and not yet handed out, in wire order.
    events: VecDeque<Event>,
    /// The chunk `Event::Data` ranges point into.
    chunk: Bytes,
    partial: Option<Partial>,
    discard: Option<Discard>,
    /// A close frame or a broken head was seen: nothing after it is parsed.
    stopped: bool,
    cfg: ReaderConfig,
    meter: Meter,
    /// When the frame or message now partly received began arriving (§7 read deadline).
    started: Option<Instant>,
    /// When the last read returned.
    last_read: Instant,
    /// Bytes still missing for the frame at the start of `buf`, when known.
    want: usize,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    /// `prefix` is what the HTTP layer read past the upgrade request.
    pub fn new(io: R, prefix: Bytes, cfg: ReaderConfig, meter: Meter) -> Self {
        let now = Instant::now();
        meter.charge(prefix.len());
        let started = (!prefix.is_empty()).then_some(now);
        MessageReader {
            io,
            buf: BytesMut::from(&prefix[..]),
            events: VecDeque::new(),
            chunk: Bytes::new(),
            partial: None,
            discard: None,
            stopped: false,
            cfg,
            meter,
            started,
            last_read: now,
            want: 0,
        }
    }

    /// The next whole data message, or an over-size report. Control frames are handled on the
    /// way: pings answered through `peer`, pongs recorded, a close frame ends reading.
    pub async fn next(&mut self, peer: &Peer) -> Result<Inbound, ReadEnd> {
        loop {
            while let Some(event) = self.events.pop_front() {
                match event {
                    Event::Data { range, text } => {
                        let msg = self.chunk.slice(range);
                        return checked(msg, text);
                    }
                    Event::Assembled { bytes, text } => return checked(bytes, text),
                    Event::Ping(payload) => peer.pong(payload),
                    Event::Pong => peer.record_pong(),
                    Event::Oversize(sniff) => return Ok(Inbound::Oversize(sniff)),
                    Event::End(end) => return Err(end),
                }
            }
            // Every event of the last chunk is out: hold it no longer than its messages do.
            self.chunk = Bytes::new();
            if !self.scan() {
                self.fill().await?;
            }
        }
    }

    fn busy(&self) -> bool {
        !self.buf.is_empty() || self.partial.is_some() || self.discard.is_some()
    }

    /// Parses every complete frame at the start of `buf` into events, and consumes them.
    /// Returns whether anything was consumed or produced.
    fn scan(&mut self) -> bool {
        if self.stopped {
            return false;
        }
        let mut off = 0;
        let mut uses_chunk = false;
        let mut passed_idle = false;
        let events_before = self.events.len();
        self.want = 0;
        loop {
            if self.discard.as_ref().is_some_and(|d| d.frame_left > 0) {
                let avail = self.buf.len() - off;
                if avail == 0 {
                    break;
                }
                if !self.skip(off, avail, &mut off) {
                    break;
                }
                if self.discard.is_none() {
                    passed_idle = true;
                }
                continue;
            }
            let head = match parse_head(&self.buf[off..]) {
                Ok(Some(head)) => head,
                Ok(None) => break,
                Err(_) => {
                    self.end(ReadEnd::Violation(Close::PROTOCOL_ERROR));
                    break;
                }
            };
            let avail = self.buf.len() - off;
            if head.is_control() {
                let total = head.head_len + head.len as usize;
                if avail < total {
                    self.want = total - avail;
                    break;
                }
                let payload = off + head.head_len..off + total;
                unmask(&mut self.buf[payload.clone()], head.mask, 0);
                let event = match head.opcode {
                    OP_PING => Event::Ping(Bytes::copy_from_slice(&self.buf[payload])),
                    OP_CLOSE => Event::End(close_frame(&self.buf[payload])),
                    _ => Event::Pong,
                };
                off += total;
                let is_close = matches!(event, Event::End(_));
                self.events.push_back(event);
                if is_close {
                    self.stopped = true;
                    break;
                }
                if self.partial.is_none() && self.discard.is_none() {
                    passed_idle = true;
                }
                continue;
            }
            let in_message = self.partial.is_some() || self.discard.is_some();
            if (head.opcode == OP_CONTINUATION) != in_message {
                // A continuation with nothing to continue, or a new message inside another.
                self.end(ReadEnd::Violation(Close::PROTOCOL_ERROR));
                break;
            }
            if let Some(d) = &mut self.discard {
                // The next fragment of a message being discarded.
                d.frame_left = head.len;
                d.fin = head.fin;
                d.mask = head.mask;
                d.frame_seen = 0;
                off += head.head_len;
                if head.len == 0 && head.fin {
                    self.finish_discard();
                    passed_idle = true;
                }
                continue;
            }
            let so_far = self.partial.as_ref().map_or(0, |p| p.buf.len() as u64);
            if so_far + head.len > self.cfg.max_message as u64 {
                self.start_discard(head.len, head.fin, head.mask);
                off += head.head_len;
                if self.discard.is_none() {
                    passed_idle = true;
                }
                continue;
            }
            let total = head.head_len + head.len as usize;
            if avail < total {
                self.want = total - avail;
                break;
            }
            let payload = off + head.head_len..off + total;
            unmask(&mut self.buf[payload.clone()], head.mask, 0);
            let text = head.opcode == OP_TEXT;
            match (head.opcode, head.fin) {
                (OP_TEXT | OP_BINARY, true) => {
                    self.events.push_back(Event::Data {
                        range: payload,
                        text,
                    });
                    uses_chunk = true;
                    passed_idle = true;
                }
                (OP_TEXT | OP_BINARY, false) => {
                    self.meter.charge(payload.len());
                    self.partial = Some(Partial {
                        buf: BytesMut::from(&self.buf[payload]),
                        text,
                    });
                }
                _ => {
                    // A continuation of the message being reassembled (checked above).
                    if let Some(p) = &mut self.partial {
                        self.meter.charge(payload.len());
                        p.buf.extend_from_slice(&self.buf[payload]);
                    }
                    if head.fin {
                        if let Some(p) = self.partial.take() {
                            let bytes = self.meter.freeze(p.buf.freeze());
                            self.events.push_back(Event::Assembled {
                                bytes,
                                text: p.text,
                            });
                            passed_idle = true;
                        }
                    }
                }
            }
            off += total;
        }
        if off > 0 {
            let consumed = self.buf.split_to(off).freeze();
            if uses_chunk {
                self.chunk = self.meter.freeze(consumed);
            } else {
                // Only control frames or discarded bytes: nothing points into them.
                self.meter.release(consumed.len());
            }
        }
        if self.busy() {
            if passed_idle || self.started.is_none() {
                self.started = Some(self.last_read);
            }
        } else {
            self.started = None;
        }
        if self.discard.is_some() {
            // Never buffer a discarded message: read it a chunk at a time.
            self.want = self.want.min(READ_CHUNK);
        }
        off > 0 || self.events.len() > events_before
    }

    /// Discards payload bytes of an over-size message, keeping the first [`SNIFF`]. Returns
    /// false when `buf` ran out before the frame did.
    fn skip(&mut self, start: usize, avail: usize, off: &mut usize) -> bool {
        let Some(d) = &mut self.discard else {
            return true;
        };
        let k = d.frame_left.min(avail as u64) as usize;
        if let Some(sniff) = &mut d.sniff {
            let take = k.min(SNIFF - sniff.len());
            let from = sniff.len();
            sniff.extend_from_slice(&self.buf[start..start + take]);
            unmask(&mut sniff[from..], d.mask, d.frame_seen);
            if sniff.len() == SNIFF {
                let full = std::mem::take(sniff).freeze();
                d.sniff = None;
                self.events.push_back(Event::Oversize(full));
            }
        }
        d.frame_seen += k;
        d.frame_left -= k as u64;
        *off += k;
        if d.frame_left > 0 {
            return false;
        }
        if d.fin {
            self.finish_discard();
        }
        true
    }

    /// The message being read went over the limit with a frame of `len` bytes still to come.
    fn start_discard(&mut self, len: u64, fin: bool, mask: [u8; 4]) {
        let partial = self.partial.take();
        let sniff = match self.cfg.oversize {
            Oversize::Close => {
                self.events
                    .push_back(Event::End(ReadEnd::Violation(Close::TOO_BIG)));
                None
            }
            Oversize::Discard => {
                let mut sniff = BytesMut::with_capacity(SNIFF);
                if let Some(p) = &partial {
                    sniff.extend_from_slice(&p.buf[..p.buf.len().min(SNIFF)]);
                }
                Some(sniff)
            }
        };
        if let Some(p) = partial {
            self.meter.release(p.buf.len());
        }
        self.discard = Some(Discard {
            frame_left: len,
            fin,
            mask,
            frame_seen: 0,
            sniff,
        });
        if len == 0 && fin {
            self.finish_discard();
        } else if let Some(d) = &mut self.discard {
            if d.sniff.as_ref().is_some_and(|s| s.len() >= SNIFF) {
                if let Some(full) = d.sniff.take() {
                    self.events.push_back(Event::Oversize(full.freeze()));
                }
            }
        }
    }

    fn finish_discard(&mut self) {
        if let Some(d) = self.discard.take() {
            if let Some(sniff) = d.sniff {
                self.events.push_back(Event::Oversize(sniff.freeze()));
            }
        }
    }

    fn end(&mut self, end: ReadEnd) {
        self.events.push_back(Event::End(end));
        self.stopped = true;
    }

    /// Reads more bytes, under the budget's back-pressure and the read deadline.
    async fn fill(&mut self) -> Result<(), ReadEnd> {
        if self.stopped {
            // Nothing more will be parsed: wait for the socket to end, dropping what arrives.
            return self.drain().await;
        }
        if self.meter.must_wait() {
            let paused = Instant::now();
            self.meter.admit_read().await;
            // The peer could not send while we did not read: that time is ours, not its.
            if let Some(started) = &mut self.started {
                *started += paused.elapsed();
            }
        }
        let busy = self.busy();
        if !busy && self.buf.capacity() > READ_CHUNK {
            // Idle after a large message: do not keep its buffer for the connection's life.
            self.buf = BytesMut::new();
        }
        let spare = self.buf.capacity() - self.buf.len();
        let wanted = self
            .want
            .min(self.cfg.max_message.saturating_add(super::frame::MAX_HEAD));
        if spare < wanted.max(1024) {
            let base = if busy { READ_CHUNK } else { FIRST_READ };
            self.buf.reserve(wanted.max(base));
        }
        let read = self.io.read_buf(&mut self.buf);
        let n = match self.started {
            Some(started) if busy => {
                match tokio::time::timeout_at(started + self.cfg.read_timeout, read).await {
                    Ok(r) => r,
                    Err(_) => return Err(ReadEnd::Violation(Close::TOO_SLOW)),
                }
            }
            _ => read.await,
        };
        let n = n.map_err(|_| ReadEnd::Vanished)?;
        if n == 0 {
            return Err(ReadEnd::Vanished);
        }
        self.last_read = Instant::now();
        self.meter.charge(n);
        Ok(())
    }

    /// After a close frame or a broken head: read and drop until the socket ends.
    async fn drain(&mut self) -> Result<(), ReadEnd> {
        let held = self.buf.len();
        self.meter.release(held);
        self.buf.clear();
        if self.buf.capacity() < 1024 {
            self.buf.reserve(1024);
        }
        loop {
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Err(ReadEnd::Vanished),
                Ok(_) => self.buf.clear(),
            }
        }
    }
}

impl<R> Drop for MessageReader<R> {
    fn drop(&mut self) {
        // Bytes read but not yet in a chunk hold their charge here; chunks release their own.
        let partial = self.partial.as_ref().map_or(0, |p| p.buf.len());
        self.meter.release(self.buf.len() + partial);
    }
}

/// A text message must be UTF-8 (RFC 6455 §8.1); binary messages are anything.
fn checked(msg: Bytes, text: bool) -> Result<Inbound, ReadEnd> {
    if text && std::str::from_utf8(&msg).is_err() {
        return Err(ReadEnd::Violation(Close::INVALID_UTF8));
    }
    Ok(Inbound::Message(msg))
}

/// A peer's close frame: empty, or a valid code and a UTF-8 reason (RFC 6455 §5.5.1, §7.4).
fn close_frame(payload: &[u8]) -> ReadEnd {
    match payload {
        [] => ReadEnd::PeerClosed(None),
        [_] => ReadEnd::Violation(Close::PROTOCOL_ERROR),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let allowed = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !allowed {
                ReadEnd::Violation(Close::PROTOCOL_ERROR)
            } else if std::str::from_utf8(reason).is_err() {
                ReadEnd::Violation(Close::INVALID_UTF8)
            } else {
                ReadEnd::PeerClosed(Some(CloseCode::from_wire(code)))
            }
        }
    }
}

#[cfg(test)]
mod tests;
