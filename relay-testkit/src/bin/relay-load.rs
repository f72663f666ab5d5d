//! `relay-load`: drives a running relay (or, with `--direct`, the echo server) with real WebSocket
//! clients and reports what it measured. The work is in `relay_testkit::load`; this file turns
//! flags into a configuration and a report into output and an exit code:
//! 0 clean run, 1 loss/reordering/errors or the run could not take place, 2 bad flags.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use relay_testkit::load::{
    self, sys, EchoConfig, IdleConfig, LoadError, Pacing, ReconnectConfig, Reconnecting, Target,
};

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// Load generator for the pyrycode relay: fake binaries and phones over real WebSockets.
#[derive(Debug, Parser)]
#[command(name = "relay-load", version)]
struct Cli {
    /// The relay (or, with --direct, the echo server) as HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "RELAY_LOAD_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    addr: String,
    /// Speak TLS to --addr, trusting the PEM certificate(s) in FILE (the relay's
    /// --dev-tls-cert-out, or echo-server's --tls-cert-out).
    #[arg(long, global = true, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// Drive the echo server instead: phones only, each echoed on its own connection.
    #[arg(long, global = true)]
    direct: bool,
    /// Print one JSON object on stdout instead of the summary table.
    #[arg(long, global = true)]
    json: bool,
    /// No progress line on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Connection attempts in progress at once.
    #[arg(long, global = true, default_value_t = 128)]
    connect_concurrency: usize,
    /// Phones connect to this HOST:PORT instead of --addr (binaries stay on --addr): on a
    /// relay cluster, a node that does not hold their server-ids, so every phone is forwarded.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    phone_addr: Option<String>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Phones send, binaries echo back: round trips per second and latency percentiles, with
    /// every message checked to come back once and in order.
    Echo(EchoArgs),
    /// Open connections and hold them: the server's resident memory per connection.
    Idle(IdleArgs),
    /// Clients that reconnect on every close or refusal (with backoff) while relay nodes fail
    /// under them; checks per phone and direction that nothing the relay accepted arrives
    /// twice or out of order, across reconnects. Exit 0 only if so, with every phone routing
    /// at the end.
    Reconnect(ReconnectArgs),
}

#[derive(Debug, Args)]
struct ReconnectArgs {
    /// Server-ids, one fake binary each.
    #[arg(long, visible_alias = "server-ids", default_value_t = 4)]
    binaries: usize,
    /// Phones in total, spread round-robin over the server-ids.
    #[arg(long, default_value_t = 16)]
    phones: usize,
    /// Size of every phone message in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Pause between a phone's echo and its next message.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long a phone waits for an echo before sending the next message anyway.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    echo_wait: Duration,
    /// How long to run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

#[derive(Debug, Args)]
struct EchoArgs {
    /// Server-ids, one fake binary each.
    #[arg(long, visible_alias = "server-ids", default_value_t = 10)]
    binaries: usize,
    /// Phones in total, spread round-robin over the server-ids.
    #[arg(long, default_value_t = 100)]
    phones: usize,
    /// Size of every phone message in bytes (JSON padded to exactly this).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Closed loop: messages in flight per phone.
    #[arg(long, default_value_t = 8, conflicts_with = "rate")]
    window: usize,
    /// Open loop instead: messages per second over all phones, on a fixed schedule.
    #[arg(long)]
    rate: Option<f64>,
    /// Measurement window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Run before the window, excluded from the statistics.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// After the window, how long to wait for messages still in flight.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
}

#[derive(Debug, Args)]
struct IdleArgs {
    /// Server-ids, one fake binary each.
    #[arg(long, visible_alias = "server-ids", default_value_t = 100)]
    binaries: usize,
    /// Phones in total, spread round-robin over the server-ids.
    #[arg(long, default_value_t = 10_000)]
    phones: usize,
    /// How long to hold the connections once all are open, before measuring.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The server's process id, to report its RSS before and after (from /proc/PID/status).
    #[arg(long, visible_alias = "server-pid")]
    relay_pid: Option<u32>,
}

enum Config {
    Echo(EchoConfig),
    Idle(IdleConfig),
    Reconnect(ReconnectConfig, Duration),
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // exits 2 on a bad flag
    let progress = !cli.quiet;
    let config = match &cli.mode {
        Mode::Echo(a) => Config::Echo(EchoConfig {
            binaries: a.binaries,
            phones: a.phones,
            size: a.size,
            pacing: match a.rate {
                Some(rate) => Pacing::Open { rate },
                None => Pacing::Closed { window: a.window },
            },
            warmup: a.warmup,
            duration: a.duration,
            drain_timeout: a.drain_timeout,
            connect_concurrency: cli.connect_concurrency,
            progress,
            phone_addr: None,
        }),
        Mode::Idle(a) => Config::Idle(IdleConfig {
            binaries: a.binaries,
            phones: a.phones,
            hold: a.duration,
            server_pid: a.relay_pid,
            connect_concurrency: cli.connect_concurrency,
            progress,
        }),
        Mode::Reconnect(a) => Config::Reconnect(
            ReconnectConfig {
                binaries: a.binaries,
                phones: a.phones,
                size: a.size,
                interval: a.interval,
                echo_wait: a.echo_wait,
                ..ReconnectConfig::default()
            },
            a.duration,
        ),
    };
    let addr = match resolve(&cli.addr) {
        Ok(addr) => addr,
        Err(e) => return usage_error(&e),
    };
    let phone_addr = match cli.phone_addr.as_deref().map(resolve).transpose() {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    let mut config = config;
    match &mut config {
        Config::Echo(c) => c.phone_addr = phone_addr,
        Config::Reconnect(c, _) => c.phone_addr = phone_addr,
        Config::Idle(_) if phone_addr.is_some() => {
            return usage_error("--phone-addr applies to echo and reconnect")
        }
        Config::Idle(_) => {}
    }
    if cli.direct && matches!(config, Config::Reconnect(..)) {
        return usage_error("--direct does not apply to reconnect (it needs a relay)");
    }
    let checked = match &config {
        Config::Echo(c) => c.validate(),
        Config::Idle(c) => c.validate(),
        Config::Reconnect(c, _) => c.validate(),
    };
    if let Err(e) = checked {
        return usage_error(&e.to_string());
    }
    if let Some(path) = &cli.tls_ca {
        let roots = std::fs::read(path).and_then(|pem| relay_testkit::tls::roots_from_pem(&pem));
        match roots {
            Ok(roots) if !roots.is_empty() => relay_testkit::tls::speak_tls(addr, &roots),
            Ok(_) => {
                return usage_error(&format!("--tls-ca {}: no PEM certificate", path.display()))
            }
            Err(e) => return usage_error(&format!("--tls-ca {}: {e}", path.display())),
        }
    }
    let target = Target {
        addr,
        direct: cli.direct,
    };

    let connections = match &config {
        Config::Echo(c) => c.phones + if cli.direct { 0 } else { c.binaries },
        Config::Idle(c) => c.phones + if cli.direct { 0 } else { c.binaries },
        Config::Reconnect(c, _) => c.phones + c.binaries,
    };
    check_fd_limit(connections as u64);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return failed(&format!("cannot start the runtime: {e}")),
    };
    let outcome = runtime.block_on(async {
        match config {
            Config::Echo(c) => load::run_echo(target, &c).await.map(|r| {
                let text = if cli.json { to_json(&r) } else { r.table() };
                (r.ok, text)
            }),
            Config::Idle(c) => load::run_idle(target, &c).await.map(|r| {
                let text = if cli.json { to_json(&r) } else { r.table() };
                (r.ok, text)
            }),
            Config::Reconnect(c, duration) => {
                let run = Reconnecting::start(target.addr, c)?;
                tokio::time::sleep(duration).await;
                let r = run.finish().await;
                let text = if cli.json { to_json(&r) } else { r.table() };
                Ok((r.ok, text))
            }
        }
    });
    match outcome {
        Ok((ok, text)) => {
            println!("{}", text.trim_end());
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }
        Err(LoadError::Config(e)) => usage_error(&e),
        Err(e) => failed(&e.to_string()),
    }
}

fn to_json(report: &impl serde::Serialize) -> String {
    // The reports are plain structs of numbers and strings; serialising them cannot fail.
    serde_json::to_string(report).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
}

/// `HOST:PORT`, also accepting a `ws://` prefix and a trailing `/` for convenience.
fn resolve(addr: &str) -> Result<SocketAddr, String> {
    let bare = addr.trim_start_matches("ws://").trim_end_matches('/');
    bare.to_socket_addrs()
        .map_err(|e| format!("--addr {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("--addr {addr}: resolves to no address"))
}

/// Raises the open-file limit as far as allowed and says so if it still looks too low.
fn check_fd_limit(connections: u64) {
    // Each connection is one descriptor; keep headroom for the runtime and stdio.
    let needed = connections + 64;
    match sys::raise_nofile_limit() {
        Ok((soft, hard)) if soft < needed => eprintln!(
            "relay-load: warning: {connections} connections need about {needed} open files but \
             the limit is {soft} (hard {hard}); raise it with `ulimit -n {}` (as root if above \
             the hard limit) or expect EMFILE errors",
            needed.max(30_000)
        ),
        Ok(_) => {}
        Err(e) => eprintln!("relay-load: warning: cannot raise the open-file limit: {e}"),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("relay-load: error: {msg}");
    ExitCode::from(EXIT_USAGE)
}

fn failed(msg: &str) -> ExitCode {
    eprintln!("relay-load: error: {msg}");
    ExitCode::from(EXIT_FAILED)
}
