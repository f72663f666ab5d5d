//! One connection's inbound side: whole messages out of WebSocket frames (§7).
//!
//! fastwebsockets parses frames; this module reassembles fragments under the message size
//! limit (the library only limits single frames), answers pings through the peer's writer
//! ahead of its queue, records pongs for the heartbeat, and turns every way a connection can
//! end into a [`ReadEnd`]. A single-frame message reaches the caller as the frame's own buffer
//! (no copy).

use std::convert::Infallible;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fastwebsockets::{after_handshake_split, OpCode, Payload, Role, WebSocketError, WebSocketRead};
use relay_core::{Close, CloseCode};
use tokio::io::AsyncRead;

use crate::ws::deadline::DeadlineReader;
use crate::ws::peer::Peer;

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

pub struct MessageReader<R> {
    ws: WebSocketRead<DeadlineReader<R>>,
    max: usize,
    partial: Option<(BytesMut, bool)>,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    /// `prefix` is what the HTTP layer read past the upgrade request.
    pub fn new(read: R, prefix: Bytes, max_message: usize, read_timeout: Duration) -> Self {
        let (mut ws, _) = after_handshake_split(
            DeadlineReader::new(read, prefix, read_timeout),
            tokio::io::sink(),
            Role::Server,
        );
        // We answer pings and close frames ourselves, through the writer's queue.
        ws.set_auto_pong(false);
        ws.set_auto_close(false);
        // The library refuses a frame whose length is >= this.
        ws.set_max_message_size(max_message.saturating_add(1));
        MessageReader {
            ws,
            max: max_message,
            partial: None,
        }
    }

    /// The next whole data message. Control frames are handled on the way.
    pub async fn next(&mut self, peer: &Peer) -> Result<Bytes, ReadEnd> {
        loop {
            let frame = self
                .ws
                .read_frame(&mut |_| std::future::ready(Ok::<(), Infallible>(())))
                .await
                .map_err(map_error)?;
            let fin = frame.fin;
            let opcode = frame.opcode;
            let payload = into_bytes(frame.payload);
            match opcode {
                OpCode::Text | OpCode::Binary => {
                    if self.partial.is_some() {
                        return Err(ReadEnd::Violation(Close::PROTOCOL_ERROR));
                    }
                    if fin {
                        return Ok(payload.freeze());
                    }
                    self.partial = Some((payload, opcode == OpCode::Text));
                }
                OpCode::Continuation => {
                    let Some((buf, _)) = &mut self.partial else {
                        return Err(ReadEnd::Violation(Close::PROTOCOL_ERROR));
                    };
                    if buf.len() + payload.len() > self.max {
                        return Err(ReadEnd::Violation(Close::TOO_BIG));
                    }
                    buf.extend_from_slice(&payload);
                    if fin {
                        let Some((buf, text)) = self.partial.take() else {
                            continue;
                        };
                        if text && std::str::from_utf8(&buf).is_err() {
                            return Err(ReadEnd::Violation(Close::INVALID_UTF8));
                        }
                        return Ok(buf.freeze());
                    }
                }
                OpCode::Ping => peer.pong(payload.freeze()),
                OpCode::Pong => peer.record_pong(),
                OpCode::Close => return Err(close_frame(&payload)),
            }
        }
    }
}

fn into_bytes(p: Payload<'_>) -> BytesMut {
    match p {
        Payload::Bytes(b) => b,
        other => BytesMut::from(&other[..]),
    }
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

fn map_error(e: WebSocketError) -> ReadEnd {
    match e {
        WebSocketError::FrameTooLarge => ReadEnd::Violation(Close::TOO_BIG),
        WebSocketError::InvalidUTF8 => ReadEnd::Violation(Close::INVALID_UTF8),
        WebSocketError::IoError(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            ReadEnd::Violation(Close::TOO_SLOW)
        }
        WebSocketError::IoError(_)
        | WebSocketError::UnexpectedEOF
        | WebSocketError::ConnectionClosed => ReadEnd::Vanished,
        _ => ReadEnd::Violation(Close::PROTOCOL_ERROR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            close_frame(&[0x11, 0x51, b'o', b'k']),
            ReadEnd::PeerClosed(Some(CloseCode::from_wire(4433)))
        );
    }
}
