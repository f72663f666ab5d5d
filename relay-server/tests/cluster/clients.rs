//! The fake clients' habits the cluster tests share: routing checks both ways, and binaries
//! and phones that reconnect as real ones do (HTTP errors and 4404 retried, 4409 fatal).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay_testkit::client::{ClientError, FakeBinary, FakePhone};

/// Short enough that a dead node's entries lapse quickly, long enough for a loaded CI box to
/// refresh it (every lease/3).
pub const LEASE: Duration = Duration::from_secs(2);

/// Every phone sends `n` numbered frames, interleaved; the binary must get each phone's in
/// order, then answers each phone `n` numbered frames, which must arrive in order. Returns
/// nothing: any loss, reordering or misrouting fails the test.
pub async fn route_both_ways(binary: &mut FakeBinary, phones: &mut [FakePhone], n: usize) {
    for k in 0..n {
        for (i, p) in phones.iter_mut().enumerate() {
            p.send_text(&format!(r#"{{"p":{i},"k":{k}}}"#))
                .await
                .unwrap();
        }
    }
    let mut next = vec![0usize; phones.len()];
    let mut conn_of = vec![String::new(); phones.len()];
    for _ in 0..n * phones.len() {
        let env = binary.recv_envelope().await.unwrap();
        let frame: serde_json::Value = serde_json::from_str(env.frame().unwrap()).unwrap();
        let i = frame["p"].as_u64().unwrap() as usize;
        assert_eq!(
            frame["k"], next[i],
            "phone {i}'s frames in order, none lost"
        );
        if next[i] == 0 {
            conn_of[i] = env.conn_id.clone();
        }
        assert_eq!(env.conn_id, conn_of[i], "one conn_id per phone");
        next[i] += 1;
    }
    for k in 0..n {
        for (i, conn) in conn_of.iter().enumerate() {
            binary
                .send_to(conn, &format!(r#"{{"to":{i},"k":{k}}}"#))
                .await
                .unwrap();
        }
    }
    for (i, p) in phones.iter_mut().enumerate() {
        for k in 0..n {
            assert_eq!(
                p.recv_text().await.unwrap(),
                format!(r#"{{"to":{i},"k":{k}}}"#),
                "phone {i} gets its own frames in order"
            );
        }
    }
}

/// One frame each way between `binary` and a fresh phone at `addr`.
pub async fn round_trip(binary: &mut FakeBinary, phone: &mut FakePhone) {
    phone.send_text(r#"{"ping":1}"#).await.unwrap();
    let env = binary.recv_envelope().await.unwrap();
    assert_eq!(env.frame(), Some(r#"{"ping":1}"#));
    binary.send_to(&env.conn_id, r#"{"pong":1}"#).await.unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#"{"pong":1}"#);
}

/// A binary that reconnects until its upgrade succeeds (backoff 100 ms), as a daemon does
/// after HTTP errors; returns it and how many attempts were refused.
pub async fn reconnect_binary(addr: SocketAddr, sid: &str, within: Duration) -> (FakeBinary, u32) {
    let deadline = Instant::now() + within;
    let mut refused = 0;
    loop {
        // 3 s: an edge waits at most 2 s on the directory; a holder frozen with its
        // listener's backlog open answers nothing until this client gives up.
        match FakeBinary::builder(addr, sid)
            .timeout(Duration::from_secs(3))
            .connect()
            .await
        {
            Ok(b) => return (b, refused),
            Err(e) => {
                assert!(Instant::now() < deadline, "binary never got back: {e}");
                refused += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A phone that reconnects until it completes a round trip with `binary` (4404 and 503 are
/// retried, as phones do).
pub async fn reconnect_phone(
    addr: SocketAddr,
    sid: &str,
    binary: &mut FakeBinary,
    within: Duration,
) -> FakePhone {
    let deadline = Instant::now() + within;
    loop {
        assert!(Instant::now() < deadline, "phone never got back");
        let Ok(mut phone) = FakePhone::connect(addr, sid).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if phone.send_text(r#"{"back":1}"#).await.is_err() {
            continue;
        }
        match binary.recv_envelope().await {
            Ok(env) if env.frame() == Some(r#"{"back":1}"#) => {
                binary.send_to(&env.conn_id, r#"{"ok":1}"#).await.unwrap();
                assert_eq!(phone.recv_text().await.unwrap(), r#"{"ok":1}"#);
                return phone;
            }
            Ok(env) => panic!("unexpected envelope {env:?}"),
            // §11: the binary must never lose its own id to a conflict.
            Err(ClientError::Closed { code, .. }) => panic!("binary closed {code}"),
            Err(_) => {
                // The phone was refused after its upgrade (4404 before the claim was seen).
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
