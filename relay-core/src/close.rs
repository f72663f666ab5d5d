//! Close codes and reasons (protocol.md §5) as types, so a bare `u16` never travels far.
//!
//! A [`Close`] pairs a code with a `'static` reason: reasons are fixed strings and can never
//! carry a server-id, a header value or a payload.

use std::fmt;

/// A WebSocket close status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    pub const POLICY: CloseCode = CloseCode(1008);
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    pub const INTERNAL: CloseCode = CloseCode(1011);
    pub const NOT_FOUND: CloseCode = CloseCode(4404);
    pub const CONFLICT: CloseCode = CloseCode(4409);
    pub const TOO_MANY: CloseCode = CloseCode(4429);
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);

    /// Any code as received from a peer's close frame (used for close notices, §4.3).
    pub const fn from_wire(code: u16) -> CloseCode {
        CloseCode(code)
    }

    /// A code the binary may ask for in `close_code` (§4.2): 1000 or 3000–4999.
    /// `None` for anything else, including 0 (which means "no close" and is handled by the
    /// envelope parser before this check).
    pub const fn application(code: u16) -> Option<CloseCode> {
        match code {
            1000 | 3000..=4999 => Some(CloseCode(code)),
            _ => None,
        }
    }

    pub const fn as_u16(self) -> u16 {
        self.0
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A close code with its fixed reason text: every row of protocol.md §5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    pub code: CloseCode,
    pub reason: &'static str,
}

impl Close {
    pub const NORMAL: Close = Close::new(CloseCode::NORMAL, "");
    pub const SHUTTING_DOWN: Close = Close::new(CloseCode::GOING_AWAY, "shutting down");
    pub const NOT_JSON: Close = Close::new(CloseCode::INVALID_PAYLOAD, "frame is not JSON");
    pub const INVALID_UTF8: Close = Close::new(CloseCode::INVALID_PAYLOAD, "invalid utf-8");
    pub const PROTOCOL_ERROR: Close = Close::new(CloseCode::PROTOCOL_ERROR, "protocol error");
    pub const TOO_SLOW: Close = Close::new(CloseCode::POLICY, "message too slow");
    pub const TOO_BIG: Close = Close::new(CloseCode::TOO_BIG, "message too big");
    pub const HEARTBEAT_TIMEOUT: Close = Close::new(CloseCode::INTERNAL, "heartbeat timeout");
    pub const BACKLOG_FULL: Close = Close::new(CloseCode::INTERNAL, "phone backlog full");
    pub const WRITE_TIMEOUT: Close = Close::new(CloseCode::INTERNAL, "write timeout");
    pub const GRACE_EXPIRED: Close = Close::new(CloseCode::INTERNAL, "binary did not reconnect");
    /// The relay failed handling this connection (a caught panic); nothing else is affected.
    pub const INTERNAL_ERROR: Close = Close::new(CloseCode::INTERNAL, "internal error");
    /// Cluster fencing (§11): this node lost its directory lease.
    pub const SERVICE_RESTART: Close = Close::new(CloseCode::SERVICE_RESTART, "service restart");
    pub const NO_SERVER: Close = Close::new(CloseCode::NOT_FOUND, "no server with that id");
    pub const RECLAIMED: Close = Close::new(CloseCode::NOT_FOUND, "binary reclaimed server-id");
    pub const ALREADY_CLAIMED: Close = Close::new(CloseCode::CONFLICT, "server-id already claimed");
    pub const TOO_MANY_PHONES: Close =
        Close::new(CloseCode::TOO_MANY, "too many phones for server-id");

    pub const fn new(code: CloseCode, reason: &'static str) -> Close {
        Close { code, reason }
    }

    /// The reason, or `fallback` when it is empty (for logs; the wire keeps it empty).
    pub const fn reason_or(&self, fallback: &'static str) -> &'static str {
        if self.reason.is_empty() {
            fallback
        } else {
            self.reason
        }
    }

    /// A close the binary asked for (§4.2): its code, an empty reason.
    pub const fn requested(code: CloseCode) -> Close {
        Close { code, reason: "" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_codes_are_1000_and_3000_to_4999() {
        for ok in [1000, 3000, 4401, 4421, 4426, 4999] {
            assert_eq!(CloseCode::application(ok).map(CloseCode::as_u16), Some(ok));
        }
        for bad in [0, 1, 999, 1001, 1006, 1011, 2999, 5000, u16::MAX] {
            assert_eq!(CloseCode::application(bad), None, "{bad}");
        }
    }

    #[test]
    fn reasons_fit_in_a_close_frame() {
        // A close frame's payload is at most 125 bytes: 2 for the code, 123 for the reason.
        for c in [
            Close::SHUTTING_DOWN,
            Close::NOT_JSON,
            Close::TOO_SLOW,
            Close::TOO_BIG,
            Close::HEARTBEAT_TIMEOUT,
            Close::BACKLOG_FULL,
            Close::WRITE_TIMEOUT,
            Close::GRACE_EXPIRED,
            Close::NO_SERVER,
            Close::RECLAIMED,
            Close::ALREADY_CLAIMED,
            Close::TOO_MANY_PHONES,
        ] {
            assert!(c.reason.len() <= 123);
        }
    }
}
