//! A real HAProxy in front of the nodes, running `deploy/haproxy.cfg` (key affinity on
//! `X-Pyrycode-Server`, `/healthz` checks, WebSocket timeouts) adapted to loopback, with
//! tighter check timings so a dead node is marked down within a second. Killed on drop.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::nodes::{http_get, wait_until};

pub struct HaProxy {
    child: Child,
    pub addr: SocketAddr,
    cfg: PathBuf,
}

impl HaProxy {
    /// `None` (test skipped) when haproxy is missing outside CI. `dir` holds the config.
    pub async fn start(dir: &std::path::Path, backends: &[SocketAddr]) -> Option<HaProxy> {
        let program = relay_testkit::services::require("haproxy")?;
        // Free now; HAProxy binds it a moment later (it has no port 0 to report back).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let cfg = dir.join(format!("haproxy-{port}.cfg"));
        std::fs::write(&cfg, config(addr, backends)).unwrap();
        let child = Command::new(program)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts");
        let h = HaProxy { child, addr, cfg };
        wait_until(
            "haproxy serving /healthz",
            Duration::from_secs(10),
            || async { matches!(http_get(addr, "/healthz").await, Some((200, _))) },
        )
        .await;
        Some(h)
    }
}

/// `deploy/haproxy.cfg` itself, for loopback: the frontend binds `listen` without TLS, the
/// backend's servers are `backends`, health checks run every 300 ms (a dead node is down in
/// under a second), no DNS resolvers (addresses are IPs), and `maxconn` fits a test box.
/// Everything else (balance, hashing, checks, timeouts, retries, the X-Forwarded-For rule)
/// is the deployed configuration.
pub fn config(listen: SocketAddr, backends: &[SocketAddr]) -> String {
    let deployed = include_str!("../../../deploy/haproxy.cfg");
    let mut out = String::new();
    let mut section = "";
    let (mut bound, mut servers) = (false, false);
    for line in deployed.lines() {
        let t = line.trim_start();
        if !line.starts_with(' ') && !t.is_empty() && !t.starts_with('#') {
            section = t.split_whitespace().next().unwrap_or("");
        }
        match section {
            "resolvers" => continue,
            "global" if t.starts_with("maxconn ") => {
                out.push_str("    maxconn 4096\n");
                continue;
            }
            "frontend" if t.starts_with("bind ") => {
                out.push_str(&format!("    bind {listen}\n"));
                bound = true;
                continue;
            }
            "backend" if t.starts_with("server ") => continue,
            "backend" if t.starts_with("default-server ") => {
                out.push_str("    default-server inter 300ms fall 2 rise 1\n");
                for (i, b) in backends.iter().enumerate() {
                    out.push_str(&format!("    server node-{} {b} check\n", i + 1));
                }
                servers = true;
                continue;
            }
            _ => {}
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(
        bound && servers,
        "deploy/haproxy.cfg lost its frontend bind or backend default-server line"
    );
    out
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.cfg);
    }
}
