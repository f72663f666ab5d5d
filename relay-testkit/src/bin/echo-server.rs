//! `echo-server`: the direct-echo baseline for `relay-load --direct` (see `relay_testkit::echo`).
//! Prints `listening addr=IP:PORT` to stderr once bound, so scripts can use `--listen …:0`.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use relay_testkit::{echo, load::sys};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// WebSocket echo server on the relay's stack (hyper + fastwebsockets), one hop, no relay logic:
/// every message comes back verbatim as text on the same connection; any path, any headers.
#[derive(Debug, Parser)]
#[command(name = "echo-server", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (see the `listening addr=` line).
    #[arg(long, env = "ECHO_SERVER_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Serve TLS (the relay's rustls setup) with a certificate made at start for localhost,
    /// 127.0.0.1 and ::1, whose PEM is written to FILE for clients (`relay-load --tls-ca FILE`).
    #[arg(long, value_name = "FILE")]
    tls_cert_out: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Idle loads hold one descriptor per connection here too.
    if let Err(e) = sys::raise_nofile_limit() {
        eprintln!("echo-server: warning: cannot raise the open-file limit: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("echo-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("echo-server: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => {
            // One write, so a script polling the log never sees half a line.
            use std::io::Write;
            let _ = std::io::stderr().write_all(format!("listening addr={addr}\n").as_bytes());
        }
        Err(e) => {
            eprintln!("echo-server: cannot read the bound address: {e}");
            return ExitCode::FAILURE;
        }
    }
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("echo-server: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let serving = async {
        match &args.tls_cert_out {
            None => echo::serve(listener).await,
            Some(path) => {
                let cert = relay_testkit::tls::test_certificate(&["localhost", "127.0.0.1", "::1"]);
                std::fs::write(path, &cert.cert_pem)?;
                let config = echo::tls_config(&cert).map_err(std::io::Error::other)?;
                echo::serve_tls(listener, config).await
            }
        }
    };
    tokio::select! {
        result = serving => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("echo-server: accept failed: {e}");
                ExitCode::FAILURE
            }
        },
        _ = term.recv() => ExitCode::SUCCESS,
        _ = int.recv() => ExitCode::SUCCESS,
    }
}
