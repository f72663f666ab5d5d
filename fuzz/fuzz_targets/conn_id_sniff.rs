//! The conn_id sniffer for over-size binary messages (§7) on arbitrary bytes: never panics,
//! what it finds in a prefix it also finds in the whole, and on a valid object whose conn_id
//! key is unique it agrees with serde_json.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_core::envelope;

fuzz_target!(|data: &[u8]| {
    let whole = envelope::sniff_conn_id(data);
    for cut in [0, 1, data.len() / 3, data.len() / 2, data.len().saturating_sub(1)] {
        if let Some(id) = envelope::sniff_conn_id(&data[..cut.min(data.len())]) {
            assert_eq!(Some(&id), whole.as_ref(), "a prefix saw another conn_id");
        }
    }
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(data) {
        let text = String::from_utf8_lossy(data);
        let unique = text.matches("conn_id").count() == 1 && !text.contains('\\');
        if unique {
            let expected = map
                .get("conn_id")
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty());
            assert_eq!(whole.as_deref(), expected);
        }
    }
});
