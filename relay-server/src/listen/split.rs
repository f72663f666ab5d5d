//! A TLS stream split into a read half and a write half that never wait for each other's
//! socket I/O.
//!
//! Owns the one `rustls::ServerConnection` of an upgraded TLS connection, shared by the two
//! halves behind a mutex that is held only for in-memory work: handing received ciphertext to
//! rustls and taking plaintext out (reader), handing plaintext to rustls and taking ciphertext
//! out (writer). Socket reads and writes happen outside the lock, on the shared `TcpStream`
//! (`try_read`/`try_write` take `&self`). It must never hold the lock across a syscall or an
//! await, and never write ciphertext from the read side: every record leaves through the write
//! half, in the order rustls produced it, so TLS sequence numbers stay in order on the wire.
//!
//! `tokio::io::split` instead puts the whole `TlsStream` behind one mutex held for each poll,
//! so a writer encrypting and sending a large batch stalls the reader (and its worker thread)
//! for the whole syscall; docs/performance.md ("TLS") has the numbers side by side.
//!
//! Records the read side causes (an alert after bad input, a TLS 1.3 KeyUpdate answer) wait in
//! rustls for the writer's next write or flush: at the latest the next heartbeat ping (§7), and
//! always before the close_notify of [`TlsWriteHalf`]'s shutdown.
//!
//! Idle cost: between reads the read half keeps no buffer (one is taken from the allocator per
//! readable event and given back once rustls has the bytes), and the write half keeps none
//! once its ciphertext is on the wire; rustls' own receive buffer is shrunk back to its 4 KiB
//! floor after every read.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ServerConnection;

/// Largest TLS record on the wire (16 KiB of plaintext plus the TLS 1.2 expansion allowance),
/// so one read can take a whole record.
const READ_CHUNK: usize = 16 * 1024 + 2048 + 5;

/// A write buffer that grew past this is given back to the allocator once it is sent.
const KEEP_WRITE_BUFFER: usize = 4096;

type Shared = Arc<Mutex<ServerConnection>>;

/// Splits an upgraded TLS connection; see the module docs.
pub fn split(tcp: TcpStream, conn: ServerConnection) -> (TlsReadHalf, TlsWriteHalf) {
    let tcp = Arc::new(tcp);
    let conn = Arc::new(Mutex::new(conn));
    (
        TlsReadHalf {
            tcp: tcp.clone(),
            conn: conn.clone(),
            buf: Vec::new(),
            start: 0,
            eof: false,
        },
        TlsWriteHalf {
            tcp,
            conn,
            out: Vec::new(),
            sent: 0,
            closing: false,
        },
    )
}

fn lock(conn: &Shared) -> MutexGuard<'_, ServerConnection> {
    // A panic while holding the lock leaves rustls mid-operation; the connection is lost
    // either way, and the other half then fails on its own error path.
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The read half: decrypts what the socket delivers.
pub struct TlsReadHalf {
    tcp: Arc<TcpStream>,
    conn: Shared,
    /// Ciphertext read from the socket that rustls has not taken yet: `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
    /// The socket reached end of file (told to rustls already).
    eof: bool,
}

/// A reader that has nothing yet: lets rustls run its buffer upkeep without reading.
struct NothingYet;

impl Read for NothingYet {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl TlsReadHalf {
    /// Hands buffered ciphertext to rustls until it yields plaintext or the buffer is empty.
    fn feed(&mut self, conn: &mut ServerConnection) -> io::Result<()> {
        while self.start < self.buf.len() {
            let mut pending = &self.buf[self.start..];
            let taken = match conn.read_tls(&mut pending) {
                Ok(n) => n,
                // "received plaintext buffer full": the caller takes plaintext first.
                Err(e) if e.kind() == io::ErrorKind::Other => break,
                Err(e) => return Err(e),
            };
            if taken == 0 {
                // After close_notify rustls takes nothing more; the rest is ignored.
                self.start = self.buf.len();
                break;
            }
            self.start += taken;
            let state = conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() {
                break;
            }
        }
        if self.start == self.buf.len() {
            // Everything is in rustls: give the buffer back (idle connections keep none), and
            // let rustls shrink its own receive buffer now that no record is half-read.
            self.buf = Vec::new();
            self.start = 0;
            let _ = conn.read_tls(&mut NothingYet);
        }
        Ok(())
    }
}

impl AsyncRead for TlsReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            // rustls would answer a zero-length read with Ok(0), which reads as end of stream.
            return Poll::Ready(Ok(()));
        }
        loop {
            {
                let conn = this.conn.clone();
                let mut conn = lock(&conn);
                this.feed(&mut conn)?;
                match conn.reader().read(out.initialize_unfilled()) {
                    // Zero bytes: the peer's close_notify, a clean end of stream.
                    Ok(n) => {
                        out.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // UnexpectedEof: the socket closed without a close_notify.
                    Err(e) => return Poll::Ready(Err(e)),
                }
                if this.eof {
                    // rustls has seen the end of file and still has no plaintext: it answers
                    // with UnexpectedEof above, so this is unreachable in practice.
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
            }
            // More ciphertext is needed: read the socket without holding the lock.
            ready!(this.tcp.poll_read_ready(cx))?;
            if this.buf.capacity() - this.buf.len() < READ_CHUNK / 2 {
                this.buf.reserve(READ_CHUNK);
            }
            match this.tcp.try_read_buf(&mut this.buf) {
                Ok(0) => {
                    this.eof = true;
                    let mut conn = lock(&this.conn);
                    // An empty reader is how rustls learns of the end of file.
                    conn.read_tls(&mut io::empty())?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// The write half: encrypts under the lock, sends outside it.
pub struct TlsWriteHalf {
    tcp: Arc<TcpStream>,
    conn: Shared,
    /// Ciphertext taken from rustls and not yet on the wire: `out[sent..]`.
    out: Vec<u8>,
    sent: usize,
    /// close_notify queued.
    closing: bool,
}

impl TlsWriteHalf {
    /// Moves every record rustls has ready into `out` (in order, under the lock).
    fn take_records(&mut self, conn: &mut ServerConnection) {
        while conn.wants_write() {
            // Writing into a Vec cannot fail.
            if conn.write_tls(&mut self.out).is_err() {
                break;
            }
        }
    }

    /// Sends `out` to the socket; Ready once all of it is written.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_write(&self.out[self.sent..]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.sent = 0;
        if self.out.capacity() > KEEP_WRITE_BUFFER {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        Poll::Ready(Ok(()))
    }

    fn write_plaintext(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Earlier ciphertext first: this is where back-pressure from the socket shows.
        ready!(self.poll_send(cx))?;
        let taken = {
            let conn = self.conn.clone();
            let mut conn = lock(&conn);
            let n = conn.writer().write_vectored(bufs)?;
            self.take_records(&mut conn);
            n
        };
        // The plaintext is accepted whatever the socket says now; a Pending here is picked
        // up by the next write or the flush, and an error by the next call.
        let _ = self.poll_send(cx);
        Poll::Ready(Ok(taken))
    }
}

impl AsyncWrite for TlsWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_plaintext(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_plaintext(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Every record rustls holds goes to the socket, those the read side caused included:
    /// nothing sits in rustls after a flush.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        {
            let conn = this.conn.clone();
            let mut conn = lock(&conn);
            this.take_records(&mut conn);
        }
        this.poll_send(cx)
    }

    /// close_notify, then the TCP half-close.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            ready!(this.poll_send(cx))?;
            this.closing = true;
            let conn = this.conn.clone();
            let mut conn = lock(&conn);
            conn.send_close_notify();
            this.take_records(&mut conn);
        }
        ready!(this.poll_send(cx))?;
        match socket2::SockRef::from(&*this.tcp).shutdown(Shutdown::Write) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
