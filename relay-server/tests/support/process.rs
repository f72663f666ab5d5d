//! The real `relay-server` binary as a child process: its stderr lines arrive through a
//! channel and are searched with deadlines; killed on drop. Children run with an empty
//! environment plus what the test passes, so the calling shell cannot change what they see.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

pub const RELAY: &str = env!("CARGO_BIN_EXE_relay-server");

/// How long a child gets to reach the state a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn relay(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(RELAY);
    cmd.args(args)
        .env_clear()
        // Tests run relays side by side: none takes the default metrics port unless asked.
        .env("PYRYCODE_RELAY_METRICS_LISTEN", "")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A finished child: exit code and everything it printed.
#[derive(Debug)]
pub struct Exited {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command that is expected to exit on its own; kills it and fails if it does not.
pub fn run_to_exit(mut cmd: Command) -> Exited {
    let mut child = cmd.spawn().expect("spawn relay-server");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("relay-server did not exit: it started serving instead");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    Exited {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// A running relay-server. Every stderr line it printed so far is kept in `seen`.
pub struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut child = relay(args, env).spawn().expect("spawn relay-server");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        // Keeps draining stderr for the child's whole life, so logging never blocks it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 scrape");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
