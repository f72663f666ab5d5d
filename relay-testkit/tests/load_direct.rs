//! The load generator end to end against the in-process echo server (`relay-load --direct`):
//! every message comes back, in order, and the report says so.
#![cfg(feature = "net")]

use std::time::Duration;

use relay_testkit::echo::EchoServer;
use relay_testkit::load::{self, EchoConfig, IdleConfig, Pacing, Target};

async fn echo_server() -> EchoServer {
    EchoServer::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("echo server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_direct_run_loses_nothing() {
    let server = echo_server().await;
    let target = Target {
        addr: server.addr(),
        direct: true,
    };
    let cfg = EchoConfig {
        binaries: 2,
        phones: 8,
        size: 256,
        pacing: Pacing::Closed { window: 4 },
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(2),
        ..EchoConfig::default()
    };
    let report = load::run_echo(target, &cfg).await.expect("run");
    assert!(report.ok, "{}", report.table());
    assert_eq!(report.lost, 0);
    assert_eq!(report.reordered, 0);
    assert_eq!(report.sent, report.received);
    assert!(report.round_trips > 0, "{}", report.table());
    assert_eq!(report.latency_us.count, report.round_trips);
    assert!(report.latency_us.p50 > 0.0 && report.latency_us.p50 <= report.latency_us.max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_direct_run_offers_the_requested_rate() {
    let server = echo_server().await;
    let target = Target {
        addr: server.addr(),
        direct: true,
    };
    let cfg = EchoConfig {
        binaries: 1,
        phones: 10,
        size: 64,
        pacing: Pacing::Open { rate: 500.0 },
        warmup: Duration::from_millis(100),
        duration: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(2),
        ..EchoConfig::default()
    };
    let report = load::run_echo(target, &cfg).await.expect("run");
    assert!(report.ok, "{}", report.table());
    assert_eq!(report.sent, report.received);
    // 500/s for 1 s, give or take the edges of the window.
    assert!(
        (450..=550).contains(&report.round_trips),
        "{}",
        report.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_direct_run_holds_every_connection() {
    let server = echo_server().await;
    let target = Target {
        addr: server.addr(),
        direct: true,
    };
    let cfg = IdleConfig {
        binaries: 1,
        phones: 50,
        hold: Duration::from_millis(200),
        // Our own process hosts the echo server, so its RSS is the server's.
        server_pid: Some(std::process::id()),
        ..IdleConfig::default()
    };
    let report = load::run_idle(target, &cfg).await.expect("run");
    assert!(report.ok, "{}", report.table());
    assert_eq!(report.phones_connected, 50);
    assert_eq!(report.closed_while_held, 0);
    assert!(report.bytes_per_connection.is_some());
}

#[tokio::test]
async fn an_unreachable_server_is_an_error_not_a_report() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let cfg = EchoConfig {
        duration: Duration::from_millis(100),
        ..EchoConfig::default()
    };
    let err = load::run_echo(Target { addr, direct: true }, &cfg)
        .await
        .expect_err("nothing listens there");
    assert!(err.to_string().contains("connection refused"), "{err}");
}
