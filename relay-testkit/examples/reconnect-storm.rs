//! A reconnect storm over TLS: `--binaries` fake binaries and `--phones` phones (relay-load's
//! `reconnect` clients: jittered exponential backoff, order checked across reconnects) connect
//! to a relay this example starts; once every phone routes, the relay is stopped (SIGTERM: it
//! closes everyone 1001) and started again on the same port with the same certificate, and
//! every client comes back at once. Reported: how long until every phone routed again, the
//! relay's CPU seconds and peak RSS over the storm, and what the clients saw (refusals,
//! violations).
//!
//! ```sh
//! cargo build --release -p relay-server -p relay-testkit --examples
//! target/release/examples/reconnect-storm --relay target/release/relay-server \
//!     --binaries 9000 --phones 9000
//! ```
//!
//! Both processes need about `binaries + phones` descriptors; the example raises its own
//! limit to the hard limit and the relay inherits it.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use relay_testkit::load::{ReconnectConfig, Reconnecting};

#[derive(Parser)]
struct Args {
    /// The relay-server binary to run.
    #[arg(long, default_value = "target/release/relay-server")]
    relay: PathBuf,
    #[arg(long, default_value_t = 9000)]
    binaries: usize,
    #[arg(long, default_value_t = 9000)]
    phones: usize,
    /// Pause between a phone's echo and its next message (keeps the steady load light).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Longest a phase (first connect, recovery) may take.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    within: Duration,
}

/// utime + stime of `pid` in seconds, and its peak RSS (VmHWM) in bytes.
fn cpu_and_peak(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((ticks / 100.0, hwm_kb * 1024))
}

fn start_relay(args: &Args, addr: SocketAddr, cert: &PathBuf, key: &PathBuf) -> Child {
    let n = (args.binaries + args.phones + 1000).to_string();
    Command::new(&args.relay)
        .args(["--https-listen", &addr.to_string()])
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .args(["--metrics-listen", ""])
        .args(["--max-connections", &n, "--max-connections-per-ip", &n])
        .args(["--rate-limit-per-minute", "10000000"])
        .args(["--rate-limit-burst", "10000000"])
        .args(["--shutdown-timeout", "10s"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", args.relay.display()))
}

/// Waits until `addr` accepts TCP connections (the relay is listening).
async fn wait_listening(addr: SocketAddr) {
    let until = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < until, "the relay did not listen on {addr}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The relay under test, killed if the storm ends early (an error before the report).
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn sigterm(child: &Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = relay_testkit::load::sys::raise_nofile_limit() {
        eprintln!("reconnect-storm: cannot raise the open-file limit: {e}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let made = relay_testkit::tls::test_certificate(&["127.0.0.1"]);
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &made.cert_pem).expect("write cert");
    std::fs::write(&key, &made.key_pem).expect("write key");
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    relay_testkit::tls::speak_tls(addr, std::slice::from_ref(&made.der));

    let mut relay = Relay(start_relay(&args, addr, &cert, &key));
    wait_listening(addr).await;
    let cfg = ReconnectConfig {
        binaries: args.binaries,
        phones: args.phones,
        interval: args.interval,
        echo_wait: Duration::from_secs(5),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(5),
        ..ReconnectConfig::default()
    };
    let t0 = Instant::now();
    let load = match Reconnecting::start(addr, cfg) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("reconnect-storm: {e}");
            return ExitCode::FAILURE;
        }
    };
    let first = match load.wait_all_routing_since(t0, args.within).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("reconnect-storm: first connect: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "first connect: {} binaries + {} phones routing after {:.2} s",
        args.binaries,
        args.phones,
        first.as_secs_f64()
    );

    let stop = Instant::now();
    sigterm(&relay.0);
    let _ = relay.0.wait();
    let drained = stop.elapsed();
    relay = Relay(start_relay(&args, addr, &cert, &key));
    let restarted = Instant::now();
    wait_listening(addr).await;
    let listening = restarted.elapsed();
    let recovered = load.wait_all_routing_since(restarted, args.within).await;
    let usage = cpu_and_peak(relay.0.id());
    let binaries_up = load.binaries_up();
    sigterm(&relay.0);
    let report = load.finish().await;
    let _ = relay.0.wait();

    println!(
        "stop: SIGTERM to exit {:.2} s; restart: listening after {:.2} s",
        drained.as_secs_f64(),
        listening.as_secs_f64()
    );
    match &recovered {
        Ok(d) => println!(
            "storm: every phone routing again {:.2} s after the restart ({binaries_up} binaries up)",
            d.as_secs_f64()
        ),
        Err(e) => println!("storm: NOT recovered: {e}"),
    }
    if let Some((cpu, peak)) = usage {
        println!(
            "relay over the storm: {cpu:.2} CPU s, peak RSS {:.1} MiB",
            peak as f64 / (1024.0 * 1024.0)
        );
    }
    print!("{}", report.table());
    if recovered.is_ok()
        && report.conflicts_4409 == 0
        && report.out_of_order_to_binary == 0
        && report.out_of_order_to_phone == 0
        && report.corrupt == 0
    {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
