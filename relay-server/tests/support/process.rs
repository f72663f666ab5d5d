//! The real `relay-server` binary as a child process whose stderr is awaited asynchronously
//! (a tokio channel, for tests that wait on log lines while their own clients run); killed on
//! drop. How children are started, and `run_to_exit`, are [`super::real`]'s.

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

#[allow(unused_imports)] // each test crate uses its own part
pub use super::real::{relay, run_to_exit, spawn_with_stderr, PATIENCE};

/// A running relay-server. Every stderr line it printed so far is kept in `seen`.
pub struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Running {
        let (tx, lines) = mpsc::unbounded_channel();
        let child = spawn_with_stderr(args, env, move |line| tx.send(line).is_ok());
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Takes every line printed so far into `seen`, without waiting.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Lines seen so far containing every one of `needles`.
    pub fn count(&mut self, needles: &[&str]) -> usize {
        self.drain();
        self.seen
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits until `n` lines containing every one of `needles` were printed.
    pub async fn wait_lines(&mut self, needles: &[&str], n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let matching: Vec<String> = self
                .seen
                .iter()
                .filter(|l| needles.iter().all(|x| l.contains(x)))
                .cloned()
                .collect();
            if matching.len() >= n {
                return matching;
            }
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => self.seen.push(line),
                Ok(None) => panic!(
                    "relay-server exited; {n} lines with {needles:?} expected, saw {:#?}",
                    self.seen
                ),
                Err(_) => panic!(
                    "{n} lines with {needles:?} expected in time, got {}; saw {:#?}",
                    matching.len(),
                    self.seen
                ),
            }
        }
    }

    /// Parses the §10 startup line `listening addr=IP:PORT mode=MODE`.
    pub async fn listening(&mut self) -> SocketAddr {
        let line = self.wait_lines(&["listening addr="], 1).await.remove(0);
        field(&line, "addr").unwrap_or_else(|| panic!("no address in {line}"))
    }

    /// The `/metrics` address on the startup line (`metrics_addr=IP:PORT`), when serving.
    pub async fn metrics_addr(&mut self) -> SocketAddr {
        let line = self.wait_lines(&["listening addr="], 1).await.remove(0);
        field(&line, "metrics_addr").unwrap_or_else(|| panic!("no metrics_addr in {line}"))
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig}");
    }

    /// Waits for the child to exit on its own; returns its exit code. Keeps its last lines.
    pub async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // The reader thread sees EOF soon after; collect everything up to it.
                let until = tokio::time::Instant::now() + Duration::from_secs(2);
                while let Ok(Some(line)) = tokio::time::timeout_at(until, self.lines.recv()).await {
                    self.seen.push(line);
                }
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "relay-server still running after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The value of ` name=VALUE` on a text log line, parsed.
fn field<T: std::str::FromStr>(line: &str, name: &str) -> Option<T> {
    let key = format!(" {name}=");
    let start = line.find(&key)? + key.len();
    line[start..].split_whitespace().next()?.parse().ok()
}

/// One `GET /metrics` from `addr`: the value of every sample, by name and labels as printed.
pub async fn scrape(addr: SocketAddr) -> std::collections::BTreeMap<String, f64> {
    super::real::scrape(addr).await.0
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
