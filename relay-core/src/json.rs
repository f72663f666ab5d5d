//! A JSON grammar scanner (RFC 8259) that builds nothing.
//!
//! The relay must check that a phone's message is JSON and find the exact byte span of a
//! binary's `frame` value, but never needs the values themselves. So this module only walks
//! the grammar: iteratively (deep nesting cannot overflow the stack), with a SIMD fast path
//! through string bodies, and with no allocation unless nesting passes 128 levels.
//! Grammar only: `1e400`, lone-surrogate escapes and duplicate keys are valid.

use std::borrow::Cow;

/// The input is not JSON. Deliberately carries no position or byte: peers' data is not logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not valid JSON")]
pub struct NotJson;

/// Checks that `input` is exactly one JSON text: UTF-8, one value, optional whitespace around.
pub fn validate(input: &[u8]) -> Result<(), NotJson> {
    // No separate UTF-8 pass: outside strings only ASCII is grammatical, and each string
    // with a non-ASCII byte is checked as it is skipped.
    let start = skip_ws(input, 0);
    let end = skip_value(input, start)?;
    if skip_ws(input, end) == input.len() {
        Ok(())
    } else {
        Err(NotJson)
    }
}

#[inline]
pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(&c) = b.get(i) {
        if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            break;
        }
        i += 1;
    }
    i
}

/// A stack of open containers, one bit each (1 = object). Inline up to 128 levels.
struct Nesting {
    depth: usize,
    inline: u128,
    spill: Vec<u64>,
}

impl Nesting {
    fn new() -> Self {
        Nesting {
            depth: 0,
            inline: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, object: bool) {
        let d = self.depth;
        if d < 128 {
            self.inline = (self.inline & !(1u128 << d)) | (u128::from(object) << d);
        } else {
            let (w, bit) = ((d - 128) / 64, (d - 128) % 64);
            if w == self.spill.len() {
                self.spill.push(0);
            }
            self.spill[w] = (self.spill[w] & !(1u64 << bit)) | (u64::from(object) << bit);
        }
        self.depth += 1;
    }

    /// The innermost open container: `Some(true)` for an object.
    fn top(&self) -> Option<bool> {
        let d = self.depth.checked_sub(1)?;
        Some(if d < 128 {
            self.inline >> d & 1 == 1
        } else {
            let (w, bit) = ((d - 128) / 64, (d - 128) % 64);
            self.spill[w] >> bit & 1 == 1
        })
    }

    fn pop(&mut self) {
        self.depth -= 1;
    }
}

/// Skips the value that starts at `b[i]` (no leading whitespace) and returns the index just
/// past it. Checks UTF-8 inside strings; nothing else may be non-ASCII.
pub(crate) fn skip_value(b: &[u8], mut i: usize) -> Result<usize, NotJson> {
    let mut stack = Nesting::new();
    'value: loop {
        i = skip_ws(b, i);
        match *b.get(i).ok_or(NotJson)? {
            b'{' => {
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(&b'}') {
                    i += 1;
                } else {
                    stack.push(true);
                    i = skip_key(b, i)?;
                    continue 'value;
                }
            }
            b'[' => {
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(&b']') {
                    i += 1;
                } else {
                    stack.push(false);
                    continue 'value;
                }
            }
            b'"' => i = skip_string(b, i)?,
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            b'-' | b'0'..=b'9' => i = skip_number(b, i)?,
            _ => return Err(NotJson),
        }
        // After a complete value: close containers or move to the next element.
        loop {
            let Some(object) = stack.top() else {
                return Ok(i);
            };
            i = skip_ws(b, i);
            match (b.get(i), object) {
                (Some(b','), true) => {
                    i = skip_key(b, skip_ws(b, i + 1))?;
                    continue 'value;
                }
                (Some(b','), false) => {
                    i += 1;
                    continue 'value;
                }
                (Some(b'}'), true) | (Some(b']'), false) => {
                    i += 1;
                    stack.pop();
                }
                _ => return Err(NotJson),
            }
        }
    }
}

/// Skips `"key"` and the `:` after it; returns the index after the colon.
fn skip_key(b: &[u8], i: usize) -> Result<usize, NotJson> {
    if b.get(i) != Some(&b'"') {
        return Err(NotJson);
    }
    let i = skip_ws(b, skip_string(b, i)?);
    if b.get(i) != Some(&b':') {
        return Err(NotJson);
    }
    Ok(i + 1)
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Result<usize, NotJson> {
    if b.get(i..i + word.len()) == Some(word) {
        Ok(i + word.len())
    } else {
        Err(NotJson)
    }
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
pub(crate) fn skip_number(b: &[u8], mut i: usize) -> Result<usize, NotJson> {
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(b, i + 1),
        _ => return Err(NotJson),
    }
    if b.get(i) == Some(&b'.') {
        let j = digits(b, i + 1);
        if j == i + 1 {
            return Err(NotJson);
        }
        i = j;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let j = digits(b, i);
        if j == i {
            return Err(NotJson);
        }
        i = j;
    }
    Ok(i)
}

/// Skips the string starting at the quote `b[i]`; returns the index after its closing quote.
/// A string that holds any non-ASCII byte must be valid UTF-8 (RFC 8259 §8.1).
///
/// Fast path: `memchr2` (SIMD) jumps to the next quote or backslash, then one fold over the
/// run in between, which the compiler vectorises, finds control characters and high bytes.
pub(crate) fn skip_string(b: &[u8], mut i: usize) -> Result<usize, NotJson> {
    let start = i + 1;
    i += 1;
    let mut high = false;
    loop {
        let rest = b.get(i..).ok_or(NotJson)?;
        let run = memchr::memchr2(b'"', b'\\', rest).ok_or(NotJson)?;
        let (or, min) = rest[..run]
            .iter()
            .fold((0u8, u8::MAX), |(or, min), &c| (or | c, min.min(c)));
        if min < 0x20 {
            return Err(NotJson);
        }
        high |= or & 0x80 != 0;
        i += run;
        if b[i] == b'"' {
            if high && std::str::from_utf8(&b[start..i]).is_err() {
                return Err(NotJson);
            }
            return Ok(i + 1);
        }
        // A backslash: one escape.
        i += 1;
        match *b.get(i).ok_or(NotJson)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 1,
            b'u' => {
                let hex = b.get(i + 1..i + 5).ok_or(NotJson)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(NotJson);
                }
                i += 5;
            }
            _ => return Err(NotJson),
        }
    }
}

/// Decodes the body of a string whose quotes span `b[start..end]` (as found by
/// [`skip_string`]). Borrows when there is no escape. Lone surrogates become U+FFFD.
pub(crate) fn decode_string(b: &[u8], start: usize, end: usize) -> Cow<'_, str> {
    let body = &b[start + 1..end - 1];
    // The scanner has validated UTF-8 and escapes; fall back to lossy rather than panic.
    if !body.contains(&b'\\') {
        return String::from_utf8_lossy(body);
    }
    let mut out = String::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c != b'\\' {
            let next = body[i..]
                .iter()
                .position(|&x| x == b'\\')
                .map_or(body.len(), |p| i + p);
            out.push_str(&String::from_utf8_lossy(&body[i..next]));
            i = next;
            continue;
        }
        let esc = body.get(i + 1).copied().unwrap_or(b'\\');
        i += 2;
        let ch = match esc {
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(body, i);
                i += 4;
                if (0xD800..0xDC00).contains(&hi)
                    && body.get(i) == Some(&b'\\')
                    && body.get(i + 1) == Some(&b'u')
                {
                    let lo = hex4(body, i + 2);
                    if (0xDC00..0xE000).contains(&lo) {
                        i += 6;
                        let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        char::from_u32(cp).unwrap_or('\u{FFFD}')
                    } else {
                        '\u{FFFD}'
                    }
                } else {
                    char::from_u32(hi).unwrap_or('\u{FFFD}')
                }
            }
            other => char::from(other),
        };
        out.push(ch);
    }
    Cow::Owned(out)
}

fn hex4(b: &[u8], i: usize) -> u32 {
    b.get(i..i + 4)
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0xFFFD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_kind_of_value() {
        for ok in [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "1.5",
            "-12e+3",
            "1E-2",
            "1e400",
            "\"\"",
            "\"a\\u00e9\\\"\\\\\\/\\b\\f\\n\\r\\t\"",
            "\"\\ud800\"",
            "[]",
            "{}",
            " [1, {\"a\": [true, null]}] ",
            "{\"a\":1,\"a\":2}",
            "\"héllo wörld 😀, long enough to take the fast path\"",
            "\t\r\n{ \"k\" : \"v\" }\n",
        ] {
            assert_eq!(validate(ok.as_bytes()), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_what_the_grammar_does_not_allow() {
        for bad in [
            "",
            " ",
            "nul",
            "tru",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "NaN",
            "\"abc",
            "\"\\x\"",
            "\"\\u12\"",
            "\"a\u{1}b\"",
            "[1,]",
            "[1 2]",
            "{\"a\"}",
            "{\"a\":}",
            "{a:1}",
            "{\"a\":1,}",
            "[",
            "]",
            "{",
            "}",
            "1 2",
            "[1]]",
            "{\"a\":1}}",
            "'a'",
            "\"tab\there\"",
        ] {
            assert_eq!(validate(bad.as_bytes()), Err(NotJson), "{bad:?}");
        }
    }

    #[test]
    fn rejects_invalid_utf8_even_inside_strings() {
        assert_eq!(validate(b"\"\xff\""), Err(NotJson));
        assert_eq!(validate(b"\"\xc3\""), Err(NotJson));
    }

    #[test]
    fn utf8_inside_strings_is_checked_at_every_offset_of_the_fast_path() {
        for pad in 0..20 {
            let x = "x".repeat(pad);
            let ok = format!("[\"{x}é😀{x}\"]");
            assert_eq!(validate(ok.as_bytes()), Ok(()), "{pad}");
            let mut bad = format!("[\"{x}").into_bytes();
            bad.extend_from_slice(b"\xe2\x82");
            bad.extend_from_slice(format!("{x}\"]").as_bytes());
            assert_eq!(validate(&bad), Err(NotJson), "{pad}");
            let mut surrogate = format!("\"{x}").into_bytes();
            surrogate.extend_from_slice(b"\xed\xa0\x80\"");
            assert_eq!(validate(&surrogate), Err(NotJson), "{pad}");
        }
        // Non-ASCII outside strings is never grammatical.
        assert_eq!(validate("[1,é]".as_bytes()), Err(NotJson));
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        let depth = 100_000;
        let s = "[".repeat(depth) + &"]".repeat(depth);
        assert_eq!(validate(s.as_bytes()), Ok(()));
        let mixed = "{\"a\":[".repeat(300) + "1" + &"]}".repeat(300);
        assert_eq!(validate(mixed.as_bytes()), Ok(()));
        let unbalanced = "{\"a\":[".repeat(300) + "1" + &"}]".repeat(300);
        assert_eq!(validate(unbalanced.as_bytes()), Err(NotJson));
    }

    #[test]
    fn fast_path_finds_quotes_and_controls_at_every_offset() {
        for pad in 0..24 {
            let ok = format!("\"{}\"", "x".repeat(pad));
            assert_eq!(validate(ok.as_bytes()), Ok(()), "{pad}");
            let ctl = format!("\"{}\u{1f}{}\"", "x".repeat(pad), "y".repeat(9));
            assert_eq!(validate(ctl.as_bytes()), Err(NotJson), "{pad}");
            let esc = format!("\"{}\\\"{}\"", "x".repeat(pad), "y".repeat(9));
            assert_eq!(validate(esc.as_bytes()), Ok(()), "{pad}");
        }
    }

    #[test]
    fn agrees_with_serde_json_on_well_known_cases() {
        // serde_json rejects numbers out of f64 range and lone surrogates; we do not (grammar
        // only), so compare on inputs without those.
        for s in [
            "[1,2,3]",
            "{\"a\":{\"b\":[]}}",
            "[1,",
            "{\"a\" 1}",
            "\"\\u0041\"",
            "[-0.0e-0]",
        ] {
            let ours = validate(s.as_bytes()).is_ok();
            let theirs = serde_json::from_str::<serde_json::Value>(s).is_ok();
            assert_eq!(ours, theirs, "{s}");
        }
    }

    #[test]
    fn decode_string_handles_escapes_and_surrogate_pairs() {
        let s = br#""a\u0041\n\ud83d\ude00\ud800x""#;
        let end = skip_string(s, 0).unwrap();
        assert_eq!(end, s.len());
        assert_eq!(decode_string(s, 0, end), "aA\n😀\u{FFFD}x");
        let plain = br#""c-00ff""#;
        assert!(matches!(
            decode_string(plain, 0, plain.len()),
            Cow::Borrowed("c-00ff")
        ));
    }
}
