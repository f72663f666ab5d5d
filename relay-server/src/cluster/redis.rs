//! The [`Directory`] in Redis (or Valkey): each operation is one Lua script, so each is one
//! atomic compare-and-set on the server (protocol.md §11).
//!
//! Owns the key layout, the scripts (`scripts/*.lua`, embedded at build time) and the
//! connection: a [`ConnectionManager`] that reconnects by itself after Redis goes away, with
//! bounded connect and response timeouts so that no call hangs. It never decides anything
//! on the client side: a reply is parsed, never combined with another read.
//!
//! # Keys (prefix `pyrycode-relay:` by default)
//!
//! | key | type | content |
//! |---|---|---|
//! | `{p}epoch` | string | the epoch counter |
//! | `{p}node:{node}` | hash, `PEXPIRE` lease | `epoch`, `addr` |
//! | `{p}sid:{server-id}` | hash | `node`, `epoch` |
//! | `{p}owned:{node}` | set | server-ids the node took (for purge and leave) |
//!
//! Scripts build keys from their arguments, so this needs a single Redis (or a primary
//! with replicas), not Redis Cluster. Redis must not evict keys (`maxmemory-policy
//! noeviction`): an evicted liveness entry is a fencing event.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use relay_core::ServerId;

use super::directory::{
    Claim, DirError, Directory, Epoch, Holder, NodeId, Peer, Reassert, Reasserted, Refresh,
};

/// The key prefix used unless the caller picks another.
pub const DEFAULT_PREFIX: &str = "pyrycode-relay:";

/// How long one connection attempt may take; the request path's own 2 s bound sits above.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long one command may wait for its reply on an established connection.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Reconnect backoff ceiling: after Redis comes back, the directory recovers within this.
const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(500);

struct Scripts {
    join: Script,
    refresh: Script,
    claim: Script,
    locate: Script,
    release: Script,
    reassert: Script,
    purge: Script,
    leave: Script,
}

impl Scripts {
    fn load() -> Self {
        Scripts {
            join: Script::new(include_str!("scripts/join.lua")),
            refresh: Script::new(include_str!("scripts/refresh.lua")),
            claim: Script::new(include_str!("scripts/claim.lua")),
            locate: Script::new(include_str!("scripts/locate.lua")),
            release: Script::new(include_str!("scripts/release.lua")),
            reassert: Script::new(include_str!("scripts/reassert.lua")),
            purge: Script::new(include_str!("scripts/purge.lua")),
            leave: Script::new(include_str!("scripts/leave.lua")),
        }
    }
}

pub struct RedisDirectory {
    conn: ConnectionManager,
    prefix: String,
    scripts: Scripts,
}

/// The URL could not be used. Never carries the URL: it may hold a password.
#[derive(Debug, thiserror::Error)]
#[error("--cluster-redis: {0}")]
pub struct RedisUrlError(String);

impl RedisDirectory {
    /// Parses `url` (`redis://` or `rediss://`, TLS through rustls) and sets up the
    /// reconnecting connection. Does not connect: the first call does, and every call after
    /// a loss reconnects, so a node can boot while Redis is down and recover when it is up.
    /// Call it inside the tokio runtime that will use it (the client spawns a task there).
    /// A private CA for `rediss://` is trusted through `SSL_CERT_FILE`.
    pub fn new(url: &str, prefix: &str) -> Result<RedisDirectory, RedisUrlError> {
        // The parse error text may quote the URL; keep only its category.
        let client =
            redis::Client::open(url).map_err(|e| RedisUrlError(format!("{:?}", e.kind())))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(MAX_RECONNECT_DELAY);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| RedisUrlError(format!("{:?}", e.kind())))?;
        Ok(RedisDirectory {
            conn,
            prefix: prefix.to_owned(),
            scripts: Scripts::load(),
        })
    }

    async fn run(&self, script: &Script, args: &[&str]) -> Result<Value, DirError> {
        let mut inv = script.prepare_invoke();
        inv.arg(&self.prefix);
        for a in args {
            inv.arg(*a);
        }
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn).await.map_err(map_err)
    }
}

fn map_err(e: redis::RedisError) -> DirError {
    if e.is_timeout() {
        DirError::Timeout(RESPONSE_TIMEOUT)
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        DirError::Unavailable(e.to_string())
    } else {
        // A server error (OOM, READONLY replica, script error): still "unknown outcome".
        DirError::Unavailable(format!("{:?}: {e}", e.kind()))
    }
}

fn bad(what: &str, v: &Value) -> DirError {
    DirError::Protocol(format!("{what}: {v:?}"))
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

/// A script's `{tag, ...}` reply as strings.
fn tagged<'a>(what: &str, v: &'a Value) -> Result<Vec<&'a str>, DirError> {
    let Value::Array(items) = v else {
        return Err(bad(what, v));
    };
    items
        .iter()
        .map(|i| text(i).ok_or_else(|| bad(what, v)))
        .collect()
}

fn node(what: &str, raw: &str) -> Result<NodeId, DirError> {
    NodeId::new(raw).map_err(|_| DirError::Protocol(format!("{what}: bad node id")))
}

fn ms(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

impl Directory for RedisDirectory {
    async fn join(
        &self,
        node: &NodeId,
        addr: &str,
        lease: Duration,
        floor: Epoch,
    ) -> Result<Epoch, DirError> {
        let v = self
            .run(
                &self.scripts.join,
                &[node.as_str(), addr, &ms(lease), &floor.0.to_string()],
            )
            .await?;
        match int(&v) {
            Some(e) if e > 0 => Ok(Epoch(e as u64)),
            _ => Err(bad("join", &v)),
        }
    }

    async fn refresh(
        &self,
        node: &NodeId,
        epoch: Epoch,
        lease: Duration,
    ) -> Result<Refresh, DirError> {
        let v = self
            .run(
                &self.scripts.refresh,
                &[node.as_str(), &epoch.0.to_string(), &ms(lease)],
            )
            .await?;
        match text(&v) {
            Some("alive") => Ok(Refresh::Alive),
            Some("gone") => Ok(Refresh::Gone),
            Some("usurped") => Ok(Refresh::Usurped),
            _ => Err(bad("refresh", &v)),
        }
    }

    async fn claim(&self, sid: &ServerId, node: &NodeId, epoch: Epoch) -> Result<Claim, DirError> {
        let v = self
            .run(
                &self.scripts.claim,
                &[sid.as_str(), node.as_str(), &epoch.0.to_string()],
            )
            .await?;
        match tagged("claim", &v)?.as_slice() {
            ["fenced"] => Ok(Claim::Fenced),
            ["ours"] => Ok(Claim::Ours),
            ["took"] => Ok(Claim::Took { from: None }),
            ["took", from] => Ok(Claim::Took {
                from: Some(self::node("claim", from)?),
            }),
            ["held", holder, addr] => Ok(Claim::Held(Peer {
                node: self::node("claim", holder)?,
                addr: (*addr).to_owned(),
            })),
            _ => Err(bad("claim", &v)),
        }
    }

    async fn locate(&self, sid: &ServerId, node: &NodeId) -> Result<Holder, DirError> {
        let v = self
            .run(&self.scripts.locate, &[sid.as_str(), node.as_str()])
            .await?;
        match tagged("locate", &v)?.as_slice() {
            ["nobody"] => Ok(Holder::Nobody),
            ["us"] => Ok(Holder::Us),
            ["peer", holder, addr] => Ok(Holder::Peer(Peer {
                node: self::node("locate", holder)?,
                addr: (*addr).to_owned(),
            })),
            _ => Err(bad("locate", &v)),
        }
    }

    async fn release(&self, sid: &ServerId, node: &NodeId, epoch: Epoch) -> Result<bool, DirError> {
        let v = self
            .run(
                &self.scripts.release,
                &[sid.as_str(), node.as_str(), &epoch.0.to_string()],
            )
            .await?;
        match int(&v) {
            Some(1) => Ok(true),
            Some(0) => Ok(false),
            _ => Err(bad("release", &v)),
        }
    }

    async fn reassert(
        &self,
        node: &NodeId,
        epoch: Epoch,
        sids: &[ServerId],
    ) -> Result<Reassert, DirError> {
        let e = epoch.0.to_string();
        let mut args: Vec<&str> = Vec::with_capacity(2 + sids.len());
        args.push(node.as_str());
        args.push(&e);
        args.extend(sids.iter().map(ServerId::as_str));
        let v = self.run(&self.scripts.reassert, &args).await?;
        let items = tagged("reassert", &v)?;
        match items.split_first() {
            Some((&"fenced", [])) => Ok(Reassert::Fenced),
            Some((&"done", rest)) if rest.len() == sids.len() => rest
                .iter()
                .map(|r| match *r {
                    "" => Ok(Reasserted::Kept),
                    holder => Ok(Reasserted::Lost {
                        to: self::node("reassert", holder)?,
                    }),
                })
                .collect::<Result<_, _>>()
                .map(Reassert::Done),
            _ => Err(bad("reassert", &v)),
        }
    }

    async fn purge(&self, node: &NodeId, epoch: Epoch) -> Result<u64, DirError> {
        let v = self
            .run(&self.scripts.purge, &[node.as_str(), &epoch.0.to_string()])
            .await?;
        int(&v)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| bad("purge", &v))
    }

    async fn leave(&self, node: &NodeId, epoch: Epoch) -> Result<(), DirError> {
        let v = self
            .run(&self.scripts.leave, &[node.as_str(), &epoch.0.to_string()])
            .await?;
        int(&v).map(|_| ()).ok_or_else(|| bad("leave", &v))
    }
}
