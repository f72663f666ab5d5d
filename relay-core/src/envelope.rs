//! The routing envelope of the binary leg (protocol.md §4).
//!
//! Phone → binary: `{"conn_id":"…","frame":<phone bytes verbatim>[,"token":"…"]}`, built with
//! one allocation of exactly the right size and no re-encoding of the frame.
//! Binary → phone: parsed into a borrowed [`ToPhone`] whose `frame` is the value's exact bytes
//! in the binary's message, so the caller can hand a zero-copy slice to the phone.
//! Close notice (§4.3): `{"conn_id":"…","close_code":N}`.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

use crate::close::CloseCode;
use crate::conn::ConnId;
use crate::headers::Token;
use crate::json::{self, NotJson};

const PREFIX: &[u8] = b"{\"conn_id\":\"";
const FRAME: &[u8] = b"\",\"frame\":";
const TOKEN: &[u8] = b",\"token\":\"";
const CLOSE: &[u8] = b"\",\"close_code\":";

/// Checks a phone's message (§4.1): valid UTF-8 JSON, any value. Grammar only.
pub fn validate_phone_frame(frame: &[u8]) -> Result<(), NotJson> {
    json::validate(frame)
}

/// The exact length of the envelope [`write_to_binary`] produces.
pub fn to_binary_len(conn_id: &ConnId, frame: &[u8], token: Option<&Token>) -> usize {
    PREFIX.len()
        + conn_id.as_str().len()
        + FRAME.len()
        + frame.len()
        + token.map_or(0, |t| TOKEN.len() + t.json_escaped().len() + 1)
        + 1
}

/// Appends the phone → binary envelope to `out`. `frame` must already be validated JSON.
pub fn write_to_binary(out: &mut BytesMut, conn_id: &ConnId, frame: &[u8], token: Option<&Token>) {
    out.reserve(to_binary_len(conn_id, frame, token));
    out.put_slice(PREFIX);
    out.put_slice(conn_id.as_str().as_bytes());
    out.put_slice(FRAME);
    out.put_slice(frame);
    if let Some(t) = token {
        out.put_slice(TOKEN);
        out.put_slice(t.json_escaped().as_bytes());
        out.put_u8(b'"');
    }
    out.put_u8(b'}');
}

/// The phone → binary envelope as one freshly allocated message.
pub fn to_binary(conn_id: &ConnId, frame: &[u8], token: Option<&Token>) -> Bytes {
    let mut out = BytesMut::with_capacity(to_binary_len(conn_id, frame, token));
    write_to_binary(&mut out, conn_id, frame, token);
    out.freeze()
}

/// Everything of a phone's envelopes before its frame: `{"conn_id":"…","frame":`. Constant
/// per phone, so a relay can make it once and write each envelope as prefix, the phone's own
/// bytes, and a suffix ([`to_binary_suffix`]), without copying the frame.
pub fn to_binary_prefix(conn_id: &ConnId) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX.len() + conn_id.as_str().len() + FRAME.len());
    out.put_slice(PREFIX);
    out.put_slice(conn_id.as_str().as_bytes());
    out.put_slice(FRAME);
    out.freeze()
}

/// Everything after the frame: `}`, or `,"token":"…"}` on an envelope that carries the token.
pub fn to_binary_suffix(token: Option<&Token>) -> Bytes {
    match token {
        None => Bytes::from_static(b"}"),
        Some(t) => {
            let mut out = BytesMut::with_capacity(TOKEN.len() + t.json_escaped().len() + 2);
            out.put_slice(TOKEN);
            out.put_slice(t.json_escaped().as_bytes());
            out.put_slice(b"\"}");
            out.freeze()
        }
    }
}

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

/// Why a binary's envelope was dropped (§4.2, "malformed"). One variant per case so each
/// can be counted on its own.
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
}

impl EnvelopeError {
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
        }
    }
}

impl From<NotJson> for EnvelopeError {
    fn from(_: NotJson) -> Self {
        EnvelopeError::NotJson
    }
}

enum Field {
    ConnId,
    Frame,
    CloseCode,
    Other,
}

fn field(b: &[u8], start: usize, end: usize) -> Field {
    // Keys are compared after unescaping: `"conn\u005fid"` is the key `conn_id`.
    let key = &b[start + 1..end - 1];
    let key: Cow<'_, [u8]> = if key.contains(&b'\\') {
        match json::decode_string(b, start, end) {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        }
    } else {
        Cow::Borrowed(key)
    };
    match &*key {
        b"conn_id" => Field::ConnId,
        b"frame" => Field::Frame,
        b"close_code" => Field::CloseCode,
        _ => Field::Other,
    }
}

/// Parses a binary → phone envelope. Unknown fields are ignored; a repeated key's last value
/// wins (as Go's encoding/json does). The whole message must be valid JSON.
pub fn parse_to_phone(input: &[u8]) -> Result<ToPhone<'_>, EnvelopeError> {
    // UTF-8 is checked inside strings by the scanner; nothing else may be non-ASCII.
    let b = input;
    let mut i = json::skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        json::validate(b)?;
        return Err(EnvelopeError::NotObject);
    }
    i = json::skip_ws(b, i + 1);

    // Some(Ok(s)) string conn_id, Some(Err(())) present but not a string.
    let mut conn_id: Option<Result<Cow<'_, str>, ()>> = None;
    let mut frame: Option<&[u8]> = None;
    let mut close_raw: Option<&[u8]> = None;

    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return Err(EnvelopeError::NotJson);
            }
            let key_end = json::skip_string(b, i)?;
            let which = field(b, i, key_end);
            i = json::skip_ws(b, key_end);
            if b.get(i) != Some(&b':') {
                return Err(EnvelopeError::NotJson);
            }
            let v_start = json::skip_ws(b, i + 1);
            let v_end = json::skip_value(b, v_start)?;
            let value = &b[v_start..v_end];
            match which {
                Field::ConnId => {
                    conn_id = Some(if value.first() == Some(&b'"') {
                        Ok(json::decode_string(b, v_start, v_end))
                    } else {
                        Err(())
                    })
                }
                Field::Frame => frame = (value != b"null").then_some(value),
                Field::CloseCode => close_raw = Some(value),
                Field::Other => {}
            }
            i = json::skip_ws(b, v_end);
            match b.get(i) {
                Some(b',') => i = json::skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err(EnvelopeError::NotJson),
            }
        }
    }
    if json::skip_ws(b, i) != b.len() {
        return Err(EnvelopeError::NotJson);
    }

    let conn_id = match conn_id {
        None => return Err(EnvelopeError::ConnIdMissing),
        Some(Err(())) => return Err(EnvelopeError::ConnIdNotString),
        Some(Ok(s)) if s.is_empty() => return Err(EnvelopeError::ConnIdEmpty),
        Some(Ok(s)) => s,
    };
    let close = match close_raw {
        None | Some(b"null") | Some(b"0") => None,
        Some(raw) => Some(parse_close_code(raw)?),
    };
    if frame.is_none() && close.is_none() {
        return Err(EnvelopeError::Empty);
    }
    Ok(ToPhone {
        conn_id,
        frame,
        close,
    })
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
        let which = field(b, i, key_end);
        i = json::skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let v_start = json::skip_ws(b, i + 1);
        if let Field::ConnId = which {
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
    use crate::headers;

    fn id() -> ConnId {
        ConnId::parse("c-0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn to_binary_splices_the_phone_bytes_verbatim() {
        let frame = br#"  { "b" : [1,   2], "a":"x" }  "#;
        let env = to_binary(&id(), frame, None);
        let mut want = b"{\"conn_id\":\"c-0123456789abcdef0123456789abcdef\",\"frame\":".to_vec();
        want.extend_from_slice(frame);
        want.push(b'}');
        assert_eq!(&env[..], &want[..]);
        assert_eq!(env.len(), to_binary_len(&id(), frame, None));
        json::validate(&env).unwrap();
    }

    #[test]
    fn to_binary_carries_the_token_json_escaped() {
        let token = headers::token(Some(br#"t"o\k"#)).unwrap().unwrap();
        let env = to_binary(&id(), b"1", Some(&token));
        let v: serde_json::Value = serde_json::from_slice(&env).unwrap();
        assert_eq!(v["token"], r#"t"o\k"#);
        assert_eq!(v["frame"], 1);
        assert_eq!(env.len(), to_binary_len(&id(), b"1", Some(&token)));
    }

    #[test]
    fn prefix_frame_suffix_is_the_same_envelope_as_to_binary() {
        let token = headers::token(Some(b"t\"k")).unwrap().unwrap();
        for t in [None, Some(&token)] {
            let frame = br#" {"a": 1} "#;
            let mut spliced = to_binary_prefix(&id()).to_vec();
            spliced.extend_from_slice(frame);
            spliced.extend_from_slice(&to_binary_suffix(t));
            assert_eq!(spliced, to_binary(&id(), frame, t).to_vec());
        }
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
}
