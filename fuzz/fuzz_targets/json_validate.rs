//! The phone-message JSON check (§4.1) against serde_json, on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_core::json;

fuzz_target!(|data: &[u8]| {
    let ours = json::validate(data).is_ok();
    // serde_json rejects what the grammar allows (lone surrogate escapes, numbers out of
    // f64 range, nesting past 128), so compare only where it accepts: it must never accept
    // what we reject.
    if serde_json::from_slice::<serde_json::Value>(data).is_ok() {
        assert!(ours, "serde_json accepts what json::validate rejects");
    }
});
