//! Upgrade header rules (§2) on arbitrary bytes: never panic, and what they accept obeys the
//! byte rules.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_core::headers;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = headers::server_id(Some(data)) {
        assert!((1..=64).contains(&id.as_str().len()));
        assert!(id
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
    }
    if let Ok(v) = headers::version(Some(data)) {
        assert!(v.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    }
    let _ = headers::user_agent(Some(data));
    if let Ok(Some(name)) = headers::device_name(Some(data)) {
        assert!(name.len() <= 128 && !name.chars().any(char::is_control));
    }
    // §2: 1–512 bytes of printable ASCII (empty is absent), checked and then dropped (§4.1).
    let printable = data.len() <= 512 && data.iter().all(|b| (0x21..=0x7e).contains(b));
    assert_eq!(headers::token(Some(data)).is_ok(), printable);
});
