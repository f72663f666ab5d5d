//! The cluster edge's request-head inspection (§11: `cluster::head::routable`, which reads a
//! client's first request before hyper does) on arbitrary bytes: never panics, and routes
//! only a `GET` of an upgrade endpoint with exactly one `X-Pyrycode-Server` that §2 accepts.
//! A head built around fuzzer-chosen server-id bytes is routable exactly when §2's rule
//! accepts those bytes, and names them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_core::headers;
use relay_server::cluster::head::{routable, Endpoint};

fuzz_target!(|data: &[u8]| {
    if let Some(r) = routable(data) {
        assert!(
            data.starts_with(b"GET /v"),
            "only GETs of /v1|v2 are routed"
        );
        assert!(headers::server_id(Some(r.server_id.as_str().as_bytes())).is_ok());
    }
    let (path, sid) = match data.split_first() {
        Some((b, rest)) if b & 1 == 0 => ("/v1/client", rest),
        Some((_, rest)) => ("/v2/server", rest),
        None => return,
    };
    let mut head =
        format!("GET {path} HTTP/1.1\r\nHost: relay\r\nX-Pyrycode-Server: ").into_bytes();
    head.extend_from_slice(sid);
    head.extend_from_slice(b"\r\nUser-Agent: f\r\n\r\n");
    // httparse (hyper's parser too) drops spaces and tabs around a header value.
    let trimmed = trim_sp_tab(sid);
    if sid.contains(&b'\r') || sid.contains(&b'\n') {
        // A line break inside makes it another head (bare LF ends a line for httparse, as
        // for hyper); the first half already checked whatever it routes.
        return;
    }
    let valid = headers::server_id(Some(trimmed)).is_ok();
    match routable(&head) {
        Some(r) => {
            assert!(valid, "routed an id §2 refuses");
            assert_eq!(r.server_id.as_str().as_bytes(), trimmed);
            let want = if path == "/v1/client" {
                Endpoint::Client
            } else {
                Endpoint::Server
            };
            assert_eq!(r.endpoint, want);
        }
        None => assert!(!valid, "refused an id §2 accepts: {sid:?}"),
    }
});

fn trim_sp_tab(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}
