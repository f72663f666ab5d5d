//! The handle the registry keeps for a connection, and connection ids (protocol.md §3).

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};

use bytes::Bytes;

use crate::close::Close;

/// A connection as the registry sees it: a cheap, cloneable handle (typically an `Arc`).
///
/// Contract for implementations:
/// - [`send`](Conn::send) never blocks and never waits for the peer: it queues one whole
///   message and returns. A queue that is over its budget answers [`SendError::Full`] (a phone
///   handle then closes itself with 1011 "phone backlog full", §7); a connection that is
///   closing or gone answers [`SendError::Closed`]. Either way the message comes back.
/// - [`close`](Conn::close) is idempotent and never blocks: it asks the connection to send a
///   close frame *after* everything already queued, then end. The first close wins.
/// - The registry never calls either while it holds a lock; it returns handles and the caller
///   acts on them.
pub trait Conn: Clone + Send + Sync + 'static {
    fn id(&self) -> &ConnId;
    fn send(&self, msg: Bytes) -> Result<(), SendError>;
    fn close(&self, close: Close);
}

/// Why a [`Conn::send`] did not queue the message. Carries the message back.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connection is closing")]
    Closed(Bytes),
    #[error("connection queue is full")]
    Full(Bytes),
}

const ID_LEN: usize = 2 + 32;

/// A connection id: `c-` and 128 bits from the operating system's CSPRNG in lowercase hex.
///
/// Fixed size and `Copy`, hashed like the `str` it spells so a map keyed by `ConnId` can be
/// queried with the `&str` a binary sent, without allocating.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnId([u8; ID_LEN]);

impl ConnId {
    /// A fresh id. 128 random bits make reuse, even across relay restarts, a non-event.
    ///
    /// # Panics
    /// If the operating system's random source fails, which leaves nothing safe to do.
    pub fn random() -> ConnId {
        let mut raw = [0u8; 16];
        if let Err(e) = getrandom::fill(&mut raw) {
            panic!("the operating system's random number generator failed: {e}");
        }
        let mut out = [0u8; ID_LEN];
        out[0] = b'c';
        out[1] = b'-';
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in raw.iter().enumerate() {
            out[2 + 2 * i] = HEX[usize::from(b >> 4)];
            out[3 + 2 * i] = HEX[usize::from(b & 0xf)];
        }
        ConnId(out)
    }

    /// Parses an id of the shape this module produces.
    pub fn parse(s: &str) -> Option<ConnId> {
        let b = s.as_bytes();
        if b.len() != ID_LEN || !b.starts_with(b"c-") {
            return None;
        }
        if !b[2..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        {
            return None;
        }
        let mut out = [0u8; ID_LEN];
        out.copy_from_slice(b);
        Some(ConnId(out))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into an id, so this cannot fail.
        match std::str::from_utf8(&self.0) {
            Ok(s) => s,
            Err(_) => unreachable!("conn ids are ASCII"),
        }
    }
}

impl Hash for ConnId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl Borrow<str> for ConnId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn conn_id_is_c_dash_and_128_bits_of_lowercase_hex() {
        let id = ConnId::random();
        let s = id.as_str();
        assert_eq!(s.len(), 34);
        assert!(s.starts_with("c-"));
        assert!(s[2..]
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_eq!(ConnId::parse(s), Some(id));
    }

    #[test]
    fn conn_ids_do_not_repeat() {
        let ids: HashSet<ConnId> = (0..10_000).map(|_| ConnId::random()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn a_map_keyed_by_conn_id_is_queried_by_str() {
        let id = ConnId::random();
        let mut m = HashMap::new();
        m.insert(id, 7);
        assert_eq!(m.get(id.to_string().as_str()), Some(&7));
        assert_eq!(m.get("c-unknown"), None);
    }

    #[test]
    fn parse_rejects_other_shapes() {
        for bad in [
            "",
            "c-",
            "x-00000000000000000000000000000000",
            "c-0000000000000000000000000000000G",
            "c-000",
        ] {
            assert_eq!(ConnId::parse(bad), None, "{bad}");
        }
    }
}
