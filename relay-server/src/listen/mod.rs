//! Listeners (protocol.md §9). `acme/` owns certificates in ACME mode (`--domain`); the TCP
//! and TLS accept loops live beside it.

pub mod acme;
