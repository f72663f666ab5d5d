//! The read-deadline frame tracker (§7) on arbitrary byte streams cut at arbitrary points:
//! never panics, and the chunking never changes its verdict.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_server::deadline::Boundaries;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let mut whole = Boundaries::default();
    whole.feed(stream);
    let mut chunked = Boundaries::default();
    let step = usize::from(cut).max(1);
    for chunk in stream.chunks(step) {
        chunked.feed(chunk);
    }
    assert_eq!(whole.busy(), chunked.busy());
});
