//! What only the TLS listener does (protocol.md §8, §9): the Host check (421), TLS versions and
//! ALPN, SNI, PROXY v2, the handshake deadline, certificate reload. The rest of the contract
//! runs over TLS in the `*_over_tls` binaries.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_server::listen::stats::PreUpgrade;
use relay_server::listen::tls::CertResolver;
use relay_server::RelayOptions;
use relay_testkit::client::{fresh_server_id, FakeBinary, FakePhone};
use relay_testkit::raw::proxy_v2_header;
use relay_testkit::tls::{self as ttls, ClientStream, TestCertificate, TlsTarget};
use rustls_pki_types::ServerName;
use support::{start_with, tls_transport_for, TestRelay};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

const NAME: &str = "relay.example.com";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A TLS relay whose certificate names `names`; clients reach it with SNI `sni`.
async fn relay_named(
    names: &[&str],
    sni: &str,
    proxy: bool,
    opts: RelayOptions,
) -> (TestRelay, TestCertificate) {
    let cert = ttls::test_certificate(names);
    let (transport, _) = tls_transport_for(&cert, proxy);
    let relay = start_with(transport, opts).await;
    ttls::register(relay.addr, target(&cert, sni));
    (relay, cert)
}

fn target(cert: &TestCertificate, sni: &str) -> TlsTarget {
    TlsTarget {
        config: ttls::client_config(std::slice::from_ref(&cert.der)),
        server_name: ServerName::try_from(sni.to_owned()).unwrap(),
    }
}

/// Status and body length of one hand-written request over `stream`.
async fn status_of<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &str,
) -> (u16, usize) {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let head_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(n > 0, "closed before a response: {got:?}");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    (status, len)
}

fn upgrade_request(path: &str, host: Option<&str>, sid: &str) -> String {
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\n{host}Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         X-Pyrycode-Server: {sid}\r\nX-Pyrycode-Version: dev\r\nUser-Agent: t/1\r\n\r\n"
    )
}

// ---- §9 Host check ---------------------------------------------------------------------------

#[tokio::test]
async fn host_that_is_not_a_name_of_the_certificate_gets_421_with_an_empty_body() {
    let (relay, _) = relay_named(&[NAME], NAME, false, support::fast_opts()).await;
    let sid = fresh_server_id();
    for host in [
        "evil-relay.example.com",
        "relay.example.com.evil.net",
        "example.com",
        "x.relay.example.com",
        "127.0.0.1",
        "[::1]:443",
        "relay.example.com:https",
        "relay.example.com@evil.net",
    ] {
        let r = FakeBinary::builder(relay.addr, &sid)
            .host(host)
            .refused()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!((r.status, r.body_len()), (421, 0), "Host {host}");
        let r = FakePhone::builder(relay.addr, &sid)
            .host(host)
            .refused()
            .await
            .unwrap();
        assert_eq!((r.status, r.body_len()), (421, 0), "phone, Host {host}");
    }
    assert_eq!(
        relay.shared.listen_stats.count(PreUpgrade::HostRefused),
        16,
        "each 421 counted"
    );
    // The name itself, with a port, in any case: served.
    for host in [
        "relay.example.com",
        "RELAY.Example.com:443",
        "relay.example.com.:8443",
    ] {
        let sid = fresh_server_id();
        let mut binary = FakeBinary::builder(relay.addr, &sid)
            .host(host)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        binary.expect_silence(ms(20)).await.unwrap();
    }
}

#[tokio::test]
async fn missing_or_repeated_host_gets_421() {
    let (relay, cert) = relay_named(&[NAME], NAME, false, support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut s = ttls::handshake(
        TcpStream::connect(relay.addr).await.unwrap(),
        &target(&cert, NAME),
    )
    .await
    .unwrap();
    assert_eq!(
        status_of(&mut s, &upgrade_request("/v1/server", None, &sid)).await,
        (421, 0)
    );
    let r = FakeBinary::builder(relay.addr, &sid)
        .add_header("Host", NAME)
        .add_header("Host", NAME)
        .refused()
        .await
        .unwrap();
    assert_eq!((r.status, r.body_len()), (421, 0));
}

#[tokio::test]
async fn ip_literal_hosts_match_the_certificates_ip_addresses() {
    let (relay, _) = relay_named(
        &["127.0.0.1", "::1", NAME],
        "127.0.0.1",
        false,
        support::fast_opts(),
    )
    .await;
    let port = relay.addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "[::1]".into(),
    ] {
        let sid = fresh_server_id();
        FakeBinary::builder(relay.addr, &sid)
            .host(&host)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
    }
    for host in ["127.0.0.2", "[::2]:443", "::1", "[::1"] {
        let r = FakeBinary::builder(relay.addr, &fresh_server_id())
            .host(host)
            .refused()
            .await
            .unwrap();
        assert_eq!(r.status, 421, "Host {host}");
    }
}

#[tokio::test]
async fn host_check_comes_before_the_connection_cap_and_the_header_rules() {
    // §2: Host check → (per-IP limits) → global cap (503) → header rules (400).
    let (relay, _) = relay_named(
        &[NAME],
        NAME,
        false,
        RelayOptions {
            max_connections: 1,
            ..support::fast_opts()
        },
    )
    .await;
    let r = FakeBinary::builder(relay.addr, &fresh_server_id())
        .host("evil.example.com")
        .version("")
        .refused()
        .await
        .unwrap();
    assert_eq!(r.status, 421, "not 400");
    let _holder = FakeBinary::builder(relay.addr, &fresh_server_id())
        .host(NAME)
        .connect()
        .await
        .unwrap();
    let r = FakeBinary::builder(relay.addr, &fresh_server_id())
        .host("evil.example.com")
        .refused()
        .await
        .unwrap();
    assert_eq!(r.status, 421, "not 503");
    let r = FakeBinary::builder(relay.addr, &fresh_server_id())
        .host(NAME)
        .refused()
        .await
        .unwrap();
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn healthz_is_not_host_checked_and_unknown_paths_are() {
    // Documented in operations.md: health checkers dial addresses, not names.
    let (relay, cert) = relay_named(&[NAME], NAME, false, support::fast_opts()).await;
    let connect = || async {
        ttls::handshake(
            TcpStream::connect(relay.addr).await.unwrap(),
            &target(&cert, NAME),
        )
        .await
        .unwrap()
    };
    let get = |path: &str, host: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };
    let (status, len) = status_of(&mut connect().await, &get("/healthz", "10.1.2.3:443")).await;
    assert_eq!(status, 200);
    assert!(len > 0);
    assert_eq!(
        status_of(&mut connect().await, &get("/nope", "evil.example.com")).await,
        (421, 0)
    );
    assert_eq!(
        status_of(&mut connect().await, &get("/nope", NAME)).await.0,
        404
    );
}

// ---- §9 TLS versions, ALPN, SNI --------------------------------------------------------------

/// A TLS 1.1 ClientHello (legacy version 3,2, no supported_versions extension), by hand:
/// rustls cannot speak 1.1 as a client. With `sig_algs` it carries a signature_algorithms
/// extension, which rustls checks for before the version (old clients seldom send it).
fn tls11_hello(sig_algs: bool) -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x09, 0x00, 0x2f]); // two TLS 1.1 suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    if sig_algs {
        // extensions: signature_algorithms = ecdsa_secp256r1_sha256, rsa_pkcs1_sha256
        body.extend_from_slice(&[0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04]);
        body.extend_from_slice(&[0x04, 0x03, 0x04, 0x01]);
    }
    let mut hs = vec![0x01, 0, 0, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0, hs.len() as u8];
    record.extend_from_slice(&hs);
    record
}

fn tls11_client_hello() -> Vec<u8> {
    tls11_hello(false)
}

#[tokio::test]
async fn tls_1_1_is_refused_with_a_fatal_alert_and_no_server_hello() {
    let (relay, _) = relay_named(&[NAME], NAME, false, support::fast_opts()).await;
    // protocol_version (70) for a 1.1 hello rustls reads far enough to see the version;
    // handshake_failure (40) for a typical 1.1 hello without signature_algorithms.
    for (sig_algs, alert) in [(true, 70), (false, 40)] {
        let mut tcp = TcpStream::connect(relay.addr).await.unwrap();
        tcp.write_all(&tls11_hello(sig_algs)).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got))
            .await
            .expect("the relay answers and closes")
            .unwrap();
        // Exactly one alert record, fatal (2), and never a ServerHello (0x16).
        assert_eq!(got.len(), 7, "one alert record: {got:?}");
        assert_eq!(got[0], 0x15, "an alert record, not a handshake: {got:?}");
        assert_eq!(&got[5..7], &[2, alert], "fatal alert {alert}: {got:?}");
    }
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_both_served() {
    let (relay, cert) = relay_named(&[NAME], NAME, false, support::fast_opts()).await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let t = TlsTarget {
            config: Arc::new(config),
            server_name: ServerName::try_from(NAME).unwrap(),
        };
        let stream = ttls::handshake(TcpStream::connect(relay.addr).await.unwrap(), &t)
            .await
            .unwrap();
        let ClientStream::Tls(tls) = &stream else {
            unreachable!()
        };
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
        let mut binary = FakeBinary::builder(relay.addr, &fresh_server_id())
            .host(NAME)
            .connect_over(stream)
            .await
            .unwrap();
        binary.expect_silence(ms(20)).await.unwrap();
    }
}

#[tokio::test]
async fn alpn_offers_http_1_1_only() {
    let (relay, cert) = relay_named(&[NAME], NAME, false, support::fast_opts()).await;
    let with_alpn = |protos: &[&[u8]]| {
        let mut config = (*ttls::client_config(std::slice::from_ref(&cert.der))).clone();
        config.alpn_protocols = protos.iter().map(|p| p.to_vec()).collect();
        TlsTarget {
            config: Arc::new(config),
            server_name: ServerName::try_from(NAME).unwrap(),
        }
    };
    let s = ttls::handshake(
        TcpStream::connect(relay.addr).await.unwrap(),
        &with_alpn(&[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    let ClientStream::Tls(tls) = &s else {
        unreachable!()
    };
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let h2_only = ttls::handshake(
        TcpStream::connect(relay.addr).await.unwrap(),
        &with_alpn(&[b"h2"]),
    )
    .await;
    assert!(
        h2_only.is_err(),
        "an h2-only client is refused (no_application_protocol)"
    );
    let none = ttls::handshake(
        TcpStream::connect(relay.addr).await.unwrap(),
        &with_alpn(&[]),
    )
    .await;
    assert!(none.is_ok(), "a client without ALPN is served");
}

#[tokio::test]
async fn sni_naming_an_unknown_name_gets_its_handshake_refused() {
    // Like the Go relay's autocert: no certificate for a name we do not serve. A client that
    // would accept anything still gets an alert, not a certificate.
    let (relay, cert) = relay_named(&[NAME], NAME, false, support::fast_opts()).await;
    let err = ttls::handshake(
        TcpStream::connect(relay.addr).await.unwrap(),
        &target(&cert, "other.example.com"),
    )
    .await
    .expect_err("refused");
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(
        matches!(inner, Some(rustls::Error::AlertReceived(_))),
        "the relay sent an alert: {err:?}"
    );
    // A ClientHello without SNI (an IP address dialled) gets the certificate.
    let (relay, cert) = relay_named(
        &[NAME, "127.0.0.1"],
        "127.0.0.1",
        false,
        support::fast_opts(),
    )
    .await;
    ttls::handshake(
        TcpStream::connect(relay.addr).await.unwrap(),
        &target(&cert, "127.0.0.1"),
    )
    .await
    .expect("no SNI: served");
}

// ---- §9 PROXY v2 -----------------------------------------------------------------------------

fn source() -> SocketAddr {
    "203.0.113.7:4242".parse().unwrap()
}

/// TCP to `relay`, then `prefix`, then (if asked) the TLS handshake.
async fn proxied(relay: &TestRelay, prefix: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(relay.addr).await.unwrap();
    tcp.write_all(prefix).await.unwrap();
    tcp
}

/// Asserts the relay closes `tcp` without having written a single byte.
async fn closed_with_zero_bytes(mut tcp: TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut got = Vec::new();
    let r = tokio::time::timeout(within, tcp.read_to_end(&mut got))
        .await
        .expect("the relay closes the connection");
    // A reset (unread bytes on close) is a close too.
    if let Err(e) = r {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    assert!(got.is_empty(), "zero bytes written, got {got:?}");
    started.elapsed()
}

#[tokio::test]
async fn proxy_v2_header_then_tls_is_served() {
    let (relay, cert) = relay_named(&[NAME], NAME, true, support::fast_opts()).await;
    let sid = fresh_server_id();
    let tcp = proxied(&relay, &proxy_v2_header(source(), relay.addr)).await;
    let stream = ttls::handshake(tcp, &target(&cert, NAME)).await.unwrap();
    let mut binary = FakeBinary::builder(relay.addr, &sid)
        .host(NAME)
        .connect_over(stream)
        .await
        .unwrap();
    // IPv6 sources too.
    let v6: SocketAddr = "[2001:db8::7]:4242".parse().unwrap();
    let tcp = proxied(
        &relay,
        &proxy_v2_header(v6, "[2001:db8::1]:443".parse().unwrap()),
    )
    .await;
    let stream = ttls::handshake(tcp, &target(&cert, NAME)).await.unwrap();
    let mut phone = FakePhone::builder(relay.addr, &sid)
        .host(NAME)
        .connect_over(stream)
        .await
        .unwrap();
    phone.send_text(r#"{"via":"proxy"}"#).await.unwrap();
    let env = binary.recv_envelope().await.unwrap();
    assert_eq!(env.frame(), Some(r#"{"via":"proxy"}"#));
}

#[tokio::test]
async fn without_proxy_v1_local_or_garbage_the_connection_is_closed_with_zero_bytes() {
    let (relay, cert) = relay_named(&[NAME], NAME, true, support::fast_opts()).await;
    // No header at all: a ClientHello straight away.
    let direct = ttls::handshake(
        TcpStream::connect(relay.addr).await.unwrap(),
        &target(&cert, NAME),
    )
    .await;
    assert!(direct.is_err(), "TLS without a PROXY header is refused");
    let mut local = proxy_v2_header(source(), relay.addr);
    local[12] = 0x20; // v2 LOCAL
    let mut udp = proxy_v2_header(source(), relay.addr);
    udp[13] = 0x12; // UDP over IPv4
    let mut unspec = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    unspec.extend_from_slice(&[0x21, 0x00, 0x00, 0x00]);
    for (what, bytes) in [
        (
            "v1",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 4242 443\r\n".to_vec(),
        ),
        ("LOCAL", local),
        ("UNSPEC", unspec),
        ("UDP", udp),
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("a bare ClientHello", tls11_client_hello()),
    ] {
        let tcp = proxied(&relay, &bytes).await;
        let took = closed_with_zero_bytes(tcp, Duration::from_secs(3)).await;
        assert!(
            took < Duration::from_secs(2),
            "{what}: closed at once, took {took:?}"
        );
    }
}

#[tokio::test]
async fn a_stalled_proxy_header_is_cut_at_five_seconds() {
    let (relay, _) = relay_named(
        &[NAME],
        NAME,
        true,
        RelayOptions {
            handshake_timeout: Duration::from_secs(30),
            ..support::fast_opts()
        },
    )
    .await;
    let header = proxy_v2_header(source(), relay.addr);
    let tcp = proxied(&relay, &header[..10]).await;
    let took = closed_with_zero_bytes(tcp, Duration::from_secs(10)).await;
    assert!(
        took >= ms(4900) && took < Duration::from_secs(7),
        "cut at the 5 s PROXY deadline, not --handshake-timeout: {took:?}"
    );
}

// ---- §8 handshake deadline -------------------------------------------------------------------

#[tokio::test]
async fn stalled_tls_handshakes_are_cut_at_the_handshake_timeout_and_hold_no_slot() {
    let (relay, cert) = relay_named(
        &[NAME],
        NAME,
        false,
        RelayOptions {
            handshake_timeout: ms(600),
            max_connections: 1,
            ..support::fast_opts()
        },
    )
    .await;
    // A slowloris: ten connections that never finish their handshake (half a ClientHello).
    let mut stalled = Vec::new();
    for _ in 0..10 {
        stalled.push(proxied(&relay, &tls11_client_hello()[..20]).await);
    }
    // Meanwhile a real client is served at once: handshakes are not done in the accept loop,
    // and the stalled ones hold no connection slot (max-connections is 1).
    let started = Instant::now();
    let sid = fresh_server_id();
    let mut binary = FakeBinary::builder(relay.addr, &sid)
        .host(NAME)
        .connect()
        .await
        .unwrap();
    assert!(started.elapsed() < ms(500), "served while the others stall");
    for tcp in stalled {
        let took = closed_with_zero_bytes(tcp, Duration::from_secs(5)).await;
        assert!(took < Duration::from_secs(2), "cut near 600 ms: {took:?}");
    }
    support::eventually("each cut counted", || {
        relay
            .shared
            .listen_stats
            .count(PreUpgrade::HandshakeTimeout)
            == 10
    })
    .await;
    binary
        .expect_silence(ms(700))
        .await
        .expect("the upgraded binary is outside the deadline");
    binary.close(1000).await.unwrap();
    support::eventually("the slot is free", || {
        relay.shared.conn_slots.available_permits() == 1
    })
    .await;

    // The deadline runs from accept to the upgrade: a finished TLS handshake followed by
    // request headers that never end is cut at the same deadline (header timeout is 5 s).
    let mut slow = ttls::handshake(
        TcpStream::connect(relay.addr).await.unwrap(),
        &target(&cert, NAME),
    )
    .await
    .unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /v1/server HTTP/1.1\r\nHost: relay.example.com\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("cut before the 5 s header timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn plain_listeners_have_the_handshake_deadline_too() {
    let relay = start_with(
        relay_server::listen::Transport::Plain,
        RelayOptions {
            handshake_timeout: ms(400),
            ..support::fast_opts()
        },
    )
    .await;
    let mut tcp = TcpStream::connect(relay.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let took = closed_with_zero_bytes(tcp, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
}

// ---- §9 certificate reload -------------------------------------------------------------------

#[tokio::test]
async fn reload_swaps_the_certificate_for_new_connections_and_keeps_live_ones() {
    let dir = tempdir();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let old = ttls::test_certificate(&[NAME]);
    std::fs::write(&cert_path, &old.cert_pem).unwrap();
    std::fs::write(&key_path, &old.key_pem).unwrap();
    let resolver = Arc::new(CertResolver::from_files(&cert_path, &key_path).unwrap());
    let transport = relay_server::listen::Transport::Tls(relay_server::listen::tls::TlsTransport {
        config: relay_server::listen::tls::server_config(resolver.clone(), &[b"http/1.1"]),
        hosts: resolver.clone(),
        proxy_protocol: false,
    });
    let relay = start_with(transport, support::fast_opts()).await;
    ttls::register(relay.addr, target(&old, NAME));
    let sid = fresh_server_id();
    let mut binary = FakeBinary::builder(relay.addr, &sid)
        .host(NAME)
        .connect()
        .await
        .unwrap();
    let mut phone = FakePhone::builder(relay.addr, &sid)
        .host(NAME)
        .connect()
        .await
        .unwrap();

    let new = ttls::test_certificate(&[NAME, "relay2.example.com"]);
    std::fs::write(&cert_path, &new.cert_pem).unwrap();
    std::fs::write(&key_path, &new.key_pem).unwrap();
    resolver.reload().unwrap();

    // New connections see the new certificate (trusting only it works, only the old fails).
    let s = ttls::handshake(
        TcpStream::connect(relay.addr).await.unwrap(),
        &target(&new, NAME),
    )
    .await
    .expect("new handshakes get the new certificate");
    let ClientStream::Tls(tls) = &s else {
        unreachable!()
    };
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], new.der);
    assert!(ttls::handshake(
        TcpStream::connect(relay.addr).await.unwrap(),
        &target(&old, NAME)
    )
    .await
    .is_err());
    // The new certificate's names are the Host check's names now.
    ttls::register(relay.addr, target(&new, NAME));
    FakeBinary::builder(relay.addr, &fresh_server_id())
        .host("relay2.example.com")
        .connect()
        .await
        .expect("a name only the new certificate has");
    // The live pair still routes both ways.
    phone.send_text(r#"{"after":"reload"}"#).await.unwrap();
    let env = binary.recv_envelope().await.unwrap();
    binary.send_to(&env.conn_id, r#""ok""#).await.unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#""ok""#);

    // A broken pair (key of another certificate) is refused and the current one kept.
    let other = ttls::test_certificate(&[NAME]);
    std::fs::write(&key_path, &other.key_pem).unwrap();
    assert!(resolver.reload().is_err());
    resolver.reload_and_log();
    assert_eq!(resolver.reloads(), (0, 1), "a failed reload is counted");
    ttls::handshake(
        TcpStream::connect(relay.addr).await.unwrap(),
        &target(&new, NAME),
    )
    .await
    .expect("still the new certificate");
}

/// A fresh directory under the target dir (removed by the next run's `cargo clean`, not here:
/// a failing test leaves its files to look at).
fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-e2e-tls-{}", fresh_server_id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
