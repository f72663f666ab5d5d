//! The routing envelope of the binary leg (protocol.md §4).
//!
//! Phone → binary: `{"conn_id":"…","frame":<phone bytes verbatim>}`, built with one
//! allocation of exactly the right size and no re-encoding of the frame. It never carries the
//! phone's token (§4.1): nothing here can even see it.
//! Binary → relay: parsed by [`parse_from_binary`] into either a borrowed [`ToPhone`] whose
//! `frame` is the value's exact bytes in the binary's message (so the caller can hand a
//! zero-copy slice to the phone, §4.2), or a [`Wake`] (§4.4) whose push token no `Debug` or
//! error ever shows.
//! Close notice (§4.3): `{"conn_id":"…","close_code":N}`.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::close::CloseCode;
use crate::conn::ConnId;
use crate::json::{self, NotJson};

const PREFIX: &[u8] = b"{\"conn_id\":\"";
const FRAME: &[u8] = b"\",\"frame\":";
const CLOSE: &[u8] = b"\",\"close_code\":";

/// Checks a phone's message (§4.1): valid UTF-8 JSON, any value. Grammar only.
pub fn validate_phone_frame(frame: &[u8]) -> Result<(), NotJson> {
    json::validate(frame)
}

/// The exact length of the envelope [`write_to_binary`] produces.
pub fn to_binary_len(conn_id: &ConnId, frame: &[u8]) -> usize {
    PREFIX.len() + conn_id.as_str().len() + FRAME.len() + frame.len() + TO_BINARY_SUFFIX.len()
}

/// Appends the phone → binary envelope to `out`. `frame` must already be validated JSON.
pub fn write_to_binary(out: &mut BytesMut, conn_id: &ConnId, frame: &[u8]) {
    out.reserve(to_binary_len(conn_id, frame));
    out.put_slice(PREFIX);
    out.put_slice(conn_id.as_str().as_bytes());
    out.put_slice(FRAME);
    out.put_slice(frame);
    out.put_slice(TO_BINARY_SUFFIX);
}

/// The phone → binary envelope as one freshly allocated message.
pub fn to_binary(conn_id: &ConnId, frame: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(to_binary_len(conn_id, frame));
    write_to_binary(&mut out, conn_id, frame);
    out.freeze()
}

/// Everything of a phone's envelopes before its frame: `{"conn_id":"…","frame":`. Constant
/// per phone, so a relay can make it once and write each envelope as prefix, the phone's own
/// bytes, and [`TO_BINARY_SUFFIX`], without copying the frame.
pub fn to_binary_prefix(conn_id: &ConnId) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX.len() + conn_id.as_str().len() + FRAME.len());
    out.put_slice(PREFIX);
    out.put_slice(conn_id.as_str().as_bytes());
    out.put_slice(FRAME);
    out.freeze()
}

/// Everything after the frame. No token, ever (§4.1).
pub const TO_BINARY_SUFFIX: &[u8] = b"}";

/// The close notice of §4.3: `{"conn_id":"…","close_code":N}`, no `frame` key.
pub fn close_notice(conn_id: &ConnId, code: CloseCode) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX.len() + 34 + CLOSE.len() + 6);
    out.put_slice(PREFIX);
    out.put_slice(conn_id.as_str().as_bytes());
    out.put_slice(CLOSE);
    let mut digits = [0u8; 5];
    let mut n = code.as_u16();
    let mut k = digits.len();
    loop {
        k -= 1;
        digits[k] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[k..]);
    out.put_u8(b'}');
    out.freeze()
}

/// What one message from a binary asks the relay to do.
#[derive(Debug, PartialEq, Eq)]
pub enum FromBinary<'a> {
    /// Deliver a frame to, and/or close, one of the binary's phones (§4.2).
    ToPhone(ToPhone<'a>),
    /// Wake one of the binary's phones through its push service (§4.4).
    Wake(Wake<'a>),
}

/// A parsed binary → phone envelope (§4.2), borrowing from the binary's message.
#[derive(Debug, PartialEq, Eq)]
pub struct ToPhone<'a> {
    /// The target phone's id, with JSON escapes decoded (borrowed when there were none).
    pub conn_id: Cow<'a, str>,
    /// The `frame` value's bytes exactly as written; `None` for absent or `null`.
    pub frame: Option<&'a [u8]>,
    /// Close the phone with this code after the frame; `None` for absent, `null` or `0`.
    pub close: Option<CloseCode>,
}

/// Longest push token accepted, in bytes once its JSON escapes are decoded (§4.4).
pub const MAX_WAKE_TOKEN: usize = 4096;

/// A valid push wake (§4.4): `{"push_wake":{"platform":"fcm","token":"…"}}`. The only
/// platform is FCM. `Debug` never shows the token: it is a credential of the phone.
#[derive(PartialEq, Eq)]
pub struct Wake<'a> {
    token: Cow<'a, str>,
}

impl<'a> Wake<'a> {
    /// The FCM registration token, JSON escapes decoded: 1–[`MAX_WAKE_TOKEN`] bytes.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for Wake<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Wake { platform: \"fcm\", token: <redacted> }")
    }
}

/// Why a binary's message was dropped (§4.2 "malformed", §4.4 "malformed wake"). One variant
/// per case so each can be counted on its own; none carries any of the message's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is not JSON")]
    NotJson,
    #[error("envelope is not a JSON object")]
    NotObject,
    #[error("envelope has no conn_id")]
    ConnIdMissing,
    #[error("envelope conn_id is not a string")]
    ConnIdNotString,
    #[error("envelope conn_id is empty")]
    ConnIdEmpty,
    #[error("envelope has neither frame nor close_code")]
    Empty,
    #[error("envelope close_code is not 1000 or 3000-4999")]
    InvalidCloseCode,
    #[error("push_wake is not a JSON object")]
    WakeNotObject,
    #[error("push_wake platform is not \"fcm\"")]
    WakePlatform,
    #[error("push_wake has no token")]
    WakeTokenMissing,
    #[error("push_wake token is not a string")]
    WakeTokenNotString,
    #[error("push_wake token is empty")]
    WakeTokenEmpty,
    #[error("push_wake token is longer than 4096 bytes")]
    WakeTokenTooLong,
}

impl EnvelopeError {
    /// Every variant, in a fixed order, for counters indexed by kind.
    pub const ALL: [EnvelopeError; 13] = [
        EnvelopeError::NotJson,
        EnvelopeError::NotObject,
        EnvelopeError::ConnIdMissing,
        EnvelopeError::ConnIdNotString,
        EnvelopeError::ConnIdEmpty,
        EnvelopeError::Empty,
        EnvelopeError::InvalidCloseCode,
        EnvelopeError::WakeNotObject,
        EnvelopeError::WakePlatform,
        EnvelopeError::WakeTokenMissing,
        EnvelopeError::WakeTokenNotString,
        EnvelopeError::WakeTokenEmpty,
        EnvelopeError::WakeTokenTooLong,
    ];

    /// A short stable name, for metric labels and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            EnvelopeError::NotJson => "not_json",
            EnvelopeError::NotObject => "not_object",
            EnvelopeError::ConnIdMissing => "conn_id_missing",
            EnvelopeError::ConnIdNotString => "conn_id_not_string",
            EnvelopeError::ConnIdEmpty => "conn_id_empty",
            EnvelopeError::Empty => "empty",
            EnvelopeError::InvalidCloseCode => "invalid_close_code",
            EnvelopeError::WakeNotObject => "wake_not_object",
            EnvelopeError::WakePlatform => "wake_platform",
            EnvelopeError::WakeTokenMissing => "wake_token_missing",
            EnvelopeError::WakeTokenNotString => "wake_token_not_string",
            EnvelopeError::WakeTokenEmpty => "wake_token_empty",
            EnvelopeError::WakeTokenTooLong => "wake_token_too_long",
        }
    }

    /// A malformed push wake (§4.4) rather than a malformed routing envelope (§4.2).
    pub fn is_wake(&self) -> bool {
        matches!(
            self,
            EnvelopeError::WakeNotObject
                | EnvelopeError::WakePlatform
                | EnvelopeError::WakeTokenMissing
                | EnvelopeError::WakeTokenNotString
                | EnvelopeError::WakeTokenEmpty
                | EnvelopeError::WakeTokenTooLong
        )
    }
}

impl From<NotJson> for EnvelopeError {
    fn from(_: NotJson) -> Self {
        EnvelopeError::NotJson
    }
}

/// A key compared after unescaping: `"conn\u005fid"` is the key `conn_id`.
fn key_is(b: &[u8], start: usize, end: usize, want: &[u8]) -> bool {
    let key = &b[start + 1..end - 1];
    if key.contains(&b'\\') {
        json::decode_string(b, start, end).as_bytes() == want
    } else {
        key == want
    }
}

/// Walks the members of the object whose `{` is at `b[i]`, calling `member(key_start,
/// key_end, value_start, value_end)` for each; returns the index just past its `}`.
fn members(
    b: &[u8],
    i: usize,
    mut member: impl FnMut(usize, usize, usize, usize),
) -> Result<usize, NotJson> {
    let mut i = json::skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Ok(i + 1);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(NotJson);
        }
        let key_end = json::skip_string(b, i)?;
        let colon = json::skip_ws(b, key_end);
        if b.get(colon) != Some(&b':') {
            return Err(NotJson);
        }
        let v_start = json::skip_ws(b, colon + 1);
        let v_end = json::skip_value(b, v_start)?;
        member(i, key_end, v_start, v_end);
        i = json::skip_ws(b, v_end);
        match b.get(i) {
            Some(b',') => i = json::skip_ws(b, i + 1),
            Some(b'}') => return Ok(i + 1),
            _ => return Err(NotJson),
        }
    }
}

/// How `conn_id` appeared.
enum ConnIdValue<'a> {
    Str(Cow<'a, str>),
    Null,
    NotString,
}

/// Parses one message from a binary. Unknown fields are ignored; a repeated key's last value
/// wins (as Go's encoding/json does). The whole message must be valid JSON.
///
/// A message with no `conn_id` (absent, `null` or `""`) and a non-null `push_wake` is a wake
/// (§4.4); any other message is a routing envelope (§4.2), whose `push_wake`, if any, is
/// ignored.
pub fn parse_from_binary(input: &[u8]) -> Result<FromBinary<'_>, EnvelopeError> {
    // UTF-8 is checked inside strings by the scanner; nothing else may be non-ASCII.
    let b = input;
    let start = json::skip_ws(b, 0);
    if b.get(start) != Some(&b'{') {
        json::validate(b)?;
        return Err(EnvelopeError::NotObject);
    }

    let mut conn_id: Option<ConnIdValue<'_>> = None;
    let mut frame: Option<&[u8]> = None;
    let mut close_raw: Option<&[u8]> = None;
    // The span of a non-null `push_wake` value.
    let mut wake: Option<(usize, usize)> = None;

    let end = members(b, start, |ks, ke, vs, ve| {
        let value = &b[vs..ve];
        if key_is(b, ks, ke, b"conn_id") {
            conn_id = Some(match value[0] {
                b'"' => ConnIdValue::Str(json::decode_string(b, vs, ve)),
                _ if value == b"null" => ConnIdValue::Null,
                _ => ConnIdValue::NotString,
            });
        } else if key_is(b, ks, ke, b"frame") {
            frame = (value != b"null").then_some(value);
        } else if key_is(b, ks, ke, b"close_code") {
            close_raw = Some(value);
        } else if key_is(b, ks, ke, b"push_wake") {
            wake = (value != b"null").then_some((vs, ve));
        }
    })?;
    if json::skip_ws(b, end) != b.len() {
        return Err(EnvelopeError::NotJson);
    }

    let conn_id = match conn_id {
        Some(ConnIdValue::Str(s)) if !s.is_empty() => s,
        Some(ConnIdValue::NotString) => return Err(EnvelopeError::ConnIdNotString),
        // No conn_id (absent, null or ""): a wake if it has one, else malformed.
        absent => {
            if let Some((vs, _)) = wake {
                return parse_wake(b, vs).map(FromBinary::Wake);
            }
            return Err(match absent {
                None => EnvelopeError::ConnIdMissing,
                Some(ConnIdValue::Str(_)) => EnvelopeError::ConnIdEmpty,
                Some(_) => EnvelopeError::ConnIdNotString,
            });
        }
    };
    let close = match close_raw {
        None | Some(b"null") | Some(b"0") => None,
        Some(raw) => Some(parse_close_code(raw)?),
    };
    if frame.is_none() && close.is_none() {
        return Err(EnvelopeError::Empty);
    }
    Ok(FromBinary::ToPhone(ToPhone {
        conn_id,
        frame,
        close,
    }))
}

/// The `push_wake` value starting at `b[start]` (already known to be valid JSON).
fn parse_wake(b: &[u8], start: usize) -> Result<Wake<'_>, EnvelopeError> {
    if b[start] != b'{' {
        return Err(EnvelopeError::WakeNotObject);
    }
    let mut platform: Option<(usize, usize)> = None;
    let mut token: Option<(usize, usize)> = None;
    members(b, start, |ks, ke, vs, ve| {
        if key_is(b, ks, ke, b"platform") {
            platform = Some((vs, ve));
        } else if key_is(b, ks, ke, b"token") {
            token = Some((vs, ve));
        }
    })?;
    let is_fcm = platform.is_some_and(|(vs, ve)| {
        b[vs] == b'"' && json::decode_string(b, vs, ve).as_bytes() == b"fcm"
    });
    if !is_fcm {
        return Err(EnvelopeError::WakePlatform);
    }
    let (vs, ve) = token.ok_or(EnvelopeError::WakeTokenMissing)?;
    if b[vs] != b'"' {
        return Err(EnvelopeError::WakeTokenNotString);
    }
    let token = json::decode_string(b, vs, ve);
    if token.is_empty() {
        return Err(EnvelopeError::WakeTokenEmpty);
    }
    if token.len() > MAX_WAKE_TOKEN {
        return Err(EnvelopeError::WakeTokenTooLong);
    }
    Ok(Wake { token })
}

/// The `conn_id` of an envelope known only by its first bytes (§7 "Message size": an
/// over-size binary message is discarded as it arrives, and only its first 512 bytes are
/// kept). Walks the top-level object's members in order and returns the first `conn_id` whose
/// string value ends inside `prefix`; `None` if the prefix is not the start of an object, or
/// ends before such a member does (for instance after a huge `frame` written first).
pub fn sniff_conn_id(prefix: &[u8]) -> Option<Cow<'_, str>> {
    let b = prefix;
    let mut i = json::skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = json::skip_ws(b, i + 1);
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = json::skip_string(b, i).ok()?;
        let is_conn_id = key_is(b, i, key_end, b"conn_id");
        i = json::skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let v_start = json::skip_ws(b, i + 1);
        if is_conn_id {
            if b.get(v_start) != Some(&b'"') {
                return None;
            }
            let v_end = json::skip_string(b, v_start).ok()?;
            let id = json::decode_string(b, v_start, v_end);
            return (!id.is_empty()).then_some(id);
        }
        let v_end = json::skip_value(b, v_start).ok()?;
        i = json::skip_ws(b, v_end);
        match b.get(i) {
            Some(b',') => i = json::skip_ws(b, i + 1),
            _ => return None,
        }
    }
}

/// A close code must be a plain non-negative integer (no fraction, exponent or sign) that is
/// a valid application code.
fn parse_close_code(raw: &[u8]) -> Result<CloseCode, EnvelopeError> {
    if raw.is_empty() || raw.len() > 5 || !raw.iter().all(u8::is_ascii_digit) {
        return Err(EnvelopeError::InvalidCloseCode);
    }
    let n = raw.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n)
        .ok()
        .and_then(CloseCode::application)
        .ok_or(EnvelopeError::InvalidCloseCode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ConnId {
        ConnId::parse("c-0123456789abcdef0123456789abcdef").unwrap()
    }

    /// The §4.2 envelope `msg` parses to, or why it was dropped; panics on a wake.
    fn parse_to_phone(msg: &[u8]) -> Result<ToPhone<'_>, EnvelopeError> {
        match parse_from_binary(msg)? {
            FromBinary::ToPhone(p) => Ok(p),
            FromBinary::Wake(w) => panic!("parsed as a wake: {w:?}"),
        }
    }

    /// The wake `msg` parses to, or why it was dropped; panics on a routing envelope.
    fn parse_wake(msg: &[u8]) -> Result<Wake<'_>, EnvelopeError> {
        match parse_from_binary(msg)? {
            FromBinary::Wake(w) => Ok(w),
            FromBinary::ToPhone(p) => panic!("parsed as an envelope: {p:?}"),
        }
    }

    #[test]
    fn to_binary_splices_the_phone_bytes_verbatim_and_carries_no_token() {
        let frame = br#"  { "b" : [1,   2], "a":"x" }  "#;
        let env = to_binary(&id(), frame);
        let mut want = b"{\"conn_id\":\"c-0123456789abcdef0123456789abcdef\",\"frame\":".to_vec();
        want.extend_from_slice(frame);
        want.push(b'}');
        assert_eq!(&env[..], &want[..]);
        assert_eq!(env.len(), to_binary_len(&id(), frame));
        json::validate(&env).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&env).unwrap();
        assert_eq!(
            v.as_object().map(|o| o.len()),
            Some(2),
            "conn_id and frame only"
        );
    }

    #[test]
    fn prefix_frame_suffix_is_the_same_envelope_as_to_binary() {
        let frame = br#" {"a": 1} "#;
        let mut spliced = to_binary_prefix(&id()).to_vec();
        spliced.extend_from_slice(frame);
        spliced.extend_from_slice(TO_BINARY_SUFFIX);
        assert_eq!(spliced, to_binary(&id(), frame).to_vec());
    }

    #[test]
    fn close_notice_has_conn_id_and_code_and_no_frame() {
        for code in [1000, 1001, 1007, 1009, 1011, 4999] {
            let n = close_notice(&id(), CloseCode::from_wire(code));
            let v: serde_json::Value = serde_json::from_slice(&n).unwrap();
            assert_eq!(v["conn_id"], id().as_str());
            assert_eq!(v["close_code"], code);
            assert!(v.get("frame").is_none());
        }
    }

    #[test]
    fn to_phone_frame_is_the_exact_bytes_of_the_value() {
        let msg = br#"{"conn_id":"c-1", "frame" :  {"x": [1, 2 ],"y":"\u00e9"}  }"#;
        let p = parse_to_phone(msg).unwrap();
        assert_eq!(p.conn_id, "c-1");
        assert_eq!(p.frame, Some(&br#"{"x": [1, 2 ],"y":"\u00e9"}"#[..]));
        assert_eq!(p.close, None);
    }

    #[test]
    fn to_phone_frame_null_or_absent_means_no_frame() {
        let p = parse_to_phone(br#"{"conn_id":"c-1","frame":null,"close_code":4401}"#).unwrap();
        assert_eq!((p.frame, p.close), (None, CloseCode::application(4401)));
        let p = parse_to_phone(br#"{"conn_id":"c-1","close_code":1000}"#).unwrap();
        assert_eq!((p.frame, p.close), (None, CloseCode::application(1000)));
    }

    #[test]
    fn to_phone_close_code_absent_null_or_zero_means_no_close() {
        for msg in [
            &br#"{"conn_id":"c-1","frame":1}"#[..],
            br#"{"conn_id":"c-1","frame":1,"close_code":null}"#,
            br#"{"conn_id":"c-1","frame":1,"close_code":0}"#,
        ] {
            assert_eq!(parse_to_phone(msg).unwrap().close, None);
        }
    }

    #[test]
    fn to_phone_decodes_escaped_conn_id_and_keys_and_ignores_unknown_fields() {
        let p = parse_to_phone(
            br#"{"extra":{"deep":[1,{"frame":2}]},"conn\u005fid":"c-\u0031","frame":"hi","v":2}"#,
        )
        .unwrap();
        assert_eq!(p.conn_id, "c-1");
        assert_eq!(p.frame, Some(&br#""hi""#[..]));
    }

    #[test]
    fn to_phone_last_duplicate_key_wins() {
        let p =
            parse_to_phone(br#"{"conn_id":"c-1","frame":1,"frame":2,"conn_id":"c-2"}"#).unwrap();
        assert_eq!((&*p.conn_id, p.frame), ("c-2", Some(&b"2"[..])));
    }

    #[test]
    fn sniff_finds_a_conn_id_that_ends_inside_the_prefix() {
        let env = br#"{"conn_id":"c-0123","frame":{"data":"xxxxxxxxxxxxxxxxxxxxxxxx"#;
        assert_eq!(sniff_conn_id(env).as_deref(), Some("c-0123"));
        let later = br#" { "v" : [1, {"a": "}"}], "conn\u005fid" : "c-\u0041" , "frame": "#;
        assert_eq!(sniff_conn_id(later).as_deref(), Some("c-A"));
        for none in [
            &br#"{"frame":"xxxxxxxxxxxxxxxxxxxxxxxx"#[..],
            br#"{"conn_id":"c-01"#,
            br#"{"conn_id":42,"frame":1}"#,
            br#"{"conn_id":"","frame":1}"#,
            br#"["conn_id","c-1"]"#,
            b"",
            b"{",
        ] {
            assert_eq!(
                sniff_conn_id(none),
                None,
                "{:?}",
                String::from_utf8_lossy(none)
            );
        }
    }

    #[test]
    fn sniff_on_every_prefix_never_contradicts_the_whole() {
        let env = br#"{"x":[1,2,{"y":"\""}],"conn_id":"c-9","frame":{"k":"v"}}"#;
        for cut in 0..=env.len() {
            if let Some(id) = sniff_conn_id(&env[..cut]) {
                assert_eq!(id, "c-9", "cut {cut}");
            }
        }
        assert_eq!(sniff_conn_id(env).as_deref(), Some("c-9"));
    }

    #[test]
    fn every_malformed_envelope_is_a_distinct_error() {
        use EnvelopeError::*;
        let cases: &[(&[u8], EnvelopeError)] = &[
            (b"", NotJson),
            (b"{", NotJson),
            (b"{\"conn_id\":\"c-1\",\"frame\":1", NotJson),
            (b"{\"conn_id\":\"c-1\",\"frame\":1} x", NotJson),
            (b"{\"conn_id\":\"c-1\",\"frame\":tru}", NotJson),
            (b"\xff", NotJson),
            (b"[1,2]", NotObject),
            (b"\"conn_id\"", NotObject),
            (b"null", NotObject),
            (b"{\"frame\":1}", ConnIdMissing),
            (b"{}", ConnIdMissing),
            (b"{\"conn_id\":7,\"frame\":1}", ConnIdNotString),
            (b"{\"conn_id\":null,\"frame\":1}", ConnIdNotString),
            (b"{\"frame\":1,\"push_wake\":null}", ConnIdMissing),
            (
                b"{\"conn_id\":7,\"push_wake\":{\"platform\":\"fcm\",\"token\":\"t\"}}",
                ConnIdNotString,
            ),
            (b"{\"conn_id\":\"\",\"frame\":1}", ConnIdEmpty),
            (b"{\"conn_id\":\"c-1\"}", Empty),
            (
                b"{\"conn_id\":\"c-1\",\"frame\":null,\"close_code\":0}",
                Empty,
            ),
            (
                b"{\"conn_id\":\"c-1\",\"close_code\":1001}",
                InvalidCloseCode,
            ),
            (
                b"{\"conn_id\":\"c-1\",\"close_code\":2999}",
                InvalidCloseCode,
            ),
            (
                b"{\"conn_id\":\"c-1\",\"close_code\":5000}",
                InvalidCloseCode,
            ),
            (
                b"{\"conn_id\":\"c-1\",\"close_code\":70000}",
                InvalidCloseCode,
            ),
            (
                b"{\"conn_id\":\"c-1\",\"close_code\":-1000}",
                InvalidCloseCode,
            ),
            (
                b"{\"conn_id\":\"c-1\",\"close_code\":1000.0}",
                InvalidCloseCode,
            ),
            (
                b"{\"conn_id\":\"c-1\",\"close_code\":1e3}",
                InvalidCloseCode,
            ),
            (
                b"{\"conn_id\":\"c-1\",\"close_code\":\"1000\"}",
                InvalidCloseCode,
            ),
            (
                b"{\"conn_id\":\"c-1\",\"frame\":1,\"close_code\":true}",
                InvalidCloseCode,
            ),
        ];
        for (msg, want) in cases {
            assert_eq!(
                parse_to_phone(msg),
                Err(*want),
                "{}",
                String::from_utf8_lossy(msg)
            );
        }
    }

    #[test]
    fn to_phone_agrees_with_serde_json_on_conn_id_and_frame() {
        let msg = br#" {"frame" : [ {"a" : "\"}"} ] , "conn_id" : "c-9" , "close_code" : 4426 } "#;
        let p = parse_to_phone(msg).unwrap();
        let v: serde_json::Value = serde_json::from_slice(msg).unwrap();
        assert_eq!(p.conn_id, v["conn_id"].as_str().unwrap());
        let ours: serde_json::Value = serde_json::from_slice(p.frame.unwrap()).unwrap();
        assert_eq!(ours, v["frame"]);
        assert_eq!(p.close.map(CloseCode::as_u16), Some(4426));
    }

    // ---- §4.4 push wake ----------------------------------------------------------------

    #[test]
    fn wake_is_recognised_by_no_conn_id_and_a_push_wake() {
        for msg in [
            &br#"{"push_wake":{"platform":"fcm","token":"tok-1"}}"#[..],
            br#"{"conn_id":null,"push_wake":{"platform":"fcm","token":"tok-1"}}"#,
            br#"{"conn_id":"","push_wake":{"platform":"fcm","token":"tok-1"}}"#,
            br#" { "push_wake" : { "token" : "tok-1" , "platform" : "fcm", "x": [1] } , "v": 2 } "#,
            br#"{"push\u005fwake":{"plat\u0066orm":"f\u0063m","token":"tok-\u0031"}}"#,
        ] {
            let wake = parse_wake(msg).unwrap_or_else(|e| panic!("{e}: {msg:?}"));
            assert_eq!(wake.token(), "tok-1", "{}", String::from_utf8_lossy(msg));
        }
    }

    #[test]
    fn envelope_with_a_conn_id_is_routed_and_its_push_wake_ignored() {
        let p = parse_to_phone(
            br#"{"conn_id":"c-1","frame":1,"push_wake":{"platform":"fcm","token":"t"}}"#,
        )
        .unwrap();
        assert_eq!((&*p.conn_id, p.frame), ("c-1", Some(&b"1"[..])));
        // Even a malformed wake beside a conn_id is the routing envelope's business only.
        let p = parse_to_phone(br#"{"conn_id":"c-1","frame":1,"push_wake":7}"#).unwrap();
        assert_eq!(&*p.conn_id, "c-1");
        assert_eq!(
            parse_from_binary(br#"{"conn_id":"c-1","push_wake":{"platform":"fcm","token":"t"}}"#),
            Err(EnvelopeError::Empty)
        );
    }

    #[test]
    fn wake_last_duplicate_key_wins() {
        let w = parse_wake(
            br#"{"push_wake":{"platform":"apns","token":"a","platform":"fcm","token":"b"}}"#,
        )
        .unwrap();
        assert_eq!(w.token(), "b");
        let w = parse_wake(br#"{"push_wake":7,"push_wake":{"platform":"fcm","token":"c"}}"#);
        assert_eq!(w.map(|w| w.token().to_owned()), Ok("c".to_owned()));
        assert_eq!(
            parse_from_binary(br#"{"push_wake":{"platform":"fcm","token":"c"},"push_wake":null}"#),
            Err(EnvelopeError::ConnIdMissing)
        );
    }

    #[test]
    fn every_malformed_wake_is_a_distinct_error() {
        use EnvelopeError::*;
        let long = format!(
            r#"{{"push_wake":{{"platform":"fcm","token":"{}"}}}}"#,
            "t".repeat(MAX_WAKE_TOKEN + 1)
        );
        let cases: &[(&[u8], EnvelopeError)] = &[
            (br#"{"push_wake":7}"#, WakeNotObject),
            (br#"{"push_wake":"fcm"}"#, WakeNotObject),
            (
                br#"{"push_wake":[{"platform":"fcm","token":"t"}]}"#,
                WakeNotObject,
            ),
            (br#"{"push_wake":{}}"#, WakePlatform),
            (br#"{"push_wake":{"token":"t"}}"#, WakePlatform),
            (
                br#"{"push_wake":{"platform":"apns","token":"t"}}"#,
                WakePlatform,
            ),
            (
                br#"{"push_wake":{"platform":"FCM","token":"t"}}"#,
                WakePlatform,
            ),
            (
                br#"{"push_wake":{"platform":"fcm ","token":"t"}}"#,
                WakePlatform,
            ),
            (
                br#"{"push_wake":{"platform":null,"token":"t"}}"#,
                WakePlatform,
            ),
            (
                br#"{"push_wake":{"platform":["fcm"],"token":"t"}}"#,
                WakePlatform,
            ),
            (br#"{"push_wake":{"platform":"fcm"}}"#, WakeTokenMissing),
            (
                br#"{"push_wake":{"platform":"fcm","token":null}}"#,
                WakeTokenNotString,
            ),
            (
                br#"{"push_wake":{"platform":"fcm","token":42}}"#,
                WakeTokenNotString,
            ),
            (
                br#"{"push_wake":{"platform":"fcm","token":{"t":1}}}"#,
                WakeTokenNotString,
            ),
            (
                br#"{"push_wake":{"platform":"fcm","token":""}}"#,
                WakeTokenEmpty,
            ),
            (long.as_bytes(), WakeTokenTooLong),
            (br#"{"push_wake":{"platform":"fcm","token":"t"}"#, NotJson),
            (br#"{"push_wake":{"platform":"fcm","token":"t",}}"#, NotJson),
        ];
        for (msg, want) in cases {
            assert_eq!(
                parse_from_binary(msg).map(|_| ()),
                Err(*want),
                "{}",
                String::from_utf8_lossy(msg)
            );
            if *want != NotJson {
                assert!(want.is_wake(), "{want:?}");
            }
        }
        for kind in EnvelopeError::ALL {
            assert_eq!(
                EnvelopeError::ALL
                    .iter()
                    .filter(|k| k.as_str() == kind.as_str())
                    .count(),
                1
            );
        }
    }

    #[test]
    fn wake_token_length_is_measured_after_decoding() {
        let at_limit = format!(
            r#"{{"push_wake":{{"platform":"fcm","token":"{}"}}}}"#,
            "t".repeat(MAX_WAKE_TOKEN)
        );
        assert_eq!(
            parse_wake(at_limit.as_bytes()).unwrap().token().len(),
            MAX_WAKE_TOKEN
        );
        // 4096 escapes of one byte each: 6 bytes on the wire, 1 decoded.
        let escaped = format!(
            r#"{{"push_wake":{{"platform":"fcm","token":"{}"}}}}"#,
            r"\u0074".repeat(MAX_WAKE_TOKEN)
        );
        assert_eq!(
            parse_wake(escaped.as_bytes()).unwrap().token(),
            "t".repeat(MAX_WAKE_TOKEN)
        );
    }

    #[test]
    fn wake_debug_and_errors_never_show_the_token() {
        let msg = br#"{"push_wake":{"platform":"fcm","token":"s3cret-push-token"}}"#;
        let w = parse_wake(msg).unwrap();
        let shown = format!("{w:?} {:?}", parse_from_binary(msg));
        assert!(!shown.contains("s3cret"), "{shown}");
        for e in EnvelopeError::ALL {
            assert!(!format!("{e} {e:?}").contains("s3cret"));
        }
    }
}
