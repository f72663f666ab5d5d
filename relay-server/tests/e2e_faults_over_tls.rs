//! `e2e_faults.rs` again, every test of it, with the relay serving TLS (see
//! `e2e_routing_over_tls.rs` for how the transport is chosen).

#[path = "e2e_faults.rs"]
mod suite;
