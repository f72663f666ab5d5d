//! The fake binary: holds one server-id at the relay and sends every phone frame straight back to
//! the phone that sent it.
//!
//! What the relay delivers, `{"conn_id":"c-…","frame":<phone bytes>}` (§4.1), is already a valid
//! binary → phone envelope for the same phone (§4.2), so the echo is the received message itself:
//! no parsing beyond telling a frame from a close notice (§4.3), no re-encoding, no allocation.

use fastwebsockets::{Frame, OpCode};
use tokio::sync::watch;

use super::conn::{self, Ws};

/// What one message on the binary leg is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// Carries a phone frame: echo it.
    Frame,
    /// A phone left (§4.3): echoing it would ask the relay to close that phone again.
    CloseNotice,
    /// Neither: the relay broke §4.1.
    Malformed,
}

/// Tells a frame envelope from a close notice, looking at the relay's own layout first and
/// falling back to a JSON parse for any other key order or spacing.
pub fn classify(msg: &[u8]) -> Envelope {
    if let Some(rest) = msg.strip_prefix(br#"{"conn_id":""#) {
        // conn_ids are `c-` + hex (§3): the first quote ends it unless an escape came first.
        if let Some(end) = rest.iter().position(|&b| b == b'"' || b == b'\\') {
            if end > 0 && rest[end] == b'"' {
                let after = &rest[end + 1..];
                if after.starts_with(br#","frame":"#) && !after.starts_with(br#","frame":null"#) {
                    return Envelope::Frame;
                }
                if after.starts_with(br#","close_code":"#) {
                    return Envelope::CloseNotice;
                }
            }
        }
    }
    classify_slow(msg)
}

fn classify_slow(msg: &[u8]) -> Envelope {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice(msg) else {
        return Envelope::Malformed;
    };
    let conn_id = obj.get("conn_id").and_then(|id| id.as_str());
    if conn_id.is_none_or(str::is_empty) {
        return Envelope::Malformed;
    }
    match (obj.get("frame"), obj.get("close_code")) {
        (Some(frame), _) if !frame.is_null() => Envelope::Frame,
        (_, Some(code)) if code.is_u64() => Envelope::CloseNotice,
        _ => Envelope::Malformed,
    }
}

/// What one fake binary saw over its life.
#[derive(Debug, Default, Clone)]
pub struct BinaryOutcome {
    pub echoed: u64,
    pub close_notices: u64,
    pub malformed: u64,
    pub error: Option<String>,
}

/// Echoes until `stop` turns true, then closes politely.
pub async fn run(mut ws: Ws, mut stop: watch::Receiver<bool>) -> BinaryOutcome {
    let mut out = BinaryOutcome::default();
    loop {
        // Cancelling a read mid-frame would lose the frame's head; it only happens at shutdown,
        // after every phone is done, when nothing but close notices can still be in flight.
        let frame = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            frame = ws.read_frame() => frame,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                out.error = Some(format!("binary connection failed: {e}"));
                return out;
            }
        };
        match frame.opcode {
            OpCode::Text | OpCode::Binary => match classify(&frame.payload) {
                Envelope::Frame => {
                    if let Err(e) = ws.write_frame(Frame::text(frame.payload)).await {
                        out.error = Some(format!("binary failed to echo: {e}"));
                        return out;
                    }
                    out.echoed += 1;
                }
                Envelope::CloseNotice => out.close_notices += 1,
                Envelope::Malformed => out.malformed += 1,
            },
            OpCode::Close => {
                out.error = Some(format!("binary {}", conn::unexpected_close(&frame.payload)));
                return out;
            }
            _ => {}
        }
    }
    conn::close(&mut ws).await;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_layout_frames_are_echoed() {
        assert_eq!(
            classify(br#"{"conn_id":"c-00ff","frame":{"s":1,"t":2,"p":"x"}}"#),
            Envelope::Frame
        );
        assert_eq!(
            classify(br#"{"conn_id":"c-00ff","frame":{"s":1},"token":"secret"}"#),
            Envelope::Frame
        );
    }

    #[test]
    fn close_notices_are_not_echoed() {
        assert_eq!(
            classify(br#"{"conn_id":"c-00ff","close_code":1001}"#),
            Envelope::CloseNotice
        );
    }

    #[test]
    fn other_layouts_fall_back_to_parsing() {
        assert_eq!(
            classify(br#"{ "frame": [1, 2], "conn_id": "c-1" }"#),
            Envelope::Frame
        );
        assert_eq!(
            classify(br#"{"close_code":1000,"conn_id":"c-\u0031"}"#),
            Envelope::CloseNotice
        );
    }

    #[test]
    fn envelopes_without_a_usable_conn_id_or_payload_are_malformed() {
        for bad in [
            &br#"{"frame":{}}"#[..],
            br#"{"conn_id":"","frame":{}}"#,
            br#"{"conn_id":7,"frame":{}}"#,
            br#"{"conn_id":"c-1"}"#,
            br#"{"conn_id":"c-1","frame":null}"#,
            br#"[1,2]"#,
            b"not json",
        ] {
            assert_eq!(
                classify(bad),
                Envelope::Malformed,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
