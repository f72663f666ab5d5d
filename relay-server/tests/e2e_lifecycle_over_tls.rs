//! `e2e_lifecycle.rs` again, every test of it, with the relay serving TLS: `tests/support` picks the
//! transport from this test binary's name (`*_over_tls`), and the testkit clients speak TLS to
//! it unchanged. Cargo runs test binaries one after another, so the two transports never
//! compete for the CPU in the timing tests.

#[path = "e2e_lifecycle.rs"]
mod suite;
