//! TLS handshakes per second against a running TLS relay (or `echo-server --tls-cert-out`):
//! `--concurrency` tasks each connect, finish a full TLS handshake (no resumption: the relay
//! offers none), read the `/healthz` answer so the server's side is complete too, and close,
//! for `--duration`. With `--server-pid` it also reports the server's CPU time per handshake,
//! which is what the relay sustains per core whatever this client costs.
//!
//! ```sh
//! cargo run --release -p relay-server -- --dev-tls --https-listen 127.0.0.1:8443 &
//! cargo run --release -p relay-testkit --example tls-handshakes -- \
//!     --addr 127.0.0.1:8443 --tls-ca relay-dev-cert.pem --server-pid $!
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    /// The TLS server.
    #[arg(long, default_value = "127.0.0.1:8443")]
    addr: SocketAddr,
    /// PEM certificate to trust (the relay's --dev-tls-cert-out).
    #[arg(long, default_value = "relay-dev-cert.pem")]
    tls_ca: std::path::PathBuf,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The server's pid, to report its CPU seconds per handshake (/proc/PID/stat).
    #[arg(long)]
    server_pid: Option<u32>,
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let pem = match std::fs::read(&args.tls_ca) {
        Ok(pem) => pem,
        Err(e) => {
            eprintln!("tls-handshakes: --tls-ca {}: {e}", args.tls_ca.display());
            return ExitCode::FAILURE;
        }
    };
    let roots = match relay_testkit::tls::roots_from_pem(&pem) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tls-handshakes: --tls-ca: {e}");
            return ExitCode::FAILURE;
        }
    };
    relay_testkit::tls::speak_tls(args.addr, &roots);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let cpu_before = args.server_pid.and_then(cpu_seconds);
    let started = Instant::now();
    let until = started + args.duration;
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (done, failed, addr) = (done.clone(), failed.clone(), args.addr);
            tokio::spawn(async move {
                while Instant::now() < until {
                    let one = async {
                        let mut s = relay_testkit::tls::connect(addr).await?;
                        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                            .await?;
                        let mut body = Vec::new();
                        s.read_to_end(&mut body).await?;
                        Ok::<_, std::io::Error>(body.starts_with(b"HTTP/1.1 200"))
                    };
                    match tokio::time::timeout(Duration::from_secs(10), one).await {
                        Ok(Ok(true)) => done.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let server_cpu = match (cpu_before, args.server_pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) if n > 0 => format!(
            " server_cpu_us_per_handshake={:.0} (= {:.0} handshakes/s per core)",
            (b - a) / n as f64 * 1e6,
            n as f64 / (b - a)
        ),
        _ => String::new(),
    };
    println!(
        "handshakes={n} failed={} per_sec={:.0}{server_cpu}",
        failed.load(Ordering::Relaxed),
        n as f64 / secs
    );
    if n == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
