//! End-to-end routing through real sockets: the relay in-process, tokio-tungstenite clients
//! (and a raw misbehaving client) on the other side. Each test is one behaviour of
//! `shared/protocol.md`, cited as §N.

mod support;

use std::time::{Duration, Instant};

use relay_core::envelope::EnvelopeError;
use relay_core::ReclaimPolicy;
use relay_server::RelayOptions;
use relay_testkit::client::{fresh_server_id, ClientBuilder, Envelope, FakeBinary, FakePhone};
use relay_testkit::raw::{OpCode, RawClient, RawError, RawMessage};
use support::{binary_for, TestRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The phone says hello so the test learns its conn_id, which only the binary is told (§4.1).
async fn hello(binary: &mut FakeBinary, phone: &mut FakePhone) -> String {
    phone
        .send_text(r#"{"hello":1}"#)
        .await
        .expect("phone hello");
    let env = binary.recv_envelope().await.expect("hello envelope");
    assert_eq!(env.frame(), Some(r#"{"hello":1}"#));
    env.conn_id
}

async fn phone_for(
    relay: &TestRelay,
    binary: &mut FakeBinary,
    server_id: &str,
) -> (FakePhone, String) {
    let mut phone = FakePhone::connect(relay.addr, server_id)
        .await
        .expect("phone upgrade");
    let conn_id = hello(binary, &mut phone).await;
    (phone, conn_id)
}

const RAW_PHONE_UA: &str = "raw-phone/1";

/// A raw phone that has said hello; returns it with its conn_id.
async fn raw_phone_for(
    relay: &TestRelay,
    binary: &mut FakeBinary,
    server_id: &str,
) -> (RawClient, String) {
    let mut raw = RawClient::connect(
        relay.addr,
        "/v1/client",
        &[
            ("X-Pyrycode-Server", server_id),
            ("User-Agent", RAW_PHONE_UA),
        ],
    )
    .await
    .expect("raw phone upgrade");
    raw.send_text(r#"{"hello":"raw"}"#).await.unwrap();
    let env = binary.recv_envelope().await.expect("raw hello envelope");
    assert_eq!(env.frame(), Some(r#"{"hello":"raw"}"#));
    (raw, env.conn_id)
}

/// The envelope the relay must write for a phone message (§4.1), byte for byte.
fn envelope_bytes(conn_id: &str, frame: &str) -> String {
    format!(r#"{{"conn_id":"{conn_id}","frame":{frame}}}"#)
}

/// Asserts the next thing the binary gets is the §4.3 close notice for `conn_id` with `code`.
async fn expect_notice(binary: &mut FakeBinary, conn_id: &str, code: u16) {
    let env = binary.recv_envelope().await.expect("close notice");
    assert!(env.is_close_notice(), "not a close notice: {}", env.raw);
    assert_eq!(env.conn_id, conn_id);
    assert_eq!(env.close_code, Some(code), "{}", env.raw);
    assert_eq!(env.token, None);
    assert_eq!(
        env.raw,
        format!(r#"{{"conn_id":"{conn_id}","close_code":{code}}}"#)
    );
}

/// A plain HTTP/1.1 GET; returns (status, headers, body).
async fn http_get(relay: &TestRelay, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = relay_testkit::tls::connect(relay.addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        relay.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("response within 5 s")
        .unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8(response[..split].to_vec()).unwrap();
    let body = response[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------------------------
// §4.1 / §4.2: splicing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn phone_message_is_spliced_verbatim_into_the_binary_envelope() {
    // §4.1: `frame` is the exact bytes the phone sent, whitespace and escapes included.
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut phone, conn_id) = phone_for(&relay, &mut binary, &sid).await;
    let frames = [
        "  { \"b\" : [1,   2],\n\t\"a\":\"x\" }  ",
        r#""\u00e9\ud83d\ude00 \"quoted\" \\ \/""#,
        "\"raw unicode: é 😀\"",
        r#"{"nested":{"deeper":[[[{"x":[]}]]],"n":-0.5e-3},"dup":1,"dup":2}"#,
        "1e400",
        "\r\n[ ]\r\n",
        "null",
    ];
    for frame in frames {
        phone.send_text(frame).await.unwrap();
        let env = binary.recv_envelope().await.unwrap();
        assert_eq!(env.raw, envelope_bytes(&conn_id, frame));
        // The client's JSON parser trims whitespace around a value; `raw` above is exact.
        assert_eq!(env.frame(), Some(frame.trim()));
    }
}

#[tokio::test]
async fn binary_frame_value_reaches_the_phone_byte_for_byte() {
    // §4.2: the value's bytes as written in the envelope, without the whitespace around it;
    // unknown fields are ignored.
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut phone, conn_id) = phone_for(&relay, &mut binary, &sid).await;
    let frames = [
        "{ \"b\" : [1,   2],\n\t\"a\":\"x\" }",
        r#""\u00e9\ud83d\ude00 \"quoted\" \\ \/""#,
        "\"raw unicode: é 😀\"",
        r#"{"nested":{"deeper":[[[{"x":[]}]]],"n":-0.5e-3},"dup":1,"dup":2}"#,
        "1e400",
        "[ ]",
        "false",
    ];
    for frame in frames {
        let envelope = format!(
            "{{ \"unknown\" : {{\"frame\":\"not this one\"}},\n  \"conn_id\" : \"{conn_id}\" ,\t\"frame\" :  \r\n {frame} \n }} "
        );
        binary.send_text(&envelope).await.unwrap();
        assert_eq!(phone.recv_text().await.unwrap(), frame);
    }
}

#[tokio::test]
async fn binary_opcode_messages_are_accepted_from_both_sides_and_relayed_as_text() {
    // §4: the relay accepts text or binary opcodes and always sends text. `recv_text` fails on
    // a binary message, so receiving at all proves the opcode.
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut phone, conn_id) = phone_for(&relay, &mut binary, &sid).await;

    phone
        .send_binary(br#"{"from":"phone", "op":"binary"}"#)
        .await
        .unwrap();
    let env = binary.recv_envelope().await.unwrap();
    assert_eq!(env.frame(), Some(r#"{"from":"phone", "op":"binary"}"#));

    let envelope = format!(r#"{{"conn_id":"{conn_id}","frame":{{"from":"binary"}}}}"#);
    binary.send_binary(envelope.as_bytes()).await.unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#"{"from":"binary"}"#);
}

#[tokio::test]
async fn binary_conn_id_with_json_escapes_is_decoded_before_routing() {
    // §4.2: conn_id is a JSON string and may contain escapes.
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut phone, conn_id) = phone_for(&relay, &mut binary, &sid).await;
    let escaped = format!(r#"\u0063\u002d{}"#, &conn_id[2..]);
    binary
        .send_text(&format!(r#"{{"conn_id":"{escaped}","frame":"escaped"}}"#))
        .await
        .unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#""escaped""#);
    assert_eq!(relay.shared.metrics.unknown_conn_ids(), 0);
}

// ---------------------------------------------------------------------------------------------
// §4.1: the token is never forwarded
// ---------------------------------------------------------------------------------------------

/// §4.1: the envelope is exactly `{"conn_id":…,"frame":…}`: no token field, and the phone's
/// `X-Pyrycode-Token` value nowhere in it.
fn assert_no_token(env: &Envelope, token: &str) {
    assert_eq!(env.token, None, "{}", env.raw);
    assert!(
        !env.raw.contains(token),
        "token on the binary leg: {}",
        env.raw
    );
    let frame = env.frame().expect("a frame");
    assert_eq!(
        env.raw,
        format!(r#"{{"conn_id":"{}","frame":{frame}}}"#, env.conn_id)
    );
}

#[tokio::test]
async fn token_never_reaches_the_binary_from_a_direct_phone() {
    // §4.1 "Relay implementations MUST NOT set it": not on the first envelope, not later.
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let token = "tok-ABC.123~";
    let mut phone = FakePhone::builder(relay.addr, &sid)
        .token(token)
        .connect()
        .await
        .unwrap();
    for n in 1..=5 {
        phone.send_text(&n.to_string()).await.unwrap();
        let env = binary.recv_envelope().await.unwrap();
        assert_eq!(env.frame(), Some(n.to_string().as_str()));
        assert_no_token(&env, token);
    }
    // Nor in the close notice when the phone leaves (§4.3).
    phone.close(1000).await.unwrap();
    let notice = binary.recv_envelope().await.unwrap();
    assert_eq!(notice.close_code, Some(1000));
    assert!(!notice.raw.contains(token), "{}", notice.raw);
}

#[tokio::test]
async fn token_never_reaches_the_binary_that_inherits_a_phone() {
    // §4.1 + §6.4 inherit: neither the old binary, nor the new one on the held path (sent
    // during grace) or the direct path.
    let relay = support::start(RelayOptions {
        reclaim_policy: ReclaimPolicy::Inherit,
        ..support::fast_opts()
    })
    .await;
    let sid = fresh_server_id();
    let mut old = binary_for(&relay, &sid).await;
    let token = "per-binary-secret";
    let mut phone = FakePhone::builder(relay.addr, &sid)
        .token(token)
        .connect()
        .await
        .unwrap();
    phone.send_text("1").await.unwrap();
    assert_no_token(&old.recv_envelope().await.unwrap(), token);

    old.abort();
    support::eventually("the slot is in grace", || {
        relay.shared.registry.in_grace(&sid)
    })
    .await;
    phone.send_text("2").await.unwrap();
    let mut new = binary_for(&relay, &sid).await;
    let held = new.recv_envelope().await.unwrap();
    assert_eq!(
        held.frame(),
        Some("2"),
        "held during grace, delivered first"
    );
    assert_no_token(&held, token);
    phone.send_text("3").await.unwrap();
    let env = new.recv_envelope().await.unwrap();
    assert_eq!(env.frame(), Some("3"));
    assert_no_token(&env, token);
}

#[tokio::test]
async fn token_is_checked_but_never_forwarded_even_with_json_special_characters() {
    // §2: a valid header (quote and backslash are printable ASCII) is accepted; §4.1: dropped.
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let token = r#"a"b\c"#;
    let mut phone = FakePhone::builder(relay.addr, &sid)
        .token(token)
        .connect()
        .await
        .unwrap();
    phone.send_text("{}").await.unwrap();
    let env = binary.recv_envelope().await.unwrap();
    assert_no_token(&env, token);
    assert!(!env.raw.contains(r#"a\"b"#), "{}", env.raw);
}

#[tokio::test]
async fn phone_without_token_header_never_gets_one() {
    // §4.1: no envelope carries a token, with or without the header, side by side.
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let mut with = FakePhone::builder(relay.addr, &sid)
        .token("sibling-token")
        .connect()
        .await
        .unwrap();
    let mut without = FakePhone::connect(relay.addr, &sid).await.unwrap();
    with.send_text(r#""with""#).await.unwrap();
    let env = binary.recv_envelope().await.unwrap();
    assert_no_token(&env, "sibling-token");
    for n in 0..3 {
        without.send_text(&n.to_string()).await.unwrap();
        let env = binary.recv_envelope().await.unwrap();
        assert_eq!(env.frame(), Some(n.to_string().as_str()));
        assert_eq!(env.token, None, "{}", env.raw);
        assert!(!env.raw.contains("token"), "{}", env.raw);
    }
}

#[tokio::test]
async fn empty_token_header_counts_as_absent() {
    // §2: an empty X-Pyrycode-Token counts as absent: no 400, and no token in any envelope.
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let mut phone = FakePhone::builder(relay.addr, &sid)
        .token("")
        .connect()
        .await
        .expect("an empty token is not a bad header");
    for n in 0..2 {
        phone.send_text(&n.to_string()).await.unwrap();
        let env = binary.recv_envelope().await.unwrap();
        assert_eq!(env.frame(), Some(n.to_string().as_str()));
        assert_eq!(env.token, None, "{}", env.raw);
        assert!(!env.raw.contains("token"), "{}", env.raw);
    }
}

// ---------------------------------------------------------------------------------------------
// §4.1: phone messages must be JSON
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn phone_message_that_is_not_json_closes_that_phone_1007_and_notifies_the_binary() {
    // §4.1 and §4.3: text or binary opcode, not UTF-8 JSON → 1007 "frame is not JSON" for that
    // phone, a 1007 notice for the binary, and its siblings carry on.
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut sibling, sibling_id) = phone_for(&relay, &mut binary, &sid).await;

    let (mut text, text_id) = phone_for(&relay, &mut binary, &sid).await;
    text.send_text("{not json}").await.unwrap();
    assert_eq!(
        text.expect_close().await.unwrap(),
        (1007, "frame is not JSON".into())
    );
    expect_notice(&mut binary, &text_id, 1007).await;

    let (mut bin, bin_id) = phone_for(&relay, &mut binary, &sid).await;
    bin.send_binary(b"[1, 2,]").await.unwrap();
    assert_eq!(
        bin.expect_close().await.unwrap(),
        (1007, "frame is not JSON".into())
    );
    expect_notice(&mut binary, &bin_id, 1007).await;

    let (mut utf8, utf8_id) = phone_for(&relay, &mut binary, &sid).await;
    utf8.send_binary(b"\"\xff\xfe\"").await.unwrap();
    assert_eq!(
        utf8.expect_close().await.unwrap(),
        (1007, "frame is not JSON".into())
    );
    expect_notice(&mut binary, &utf8_id, 1007).await;

    // A text-opcode message that is not UTF-8 breaks RFC 6455 itself; still 1007 (§5).
    let (mut raw, raw_id) = raw_phone_for(&relay, &mut binary, &sid).await;
    raw.send_text(b"\"\xc3\x28\"").await.unwrap();
    let (code, _) = raw.read_until_close().await.unwrap();
    assert_eq!(code, 1007);
    expect_notice(&mut binary, &raw_id, 1007).await;

    sibling.send_text(r#""still here""#).await.unwrap();
    let env = binary.recv_envelope().await.unwrap();
    assert_eq!(
        (env.conn_id.as_str(), env.frame()),
        (sibling_id.as_str(), Some(r#""still here""#))
    );
    binary.send_to(&sibling_id, r#""me too""#).await.unwrap();
    assert_eq!(sibling.recv_text().await.unwrap(), r#""me too""#);
}

// ---------------------------------------------------------------------------------------------
// §4.2: malformed and unroutable envelopes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_envelopes_are_dropped_and_counted_and_the_binary_keeps_working() {
    // §4.2 "Malformed": drop, count, binary stays connected. After each bad envelope a good
    // one must reach the phone: the binary's messages are handled in order, so by then the bad
    // one was handled (and counted), and nothing of it reached the phone.
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut phone, c) = phone_for(&relay, &mut binary, &sid).await;
    use EnvelopeError::*;
    let cases: Vec<(String, EnvelopeError)> = vec![
        ("not json".into(), NotJson),
        (format!(r#"{{"conn_id":"{c}","frame":"leak""#), NotJson),
        (format!(r#"{{"conn_id":"{c}","frame":"leak"}}}}"#), NotJson),
        (
            format!(r#"{{"conn_id":"{c}","frame":{{"a":1,}}}}"#),
            NotJson,
        ),
        (format!(r#"{{"conn_id":"{c}","frame":01}}"#), NotJson),
        (
            format!(r#"[{{"conn_id":"{c}","frame":"leak"}}]"#),
            NotObject,
        ),
        (format!(r#""{c}""#), NotObject),
        ("42".into(), NotObject),
        ("null".into(), NotObject),
        (r#"{"frame":"leak"}"#.into(), ConnIdMissing),
        ("{}".into(), ConnIdMissing),
        (r#"{"conn_id":"","frame":"leak"}"#.into(), ConnIdEmpty),
        (r#"{"conn_id":42,"frame":"leak"}"#.into(), ConnIdNotString),
        (r#"{"conn_id":null,"frame":"leak"}"#.into(), ConnIdNotString),
        (
            format!(r#"{{"conn_id":["{c}"],"frame":"leak"}}"#),
            ConnIdNotString,
        ),
        (format!(r#"{{"conn_id":"{c}"}}"#), Empty),
        (format!(r#"{{"conn_id":"{c}","frame":null}}"#), Empty),
        (format!(r#"{{"conn_id":"{c}","close_code":0}}"#), Empty),
        (
            format!(r#"{{"conn_id":"{c}","frame":null,"close_code":null}}"#),
            Empty,
        ),
        (
            format!(r#"{{"conn_id":"{c}","frame":"leak","close_code":1001}}"#),
            InvalidCloseCode,
        ),
        (
            format!(r#"{{"conn_id":"{c}","close_code":2999}}"#),
            InvalidCloseCode,
        ),
        (
            format!(r#"{{"conn_id":"{c}","close_code":5000}}"#),
            InvalidCloseCode,
        ),
        (
            format!(r#"{{"conn_id":"{c}","frame":"leak","close_code":1000.5}}"#),
            InvalidCloseCode,
        ),
        (
            format!(r#"{{"conn_id":"{c}","close_code":999}}"#),
            InvalidCloseCode,
        ),
        (
            format!(r#"{{"conn_id":"{c}","close_code":1011}}"#),
            InvalidCloseCode,
        ),
        (
            format!(r#"{{"conn_id":"{c}","close_code":-4000}}"#),
            InvalidCloseCode,
        ),
        (
            format!(r#"{{"conn_id":"{c}","close_code":"4000"}}"#),
            InvalidCloseCode,
        ),
        (
            format!(r#"{{"conn_id":"{c}","close_code":4e3}}"#),
            InvalidCloseCode,
        ),
        (
            format!(r#"{{"conn_id":"{c}","close_code":69536}}"#),
            InvalidCloseCode,
        ),
    ];
    for (i, (bad, kind)) in cases.iter().enumerate() {
        let before = relay.shared.metrics.malformed(*kind);
        binary.send_text(bad).await.unwrap();
        binary
            .send_to(&c, &format!(r#"{{"marker":{i}}}"#))
            .await
            .unwrap();
        assert_eq!(
            phone.recv_text().await.unwrap(),
            format!(r#"{{"marker":{i}}}"#),
            "after {bad}"
        );
        assert_eq!(
            relay.shared.metrics.malformed(*kind),
            before + 1,
            "{bad} counts as {kind:?}"
        );
    }
    // Not UTF-8 at all (binary opcode): not JSON either.
    let before = relay.shared.metrics.malformed(NotJson);
    binary
        .send_binary(b"{\"conn_id\":\"\xff\",\"frame\":1}")
        .await
        .unwrap();
    binary.send_to(&c, r#""last""#).await.unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#""last""#);
    assert_eq!(relay.shared.metrics.malformed(NotJson), before + 1);
    assert_eq!(relay.shared.metrics.unknown_conn_ids(), 0);
    phone.expect_silence(ms(100)).await.unwrap();
}

#[tokio::test]
async fn envelope_for_an_unknown_or_foreign_conn_id_is_dropped_and_counted() {
    // §4.2 "Unknown conn_id": never existed, already gone, or another server-id's phone. A
    // binary can only reach its own server-id's phones.
    let relay = support::start(support::fast_opts()).await;
    let (sid_a, sid_b) = (fresh_server_id(), fresh_server_id());
    let mut binary_a = binary_for(&relay, &sid_a).await;
    let mut binary_b = binary_for(&relay, &sid_b).await;
    let (mut phone_a, a) = phone_for(&relay, &mut binary_a, &sid_a).await;
    let (mut phone_b, b) = phone_for(&relay, &mut binary_b, &sid_b).await;
    let (mut gone, gone_id) = phone_for(&relay, &mut binary_a, &sid_a).await;
    gone.close(1000).await.unwrap();
    expect_notice(&mut binary_a, &gone_id, 1000).await;

    let unroutable = [
        format!(r#"{{"conn_id":"c-{}","frame":"leak"}}"#, "0".repeat(32)),
        format!(r#"{{"conn_id":"{gone_id}","frame":"leak"}}"#),
        format!(r#"{{"conn_id":"{b}","frame":"leak"}}"#),
        format!(r#"{{"conn_id":"{b}","close_code":4401}}"#),
        format!(r#"{{"conn_id":"{b}","frame":"leak","close_code":4401}}"#),
    ];
    for (i, envelope) in unroutable.iter().enumerate() {
        let before = relay.shared.metrics.unknown_conn_ids();
        binary_a.send_text(envelope).await.unwrap();
        binary_a.send_to(&a, &i.to_string()).await.unwrap();
        assert_eq!(
            phone_a.recv_text().await.unwrap(),
            i.to_string(),
            "after {envelope}"
        );
        assert_eq!(
            relay.shared.metrics.unknown_conn_ids(),
            before + 1,
            "{envelope}"
        );
    }
    // B's phone got nothing and is still open: its own binary still reaches it.
    phone_b.expect_silence(ms(200)).await.unwrap();
    binary_b.send_to(&b, r#""own""#).await.unwrap();
    assert_eq!(phone_b.recv_text().await.unwrap(), r#""own""#);
}

// ---------------------------------------------------------------------------------------------
// §4.2: close directives
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn close_directive_with_a_frame_delivers_the_frame_then_closes_with_that_code() {
    // §4.2: after the frame, close with that code and an empty reason.
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut phone, c) = phone_for(&relay, &mut binary, &sid).await;
    binary
        .close_phone(&c, 4401, Some(r#"{"bye": true}"#))
        .await
        .unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#"{"bye": true}"#);
    assert_eq!(phone.expect_close().await.unwrap(), (4401, String::new()));
}

#[tokio::test]
async fn close_directive_without_a_frame_just_closes() {
    // §4.2: `frame: null` and an absent frame both mean "no frame".
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut absent, absent_id) = phone_for(&relay, &mut binary, &sid).await;
    let (mut null, null_id) = phone_for(&relay, &mut binary, &sid).await;
    binary.close_phone(&absent_id, 4421, None).await.unwrap();
    binary
        .send_text(&format!(
            r#"{{"conn_id":"{null_id}","frame":null,"close_code":1000}}"#
        ))
        .await
        .unwrap();
    assert_eq!(absent.expect_close().await.unwrap(), (4421, String::new()));
    assert_eq!(null.expect_close().await.unwrap(), (1000, String::new()));
}

#[tokio::test]
async fn close_code_zero_or_null_means_no_close() {
    // §4.2: `close_code` absent, null or 0 all mean "no close".
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut phone, c) = phone_for(&relay, &mut binary, &sid).await;
    binary
        .send_text(&format!(
            r#"{{"conn_id":"{c}","frame":"zero","close_code":0}}"#
        ))
        .await
        .unwrap();
    binary
        .send_text(&format!(
            r#"{{"conn_id":"{c}","close_code":null,"frame":"null"}}"#
        ))
        .await
        .unwrap();
    binary.send_to(&c, r#""still open""#).await.unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#""zero""#);
    assert_eq!(phone.recv_text().await.unwrap(), r#""null""#);
    assert_eq!(phone.recv_text().await.unwrap(), r#""still open""#);
    // And the phone can still talk back.
    phone.send_text("true").await.unwrap();
    assert_eq!(binary.recv_envelope().await.unwrap().frame(), Some("true"));
}

#[tokio::test]
async fn close_directive_comes_after_every_earlier_message_for_that_phone() {
    // §4.2: "after every earlier message queued for that phone".
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut phone, c) = phone_for(&relay, &mut binary, &sid).await;
    for n in 0..50 {
        binary
            .send_to(&c, &format!(r#"{{"n":{n}}}"#))
            .await
            .unwrap();
    }
    binary.close_phone(&c, 4426, None).await.unwrap();
    let (before, code, reason) = phone.recv_until_close().await.unwrap();
    let texts: Vec<String> = before
        .iter()
        .map(|m| m.to_text().expect("text message").to_owned())
        .collect();
    let want: Vec<String> = (0..50).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    assert_eq!(texts, want);
    assert_eq!((code, reason.as_str()), (4426, ""));
}

#[tokio::test]
async fn close_requested_by_the_binary_sends_no_close_notice_back() {
    // §4.3: a close requested by the binary is the one departure the binary is not told about.
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut phone, c) = phone_for(&relay, &mut binary, &sid).await;
    binary.close_phone(&c, 4401, None).await.unwrap();
    assert_eq!(phone.expect_close().await.unwrap(), (4401, String::new()));
    // The notice would be sent right after the phone leaves the registry.
    support::eventually("the phone is unregistered", || {
        relay.shared.registry.phones(&sid).is_empty()
    })
    .await;
    binary.expect_silence(ms(300)).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// §4.3: close notices
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn phone_close_code_is_reported_to_the_binary() {
    // §4.3: N is the close code the phone sent; the notice has no frame key.
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut phone, c) = phone_for(&relay, &mut binary, &sid).await;
    phone.close(4000).await.unwrap();
    expect_notice(&mut binary, &c, 4000).await;
}

#[tokio::test]
async fn phone_close_frame_without_status_code_is_reported_as_1001() {
    // §4.3: "A close frame without a status code counts as 1001."
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut phone, c) = phone_for(&relay, &mut binary, &sid).await;
    phone.close_with(None).await.unwrap();
    expect_notice(&mut binary, &c, 1001).await;
}

#[tokio::test]
async fn phone_that_vanishes_is_reported_as_1001() {
    // §4.3: "1001 if it vanished without one": a FIN, and a reset.
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (phone, c) = phone_for(&relay, &mut binary, &sid).await;
    phone.abort();
    expect_notice(&mut binary, &c, 1001).await;

    let (raw, raw_id) = raw_phone_for(&relay, &mut binary, &sid).await;
    raw.tcp().set_zero_linger().unwrap();
    drop(raw); // RST
    expect_notice(&mut binary, &raw_id, 1001).await;
}

// ---------------------------------------------------------------------------------------------
// §5, §8: registry refusals after the upgrade
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn phone_for_an_unknown_server_id_is_closed_4404() {
    // §2, §5: a registry decision is a close code after the upgrade, never an HTTP status.
    let relay = support::start(support::fast_opts()).await;
    let mut phone = FakePhone::connect(relay.addr, &fresh_server_id())
        .await
        .expect("upgraded before the registry decides");
    assert_eq!(phone.response().status, 101);
    assert_eq!(
        phone.expect_close().await.unwrap(),
        (4404, "no server with that id".into())
    );
}

#[tokio::test]
async fn phone_over_phones_per_server_is_closed_4429() {
    // §8: `--phones-per-server` phones per server-id, then 4429; leaving frees a place.
    let relay = support::start(RelayOptions {
        phones_per_server: 2,
        ..support::fast_opts()
    })
    .await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut first, first_id) = phone_for(&relay, &mut binary, &sid).await;
    let (mut second, second_id) = phone_for(&relay, &mut binary, &sid).await;
    let mut third = FakePhone::connect(relay.addr, &sid).await.unwrap();
    assert_eq!(
        third.expect_close().await.unwrap(),
        (4429, "too many phones for server-id".into())
    );
    // A refused phone was never registered: no notice for it, the others are untouched.
    binary.send_to(&second_id, "2").await.unwrap();
    assert_eq!(second.recv_text().await.unwrap(), "2");
    first.close(1000).await.unwrap();
    expect_notice(&mut binary, &first_id, 1000).await;
    support::eventually("one phone left", || {
        relay.shared.registry.phones(&sid).len() == 1
    })
    .await;
    let (_fourth, _) = phone_for(&relay, &mut binary, &sid).await;
}

// ---------------------------------------------------------------------------------------------
// §2: HTTP before the upgrade
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn header_rule_violations_are_http_400_with_an_empty_body() {
    // §2: every header rule, checked before the upgrade; 400 with an empty body.
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let _binary = binary_for(&relay, &sid).await;
    let addr = relay.addr;
    let b = || FakeBinary::builder(addr, &sid);
    let p = || FakePhone::builder(addr, &sid);
    let binaries: Vec<(&str, ClientBuilder<FakeBinary>)> = vec![
        (
            "binary: no server-id",
            b().without_header("X-Pyrycode-Server"),
        ),
        ("binary: empty server-id", b().server_id("")),
        ("binary: server-id with a space", b().server_id("a b")),
        ("binary: server-id with a slash", b().server_id("a/b")),
        ("binary: server-id non-ASCII", b().server_id("ü")),
        ("binary: server-id 65 bytes", b().server_id(&"a".repeat(65))),
        (
            "binary: no version",
            b().without_header("X-Pyrycode-Version"),
        ),
        ("binary: empty version", b().version("")),
        ("binary: version with a space", b().version("1 0")),
        ("binary: version 65 bytes", b().version(&"1".repeat(65))),
        ("binary: version non-ASCII", b().version("v\u{e9}")),
        ("binary: no user agent", b().without_header("User-Agent")),
        ("binary: empty user agent", b().user_agent("")),
        (
            "binary: user agent 257 bytes",
            b().user_agent(&"u".repeat(257)),
        ),
        ("binary: user agent with a tab", b().user_agent("a\tb")),
        (
            "binary: duplicated server-id",
            b().add_header("X-Pyrycode-Server", &sid),
        ),
    ];
    let phones: Vec<(&str, ClientBuilder<FakePhone>)> = vec![
        (
            "phone: no server-id",
            p().without_header("X-Pyrycode-Server"),
        ),
        ("phone: server-id with a space", p().server_id("a b")),
        ("phone: server-id 65 bytes", p().server_id(&"a".repeat(65))),
        ("phone: no user agent", p().without_header("User-Agent")),
        (
            "phone: user agent 257 bytes",
            p().user_agent(&"u".repeat(257)),
        ),
        ("phone: user agent non-ASCII", p().user_agent("Zoë")),
        (
            "phone: device name 129 bytes",
            p().device_name(&"d".repeat(129)),
        ),
        (
            "phone: device name 130 bytes of UTF-8",
            p().device_name(&"é".repeat(65)),
        ),
        (
            "phone: device name with a C0 control",
            p().device_name("a\u{1}b"),
        ),
        ("phone: device name with DEL", p().device_name("a\u{7f}b")),
        (
            "phone: device name with a C1 control",
            p().device_name("a\u{85}b"),
        ),
        ("phone: device name with a tab", p().device_name("a\tb")),
        (
            "phone: device name not UTF-8",
            p().header_bytes("X-Pyrycode-Device-Name", b"a\xffb"),
        ),
        ("phone: token with a space", p().token("a b")),
        ("phone: token 513 bytes", p().token(&"t".repeat(513))),
        ("phone: token non-ASCII", p().token("t\u{e9}")),
        (
            "phone: duplicated server-id",
            p().add_header("X-Pyrycode-Server", &sid),
        ),
        (
            "phone: duplicated server-id, different values",
            p().add_header("X-Pyrycode-Server", "other"),
        ),
    ];
    for (what, builder) in binaries {
        let response = builder
            .refused()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(response.status, 400, "{what}");
        assert!(response.body.is_empty(), "{what}: body {:?}", response.body);
    }
    for (what, builder) in phones {
        let response = builder
            .refused()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(response.status, 400, "{what}");
        assert!(response.body.is_empty(), "{what}: body {:?}", response.body);
    }
    // Refused upgrades never reached the registry.
    assert_eq!(relay.shared.registry.counts().phones, 0);
    assert_eq!(relay.shared.registry.counts().binaries, 1);
}

#[tokio::test]
async fn header_values_at_their_limits_are_accepted() {
    // §2: the other side of every bound in the header rules.
    let relay = support::start(support::fast_opts()).await;
    let sid = format!("A-z.0_{}", "9".repeat(58));
    assert_eq!(sid.len(), 64);
    let mut binary = FakeBinary::builder(relay.addr, &sid)
        .version(&"~".repeat(64))
        .user_agent(&format!("ua {}", "x".repeat(253)))
        .connect()
        .await
        .expect("limits accepted for the binary");
    support::eventually("claimed", || relay.shared.registry.binary(&sid).is_some()).await;
    let _dev = FakeBinary::builder(relay.addr, &fresh_server_id())
        .version("dev")
        .connect()
        .await
        .expect("version \"dev\" is valid");
    let mut phone = FakePhone::builder(relay.addr, &sid)
        .user_agent(&"u".repeat(256))
        .device_name(&"é".repeat(64))
        .token(&"!".repeat(512))
        .connect()
        .await
        .expect("limits accepted for the phone");
    phone.send_text("0").await.unwrap();
    let env = binary.recv_envelope().await.unwrap();
    assert_no_token(&env, &"!".repeat(512));
}

#[tokio::test]
async fn unknown_paths_are_404() {
    // §2: "Any other path is 404."
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    for path in [
        "/",
        "/v1/nope",
        "/v3/server",
        "/v1/server/",
        "/v1/clients",
        "/healthz/x",
    ] {
        let response = FakeBinary::builder(relay.addr, &sid)
            .path(path)
            .refused()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(response.status, 404, "{path}");
    }
}

#[tokio::test]
async fn v2_paths_are_aliases_of_v1() {
    // §2: `/v2/server` and `/v2/client` behave as `/v1/server` and `/v1/client`.
    let relay = support::start(support::fast_opts()).await;
    let sid = fresh_server_id();
    let mut binary = FakeBinary::builder(relay.addr, &sid)
        .path("/v2/server")
        .connect()
        .await
        .unwrap();
    support::eventually("claimed", || relay.shared.registry.binary(&sid).is_some()).await;
    let mut phone = FakePhone::builder(relay.addr, &sid)
        .path("/v2/client")
        .token("v2-token")
        .connect()
        .await
        .unwrap();
    phone.send_text(r#"{"v":2}"#).await.unwrap();
    let env = binary.recv_envelope().await.unwrap();
    assert_eq!(env.frame(), Some(r#"{"v":2}"#));
    assert_no_token(&env, "v2-token");
    binary.send_to(&env.conn_id, r#"{"back":2}"#).await.unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#"{"back":2}"#);
}

#[tokio::test]
async fn healthz_reports_live_binaries_and_all_phones_as_json() {
    // §10 body and headers; §6.3: a binary in grace is not counted, its phones are.
    let relay = support::start(RelayOptions {
        grace_period: Duration::from_secs(60),
        ..support::fast_opts()
    })
    .await;
    let (live, graced) = (fresh_server_id(), fresh_server_id());
    let mut live_binary = binary_for(&relay, &live).await;
    let _p1 = phone_for(&relay, &mut live_binary, &live).await;
    let _p2 = phone_for(&relay, &mut live_binary, &live).await;
    let mut gone_binary = binary_for(&relay, &graced).await;
    let _p3 = phone_for(&relay, &mut gone_binary, &graced).await;
    gone_binary.abort();
    support::eventually("the slot is in grace", || {
        relay.shared.registry.in_grace(&graced)
    })
    .await;

    let (status, headers, body) = http_get(&relay, "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(header(&headers, "cache-control"), Some("no-store"));
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
    let object = v.as_object().expect("an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "connected_binaries",
            "connected_phones",
            "status",
            "uptime_seconds",
            "version"
        ]
    );
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["connected_binaries"], 1);
    assert_eq!(v["connected_phones"], 3);
    assert!(v["uptime_seconds"].is_u64(), "{v}");
}

// ---------------------------------------------------------------------------------------------
// §7: message size
// ---------------------------------------------------------------------------------------------

const SMALL_MAX: usize = 1024;

fn small_max_opts() -> RelayOptions {
    RelayOptions {
        max_message_size: SMALL_MAX,
        ..support::fast_opts()
    }
}

/// A JSON string of exactly `len` bytes.
fn json_string_of_len(len: usize) -> String {
    format!("\"{}\"", "x".repeat(len - 2))
}

#[tokio::test]
async fn phone_message_over_max_message_size_is_closed_1009() {
    // §7: larger than `--max-message-size` → 1009 "message too big"; exactly the limit passes.
    let relay = support::start(small_max_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut phone, c) = phone_for(&relay, &mut binary, &sid).await;
    let full = json_string_of_len(SMALL_MAX);
    phone.send_text(&full).await.unwrap();
    assert_eq!(
        binary.recv_envelope().await.unwrap().frame(),
        Some(full.as_str())
    );

    phone
        .send_text(&json_string_of_len(SMALL_MAX + 1))
        .await
        .unwrap();
    assert_eq!(
        phone.expect_close().await.unwrap(),
        (1009, "message too big".into())
    );
    expect_notice(&mut binary, &c, 1009).await;
}

/// An envelope for `conn_id` of exactly `len` bytes, its `frame` first unless `frame_last`.
fn envelope_of_len(conn_id: &str, len: usize) -> String {
    let head = format!(r#"{{"conn_id":"{conn_id}","frame":"x","pad":""#);
    let pad = len - head.len() - 2;
    format!("{head}{}\"}}", "p".repeat(pad))
}

#[tokio::test]
async fn binary_leg_allows_the_envelope_around_a_full_size_frame() {
    // §7: on the binary leg the limit is `--max-message-size` + 1024 bytes.
    let relay = support::start(small_max_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut phone, c) = phone_for(&relay, &mut binary, &sid).await;

    let full = json_string_of_len(SMALL_MAX);
    binary.send_to(&c, &full).await.unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), full);

    let exactly = envelope_of_len(&c, SMALL_MAX + 1024);
    assert_eq!(exactly.len(), SMALL_MAX + 1024);
    binary.send_text(&exactly).await.unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#""x""#);
    assert_eq!(relay.shared.metrics.oversize_binary_messages(), 0);
}

#[tokio::test]
async fn binary_message_over_the_limit_costs_only_the_session_it_names() {
    // §7: over the binary leg's limit the message is discarded, counted and warned; the
    // binary stays connected; the phone its first 512 bytes name is closed 1009 "message too
    // big" after what was queued for it before; its siblings carry on.
    let relay = support::start(small_max_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut named, c1) = phone_for(&relay, &mut binary, &sid).await;
    let (mut sibling, c2) = phone_for(&relay, &mut binary, &sid).await;

    binary.send_to(&c1, r#"{"before":1}"#).await.unwrap();
    binary
        .send_text(&envelope_of_len(&c1, SMALL_MAX + 1025))
        .await
        .unwrap();
    assert_eq!(named.recv_text().await.unwrap(), r#"{"before":1}"#);
    assert_eq!(
        named.expect_close().await.unwrap(),
        (1009, "message too big".into())
    );
    // §4.3: the binary hears which session it cost.
    expect_notice(&mut binary, &c1, 1009).await;
    assert_eq!(relay.shared.metrics.oversize_binary_messages(), 1);

    // The binary still routes, both ways.
    binary.send_to(&c2, r#"{"still":"here"}"#).await.unwrap();
    assert_eq!(sibling.recv_text().await.unwrap(), r#"{"still":"here"}"#);
    sibling.send_text(r#"{"and":"back"}"#).await.unwrap();
    let env = binary.recv_envelope().await.unwrap();
    assert_eq!(
        (env.conn_id.as_str(), env.frame()),
        (c2.as_str(), Some(r#"{"and":"back"}"#))
    );
}

#[tokio::test]
async fn over_size_binary_message_naming_nobody_closes_nobody() {
    // §7: an unknown conn_id, another server-id's phone, or a conn_id past the first 512
    // bytes: the message is dropped and counted, and no phone is closed.
    let relay = support::start(small_max_opts()).await;
    let sid = fresh_server_id();
    let other_sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let mut other_binary = binary_for(&relay, &other_sid).await;
    let (mut phone, c) = phone_for(&relay, &mut binary, &sid).await;
    let (mut foreign, f) = phone_for(&relay, &mut other_binary, &other_sid).await;

    let frame_first = format!(
        r#"{{"frame":"{}","conn_id":"{c}"}}"#,
        "y".repeat(SMALL_MAX + 1024)
    );
    for over in [
        envelope_of_len("c-00000000000000000000000000000000", SMALL_MAX + 2000),
        envelope_of_len(&f, SMALL_MAX + 2000),
        frame_first,
    ] {
        binary.send_text(&over).await.unwrap();
    }
    binary
        .send_to(&c, r#"{"after":"all three"}"#)
        .await
        .unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#"{"after":"all three"}"#);
    other_binary.send_to(&f, r#"{"fine":true}"#).await.unwrap();
    assert_eq!(foreign.recv_text().await.unwrap(), r#"{"fine":true}"#);
    assert_eq!(relay.shared.metrics.oversize_binary_messages(), 3);
}

/// A raw binary holding `sid`, and a phone of it whose conn_id the raw binary has learnt.
async fn raw_binary_with_phone(relay: &TestRelay, sid: &str) -> (RawClient, FakePhone, String) {
    let mut raw = RawClient::connect(
        relay.addr,
        "/v1/server",
        &[
            ("X-Pyrycode-Server", sid),
            ("X-Pyrycode-Version", "0.0.1-test"),
            ("User-Agent", "raw-binary/1"),
        ],
    )
    .await
    .expect("raw binary upgrade");
    support::eventually("the raw binary holds its server-id", || {
        relay.shared.registry.binary(sid).is_some()
    })
    .await;
    let mut phone = FakePhone::connect(relay.addr, sid).await.unwrap();
    phone.send_text(r#"{"hello":"raw"}"#).await.unwrap();
    let hello = raw.read_text().await.unwrap();
    let env: serde_json::Value = serde_json::from_str(&hello).unwrap();
    let conn_id = env["conn_id"].as_str().unwrap().to_owned();
    (raw, phone, conn_id)
}

#[tokio::test]
async fn fragmented_over_size_binary_message_is_discarded_as_it_streams() {
    // §7: "measured on the whole reassembled message", fragments included, and never buffered
    // whole: 64 MiB streamed in fragments never makes the relay hold more than a few MiB.
    let relay = support::start(small_max_opts()).await;
    let sid = fresh_server_id();
    let (mut raw, mut phone, c) = raw_binary_with_phone(&relay, &sid).await;

    let first = format!(r#"{{"conn_id":"{c}","frame":""#);
    raw.send_frame(false, OpCode::Text, first.as_bytes())
        .await
        .unwrap();
    let block = vec![b'z'; 256 << 10];
    let mut peak = 0;
    for _ in 0..256 {
        raw.send_frame(false, OpCode::Continuation, &block)
            .await
            .unwrap();
        peak = peak.max(relay.shared.budget.used());
    }
    raw.send_frame(true, OpCode::Continuation, b"\"}")
        .await
        .unwrap();
    assert_eq!(
        phone.expect_close().await.unwrap(),
        (1009, "message too big".into())
    );
    assert!(
        peak < 4 << 20,
        "the relay held at most {peak} bytes of a 64 MiB message"
    );
    assert_eq!(relay.shared.metrics.oversize_binary_messages(), 1);
    // §4.3: the binary hears which session it cost.
    let notice = raw.read_text().await.unwrap();
    assert_eq!(notice, format!(r#"{{"conn_id":"{c}","close_code":1009}}"#));
    // The raw binary is still connected and routing.
    let mut next = FakePhone::connect(relay.addr, &sid).await.unwrap();
    next.send_text(r#"{"next":1}"#).await.unwrap();
    let env = raw.read_text().await.unwrap();
    assert!(env.contains(r#""frame":{"next":1}"#), "{env}");
}

#[tokio::test]
async fn fragmented_message_over_the_limit_is_closed_1009() {
    // §7: the limit is "measured on the whole reassembled message".
    let relay = support::start(small_max_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut raw, c) = raw_phone_for(&relay, &mut binary, &sid).await;
    let part = vec![b' '; 600];
    raw.send_fragments(OpCode::Text, &[b"[", &part, &part, b"]"])
        .await
        .unwrap();
    assert_eq!(
        raw.read_until_close().await.unwrap(),
        (1009, "message too big".into())
    );
    expect_notice(&mut binary, &c, 1009).await;
}

#[tokio::test]
async fn fragments_reassemble_into_one_message_within_the_limit() {
    // §7: fragments (with a ping between them) count as one message; exactly the limit passes.
    let relay = support::start(small_max_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut raw, _) = raw_phone_for(&relay, &mut binary, &sid).await;

    raw.send_frame(false, OpCode::Text, b"{\"a\":")
        .await
        .unwrap();
    raw.send_ping(b"mid").await.unwrap();
    raw.send_frame(false, OpCode::Continuation, b" [1, ")
        .await
        .unwrap();
    raw.send_frame(true, OpCode::Continuation, b"2]}")
        .await
        .unwrap();
    assert_eq!(
        raw.read_message().await.unwrap(),
        RawMessage::Pong(b"mid".to_vec())
    );
    assert_eq!(
        binary.recv_envelope().await.unwrap().frame(),
        Some("{\"a\": [1, 2]}")
    );

    let full = json_string_of_len(SMALL_MAX);
    let (a, rest) = full.as_bytes().split_at(300);
    let (b, c) = rest.split_at(400);
    raw.send_fragments(OpCode::Binary, &[a, b, c])
        .await
        .unwrap();
    assert_eq!(
        binary.recv_envelope().await.unwrap().frame(),
        Some(full.as_str())
    );
}

// ---------------------------------------------------------------------------------------------
// §7: read deadline
// ---------------------------------------------------------------------------------------------

const READ_TIMEOUT: Duration = Duration::from_millis(500);

fn read_deadline_opts() -> RelayOptions {
    RelayOptions {
        message_read_timeout: READ_TIMEOUT,
        ..support::fast_opts()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_partial_message_is_closed_1008_message_too_slow() {
    // §7: once the first byte of a frame or message (control frames included) arrives, the
    // whole of it must arrive in time. Three stalls at once: half a data frame, the first
    // fragment of a message without the rest, half a ping.
    let relay = support::start(read_deadline_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut half_frame, half_frame_id) = raw_phone_for(&relay, &mut binary, &sid).await;
    let (mut one_fragment, one_fragment_id) = raw_phone_for(&relay, &mut binary, &sid).await;
    let (mut half_ping, half_ping_id) = raw_phone_for(&relay, &mut binary, &sid).await;

    let started = Instant::now();
    half_frame
        .send_partial_frame(true, OpCode::Text, br#"{"slow":true}"#, 3)
        .await
        .unwrap();
    one_fragment
        .send_frame(false, OpCode::Text, br#"{"slow":"#)
        .await
        .unwrap();
    half_ping
        .send_partial_frame(true, OpCode::Ping, b"ping!", 4)
        .await
        .unwrap();
    let (a, b, c) = tokio::join!(
        half_frame.read_until_close(),
        one_fragment.read_until_close(),
        half_ping.read_until_close()
    );
    let too_slow = (1008, "message too slow".to_owned());
    assert_eq!(a.unwrap(), too_slow);
    assert_eq!(b.unwrap(), too_slow);
    assert_eq!(c.unwrap(), too_slow);
    // Not before the deadline (a little slack for the clock granularity).
    assert!(
        started.elapsed() >= READ_TIMEOUT - ms(50),
        "{:?}",
        started.elapsed()
    );

    let mut notices = Vec::new();
    for _ in 0..3 {
        let env = binary.recv_envelope().await.unwrap();
        assert!(env.is_close_notice(), "{}", env.raw);
        notices.push((env.conn_id, env.close_code));
    }
    notices.sort();
    let mut want = vec![
        (half_frame_id, Some(1008)),
        (one_fragment_id, Some(1008)),
        (half_ping_id, Some(1008)),
    ];
    want.sort();
    assert_eq!(notices, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_without_a_partial_message_is_not_closed() {
    // §7: "Idle time between messages is unbounded": three read deadlines of silence on both
    // legs, then both still work.
    let relay = support::start(read_deadline_opts()).await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (mut raw, c) = raw_phone_for(&relay, &mut binary, &sid).await;
    let (phone_idle, binary_idle) = tokio::join!(
        raw.expect_silence(READ_TIMEOUT * 3),
        binary.expect_silence(READ_TIMEOUT * 3)
    );
    phone_idle.expect("the idle phone is left alone");
    binary_idle.expect("the idle binary is left alone");
    raw.send_text(r#""awake""#).await.unwrap();
    assert_eq!(
        binary.recv_envelope().await.unwrap().frame(),
        Some(r#""awake""#)
    );
    binary.send_to(&c, r#""hello again""#).await.unwrap();
    assert_eq!(raw.read_text().await.unwrap(), r#""hello again""#);
}

// ---------------------------------------------------------------------------------------------
// §8: global connection cap
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn upgrade_over_max_connections_is_http_503_with_an_empty_body() {
    // §8: live connections in total over `--max-connections` → 503, empty body; /healthz is
    // never limited; a slot comes back when a connection ends.
    let relay = support::start(RelayOptions {
        max_connections: 2,
        ..support::fast_opts()
    })
    .await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;
    let (phone, c) = phone_for(&relay, &mut binary, &sid).await;

    let refused = FakePhone::builder(relay.addr, &sid)
        .refused()
        .await
        .unwrap();
    assert_eq!(refused.status, 503);
    assert!(refused.body.is_empty(), "{:?}", refused.body);
    let refused = FakeBinary::builder(relay.addr, &fresh_server_id())
        .refused()
        .await
        .unwrap();
    assert_eq!(refused.status, 503);
    assert!(refused.body.is_empty(), "{:?}", refused.body);
    assert_eq!(http_get(&relay, "/healthz").await.0, 200);

    phone.abort();
    expect_notice(&mut binary, &c, 1001).await;
    support::eventually("the phone's slot is back", || {
        relay.shared.conn_slots.available_permits() == 1
    })
    .await;
    let _again = phone_for(&relay, &mut binary, &sid).await;
}

#[tokio::test]
async fn rejected_upgrade_with_a_bad_header_does_not_leak_a_connection_slot() {
    // §8: "A connection slot is held for the whole life of the connection and freed on every
    // exit path" — including a 400 after the slot was taken (§2 order: cap, then headers).
    let relay = support::start(RelayOptions {
        max_connections: 1,
        ..support::fast_opts()
    })
    .await;
    let sid = fresh_server_id();
    for _ in 0..3 {
        let response = FakeBinary::builder(relay.addr, &sid)
            .version("")
            .refused()
            .await
            .unwrap();
        assert_eq!(response.status, 400);
    }
    let mut binary = binary_for(&relay, &sid).await;
    binary.expect_silence(ms(50)).await.unwrap();
    match RawClient::connect(
        relay.addr,
        "/v1/client",
        &[("X-Pyrycode-Server", &sid), ("User-Agent", RAW_PHONE_UA)],
    )
    .await
    {
        Err(RawError::Refused(r)) => assert_eq!(r.status, 503),
        other => panic!("expected 503, got {other:?}"),
    }
}

/// §8: a client that does not finish its request headers within `--header-read-timeout` is
/// dropped, and one that finishes in time is served.
#[tokio::test]
async fn slow_request_headers_are_dropped_after_the_header_read_timeout() {
    let relay = support::start(RelayOptions {
        header_read_timeout: ms(300),
        ..support::fast_opts()
    })
    .await;

    let mut slow = relay_testkit::tls::connect(relay.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("the relay must drop a connection whose headers never finish")
        .unwrap_or(0);
    assert_eq!(
        n, 0,
        "no response for an unfinished request, just the close"
    );
    assert!(started.elapsed() >= ms(250), "dropped before the timeout");

    let (status, _, _) = http_get(&relay, "/healthz").await;
    assert_eq!(status, 200, "a prompt request is still served");
}
