//! The per-message read deadline of protocol.md §7, enforced under the WebSocket parser.
//!
//! "Once the first byte of a frame or message (control frames included) arrives, the whole of
//! it must arrive within `--message-read-timeout`; idle time between messages is unbounded."
//! The WebSocket reader buffers ahead and cannot be cancelled mid-frame, so the deadline is
//! kept here instead, on the byte stream itself: [`Boundaries`] follows frame headers as bytes
//! arrive and knows at every moment whether a message is partly received and since when, and
//! [`DeadlineReader`] fails the read with [`io::ErrorKind::TimedOut`] when such a message
//! stalls past its deadline. Nothing here allocates per message, and the timer is only touched
//! when a read actually has to wait in the middle of a message.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Follows RFC 6455 frame boundaries in a byte stream without buffering it.
#[derive(Debug, Default)]
pub struct Boundaries {
    /// Header bytes of the current frame seen so far (at most 14).
    head: [u8; 14],
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// Inside a frame (header started, payload not finished).
    in_frame: bool,
    /// A data message has started and its final frame has not finished.
    in_message: bool,
    /// The current frame is a data frame with FIN set.
    frame_fin_data: bool,
    /// The current frame is a control frame.
    frame_control: bool,
}

impl Boundaries {
    /// Whether a frame or message is partly received: the deadline runs.
    pub fn busy(&self) -> bool {
        self.in_frame || self.in_message
    }

    /// Feeds arriving bytes. Returns true if a frame or message *started* from idle in them
    /// (the caller starts the deadline clock then), and leaves `busy()` telling whether one is
    /// still unfinished at the end of `bytes`.
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut started = false;
        while !bytes.is_empty() {
            if !self.in_frame {
                if !self.in_message {
                    started = true;
                }
                self.in_frame = true;
                self.head_len = 0;
            }
            if self.head_len < 2 || self.head_len < self.needed_head() {
                let take = (self.needed_head().max(2) - self.head_len).min(bytes.len());
                self.head[self.head_len..self.head_len + take].copy_from_slice(&bytes[..take]);
                self.head_len += take;
                bytes = &bytes[take..];
                if self.head_len < 2 || self.head_len < self.needed_head() {
                    continue;
                }
                self.start_payload();
                if self.payload_left == 0 {
                    self.end_frame();
                }
                continue;
            }
            let take = self.payload_left.min(bytes.len() as u64);
            self.payload_left -= take;
            // `take` is at most `bytes.len()`, so it fits in usize.
            bytes = &bytes[take as usize..];
            if self.payload_left == 0 {
                self.end_frame();
            }
        }
        started
    }

    /// Header length implied by the first two bytes (2 until they are known).
    fn needed_head(&self) -> usize {
        if self.head_len < 2 {
            return 2;
        }
        let masked = usize::from(self.head[1] & 0x80 != 0) * 4;
        let ext = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + masked
    }

    fn start_payload(&mut self) {
        let code = self.head[1] & 0x7f;
        self.payload_left = match code {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.head[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let opcode = self.head[0] & 0x0f;
        let fin = self.head[0] & 0x80 != 0;
        self.frame_control = opcode & 0x08 != 0;
        self.frame_fin_data = !self.frame_control && fin;
        if !self.frame_control {
            self.in_message = true;
        }
    }

    fn end_frame(&mut self) {
        self.in_frame = false;
        if self.frame_fin_data {
            self.in_message = false;
        }
    }
}

/// An `AsyncRead` that fails with `TimedOut` when a partly received message stalls longer
/// than `timeout`. It can also replay bytes that arrived before it took over the stream (what
/// the HTTP layer read past the upgrade request).
pub struct DeadlineReader<R> {
    inner: R,
    prefix: Bytes,
    timeout: Duration,
    bounds: Boundaries,
    started_at: Option<Instant>,
    sleep: Pin<Box<Sleep>>,
    armed_for: Option<Instant>,
}

impl<R> DeadlineReader<R> {
    pub fn new(inner: R, prefix: Bytes, timeout: Duration) -> Self {
        DeadlineReader {
            inner,
            prefix,
            timeout,
            bounds: Boundaries::default(),
            started_at: None,
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed_for: None,
        }
    }

    fn account(&mut self, fresh: &[u8]) {
        if self.bounds.feed(fresh) {
            self.started_at = Some(Instant::now());
        }
        if !self.bounds.busy() {
            self.started_at = None;
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for DeadlineReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            let chunk = this.prefix.split_to(n);
            buf.put_slice(&chunk);
            this.account(&chunk);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled();
                if filled.len() > before {
                    this.account(&filled[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(started) = this.started_at else {
                    return Poll::Pending;
                };
                let deadline = started + this.timeout;
                if this.armed_for != Some(deadline) {
                    this.sleep.as_mut().reset(deadline);
                    this.armed_for = Some(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "message read deadline passed",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        if len < 126 {
            f.push(0x80 | len as u8);
        } else if len < 65536 {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn whole_frames_leave_it_idle_whatever_the_chunking() {
        for len in [0, 5, 125, 126, 300, 65535, 65536, 70000] {
            let f = frame(true, 1, len);
            for chunk in [1, 2, 3, 7, 64, 1 << 20] {
                let mut b = Boundaries::default();
                let mut started = 0;
                for c in f.chunks(chunk) {
                    started += usize::from(b.feed(c));
                }
                assert_eq!(started, 1, "len {len} chunk {chunk}");
                assert!(!b.busy(), "len {len} chunk {chunk}");
            }
        }
    }

    #[test]
    fn a_partial_frame_is_busy() {
        let f = frame(true, 1, 100);
        let mut b = Boundaries::default();
        assert!(b.feed(&f[..1]));
        assert!(b.busy());
        assert!(!b.feed(&f[1..50]));
        assert!(b.busy());
        b.feed(&f[50..]);
        assert!(!b.busy());
    }

    #[test]
    fn a_fragmented_message_stays_busy_across_interleaved_pings() {
        let mut b = Boundaries::default();
        assert!(b.feed(&frame(false, 1, 10)));
        assert!(b.busy());
        // A ping between fragments does not end the message nor restart its clock.
        assert!(!b.feed(&frame(true, 9, 4)));
        assert!(b.busy());
        assert!(!b.feed(&frame(false, 0, 10)));
        assert!(b.busy());
        b.feed(&frame(true, 0, 10));
        assert!(!b.busy());
    }

    #[test]
    fn a_lone_control_frame_starts_and_ends_the_clock() {
        let mut b = Boundaries::default();
        let ping = frame(true, 9, 3);
        assert!(b.feed(&ping[..2]));
        assert!(b.busy());
        b.feed(&ping[2..]);
        assert!(!b.busy());
    }

    #[test]
    fn two_messages_in_one_read_then_a_partial_third_is_busy() {
        let mut all = frame(true, 1, 10);
        all.extend(frame(true, 2, 20));
        all.extend(&frame(true, 1, 30)[..5]);
        let mut b = Boundaries::default();
        assert!(b.feed(&all));
        assert!(b.busy());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_message_times_out_and_an_idle_stream_does_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1024);
        let mut r = DeadlineReader::new(server, Bytes::new(), Duration::from_secs(30));
        let mut buf = [0u8; 64];

        // Idle for an hour: no error.
        let idle = tokio::time::timeout(Duration::from_secs(3600), r.read(&mut buf)).await;
        assert!(idle.is_err(), "idle read must just wait");

        // A whole message: fine.
        client.write_all(&frame(true, 1, 3)).await.unwrap();
        assert!(r.read(&mut buf).await.unwrap() > 0);

        // Half a message, then silence: TimedOut after 30 s.
        client.write_all(&frame(true, 1, 10)[..4]).await.unwrap();
        assert!(r.read(&mut buf).await.unwrap() > 0);
        let t0 = Instant::now();
        let err = r.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn prefix_bytes_are_read_first() {
        use tokio::io::AsyncReadExt;
        let (_client, server) = tokio::io::duplex(16);
        let mut r =
            DeadlineReader::new(server, Bytes::from_static(b"hello"), Duration::from_secs(1));
        let mut buf = [0u8; 5];
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }
}
