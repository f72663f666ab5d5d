//! The stand-in FCM (relay-testkit's `fcm` module) as a program, for trying push wake by hand
//! (protocol.md §4.4) without a Google project:
//!
//! ```sh
//! cargo run -p relay-testkit --bin fake-fcm                       # terminal 0: prints the flags
//! cargo run --release -p relay-server -- <the flags it printed>   # terminal 1
//! cargo run -p relay-testkit --example demo -- --wake             # terminal 2
//! ```
//!
//! It writes a test-only service-account key and its CA certificate to a temporary directory,
//! prints the `relay-server` flags that point at them, then prints every request it gets and
//! what its checks found (JWT signature and claims, bearer token). Ctrl-C stops it.

use std::process::ExitCode;
use std::time::Duration;

use relay_testkit::fcm::{Endpoint, FakeFcm};

#[tokio::main]
async fn main() -> ExitCode {
    let fcm = match FakeFcm::start().await {
        Ok(fcm) => fcm,
        Err(e) => {
            eprintln!("fake-fcm: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "fake FCM on {} (token endpoint {})",
        fcm.endpoint(),
        fcm.token_uri()
    );
    println!("start the relay with:");
    println!(
        "  relay-server --fcm-credentials {} --fcm-endpoint {} --fcm-ca-root {}",
        fcm.key_path().display(),
        fcm.endpoint(),
        fcm.ca_path().display()
    );
    let mut shown = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let requests = fcm.requests();
        for r in &requests[shown..] {
            let checks = match &r.verdict {
                Ok(()) if r.endpoint == Endpoint::Token => "JWT grant verified".to_owned(),
                Ok(()) => "bearer token valid".to_owned(),
                Err(why) => format!("refused: {why}"),
            };
            println!("{} {} ({checks})", r.method, r.path);
            if r.endpoint == Endpoint::Send {
                println!("  body {}", String::from_utf8_lossy(&r.body));
            }
        }
        shown = requests.len();
    }
}
