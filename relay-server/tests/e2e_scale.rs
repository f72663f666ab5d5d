//! End-to-end flow control and scale through real sockets (protocol.md §7): a stalled phone is
//! isolated, phones wait for a slow binary without losing anything, and a thousand phones
//! over a hundred server-ids all get their echoes, in order.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_server::RelayOptions;
use relay_testkit::client::{fresh_server_id, FakeBinary, FakePhone};
use relay_testkit::raw::{RawClient, RawOptions};
use support::binary_for;
use tokio::sync::{mpsc, Semaphore};

/// Long heartbeats: these tests leave clients unread on purpose, and a missed pong must not be
/// what closes them.
fn quiet_opts() -> RelayOptions {
    RelayOptions {
        heartbeat_interval: Duration::from_secs(60),
        heartbeat_timeout: Duration::from_secs(60),
        ..support::fast_opts()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_phone_does_not_delay_its_sibling_and_is_closed_1011_backlog_full() {
    // §7 "Phone outbox": enqueueing never blocks; over budget the phone is closed 1011 "phone
    // backlog full"; "a stalled phone never delays the binary or sibling phones".
    let relay = support::start(RelayOptions {
        phone_outbox_bytes: 64 << 10,
        // The stalled socket must not hit the write timeout before the test reads it: we want
        // to see the 1011 "phone backlog full" frame itself.
        write_timeout: Duration::from_secs(30),
        ..quiet_opts()
    })
    .await;
    let sid = fresh_server_id();
    let mut binary = binary_for(&relay, &sid).await;

    // Never read until the end, with a 4 KiB receive buffer: the relay's writes back up at once.
    let mut stalled = RawClient::connect_with(
        relay.addr,
        "/v1/client",
        &[
            ("X-Pyrycode-Server", sid.as_bytes()),
            ("User-Agent", b"stalled-phone/1"),
        ],
        RawOptions {
            recv_buffer_size: Some(4096),
            ..RawOptions::default()
        },
    )
    .await
    .unwrap();
    stalled.send_text(r#""stalled""#).await.unwrap();
    let stalled_id = binary.recv_envelope().await.unwrap().conn_id;
    let mut sibling = FakePhone::connect(relay.addr, &sid).await.unwrap();
    sibling.send_text(r#""sibling""#).await.unwrap();
    let sibling_id = binary.recv_envelope().await.unwrap().conn_id;

    // The sibling reads concurrently; each of its messages must arrive within a second of the
    // previous one while the flood is going on.
    const FLOOD: usize = 2048; // x 4 KiB = 8 MiB, far over the 64 KiB outbox + kernel buffers
    const EVERY: usize = 128;
    let reader = tokio::spawn(async move {
        sibling.set_timeout(Duration::from_secs(1));
        for i in 0..FLOOD / EVERY {
            let got = sibling
                .recv_text()
                .await
                .map_err(|e| format!("sibling message {i}: {e}"))?;
            if got != format!(r#"{{"sibling":{i}}}"#) {
                return Err(format!("sibling message {i} was {got}"));
            }
        }
        Ok::<_, String>(sibling)
    });

    let big = format!("\"{}\"", "x".repeat(4094));
    for i in 0..FLOOD {
        binary.send_to(&stalled_id, &big).await.unwrap();
        if i % EVERY == 0 {
            binary
                .send_to(&sibling_id, &format!(r#"{{"sibling":{}}}"#, i / EVERY))
                .await
                .unwrap();
        }
    }
    let mut sibling = reader.await.unwrap().expect("the sibling was not delayed");

    // The binary was not held up either: it still reaches the sibling at once.
    binary.send_to(&sibling_id, r#""after""#).await.unwrap();
    sibling.set_timeout(Duration::from_secs(1));
    assert_eq!(sibling.recv_text().await.unwrap(), r#""after""#);

    // Now the stalled phone reads: whatever made it into the kernel buffers, then the close.
    stalled.set_timeout(Duration::from_secs(10));
    assert_eq!(
        stalled.read_until_close().await.unwrap(),
        (1011, "phone backlog full".to_owned())
    );
    stalled.send_close(Some((1011, ""))).await.unwrap();
    let notice = binary.recv_envelope().await.unwrap();
    assert!(notice.is_close_notice(), "{}", notice.raw);
    assert_eq!(
        (notice.conn_id.as_str(), notice.close_code),
        (stalled_id.as_str(), Some(1011))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phones_wait_for_a_slow_binary_and_nothing_is_dropped() {
    // §7 "Binary inbox": when it is full the sending phones wait; nothing is dropped; per-phone
    // order holds. The inbox is as small as the relay allows (two full-size envelopes, ~8 KiB)
    // and the binary does not read at all until every phone has pushed 50 KiB, so the inbox is
    // certainly full and phones are waiting when it starts reading, slowly.
    const PHONES: usize = 8;
    const MESSAGES: usize = 300;
    const HEAD_START: usize = 50;
    let relay = support::start(RelayOptions {
        max_message_size: 2048,
        binary_inbox_bytes: 0,
        ..quiet_opts()
    })
    .await;
    let sid = fresh_server_id();
    let mut binary = FakeBinary::builder(relay.addr, &sid)
        .recv_buffer_size(4096)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    support::eventually("claimed", || relay.shared.registry.binary(&sid).is_some()).await;

    let (pushed_tx, mut pushed_rx) = mpsc::channel::<()>(PHONES);
    let mut tasks = Vec::new();
    for p in 0..PHONES {
        let mut phone = FakePhone::builder(relay.addr, &sid)
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap();
        let pushed = pushed_tx.clone();
        tasks.push(tokio::spawn(async move {
            let pad = "p".repeat(1000);
            for n in 0..MESSAGES {
                let frame = format!(r#"{{"p":{p},"n":{n},"pad":"{pad}"}}"#);
                phone
                    .send_text(&frame)
                    .await
                    .map_err(|e| format!("phone {p} message {n}: {e}"))?;
                if n + 1 == HEAD_START {
                    let _ = pushed.send(()).await;
                }
            }
            Ok::<_, String>(phone)
        }));
    }
    for _ in 0..PHONES {
        tokio::time::timeout(Duration::from_secs(10), pushed_rx.recv())
            .await
            .expect("every phone pushes its head start")
            .unwrap();
    }

    let mut next: HashMap<u64, u64> = HashMap::new();
    let mut phone_of: HashMap<String, u64> = HashMap::new();
    for i in 0..PHONES * MESSAGES {
        if i % 16 == 0 {
            // Read slowly: the phones outpace the binary the whole time.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let env = binary
            .recv_envelope()
            .await
            .unwrap_or_else(|e| panic!("envelope {i}: {e}"));
        let frame: serde_json::Value = serde_json::from_str(env.frame().expect("a frame")).unwrap();
        let (p, n) = (frame["p"].as_u64().unwrap(), frame["n"].as_u64().unwrap());
        // One conn_id per phone, and one phone per conn_id.
        assert_eq!(
            *phone_of.entry(env.conn_id.clone()).or_insert(p),
            p,
            "{}",
            env.raw
        );
        let expected = next.entry(p).or_insert(0);
        assert_eq!(n, *expected, "phone {p}: out of order or lost");
        *expected += 1;
    }
    // Kept open until the end: a phone leaving would send the binary a close notice.
    let mut phones = Vec::new();
    for task in tasks {
        phones.push(task.await.unwrap().expect("every phone sent everything"));
    }
    assert_eq!(phone_of.len(), PHONES);
    assert!(next.values().all(|&n| n == MESSAGES as u64), "{next:?}");
    binary
        .expect_silence(Duration::from_millis(100))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_phones_over_a_hundred_server_ids_get_every_echo_in_order() {
    // §7 "Order" at scale: 1,000 phones over 100 server-ids, each sends 20 numbered messages,
    // each binary echoes every frame to its sender; every phone gets all 20, in order, once.
    //
    // File descriptors: 1,100 client sockets plus the relay's 1,100 ends, ~2,300 in this one
    // process. `ulimit -n` is 20000 on the machine this was written on and on CI (same limit);
    // a limit below ~2,500 would fail the connects with EMFILE.
    const SERVERS: usize = 100;
    const PHONES_PER_SERVER: usize = 10;
    const MESSAGES: usize = 20;
    let started = Instant::now();
    let relay = support::start(quiet_opts()).await;
    let connects = Arc::new(Semaphore::new(64));

    let mut server_ids = Vec::new();
    let mut binary_tasks = Vec::new();
    for _ in 0..SERVERS {
        let sid = fresh_server_id();
        server_ids.push(sid.clone());
        let addr = relay.addr;
        let connects = connects.clone();
        binary_tasks.push(tokio::spawn(async move {
            let permit = connects.acquire_owned().await.unwrap();
            let mut binary = FakeBinary::builder(addr, &sid)
                .timeout(Duration::from_secs(30))
                .connect()
                .await
                .map_err(|e| format!("binary {sid}: {e}"))?;
            drop(permit);
            let mut echoed = 0;
            while echoed < PHONES_PER_SERVER * MESSAGES {
                let env = binary
                    .recv_envelope()
                    .await
                    .map_err(|e| format!("binary {sid}: {e}"))?;
                let Some(frame) = env.frame() else {
                    return Err(format!("binary {sid}: unexpected notice {}", env.raw));
                };
                binary
                    .send_to(&env.conn_id, frame)
                    .await
                    .map_err(|e| format!("binary {sid}: {e}"))?;
                echoed += 1;
            }
            // Keep the connection until the phones are done: its departure would start grace.
            Ok::<_, String>(binary)
        }));
    }
    support::eventually("every binary holds its server-id", || {
        relay.shared.registry.counts().binaries == SERVERS
    })
    .await;

    let mut phone_tasks = Vec::new();
    for (s, sid) in server_ids.iter().enumerate() {
        for k in 0..PHONES_PER_SERVER {
            let phone_no = s * PHONES_PER_SERVER + k;
            let (addr, sid, connects) = (relay.addr, sid.clone(), connects.clone());
            phone_tasks.push(tokio::spawn(async move {
                let fail = |what: String| format!("phone {phone_no}: {what}");
                let permit = connects.acquire_owned().await.unwrap();
                let mut phone = FakePhone::builder(addr, &sid)
                    .timeout(Duration::from_secs(30))
                    .connect()
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                drop(permit);
                let frame = |n: usize| format!(r#"{{"phone":{phone_no},"n":{n}}}"#);
                for n in 0..MESSAGES {
                    phone
                        .send_text(&frame(n))
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                }
                for n in 0..MESSAGES {
                    let got = phone
                        .recv_text()
                        .await
                        .map_err(|e| fail(format!("echo {n}: {e}")))?;
                    if got != frame(n) {
                        return Err(fail(format!("echo {n} was {got}")));
                    }
                }
                Ok::<_, String>(phone)
            }));
        }
    }
    let mut phones = Vec::new();
    for task in phone_tasks {
        phones.push(task.await.unwrap().unwrap());
    }
    let mut binaries = Vec::new();
    for task in binary_tasks {
        binaries.push(task.await.unwrap().unwrap());
    }
    assert_eq!(
        relay.shared.registry.counts().phones,
        SERVERS * PHONES_PER_SERVER
    );
    // No duplicates: nothing more arrives after the 20th echo.
    let silences = phones
        .iter_mut()
        .map(|phone| phone.expect_silence(Duration::from_millis(100)));
    for (i, result) in futures_util::future::join_all(silences)
        .await
        .into_iter()
        .enumerate()
    {
        result.unwrap_or_else(|e| panic!("phone {i}: {e}"));
    }
    assert_eq!(relay.shared.metrics.unknown_conn_ids(), 0);
    eprintln!("1,000 phones x 20 echoes in {:?}", started.elapsed());
}
