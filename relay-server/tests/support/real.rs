//! The real `relay-server` binary as a child process, for tests that need it whole: boot
//! errors and exit codes, the startup line, signals, and what only a separate process shows
//! (its RSS and open files, a log sink that goes away).
//!
//! Every child is killed when its handle drops, so a failing test leaves no relay behind.
//! Children run with an empty environment (plus what a test passes), so a `PYRYCODE_RELAY_*`
//! variable of the calling shell cannot change what a test sees, and with metrics off unless
//! a test asks, so relays can run side by side.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use relay_testkit::client::{fresh_server_id, FakeBinary, FakePhone};

pub const RELAY: &str = env!("CARGO_BIN_EXE_relay-server");

/// How long any child gets to reach the state a test waits for.
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
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Exited {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// A port nobody else can bind while this lives.
pub fn hold_a_port() -> (TcpListener, String) {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let addr = held.local_addr().unwrap().to_string();
    (held, addr)
}

/// A running relay-server: stderr lines arrive through a channel; killed on drop.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

/// Starts a relay whose stderr lines go to `deliver`, one by one, from a thread that drains
/// stderr for the child's whole life (so logging never blocks it) until `deliver` says stop.
pub fn spawn_with_stderr(
    args: &[&str],
    env: &[(&str, &str)],
    mut deliver: impl FnMut(String) -> bool + Send + 'static,
) -> Child {
    let mut child = relay(args, env).spawn().expect("spawn relay-server");
    let stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !deliver(line) {
                break;
            }
        }
    });
    child
}

impl Running {
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Running {
        let (tx, lines) = mpsc::channel();
        let child = spawn_with_stderr(args, env, move |line| tx.send(line).is_ok());
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next stderr line containing `needle`, or `None` if stderr ended first.
    pub fn line_with(&mut self, needle: &str) -> Option<String> {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return Some(line.clone());
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "no stderr line with {needle:?} in time; saw {:?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// Parses `listening addr=IP:PORT mode=MODE` (§10 startup line).
    pub fn listening(&mut self) -> (SocketAddr, String) {
        let line = self
            .line_with("listening addr=")
            .unwrap_or_else(|| panic!("relay-server exited before listening: {:?}", self.seen));
        let field = |name: &str| -> String {
            let start = line.find(&format!("{name}=")).expect(name) + name.len() + 1;
            line[start..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        let addr = field("addr").parse().expect("addr=IP:PORT");
        (addr, field("mode"))
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig}");
    }

    /// Waits for the child to exit on its own and returns its exit code.
    pub async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
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

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fake binary and phone through the relay at `addr`, a message each way.
pub async fn round_trip(addr: SocketAddr) -> (FakeBinary, FakePhone) {
    let id = fresh_server_id();
    let mut binary = FakeBinary::connect(addr, &id)
        .await
        .expect("binary upgrades");
    let mut phone = FakePhone::connect(addr, &id).await.expect("phone upgrades");
    phone.send_text(r#"{"hello": "binary"}"#).await.unwrap();
    let env = binary.recv_envelope().await.unwrap();
    assert_eq!(env.frame(), Some(r#"{"hello": "binary"}"#));
    binary
        .send_to(&env.conn_id, r#"{"hello":"phone"}"#)
        .await
        .unwrap();
    assert_eq!(phone.recv_text().await.unwrap(), r#"{"hello":"phone"}"#);
    (binary, phone)
}

impl Running {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's resident memory, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:") * 1024
    }

    /// The child's open file descriptors, from /proc.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// The `metrics_addr=` of the startup line, when metrics are on.
    pub fn metrics_addr(&mut self) -> Option<SocketAddr> {
        let line = self.line_with("listening addr=")?;
        let start = line.find("metrics_addr=")? + "metrics_addr=".len();
        line[start..].split_whitespace().next()?.parse().ok()
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// `GET path` over plain HTTP; the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).expect("UTF-8");
    text.split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned())
}

/// One scrape of a real relay's `--metrics-listen`.
pub async fn scrape(metrics: SocketAddr) -> super::Scrape {
    super::Scrape::parse(&http_get(metrics, "/metrics").await)
}
