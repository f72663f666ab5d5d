//! The phone-message JSON check (§4.1) against serde_json, on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_core::json;

fuzz_target!(|data: &[u8]| {
    let ours = json::validate(data).is_ok();
    // §4.1: a phone message is UTF-8 JSON; the scanner checks UTF-8 only inside strings, so
    // make sure that never lets invalid UTF-8 through.
    if ours {
        assert!(std::str::from_utf8(data).is_ok(), "accepted invalid UTF-8");
    }
    // serde_json rejects what the grammar allows (lone surrogate escapes, numbers out of
    // f64 range, nesting past 128), so compare only where it accepts: it must never accept
    // what we reject.
    if serde_json::from_slice::<serde_json::Value>(data).is_ok() {
        assert!(ours, "serde_json accepts what json::validate rejects");
    }
});
