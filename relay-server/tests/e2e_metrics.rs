//! The §10 series through the real `/metrics` listener: scraped before and after each kind of
//! event (connect, route, close reasons, drop reasons, grace, reclaim, takeover, expiry,
//! refusals), asserting exactly which counters moved and by how much.

mod support;

use std::time::Duration;

use relay_core::envelope::EnvelopeError;
use relay_server::RelayOptions;
use relay_testkit::client::{fresh_server_id, FakePhone};
use relay_testkit::raw::{encode_frame, OpCode, RawClient};
use support::{assert_moved, binary_for, Scrape, TestRelay};

fn up(endpoint: &str, outcome: &str) -> String {
    format!(
        r#"pyrycode_relay_ws_upgrade_attempts_total{{endpoint="{endpoint}",outcome="{outcome}"}}"#
    )
}

fn closes(role: &str, reason: &str) -> String {
    format!(r#"pyrycode_relay_closes_total{{role="{role}",reason="{reason}"}}"#)
}

fn drops(reason: &str) -> String {
    format!(r#"pyrycode_relay_drops_total{{reason="{reason}"}}"#)
}

fn frames(direction: &str) -> String {
    format!(r#"pyrycode_relay_frames_forwarded_total{{direction="{direction}"}}"#)
}

fn bytes(direction: &str) -> String {
    format!(r#"pyrycode_relay_bytes_forwarded_total{{direction="{direction}"}}"#)
}

const BINARIES: &str = "pyrycode_relay_connected_binaries";
const PHONES: &str = "pyrycode_relay_connected_phones";
const IN_GRACE: &str = "pyrycode_relay_binaries_in_grace";

/// Asserts with owned sample names.
async fn moved(relay: &TestRelay, before: &Scrape, expected: &[(String, f64)]) -> Scrape {
    let pairs: Vec<(&str, f64)> = expected.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_moved(relay, before, &pairs).await
}

#[tokio::test]
async fn every_series_exists_at_zero_at_boot() {
    // §10: "every series created at zero at boot", fixed label sets.
    let relay = support::start(support::fast_opts()).await;
    let s = Scrape::of(&relay).await;
    for sample in [
        up("server", "accept"),
        up("client", "reject_404"),
        up("client", "reject_rate_limit"),
        r#"pyrycode_relay_register_failures_total{kind="ratelimit"}"#.into(),
        frames("phone_to_binary"),
        frames("binary_to_phone"),
        "pyrycode_relay_grace_expiries_total".into(),
        r#"pyrycode_relay_push_wakes_total{outcome="token_fetch_failed"}"#.into(),
        closes("phone", "binary_did_not_reconnect"),
        drops("unknown_conn_id"),
        r#"pyrycode_relay_admission_refusals_total{limit="connections"}"#.into(),
        r#"pyrycode_relay_acme_orders_total{outcome="failed"}"#.into(),
        r#"pyrycode_relay_cluster_directory_operations_total{op="claim",outcome="timeout"}"#.into(),
        "pyrycode_relay_buffered_bytes".into(),
        BINARIES.into(),
        PHONES.into(),
        IN_GRACE.into(),
    ] {
        assert_eq!(s.get(&sample), 0.0, "{sample}");
    }
    assert!(s.get("process_resident_memory_bytes") > 0.0);
    assert!(s.get("process_open_fds") > 0.0);
    assert!(s.get("pyrycode_relay_buffered_bytes_limit") > 0.0);
    assert_no_peer_values(&s);
}

/// §10: label values come from fixed sets, never a server-id, conn_id, IP or token: nothing
/// in a sample name is a long hex run (conn ids, UUIDs), a dotted quad, or a dash-joined id.
fn assert_no_peer_values(s: &Scrape) {
    for k in s.0.keys() {
        let longest_hex = k
            .split(|c: char| !c.is_ascii_hexdigit())
            .map(str::len)
            .max()
            .unwrap_or(0);
        assert!(longest_hex < 8, "{k}");
        assert!(!k.contains("127.0.0.1") && !k.contains('-'), "{k}");
    }
}

#[tokio::test]
async fn connects_routes_and_closes_move_exactly_their_series() {
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let s0 = Scrape::of(&relay).await;

    let mut binary = binary_for(&relay, &sid).await;
    let s1 = moved(
        &relay,
        &s0,
        &[(up("server", "accept"), 1.0), (BINARIES.into(), 1.0)],
    )
    .await;

    let mut phone = FakePhone::connect(relay.addr, &sid).await.unwrap();
    let s2 = moved(
        &relay,
        &s1,
        &[(up("client", "accept"), 1.0), (PHONES.into(), 1.0)],
    )
    .await;

    phone.send_text(r#"{"n":1}"#).await.unwrap();
    let c = binary.recv_envelope().await.unwrap().conn_id;
    binary.send_to(&c, r#"{"ok":true}"#).await.unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#"{"ok":true}"#);
    let s3 = moved(
        &relay,
        &s2,
        &[
            (frames("phone_to_binary"), 1.0),
            (bytes("phone_to_binary"), 7.0),
            (frames("binary_to_phone"), 1.0),
            (bytes("binary_to_phone"), 11.0),
        ],
    )
    .await;

    // A close the binary asks for (§4.2).
    binary.close_phone(&c, 4401, None).await.unwrap();
    assert_eq!(phone.expect_close().await.unwrap().0, 4401);
    let s4 = moved(
        &relay,
        &s3,
        &[
            (closes("phone", "requested_by_binary"), 1.0),
            (PHONES.into(), -1.0),
        ],
    )
    .await;

    // A phone that closes itself, and one that vanishes (§4.3).
    let mut phone = FakePhone::connect(relay.addr, &sid).await.unwrap();
    phone.close(1000).await.unwrap();
    let gone = FakePhone::connect(relay.addr, &sid).await.unwrap();
    gone.abort();
    let s5 = moved(
        &relay,
        &s4,
        &[
            (up("client", "accept"), 2.0),
            (closes("phone", "peer_closed"), 1.0),
            (closes("phone", "vanished"), 1.0),
        ],
    )
    .await;

    // The binary leaves: grace (§6.3), then it reclaims.
    binary.close(1000).await.unwrap();
    let s6 = moved(
        &relay,
        &s5,
        &[
            (closes("binary", "peer_closed"), 1.0),
            ("pyrycode_relay_grace_periods_started_total".into(), 1.0),
            (BINARIES.into(), -1.0),
            (IN_GRACE.into(), 1.0),
        ],
    )
    .await;
    let _again = binary_for(&relay, &sid).await;
    let s7 = moved(
        &relay,
        &s6,
        &[
            (up("server", "accept"), 1.0),
            (
                r#"pyrycode_relay_reclaims_total{policy="evict"}"#.into(),
                1.0,
            ),
            (BINARIES.into(), 1.0),
            (IN_GRACE.into(), -1.0),
        ],
    )
    .await;
    assert_no_peer_values(&s7);
}

#[tokio::test]
async fn drops_count_by_reason_and_malformed_envelopes_by_kind() {
    let relay = support::start(RelayOptions {
        max_message_size: 1024,
        ..support::fast_opts()
    })
    .await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let mut phone = FakePhone::connect(relay.addr, &sid).await.unwrap();
    phone.send_text(r#""hi""#).await.unwrap();
    let c = binary.recv_envelope().await.unwrap().conn_id;
    let s0 = Scrape::of(&relay).await;

    binary.send_text(r#"{"frame":1}"#).await.unwrap();
    binary
        .send_to("c-00000000000000000000000000000000", "1")
        .await
        .unwrap();
    binary
        .send_text(&format!(
            r#"{{"conn_id":"{c}","frame":"{}"}}"#,
            "x".repeat(3000)
        ))
        .await
        .unwrap();
    assert_eq!(phone.expect_close().await.unwrap().0, 1009);
    let _ = binary.recv_envelope().await.unwrap(); // the 1009 close notice
    let kind = format!(
        r#"pyrycode_relay_malformed_envelopes_total{{kind="{}"}}"#,
        EnvelopeError::ConnIdMissing.as_str()
    );
    moved(
        &relay,
        &s0,
        &[
            (drops("malformed_envelope"), 1.0),
            (kind, 1.0),
            (drops("unknown_conn_id"), 1.0),
            (drops("oversize_binary_message"), 1.0),
            (closes("phone", "message_too_big"), 1.0),
            (PHONES.into(), -1.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn grace_expiry_takeover_and_conflicts_move_their_series() {
    let relay = support::start(RelayOptions {
        grace_period: Duration::from_millis(300),
        conflict_probe_timeout: Duration::from_millis(300),
        ..support::fast_opts()
    })
    .await;
    let sid = fresh_server_id();

    // Expiry: the phone of a binary that never comes back is closed 1011 (§6.3).
    let binary = binary_for(&relay, &sid).await;
    let mut phone = FakePhone::connect(relay.addr, &sid).await.unwrap();
    let s0 = Scrape::of(&relay).await;
    binary.abort();
    assert_eq!(
        phone.expect_close().await.unwrap(),
        (1011, "binary did not reconnect".into())
    );
    let s1 = moved(
        &relay,
        &s0,
        &[
            (closes("binary", "vanished"), 1.0),
            ("pyrycode_relay_grace_periods_started_total".into(), 1.0),
            ("pyrycode_relay_grace_expiries_total".into(), 1.0),
            (closes("phone", "binary_did_not_reconnect"), 1.0),
            (BINARIES.into(), -1.0),
            (PHONES.into(), -1.0),
        ],
    )
    .await;

    // A second binary for a live one that answers the probe: 4409 (§6.2).
    let mut incumbent = binary_for(&relay, &sid).await;
    let s2 = moved(&relay, &s1, &[(up("server", "accept"), 1.0)]).await;
    let newcomer = tokio::spawn({
        let addr = relay.addr;
        let sid = sid.clone();
        async move {
            let mut b = relay_testkit::client::FakeBinary::connect(addr, &sid)
                .await
                .unwrap();
            b.send_text(r#"{"conn_id":"c-1","frame":1}"#).await.unwrap();
            b.expect_close().await.unwrap()
        }
    });
    // The incumbent answers pings while it is read.
    let answered = tokio::time::timeout(
        Duration::from_secs(3),
        incumbent.expect_silence(Duration::from_millis(600)),
    )
    .await;
    assert!(answered.is_ok());
    assert_eq!(
        newcomer.await.unwrap(),
        (4409, "server-id already claimed".into())
    );
    let s3 = moved(
        &relay,
        &s2,
        &[
            (up("server", "reject_409"), 1.0),
            (
                r#"pyrycode_relay_register_failures_total{kind="server_in_use"}"#.into(),
                1.0,
            ),
            (closes("binary", "already_claimed"), 1.0),
            (drops("during_conflict_probe"), 1.0),
        ],
    )
    .await;

    // An incumbent that does not answer loses the server-id (takeover, §6.2).
    incumbent.set_muted(true);
    let _winner = relay_testkit::client::FakeBinary::connect(relay.addr, &sid)
        .await
        .unwrap();
    let mut muted = incumbent;
    let _ = tokio::time::timeout(Duration::from_secs(3), muted.expect_close()).await;
    moved(
        &relay,
        &s3,
        &[
            (up("server", "accept"), 1.0),
            ("pyrycode_relay_takeovers_total".into(), 1.0),
            (closes("binary", "heartbeat_timeout"), 1.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn http_refusals_and_registry_refusals_count_once_each() {
    let relay = support::start(RelayOptions {
        phones_per_server: 1,
        max_connections: 3,
        ..support::fast_opts()
    })
    .await;
    let sid = fresh_server_id();
    let s0 = Scrape::of(&relay).await;

    // 400: a header breaks §2's rules.
    let r = FakePhone::builder(relay.addr, &sid)
        .without_header("User-Agent")
        .refused()
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    // 4404: nobody holds the server-id.
    let mut lonely = FakePhone::connect(relay.addr, &sid).await.unwrap();
    assert_eq!(lonely.expect_close().await.unwrap().0, 4404);
    let s1 = moved(
        &relay,
        &s0,
        &[
            (up("client", "reject_headers"), 1.0),
            (up("client", "reject_404"), 1.0),
            (
                r#"pyrycode_relay_register_failures_total{kind="no_server"}"#.into(),
                1.0,
            ),
            (closes("phone", "no_server"), 1.0),
        ],
    )
    .await;

    // 4429: the server-id has its share of phones (§8).
    let _binary = binary_for(&relay, &sid).await;
    let _first = FakePhone::connect(relay.addr, &sid).await.unwrap();
    let mut second = FakePhone::connect(relay.addr, &sid).await.unwrap();
    assert_eq!(second.expect_close().await.unwrap().0, 4429);
    let s2 = moved(
        &relay,
        &s1,
        &[
            (up("server", "accept"), 1.0),
            (up("client", "accept"), 1.0),
            (up("client", "reject_429"), 1.0),
            (
                r#"pyrycode_relay_register_failures_total{kind="phones_at_cap"}"#.into(),
                1.0,
            ),
            (closes("phone", "too_many_phones"), 1.0),
        ],
    )
    .await;

    // 503: the global cap (3 live: binary, first phone, and one more).
    support::eventually("the refused phones' slots are back", || {
        relay.shared.conn_slots.available_permits() == 1
    })
    .await;
    let _third = binary_for(&relay, &fresh_server_id()).await;
    let r = FakePhone::builder(relay.addr, &sid)
        .refused()
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    // 405: not a GET.
    let mut raw = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(b"POST /v1/client HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    raw.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 405");
    moved(
        &relay,
        &s2,
        &[
            (up("server", "accept"), 1.0),
            (up("client", "reject_capacity"), 1.0),
            (
                r#"pyrycode_relay_admission_refusals_total{limit="connections"}"#.into(),
                1.0,
            ),
            (up("client", "reject_method"), 1.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn violations_count_under_their_own_close_reason() {
    let relay = support::start(RelayOptions {
        message_read_timeout: Duration::from_millis(300),
        ..support::fast_opts()
    })
    .await;
    let sid = fresh_server_id();
    let _binary = binary_for(&relay, &sid).await;
    let s0 = Scrape::of(&relay).await;

    let headers = [("X-Pyrycode-Server", sid.as_str()), ("User-Agent", "raw/1")];
    let raw_phone = || RawClient::connect(relay.addr, "/v1/client", &headers);
    // 1007 "frame is not JSON" (§4.1).
    let mut a = raw_phone().await.unwrap();
    a.send_text("not json").await.unwrap();
    assert_eq!(a.read_until_close().await.unwrap().0, 1007);
    // 1007 from the WS layer: a text message that is not UTF-8.
    let mut b = raw_phone().await.unwrap();
    b.send_frame(true, OpCode::Text, &[0xff]).await.unwrap();
    assert_eq!(b.read_until_close().await.unwrap().0, 1007);
    // 1002: an unmasked client frame.
    let mut c = raw_phone().await.unwrap();
    c.send_bytes(&encode_frame(true, OpCode::Text, b"1", None))
        .await
        .unwrap();
    assert_eq!(c.read_until_close().await.unwrap().0, 1002);
    // 1008: half a message, then silence (§7).
    let mut d = raw_phone().await.unwrap();
    d.send_partial_frame(true, OpCode::Text, b"{\"slow\":1}", 3)
        .await
        .unwrap();
    assert_eq!(d.read_until_close().await.unwrap().0, 1008);
    moved(
        &relay,
        &s0,
        &[
            (up("client", "accept"), 4.0),
            (closes("phone", "frame_not_json"), 1.0),
            (closes("phone", "invalid_utf8"), 1.0),
            (closes("phone", "protocol_error"), 1.0),
            (closes("phone", "message_too_slow"), 1.0),
        ],
    )
    .await;
}

/// Every metric name in an expression (PromQL functions and label names left out).
fn series_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_braces = 0u32;
    let mut in_quotes = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        match c {
            '"' => in_quotes = !in_quotes,
            '{' if !in_quotes => in_braces += 1,
            '}' if !in_quotes => in_braces = in_braces.saturating_sub(1),
            _ => {}
        }
        if !in_quotes && in_braces == 0 && (c.is_ascii_alphanumeric() || c == '_') {
            word.push(c);
            continue;
        }
        if word.starts_with("pyrycode_relay_") || word.starts_with("process_") {
            out.push(std::mem::take(&mut word));
        }
        word.clear();
    }
    out
}

#[tokio::test]
async fn every_dashboard_and_alert_expression_names_a_series_the_relay_serves() {
    // Issue 8: "a test that every expression names a series that /metrics actually serves".
    let relay = support::start(support::fast_opts()).await;
    let served: std::collections::BTreeSet<String> = Scrape::of(&relay)
        .await
        .0
        .keys()
        .map(|k| k.split('{').next().unwrap().to_owned())
        .collect();
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{deploy}/grafana/relay.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut exprs: Vec<(String, String)> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let e = target["expr"].as_str().unwrap().to_owned();
            exprs.push((format!("panel {}", panel["title"]), e));
        }
    }
    let alerts = std::fs::read_to_string(format!("{deploy}/prometheus/alerts.yml")).unwrap();
    let mut alert = String::new();
    for line in alerts.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            alert = name.trim().to_owned();
        }
        if let Some(e) = line.trim().strip_prefix("expr:") {
            exprs.push((format!("alert {alert}"), e.trim().to_owned()));
        }
    }
    assert!(exprs.len() > 30, "{} expressions", exprs.len());
    let mut named = 0;
    for (where_, e) in &exprs {
        let names = series_in(e);
        assert!(!names.is_empty(), "{where_} names no series: {e}");
        for n in names {
            assert!(served.contains(&n), "{where_}: {n} is not served by /metrics ({e})");
            named += 1;
        }
    }
    assert!(named >= exprs.len());
    // The parser itself: it must see through functions, label matchers and strings.
    assert_eq!(
        series_in(r#"sum by (x) (rate(pyrycode_relay_a_total{o=~"pyrycode_relay_no"}[5m])) / process_b"#),
        ["pyrycode_relay_a_total", "process_b"]
    );
}
