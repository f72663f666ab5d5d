//! Real `relay-server` processes in cluster mode on loopback (§11), sharing one real
//! `redis-server`, optionally behind a real HAProxy: the harness of `e2e_cluster.rs`
//! and `e2e_cluster_failover.rs`.
//!
//! Every node is the binary itself (`CARGO_BIN_EXE_relay-server`), started with
//! `--insecure-listen` on an ephemeral port and the cluster flags; a node that is restarted
//! comes back on the ports it had, so HAProxy and its peers find it again. Every process is
//! killed when its handle drops.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::redis_server::RedisServer;
use super::support::real::Running;

/// A cluster secret file (0600), removed with its directory on drop.
pub struct Secret {
    dir: PathBuf,
    pub path: PathBuf,
}

impl Secret {
    pub fn new() -> Secret {
        use std::os::unix::fs::PermissionsExt;
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).unwrap();
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("relay-cluster-e2e-{hex}"));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, format!("{hex}{hex}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Secret { dir, path }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One node: its name, the ports it listens on, and its process while it runs.
pub struct Node {
    pub name: String,
    /// The client listener (`--insecure-listen`).
    pub addr: SocketAddr,
    /// `--cluster-listen` (what peers forward to).
    pub cluster_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub proc: Option<Running>,
}

/// The nodes, their Redis and their secret.
pub struct Cluster {
    pub redis: RedisServer,
    pub secret: Secret,
    pub lease: Duration,
    /// Flags every node gets on top of the cluster ones.
    pub extra: Vec<String>,
    pub nodes: Vec<Node>,
}

/// Short timings, high per-IP limits (every test client is 127.0.0.1, and HAProxy too).
pub const FAST: &[&str] = &[
    "--grace-period",
    "5s",
    "--conflict-probe-timeout",
    "500ms",
    "--heartbeat-interval",
    "2s",
    "--heartbeat-timeout",
    "2s",
    "--shutdown-timeout",
    "3s",
    "--rate-limit-per-minute",
    "1000000",
    "--rate-limit-burst",
    "1000000",
    "--max-connections-per-ip",
    "1000000",
    // As deployed behind deploy/haproxy.cfg, which sets X-Forwarded-For.
    "--trust-x-forwarded-for",
];

/// `base` flag/value pairs, minus the flags `extra` gives again, then `extra`.
fn with_overrides(base: &[&str], extra: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for pair in base.chunks(2) {
        if !extra.contains(&pair[0]) {
            out.extend(pair.iter().map(|s| s.to_string()));
        }
    }
    out.extend(extra.iter().map(|s| s.to_string()));
    out
}

impl Cluster {
    /// `n` nodes on one Redis with a `lease`; `None` (test skipped) without redis-server.
    pub fn start(n: usize, lease: Duration, extra: &[&str]) -> Option<Cluster> {
        let redis = RedisServer::start()?;
        let mut c = Cluster {
            redis,
            secret: Secret::new(),
            lease,
            extra: with_overrides(FAST, extra),
            nodes: Vec::new(),
        };
        for i in 0..n {
            let name = format!("node-{}", i + 1);
            let (proc, addr, cluster_addr, metrics_addr) = c.spawn_node(&name, None);
            c.nodes.push(Node {
                name,
                addr,
                cluster_addr,
                metrics_addr,
                proc: Some(proc),
            });
        }
        Some(c)
    }

    /// The flags of node `name`; `ports` = (client, cluster) to come back on.
    pub fn args(&self, name: &str, ports: Option<(u16, u16)>) -> Vec<String> {
        let (p, cp) = ports.unwrap_or((0, 0));
        let mut a: Vec<String> = [
            "--insecure-listen",
            &format!("127.0.0.1:{p}"),
            "--cluster-redis",
            &self.redis.url(),
            "--cluster-listen",
            &format!("127.0.0.1:{cp}"),
            "--cluster-secret-file",
            &self.secret.path.to_string_lossy(),
            "--node-id",
            name,
            "--cluster-lease",
            &format!("{}ms", self.lease.as_millis()),
            "--metrics-listen",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(self.extra.iter().cloned());
        a
    }

    fn spawn_node(
        &self,
        name: &str,
        ports: Option<(u16, u16)>,
    ) -> (Running, SocketAddr, SocketAddr, SocketAddr) {
        let args = self.args(name, ports);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut proc = Running::spawn(&args, &[]);
        let (addrs, metrics) = startup(&mut proc);
        assert_eq!(addrs.len(), 2, "client and cluster listeners: {addrs:?}");
        (proc, addrs[0], addrs[1], metrics)
    }

    /// Starts node `i` again on the ports it had.
    pub fn restart(&mut self, i: usize) {
        let ports = (self.nodes[i].addr.port(), self.nodes[i].cluster_addr.port());
        let name = self.nodes[i].name.clone();
        let (proc, addr, cluster_addr, metrics) = self.spawn_node(&name, Some(ports));
        let node = &mut self.nodes[i];
        assert_eq!((addr, cluster_addr), (node.addr, node.cluster_addr));
        node.metrics_addr = metrics;
        node.proc = Some(proc);
    }

    /// `kill -9`: a crash, no leave, no 1001.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// SIGTERM, and waits for exit 0.
    pub async fn terminate(&mut self, i: usize) {
        let mut p = self.nodes[i].proc.take().expect("node running");
        p.signal("TERM");
        assert_eq!(p.exit_code(Duration::from_secs(10)).await, Some(0));
    }

    /// Until every running node says `"cluster":"ok"` on /healthz.
    pub async fn wait_healthy(&self) {
        for n in self.nodes.iter().filter(|n| n.proc.is_some()) {
            wait_until(
                &format!("{} healthy", n.name),
                Duration::from_secs(10),
                || async { healthz(n.addr).await.is_some_and(|h| h["cluster"] == "ok") },
            )
            .await;
        }
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }
}

/// The startup line's addresses (client listener first, cluster listener last) and
/// metrics address.
fn startup(proc: &mut Running) -> (Vec<SocketAddr>, SocketAddr) {
    let line = proc
        .line_with("listening addr=")
        .unwrap_or_else(|| panic!("relay-server exited before listening: {:?}", proc.seen));
    let field = |name: &str| -> String {
        let start = line.find(&format!(" {name}=")).expect(name) + name.len() + 2;
        line[start..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let addrs = field("addr")
        .split(',')
        .map(|a| a.parse().expect("IP:PORT"))
        .collect();
    assert!(line.contains(" node_id=node-"), "{line}");
    (
        addrs,
        field("metrics_addr").parse().expect("metrics IP:PORT"),
    )
}

/// `GET /healthz` as JSON, `None` if the node does not answer 200.
pub async fn healthz(addr: SocketAddr) -> Option<serde_json::Value> {
    let (status, body) = http_get(addr, "/healthz").await?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

/// One `GET` with `Connection: close`: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.get(9..12)?.parse().ok()?;
        Some((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(3), get)
        .await
        .ok()?
}

/// One sample of a node's `/metrics` (0 if absent).
pub async fn metric(addr: SocketAddr, sample: &str) -> f64 {
    let Some((200, body)) = http_get(addr, "/metrics").await else {
        panic!("no /metrics at {addr}");
    };
    body.lines()
        .find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == sample).then(|| v.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Polls `cond` every 20 ms until it holds: for states of other processes, which send no
/// event this test could await.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
