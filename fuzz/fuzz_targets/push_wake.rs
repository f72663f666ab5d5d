//! The push wake parser (§4.4) on arbitrary bytes, most of them shaped like a wake: never
//! panics; a message with no conn_id and a non-null push_wake is always a wake or a malformed
//! wake; what it accepts follows the contract (platform exactly "fcm", a token of 1–4096
//! bytes) and agrees with serde_json; what it refuses as a malformed wake really is one; and
//! `Debug` never shows the token.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_core::envelope::{self, EnvelopeError, FromBinary, MAX_WAKE_TOKEN};
use serde_json::Value;

fn good_wake(wake: &Value) -> bool {
    wake["platform"] == "fcm"
        && wake["token"]
            .as_str()
            .is_some_and(|t| !t.is_empty() && t.len() <= MAX_WAKE_TOKEN)
}

fn check(data: &[u8]) {
    let parsed = envelope::parse_from_binary(data);
    // serde_json's Value keeps the last of duplicate keys, like the parser. It refuses lone
    // surrogates and nesting past 128, which the grammar allows: then there is nothing to
    // compare with.
    let value: Option<Value> = serde_json::from_slice(data).ok();
    if let Err(EnvelopeError::NotJson) = parsed {
        assert!(value.is_none(), "serde_json reads what the parser calls not JSON");
    }
    if let Ok(FromBinary::Wake(w)) = &parsed {
        assert!(!w.token().is_empty() && w.token().len() <= MAX_WAKE_TOKEN);
        // Whatever the token, Debug shows none of it (the token may spell anything, even
        // "<redacted>", so compare with the fixed text rather than search for the token).
        assert_eq!(format!("{w:?}"), r#"Wake { platform: "fcm", token: <redacted> }"#);
    }
    let Some(map) = value.as_ref().and_then(Value::as_object) else {
        return;
    };
    let no_conn_id = match map.get("conn_id") {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(_) => false,
    };
    let wake = map.get("push_wake").filter(|w| !w.is_null());
    match (&parsed, no_conn_id, wake) {
        (Ok(FromBinary::Wake(w)), true, Some(wake)) => {
            assert!(good_wake(wake));
            assert_eq!(wake["token"].as_str(), Some(w.token()));
        }
        (Err(e), true, Some(wake)) if e.is_wake() => {
            assert!(!good_wake(wake), "refused a good wake: {e}")
        }
        (Ok(FromBinary::Wake(_)), _, _) => panic!("a wake without being one"),
        (Err(e), true, Some(_)) => panic!("a wake refused as an envelope: {e}"),
        (Err(e), _, _) => assert!(!e.is_wake(), "a wake error without a wake: {e}"),
        (Ok(FromBinary::ToPhone(_)), _, _) => assert!(!no_conn_id),
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // Wrap the input as a wake's token and as its push_wake value, so most runs reach the
    // wake rules rather than stopping at "not JSON".
    if let Ok(s) = std::str::from_utf8(data) {
        let as_token = format!(
            r#"{{"push_wake":{{"platform":"fcm","token":{}}}}}"#,
            Value::from(s)
        );
        check(as_token.as_bytes());
        check(format!(r#"{{"conn_id":null,"push_wake":{s}}}"#).as_bytes());
        check(format!(r#"{{"push_wake":{{"platform":{s},"token":"t"}}}}"#).as_bytes());
    }
});
