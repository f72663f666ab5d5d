//! Micro-benchmarks of relay-core's hot paths, each next to the obvious serde_json (or
//! global-map) way of doing the same job, so one run shows what the hand-written code buys.
//!
//! Run: `cargo bench -p relay-benches -- --warm-up-time 1 --measurement-time 3`.
//! Results and the machine they came from: docs/performance.md.
//!
//! Groups (each holds ours and the baselines, at 64 B and 16 KiB frames where size matters):
//! - `envelope_parse`: a binary → phone envelope into conn_id + frame bytes (§4.2).
//! - `envelope_build`: a phone → binary envelope around a frame, verbatim (§4.1).
//! - `phone_frame_validation`: is a phone's message JSON (§4.1).
//! - `route_lookup`: find a phone of this server-id by the conn_id a binary sent (§4.2).

use std::borrow::Cow;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use relay_core::envelope;
use relay_core::{
    Claim, Close, Conn, ConnId, Registration, Registry, RegistryConfig, SendError, ServerId,
    SystemClock,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

const SIZES: [(&str, usize); 2] = [("64B", 64), ("16KiB", 16 * 1024)];

/// A phone's message of exactly `len` bytes shaped like the real traffic: a small JSON object
/// around base64 Noise ciphertext (so no escapes, one long string).
fn phone_frame(len: usize) -> Vec<u8> {
    const HEAD: &[u8] = br#"{"type":"msg","payload":""#;
    const TAIL: &[u8] = br#""}"#;
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let fill = len - HEAD.len() - TAIL.len();
    let mut v = HEAD.to_vec();
    v.extend((0..fill).map(|i| B64[i % B64.len()]));
    v.extend_from_slice(TAIL);
    assert_eq!(v.len(), len);
    v
}

fn conn_id() -> ConnId {
    ConnId::parse("c-0123456789abcdef0123456789abcdef").expect("a valid conn id")
}

/// The `&RawValue` baseline: serde's zero-copy way to keep a value's bytes.
#[derive(Deserialize)]
struct ToPhoneRaw<'a> {
    #[serde(borrow)]
    conn_id: Cow<'a, str>,
    #[serde(borrow)]
    frame: Option<&'a RawValue>,
    close_code: Option<u16>,
}

#[derive(Serialize)]
struct ToBinaryRaw<'a> {
    conn_id: &'a str,
    frame: &'a RawValue,
}

#[derive(Serialize)]
struct ToBinaryValue<'a> {
    conn_id: &'a str,
    frame: &'a Value,
}

fn envelope_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope_parse");
    for (name, len) in SIZES {
        let env = envelope::to_binary(&conn_id(), &phone_frame(len));
        g.throughput(Throughput::Bytes(env.len() as u64));
        g.bench_with_input(BenchmarkId::new("relay_core", name), &env, |b, env| {
            b.iter(|| {
                let Ok(envelope::FromBinary::ToPhone(p)) =
                    envelope::parse_from_binary(black_box(env))
                else {
                    panic!("a routing envelope")
                };
                black_box((p.conn_id.len(), p.frame, p.close));
            })
        });
        // The relay needs the frame's bytes to forward, so a `Value` must be re-encoded.
        g.bench_with_input(
            BenchmarkId::new("serde_json_value", name),
            &env,
            |b, env| {
                b.iter(|| {
                    let v: Value = serde_json::from_slice(black_box(env)).expect("valid");
                    let conn_id = v.get("conn_id").and_then(Value::as_str).expect("conn_id");
                    let frame = serde_json::to_vec(&v["frame"]).expect("encodes");
                    black_box((
                        conn_id.len(),
                        frame,
                        v.get("close_code").and_then(Value::as_u64),
                    ));
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("serde_json_raw_value", name),
            &env,
            |b, env| {
                b.iter(|| {
                    let p: ToPhoneRaw<'_> = serde_json::from_slice(black_box(env)).expect("valid");
                    black_box((p.conn_id.len(), p.frame.map(RawValue::get), p.close_code));
                })
            },
        );
    }
    g.finish();
}

fn envelope_build(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope_build");
    let id = conn_id();
    for (name, len) in SIZES {
        let frame = phone_frame(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("relay_core", name), &frame, |b, frame| {
            b.iter(|| black_box(envelope::to_binary(&id, black_box(frame))))
        });
        // Baselines get their frame pre-parsed for free: only the build is timed.
        let raw: &RawValue = serde_json::from_slice(&frame).expect("valid");
        g.bench_with_input(
            BenchmarkId::new("serde_json_raw_value", name),
            raw,
            |b, raw| {
                b.iter(|| {
                    let env = ToBinaryRaw {
                        conn_id: id.as_str(),
                        frame: black_box(raw),
                    };
                    black_box(serde_json::to_vec(&env).expect("encodes"))
                })
            },
        );
        let value: Value = serde_json::from_slice(&frame).expect("valid");
        g.bench_with_input(
            BenchmarkId::new("serde_json_value", name),
            &value,
            |b, value| {
                b.iter(|| {
                    let env = ToBinaryValue {
                        conn_id: id.as_str(),
                        frame: black_box(value),
                    };
                    black_box(serde_json::to_vec(&env).expect("encodes"))
                })
            },
        );
    }
    g.finish();
}

fn phone_frame_validation(c: &mut Criterion) {
    let mut g = c.benchmark_group("phone_frame_validation");
    for (name, len) in SIZES {
        let frame = phone_frame(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("relay_core", name), &frame, |b, frame| {
            b.iter(|| envelope::validate_phone_frame(black_box(frame)).expect("valid"))
        });
        // serde_json does not check UTF-8 inside strings it ignores, which §4.1 requires
        // (1007 on bad UTF-8), so this baseline does less work than ours...
        g.bench_with_input(
            BenchmarkId::new("serde_ignored_any", name),
            &frame,
            |b, frame| {
                b.iter(|| {
                    serde_json::from_slice::<serde::de::IgnoredAny>(black_box(frame))
                        .expect("valid")
                })
            },
        );
        // ...and this one does the same work: UTF-8 first, then the grammar.
        g.bench_with_input(
            BenchmarkId::new("serde_ignored_any_utf8", name),
            &frame,
            |b, frame| {
                b.iter(|| {
                    let s = std::str::from_utf8(black_box(frame)).expect("UTF-8");
                    serde_json::from_str::<serde::de::IgnoredAny>(s).expect("valid")
                })
            },
        );
    }
    g.finish();
}

/// A connection handle as cheap as a real one (an `Arc`), doing nothing.
#[derive(Clone)]
struct BenchConn(Arc<ConnId>);

impl Conn for BenchConn {
    fn id(&self) -> &ConnId {
        &self.0
    }
    fn send(&self, _msg: Bytes) -> Result<(), SendError> {
        Ok(())
    }
    fn close(&self, _close: Close) {}
}

fn route_lookup(c: &mut Criterion) {
    const PHONES: usize = 16;
    let mut g = c.benchmark_group("route_lookup");
    let sid = ServerId::parse(b"0b6f5c9e-3d2a-4f7e-9a1b-2c3d4e5f6a7b").expect("valid");

    let reg = Registry::new(RegistryConfig::default(), SystemClock);
    let lease = match reg.claim(&sid, BenchConn(Arc::new(ConnId::random()))) {
        Claim::Claimed(c) => c.lease,
        Claim::Conflict(_) => unreachable!("the registry is empty"),
    };
    let phones: Vec<BenchConn> = (0..PHONES)
        .map(|_| BenchConn(Arc::new(ConnId::random())))
        .collect();
    for p in &phones {
        assert!(matches!(
            reg.register_phone(&sid, p.clone()),
            Registration::Attached(_)
        ));
    }
    // The conn_id arrives as a string parsed out of the binary's envelope.
    let target = phones[PHONES / 2].id().to_string();

    g.bench_function(BenchmarkId::new("relay_core_lease", "16_phones"), |b| {
        b.iter(|| black_box(lease.route(black_box(&target))).expect("registered"))
    });

    // One global map of every phone, keyed by conn_id, that must also check the server-id
    // so a binary can only reach its own phones.
    let global: Mutex<HashMap<String, (ServerId, BenchConn)>> = Mutex::new(
        phones
            .iter()
            .map(|p| (p.id().to_string(), (sid.clone(), p.clone())))
            .collect(),
    );
    g.bench_function(BenchmarkId::new("global_mutex_hashmap", "16_phones"), |b| {
        b.iter(|| {
            let map = global.lock().expect("not poisoned");
            let hit = map
                .get(black_box(target.as_str()))
                .filter(|(owner, _)| *owner == sid)
                .map(|(_, conn)| conn.clone());
            drop(map);
            black_box(hit).expect("registered")
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    envelope_parse,
    envelope_build,
    phone_frame_validation,
    route_lookup
);
criterion_main!(benches);
