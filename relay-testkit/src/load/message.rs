//! The load message on the wire: `{"s":<seq>,"t":<send-ns>,"p":"xxx…"}`, padded to an exact size.
//!
//! Owns encoding into a reused buffer and the fast decode of what comes back. It never allocates
//! per message and never parses JSON in general: the relay hands the phone back exactly the bytes
//! it sent (§4.1, §4.2), so a fixed layout is all there is to read.

/// Smallest `--size`: two 20-digit numbers (any `u64`) and the 18 bytes of JSON punctuation take
/// 58 bytes, so a valid size never fails to encode.
pub const MIN_SIZE: usize = 64;

const HEAD: &[u8] = br#"{"s":"#;
const MID_T: &[u8] = br#","t":"#;
const MID_P: &[u8] = br#","p":""#;
const TAIL: &[u8] = br#""}"#;
const PAD: u8 = b'x';

/// What a load message carries besides its padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Per-phone sequence number, from 0.
    pub seq: u64,
    /// When it was sent (or, open-loop, scheduled), in ns since the run's clock origin.
    pub sent_ns: u64,
}

/// Writes the message for `stamp` into `buf` (replacing its contents), exactly `size` bytes.
///
/// Returns `false`, leaving `buf` unspecified, if the numbers do not fit in `size`.
pub fn encode(buf: &mut Vec<u8>, size: usize, stamp: Stamp) -> bool {
    buf.clear();
    buf.extend_from_slice(HEAD);
    push_u64(buf, stamp.seq);
    buf.extend_from_slice(MID_T);
    push_u64(buf, stamp.sent_ns);
    buf.extend_from_slice(MID_P);
    let Some(pad) = size.checked_sub(buf.len() + TAIL.len()) else {
        return false;
    };
    buf.resize(buf.len() + pad, PAD);
    buf.extend_from_slice(TAIL);
    true
}

/// Reads the stamp back out of a message, or `None` if it is not one of ours.
///
/// Checks the layout and the closing bytes, not every padding byte: the exact length is checked
/// by the caller against `--size`, which catches truncation and splicing.
pub fn decode(msg: &[u8]) -> Option<Stamp> {
    let rest = msg.strip_prefix(HEAD)?;
    let (seq, rest) = take_u64(rest)?;
    let rest = rest.strip_prefix(MID_T)?;
    let (sent_ns, rest) = take_u64(rest)?;
    let rest = rest.strip_prefix(MID_P)?;
    rest.ends_with(TAIL).then_some(Stamp { seq, sent_ns })
}

/// Appends `v` in decimal without going through `fmt` (no allocation, no formatter machinery).
fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Parses a JSON non-negative integer (no leading zeros) at the start of `s`.
fn take_u64(s: &[u8]) -> Option<(u64, &[u8])> {
    let len = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || (len > 1 && s[0] == b'0') {
        return None;
    }
    let mut v: u64 = 0;
    for &d in &s[..len] {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((v, &s[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_to_exactly_the_requested_size_as_valid_json() {
        let mut buf = Vec::new();
        for size in [MIN_SIZE, 100, 16 * 1024] {
            let stamp = Stamp {
                seq: 42,
                sent_ns: 1_234_567,
            };
            assert!(encode(&mut buf, size, stamp));
            assert_eq!(buf.len(), size);
            let v: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
            assert_eq!(v["s"], 42);
            assert_eq!(v["t"], 1_234_567);
            assert!(v["p"]
                .as_str()
                .is_some_and(|p| p.bytes().all(|b| b == b'x')));
        }
    }

    #[test]
    fn min_size_fits_any_numbers() {
        let mut buf = Vec::new();
        let stamp = Stamp {
            seq: u64::MAX,
            sent_ns: u64::MAX,
        };
        assert!(encode(&mut buf, MIN_SIZE, stamp));
        assert_eq!(buf.len(), MIN_SIZE);
        assert_eq!(decode(&buf), Some(stamp));
    }

    #[test]
    fn refuses_a_size_too_small_for_the_numbers() {
        let mut buf = Vec::new();
        let stamp = Stamp {
            seq: u64::MAX,
            sent_ns: u64::MAX,
        };
        assert!(encode(&mut buf, 58, stamp));
        assert!(!encode(&mut buf, 57, stamp));
    }

    #[test]
    fn decode_round_trips_encode() {
        let mut buf = Vec::new();
        for (seq, sent_ns) in [(0, 0), (7, 10), (u64::MAX / 2, 123), (9, u64::MAX / 3)] {
            let stamp = Stamp { seq, sent_ns };
            assert!(encode(&mut buf, 128, stamp));
            assert_eq!(decode(&buf), Some(stamp));
        }
    }

    #[test]
    fn decode_rejects_what_is_not_a_load_message() {
        for bad in [
            &br#"{"s":1,"t":2,"p":"xx""#[..],              // truncated
            br#"{"s":01,"t":2,"p":"xx"}"#,                 // leading zero
            br#"{"s":1,"t":,"p":"xx"}"#,                   // missing number
            br#"{"t":2,"s":1,"p":"xx"}"#,                  // other layout
            br#"{"s":99999999999999999999,"t":2,"p":""}"#, // overflows u64
            br#"{"conn_id":"c-1","frame":{}}"#,            // an envelope, not a frame
        ] {
            assert_eq!(decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
