//! The README's 30-second tour: a fake binary and a fake phone talk through a running relay.
//!
//! ```sh
//! cargo run --release -p relay-server                  # terminal 1
//! cargo run -p relay-testkit --example demo            # terminal 2
//! cargo run -p relay-testkit --example demo -- --addr 127.0.0.1:9000 my-server-id
//! cargo run -p relay-testkit --example demo -- --wake   # with the relay pointed at fake-fcm
//!
//! cargo run --release -p relay-server -- --dev-tls     # wss on 127.0.0.1:8443
//! cargo run -p relay-testkit --example demo -- --tls-ca relay-dev-cert.pem
//! ```
//!
//! The binary claims a server-id (protocol.md §6.1), the phone (with an `X-Pyrycode-Token`)
//! sends one JSON message, the binary receives it wrapped in a routing envelope without the
//! token (§4.1) and echoes the frame back (§4.2), and the phone receives exactly those bytes.
//! With `--wake` the binary then asks the relay for a push wake (§4.4), which the `fake-fcm`
//! program shows arriving. Closing the phone shows the close notice (§4.3).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use relay_testkit::client::{fresh_server_id, ClientError, FakeBinary, FakePhone};

/// Sends one message from a fake phone to a fake binary through a running relay, and back.
#[derive(Parser)]
struct Args {
    /// Address of the relay. [default: 127.0.0.1:8080; 127.0.0.1:8443 with --tls-ca]
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Connect over wss, trusting the PEM certificate in FILE (what `relay-server --dev-tls`
    /// writes to relay-dev-cert.pem).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// Server-id the binary claims. [default: a fresh UUIDv4-shaped id]
    server_id: Option<String>,
    /// Also send a push wake (start the relay with push on, e.g. pointed at `fake-fcm`).
    #[arg(long)]
    wake: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match tour(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn tour(args: &Args) -> Result<(), String> {
    let default = if args.tls_ca.is_some() {
        "127.0.0.1:8443"
    } else {
        "127.0.0.1:8080"
    };
    let addr = args
        .addr
        .unwrap_or_else(|| default.parse().unwrap_or_else(|_| unreachable!()));
    let scheme = if let Some(path) = &args.tls_ca {
        let pem = std::fs::read(path).map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
        let roots = relay_testkit::tls::roots_from_pem(&pem)
            .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
        relay_testkit::tls::speak_tls(addr, &roots);
        "wss"
    } else {
        "ws"
    };
    let server_id = args.server_id.clone().unwrap_or_else(fresh_server_id);

    let mut binary = FakeBinary::connect(addr, &server_id)
        .await
        .map_err(|e| not_running(addr, e))?;
    println!("binary  connected to {scheme}://{addr}/v1/server as server-id {server_id}");

    let phone_token = "demo-phone-token";
    let mut phone = FakePhone::builder(addr, &server_id)
        .device_name("demo phone")
        .token(phone_token)
        .connect()
        .await
        .map_err(|e| format!("phone could not connect: {e}"))?;
    println!(
        "phone   connected to {scheme}://{addr}/v1/client with X-Pyrycode-Token: {phone_token}"
    );

    let hello = r#"{"type": "hello", "text": "hi from the phone"}"#;
    phone.send_text(hello).await.map_err(|e| e.to_string())?;
    println!("phone   sent      {hello}");

    let envelope = binary
        .recv_envelope()
        .await
        .map_err(|e| claim_failed(&server_id, e))?;
    println!("binary  received  {}", envelope.raw);
    if envelope.raw.contains(phone_token) || envelope.token.is_some() {
        return Err("the relay forwarded the phone's token (§4.1 forbids it)".into());
    }
    println!("        (no token: the relay checks it and never forwards it, §4.1)");
    let frame = envelope.frame().ok_or("the envelope has no frame")?;

    binary
        .send_to(&envelope.conn_id, frame)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "binary  sent      {{\"conn_id\":\"{}\",\"frame\":{frame}}}",
        envelope.conn_id
    );

    let echoed = phone.recv_text().await.map_err(|e| e.to_string())?;
    println!("phone   received  {echoed}");
    if echoed != hello {
        return Err("the phone did not get back the bytes it sent".into());
    }

    if args.wake {
        binary
            .push_wake("demo-fcm-registration-token")
            .await
            .map_err(|e| e.to_string())?;
        println!(
            "binary  sent      {{\"push_wake\":{{\"platform\":\"fcm\",\"token\":\"demo-fcm-registration-token\"}}}}"
        );
        println!("        (no reply on the wire, ever; fake-fcm prints the FCM request, §4.4)");
    }

    phone.close(1000).await.map_err(|e| e.to_string())?;
    let notice = binary.recv_envelope().await.map_err(|e| e.to_string())?;
    println!("binary  received  {}   (the phone left)", notice.raw);
    binary.close(1000).await.map_err(|e| e.to_string())?;
    println!("done: both closed cleanly");
    Ok(())
}

fn not_running(addr: SocketAddr, e: ClientError) -> String {
    match e {
        ClientError::Upgrade(_) => format!(
            "no relay answered at {addr} ({e}); start it with `cargo run --release -p relay-server`"
        ),
        other => format!("the relay at {addr} refused the binary: {other}"),
    }
}

fn claim_failed(server_id: &str, e: ClientError) -> String {
    match e {
        ClientError::Closed { code: 4409, .. } => {
            format!("server-id {server_id} is already claimed by another live binary (close 4409)")
        }
        // While the relay probes a live incumbent (§6.2), the phone's message goes to it.
        ClientError::Timeout { .. } => format!(
            "binary received no envelope ({e}); is another binary holding server-id {server_id}?"
        ),
        other => format!("binary received no envelope: {other}"),
    }
}
