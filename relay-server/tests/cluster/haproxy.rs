//! A real HAProxy in front of the nodes, configured like `deploy/haproxy.cfg` (key affinity
//! on `X-Pyrycode-Server`, `/healthz` checks, WebSocket timeouts), with tighter check timings
//! so a dead node is marked down within a second. Killed on drop.
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

/// `deploy/haproxy.cfg`'s shape; check timings tightened for tests.
pub fn config(listen: SocketAddr, backends: &[SocketAddr]) -> String {
    let mut c = format!(
        "global
    maxconn 4096

defaults
    mode http
    option http-server-close
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout tunnel 1h
    timeout client-fin 5s
    timeout http-request 5s
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response

frontend relay
    bind {listen}
    default_backend relays

backend relays
    balance hdr(X-Pyrycode-Server)
    hash-type consistent
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 300ms fall 2 rise 1
"
    );
    for (i, b) in backends.iter().enumerate() {
        c.push_str(&format!("    server node-{} {b} check\n", i + 1));
    }
    c
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.cfg);
    }
}
