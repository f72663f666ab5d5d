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
    if let Ok(Some(token)) = headers::token(Some(data)) {
        // The escaped token must splice into a JSON string.
        let quoted = format!("\"{}\"", token.json_escaped());
        assert!(relay_core::json::validate(quoted.as_bytes()).is_ok());
    }
});
