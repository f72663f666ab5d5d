//! Forwarding as a byte splice (protocol.md §11): after the link header and the client's
//! upgrade request exactly as received, bytes are copied both ways between the client and
//! the holder's cluster listener until both directions have ended.
//!
//! Owns the copy loops and nothing above them: no HTTP, no WebSocket, no deadlines or
//! heartbeats (the holder owns those, end to end, §7). In-flight bytes are bounded per
//! direction (a 64 KiB kernel pipe, or a 16 KiB buffer), and nothing is read from one side
//! while the other has not taken what was read before, so a peer that stops reading stalls
//! its sender through TCP instead of growing memory here.
//!
//! When both ends are plain TCP sockets on Linux, [`splice_tcp`] moves the bytes with
//! `splice(2)` through a pipe, never through user space. A TLS client (decrypted here) goes
//! through [`splice_io`], a plain bounded copy.
//!
//! End of stream on one side is passed on as a write shutdown (half-close) to the other and
//! the opposite direction keeps going; an error on either side ends both (the sockets are
//! closed when dropped).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The user-space copy buffer per direction, for [`splice_io`].
pub const COPY_BUFFER: usize = 16 * 1024;

/// Bytes moved by one forwarded connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spliced {
    /// Client → holder, the initial bytes included.
    pub to_peer: u64,
    /// Holder → client.
    pub to_client: u64,
}

/// Dials a peer's cluster listener (`HOST:PORT`), bounded by `timeout`.
pub async fn connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "cluster peer connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Splices a client that is any byte stream (TLS, in practice) with the holder.
/// `initial` (link header + request as received) goes to the holder first.
pub async fn splice_io<C>(mut client: C, mut peer: TcpStream, initial: &[u8]) -> io::Result<Spliced>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    peer.write_all(initial).await?;
    let (up, down) =
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut peer, COPY_BUFFER, COPY_BUFFER)
            .await?;
    Ok(Spliced {
        to_peer: up + initial.len() as u64,
        to_client: down,
    })
}

/// Splices two TCP sockets: `splice(2)` on Linux, [`splice_io`] elsewhere.
pub async fn splice_tcp(client: TcpStream, peer: TcpStream, initial: &[u8]) -> io::Result<Spliced> {
    #[cfg(target_os = "linux")]
    {
        linux::splice(client, peer, initial).await
    }
    #[cfg(not(target_os = "linux"))]
    {
        splice_io(client, peer, initial).await
    }
}

#[cfg(target_os = "linux")]
mod linux {
    //! `splice(2)` through a pipe, one pipe per direction. The pipe is filled only when
    //! empty and drained completely before the next fill: an empty pipe always has room,
    //! so a `EAGAIN` from the filling splice can only mean the socket has nothing to read,
    //! which keeps tokio's readiness tracking truthful.

    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    use tokio::io::{AsyncWriteExt, Interest};
    use tokio::net::TcpStream;

    use super::Spliced;

    struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        capacity: usize,
    }

    impl Pipe {
        fn new() -> io::Result<Pipe> {
            let mut fds = [0 as RawFd; 2];
            // SAFETY: pipe2 writes two fds into the array we own; checked below.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: both fds were just created and are owned by nobody else.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            // SAFETY: F_GETPIPE_SZ on a pipe fd we own takes no pointer.
            let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
            let capacity = usize::try_from(size)
                .ok()
                .filter(|&s| s > 0)
                .unwrap_or(4096);
            Ok(Pipe {
                read,
                write,
                capacity,
            })
        }
    }

    fn splice_once(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        // SAFETY: splice takes two fds that are open for the duration of the call (owned by
        // the caller's sockets and pipe) and null offsets (both are streams).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn shutdown_write(s: &TcpStream) {
        // SAFETY: shutdown on a socket fd the stream owns; a failure (peer already gone) is
        // of no consequence: the other direction finds out by itself.
        unsafe {
            libc::shutdown(s.as_raw_fd(), libc::SHUT_WR);
        }
    }

    /// One direction: `src` → pipe → `dst` until `src` ends, then half-close `dst`.
    async fn pump(src: &TcpStream, dst: &TcpStream, pipe: &Pipe) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            let filled = loop {
                src.readable().await?;
                match src.try_io(Interest::READABLE, || {
                    splice_once(src.as_raw_fd(), pipe.write.as_raw_fd(), pipe.capacity)
                }) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if filled == 0 {
                shutdown_write(dst);
                return Ok(total);
            }
            let mut left = filled;
            while left > 0 {
                dst.writable().await?;
                match dst.try_io(Interest::WRITABLE, || {
                    splice_once(pipe.read.as_raw_fd(), dst.as_raw_fd(), left)
                }) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        left -= n;
                        total += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }

    pub(super) async fn splice(
        client: TcpStream,
        mut peer: TcpStream,
        initial: &[u8],
    ) -> io::Result<Spliced> {
        peer.write_all(initial).await?;
        let (up_pipe, down_pipe) = (Pipe::new()?, Pipe::new()?);
        let up = pump(&client, &peer, &up_pipe);
        let down = pump(&peer, &client, &down_pipe);
        tokio::pin!(up, down);
        let (mut to_peer, mut to_client) = (None, None);
        while to_peer.is_none() || to_client.is_none() {
            tokio::select! {
                r = &mut up, if to_peer.is_none() => to_peer = Some(r?),
                r = &mut down, if to_client.is_none() => to_client = Some(r?),
            }
        }
        Ok(Spliced {
            to_peer: to_peer.unwrap_or(0) + initial.len() as u64,
            to_client: to_client.unwrap_or(0),
        })
    }
}
