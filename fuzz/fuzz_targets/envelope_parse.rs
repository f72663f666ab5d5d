//! The parser of a binary's messages (§4.2 routing envelope, §4.4 push wake) on arbitrary
//! bytes: never panics, and what it returns is consistent with serde_json whenever serde_json
//! can read the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_core::envelope::{self, FromBinary};
use relay_core::json;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = envelope::parse_from_binary(data) else {
        return;
    };
    assert!(json::validate(data).is_ok(), "accepted a message that is not JSON");
    let FromBinary::ToPhone(env) = parsed else {
        return;
    };
    assert!(!env.conn_id.is_empty());
    assert!(env.frame.is_some() || env.close.is_some());
    if let Some(frame) = env.frame {
        // The frame is a sub-slice of the input and is itself JSON.
        let start = frame.as_ptr() as usize - data.as_ptr() as usize;
        assert!(start + frame.len() <= data.len());
        assert!(json::validate(frame).is_ok());
    }
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(data) {
        assert_eq!(map.get("conn_id").and_then(|v| v.as_str()), Some(&*env.conn_id));
    }
});
