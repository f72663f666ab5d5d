//! Upgrade header rules (protocol.md §2), as pure functions over raw header bytes.
//!
//! Errors name the header and what was wrong, never the value: the caller logs the error and
//! answers HTTP 400 with an empty body. The server also refuses a header sent more than once
//! (ambiguous), before calling these.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

pub const SERVER_ID: &str = "x-pyrycode-server";
pub const VERSION: &str = "x-pyrycode-version";
pub const USER_AGENT: &str = "user-agent";
pub const DEVICE_NAME: &str = "x-pyrycode-device-name";
pub const TOKEN: &str = "x-pyrycode-token";

/// What was wrong with a header. Carries the header's name, never its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header {0} is missing")]
    Missing(&'static str),
    #[error("header {0} is empty")]
    Empty(&'static str),
    #[error("header {0} is too long")]
    TooLong(&'static str),
    #[error("header {0} has a forbidden character")]
    BadChar(&'static str),
    #[error("header {0} is given more than once")]
    Repeated(&'static str),
}

impl HeaderError {
    /// The (lowercase) name of the offending header.
    pub fn header(&self) -> &'static str {
        match *self {
            HeaderError::Missing(h)
            | HeaderError::Empty(h)
            | HeaderError::TooLong(h)
            | HeaderError::BadChar(h)
            | HeaderError::Repeated(h) => h,
        }
    }
}

fn bounded<'a>(
    name: &'static str,
    value: Option<&'a [u8]>,
    max: usize,
    ok: impl Fn(u8) -> bool,
) -> Result<&'a str, HeaderError> {
    let v = value.ok_or(HeaderError::Missing(name))?;
    if v.is_empty() {
        return Err(HeaderError::Empty(name));
    }
    if v.len() > max {
        return Err(HeaderError::TooLong(name));
    }
    if !v.iter().all(|&b| ok(b)) {
        return Err(HeaderError::BadChar(name));
    }
    // Every accepted byte is ASCII, so this cannot fail; map it anyway rather than panic.
    std::str::from_utf8(v).map_err(|_| HeaderError::BadChar(name))
}

fn printable(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

/// A validated server-id: 1–64 bytes of `[A-Za-z0-9._-]`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerId(Arc<str>);

impl ServerId {
    pub fn parse(value: &[u8]) -> Result<ServerId, HeaderError> {
        server_id(Some(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Hash for ServerId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl Borrow<str> for ServerId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerId({})", &self.0)
    }
}

/// `X-Pyrycode-Server`: 1–64 bytes of `[A-Za-z0-9._-]`.
pub fn server_id(value: Option<&[u8]>) -> Result<ServerId, HeaderError> {
    let s = bounded(SERVER_ID, value, 64, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
    })?;
    Ok(ServerId(Arc::from(s)))
}

/// `X-Pyrycode-Version`: 1–64 bytes of printable ASCII.
pub fn version(value: Option<&[u8]>) -> Result<&str, HeaderError> {
    bounded(VERSION, value, 64, printable)
}

/// `User-Agent`: 1–256 bytes of printable ASCII or space.
pub fn user_agent(value: Option<&[u8]>) -> Result<&str, HeaderError> {
    bounded(USER_AGENT, value, 256, |b| b == b' ' || printable(b))
}

/// `X-Pyrycode-Device-Name` (optional): at most 128 bytes of UTF-8 without control
/// characters (C0, DEL, C1). An empty header counts as absent.
pub fn device_name(value: Option<&[u8]>) -> Result<Option<&str>, HeaderError> {
    let Some(v) = value else { return Ok(None) };
    if v.is_empty() {
        return Ok(None);
    }
    if v.len() > 128 {
        return Err(HeaderError::TooLong(DEVICE_NAME));
    }
    let s = std::str::from_utf8(v).map_err(|_| HeaderError::BadChar(DEVICE_NAME))?;
    if s.chars().any(char::is_control) {
        // char::is_control is exactly Cc: C0, DEL and C1.
        return Err(HeaderError::BadChar(DEVICE_NAME));
    }
    Ok(Some(s))
}

/// `X-Pyrycode-Token` (optional): 1–512 bytes of printable ASCII; empty counts as absent.
///
/// Only checked, never kept: the token is accepted and dropped (§2, §4.1), so it cannot reach
/// a binary, a log line or a metric.
pub fn token(value: Option<&[u8]>) -> Result<(), HeaderError> {
    match value {
        None | Some([]) => Ok(()),
        Some(v) => bounded(TOKEN, Some(v), 512, printable).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_id_accepts_uuids_and_the_allowed_punctuation() {
        for ok in [
            "3f1c2a9e-8b7d-4c6e-9f00-123456789abc",
            "a",
            "A.b_c-d",
            &"x".repeat(64),
        ] {
            assert_eq!(server_id(Some(ok.as_bytes())).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn server_id_rejections_name_the_header_and_the_fault() {
        assert_eq!(server_id(None), Err(HeaderError::Missing(SERVER_ID)));
        assert_eq!(server_id(Some(b"")), Err(HeaderError::Empty(SERVER_ID)));
        assert_eq!(
            server_id(Some("x".repeat(65).as_bytes())),
            Err(HeaderError::TooLong(SERVER_ID))
        );
        for bad in [&b"a b"[..], b"a/b", b"a:b", b"\xc3\xa9", b"a\0"] {
            assert_eq!(server_id(Some(bad)), Err(HeaderError::BadChar(SERVER_ID)));
        }
    }

    #[test]
    fn version_is_printable_ascii_up_to_64() {
        assert_eq!(version(Some(b"dev")), Ok("dev"));
        assert_eq!(version(Some(b"0.0.1-test")), Ok("0.0.1-test"));
        assert_eq!(version(Some(b"1 2")), Err(HeaderError::BadChar(VERSION)));
        assert_eq!(version(Some(b"")), Err(HeaderError::Empty(VERSION)));
        assert_eq!(version(None), Err(HeaderError::Missing(VERSION)));
        assert!(version(Some("v".repeat(64).as_bytes())).is_ok());
        assert_eq!(
            version(Some("v".repeat(65).as_bytes())),
            Err(HeaderError::TooLong(VERSION))
        );
    }

    #[test]
    fn user_agent_allows_spaces_up_to_256() {
        assert_eq!(
            user_agent(Some(b"pyry/1.0 (linux)")),
            Ok("pyry/1.0 (linux)")
        );
        assert!(user_agent(Some("u".repeat(256).as_bytes())).is_ok());
        assert_eq!(
            user_agent(Some("u".repeat(257).as_bytes())),
            Err(HeaderError::TooLong(USER_AGENT))
        );
        assert_eq!(
            user_agent(Some(b"a\tb")),
            Err(HeaderError::BadChar(USER_AGENT))
        );
        assert_eq!(user_agent(None), Err(HeaderError::Missing(USER_AGENT)));
    }

    #[test]
    fn device_name_is_utf8_without_controls_and_optional() {
        assert_eq!(device_name(None), Ok(None));
        assert_eq!(device_name(Some(b"")), Ok(None));
        assert_eq!(
            device_name(Some("Jüri's Pixel 😀".as_bytes())),
            Ok(Some("Jüri's Pixel 😀"))
        );
        for bad in [&b"a\x01"[..], b"a\x7f", "a\u{85}".as_bytes(), b"\xff"] {
            assert_eq!(
                device_name(Some(bad)),
                Err(HeaderError::BadChar(DEVICE_NAME))
            );
        }
        assert_eq!(
            device_name(Some("é".repeat(65).as_bytes())),
            Err(HeaderError::TooLong(DEVICE_NAME))
        );
    }

    #[test]
    fn token_is_checked_and_empty_is_absent() {
        assert_eq!(token(None), Ok(()));
        assert_eq!(token(Some(b"")), Ok(()));
        assert_eq!(token(Some(br#"a"b\c"#)), Ok(()));
        assert_eq!(token(Some(b"a b")), Err(HeaderError::BadChar(TOKEN)));
        assert_eq!(
            token(Some("t\u{e9}".as_bytes())),
            Err(HeaderError::BadChar(TOKEN))
        );
        assert!(token(Some("t".repeat(512).as_bytes())).is_ok());
        assert_eq!(
            token(Some("t".repeat(513).as_bytes())),
            Err(HeaderError::TooLong(TOKEN))
        );
    }

    #[test]
    fn errors_never_carry_the_value() {
        let e = server_id(Some(b"evil value")).unwrap_err();
        assert!(!e.to_string().contains("evil"));
    }
}
