//! `e2e_scale.rs` again, every test of it, with the relay serving TLS: `tests/support` picks the
//! transport from this test binary's name (`*_over_tls`), and the testkit clients speak TLS to
//! it unchanged. Cargo runs test binaries one after another, so the two transports never
//! compete for the CPU in the timing tests.

#[path = "e2e_scale.rs"]
mod suite;

#[path = "support/mod.rs"]
mod support;

/// Guards the mechanism itself: the relays of this binary really speak TLS.
#[tokio::test]
async fn relays_of_this_binary_serve_tls() {
    assert!(support::over_tls());
    let relay = support::start(support::fast_opts()).await;
    assert!(relay.tls);
    let stream = relay_testkit::tls::connect(relay.addr)
        .await
        .expect("a TLS handshake with the relay");
    assert!(stream.is_tls());
}
