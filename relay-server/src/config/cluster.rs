//! Cluster flags (protocol.md §11): the Redis directory, this node's name, its cluster
//! listener and how peers reach it, the shared secret, the liveness lease.
//!
//! Off unless `--cluster-redis` is given; then the other flags it needs are required and the
//! ones it does not are refused. Nothing here connects to Redis or reads the secret file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::parse::{duration, invalid, parse_duration, parse_listen_addr};
use super::{BootContext, BootError};

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cluster")]
pub struct ClusterArgs {
    /// Redis (or Valkey) holding the cluster directory: redis://HOST:PORT or rediss://…
    /// Unset = a single node. [default: unset]
    #[arg(
        long,
        env = "PYRYCODE_RELAY_CLUSTER_REDIS",
        value_name = "URL",
        hide_env_values = true
    )]
    pub cluster_redis: Option<String>,

    /// This node's name in the directory. [default: the hostname plus a random suffix]
    #[arg(long, env = "PYRYCODE_RELAY_NODE_ID", value_name = "NAME")]
    pub node_id: Option<String>,

    /// Where this node accepts connections forwarded by its peers. [default: unset]
    #[arg(long, env = "PYRYCODE_RELAY_CLUSTER_LISTEN", value_name = "ADDR",
          value_parser = parse_listen_addr)]
    pub cluster_listen: Option<SocketAddr>,

    /// How peers reach this node's cluster listener, HOST:PORT. [default: the listen address]
    #[arg(long, env = "PYRYCODE_RELAY_CLUSTER_ADVERTISE", value_name = "ADDR")]
    pub cluster_advertise: Option<String>,

    /// File holding the secret that authenticates forwarded connections. [default: unset]
    #[arg(long, env = "PYRYCODE_RELAY_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    /// How long this node's liveness entry lives unless refreshed (every lease/3).
    #[arg(long, env = "PYRYCODE_RELAY_CLUSTER_LEASE", value_name = "DURATION", default_value = "10s",
          value_parser = parse_duration)]
    pub cluster_lease: Duration,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Cluster {
    pub redis_url: String,
    pub node_id: String,
    pub listen: SocketAddr,
    /// `HOST:PORT`.
    pub advertise: String,
    pub secret_file: PathBuf,
    pub lease: Duration,
}

impl std::fmt::Debug for Cluster {
    // The Redis URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("redis_url", &"<redacted>")
            .field("node_id", &self.node_id)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("secret_file", &self.secret_file)
            .field("lease", &self.lease)
            .finish()
    }
}

/// Shortest accepted lease: it is refreshed every third of it over a network round trip.
const MIN_LEASE: Duration = Duration::from_secs(1);

pub fn validate(args: &ClusterArgs, ctx: &BootContext) -> Result<Option<Cluster>, BootError> {
    let lease = duration("--cluster-lease", args.cluster_lease)?;
    let Some(redis_url) = args
        .cluster_redis
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    else {
        let given = [
            ("--node-id", args.node_id.is_some()),
            ("--cluster-listen", args.cluster_listen.is_some()),
            ("--cluster-advertise", args.cluster_advertise.is_some()),
            ("--cluster-secret-file", args.cluster_secret_file.is_some()),
        ];
        return match given.into_iter().find(|(_, set)| *set) {
            Some((flag, _)) => Err(BootError::NotApplicable {
                flag,
                applies: "with --cluster-redis",
            }),
            None => Ok(None),
        };
    };
    if !(redis_url.starts_with("redis://") || redis_url.starts_with("rediss://"))
        || redis_url.ends_with("://")
    {
        // Never echo the URL: it may hold a password.
        return Err(invalid(
            "--cluster-redis",
            "expected a redis:// or rediss:// URL",
        ));
    }
    let Some(listen) = args.cluster_listen else {
        return Err(BootError::MissingCompanion {
            flag: "--cluster-redis",
            needs: "--cluster-listen",
        });
    };
    let Some(secret_file) = args.cluster_secret_file.clone() else {
        return Err(BootError::MissingCompanion {
            flag: "--cluster-redis",
            needs: "--cluster-secret-file",
        });
    };
    if lease < MIN_LEASE {
        return Err(invalid("--cluster-lease", "must be at least 1s"));
    }
    let advertise = match &args.cluster_advertise {
        Some(a) => validate_advertise(a)?,
        None if listen.ip().is_unspecified() => {
            return Err(invalid(
                "--cluster-advertise",
                "required when --cluster-listen is a wildcard address: peers cannot dial it",
            ))
        }
        None => listen.to_string(),
    };
    let node_id = match &args.node_id {
        Some(id) => validate_node_id(id)?,
        None => default_node_id(&ctx.hostname),
    };
    Ok(Some(Cluster {
        redis_url: redis_url.to_owned(),
        node_id,
        listen,
        advertise,
        secret_file,
        lease,
    }))
}

/// Node ids go into Redis keys and log lines: 1–64 of `[A-Za-z0-9._-]`.
fn validate_node_id(raw: &str) -> Result<String, BootError> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(invalid("--node-id", "expected 1-64 of A-Z a-z 0-9 . _ -"));
    }
    Ok(raw.to_owned())
}

fn validate_advertise(raw: &str) -> Result<String, BootError> {
    let bad = || invalid("--cluster-advertise", "expected HOST:PORT or [IPv6]:PORT");
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return if addr.port() == 0 || addr.ip().is_unspecified() {
            Err(bad())
        } else {
            Ok(raw.to_owned())
        };
    }
    let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(raw.to_owned())
}

fn default_node_id(hostname: &str) -> String {
    let host: String = hostname
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(48)
        .collect();
    let mut suffix = [0u8; 4];
    // Without randomness two nodes on one host could share a name; the hostname alone is
    // still a valid id, and --node-id fixes it.
    let _ = getrandom::fill(&mut suffix);
    let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    if host.is_empty() {
        format!("node-{hex}")
    } else {
        format!("{host}-{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::cli;

    fn run(args: &[&str]) -> Result<Option<Cluster>, BootError> {
        let ctx = BootContext {
            hostname: "relay-a".into(),
            ..BootContext::default()
        };
        validate(&cli(args).cluster, &ctx)
    }

    const BASE: [&str; 6] = [
        "--cluster-redis",
        "redis://127.0.0.1:6379",
        "--cluster-listen",
        "127.0.0.1:7000",
        "--cluster-secret-file",
        "/run/secret",
    ];

    #[test]
    fn off_by_default_and_cluster_flags_need_redis() {
        assert_eq!(run(&[]).unwrap(), None);
        for (args, flag) in [
            (&["--node-id", "a"][..], "--node-id"),
            (&["--cluster-listen", ":7000"][..], "--cluster-listen"),
            (&["--cluster-advertise", "a:1"][..], "--cluster-advertise"),
            (&["--cluster-secret-file", "s"][..], "--cluster-secret-file"),
        ] {
            let e = run(args).expect_err("refused");
            assert!(
                matches!(e, BootError::NotApplicable { flag: f, .. } if f == flag),
                "{e}"
            );
        }
    }

    #[test]
    fn redis_needs_a_listener_and_a_secret() {
        let e = run(&["--cluster-redis", "redis://r:6379"]).unwrap_err();
        assert_eq!(e.to_string(), "--cluster-redis requires --cluster-listen");
        let e = run(&[
            "--cluster-redis",
            "redis://r:6379",
            "--cluster-listen",
            "127.0.0.1:7000",
        ])
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--cluster-redis requires --cluster-secret-file"
        );
    }

    #[test]
    fn defaults_advertise_the_listen_address_and_name_the_node_after_the_host() {
        let c = run(&BASE).unwrap().unwrap();
        assert_eq!(c.advertise, "127.0.0.1:7000");
        assert!(c.node_id.starts_with("relay-a-"), "{}", c.node_id);
        assert_eq!(c.node_id.len(), "relay-a-".len() + 8);
        assert_eq!(c.lease, Duration::from_secs(10));
        assert!(
            !format!("{c:?}").contains("6379"),
            "the URL stays out of Debug"
        );
    }

    #[test]
    fn bad_values_are_refused_without_echoing_the_url() {
        let mut args = BASE.to_vec();
        args[1] = "http://user:hunter2@r:6379";
        let e = run(&args).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let mut wild = BASE.to_vec();
        wild[3] = ":7000";
        assert!(matches!(
            run(&wild).unwrap_err(),
            BootError::InvalidValue {
                flag: "--cluster-advertise",
                ..
            }
        ));
        wild.extend(["--cluster-advertise", "node-1.internal:7000"]);
        assert_eq!(
            run(&wild).unwrap().unwrap().advertise,
            "node-1.internal:7000"
        );
        for bad in ["node 1", "", "a/b"] {
            let mut a = BASE.to_vec();
            a.extend(["--node-id", bad]);
            assert!(run(&a).is_err(), "{bad:?}");
        }
        let mut short = BASE.to_vec();
        short.extend(["--cluster-lease", "500ms"]);
        assert!(run(&short).is_err());
    }
}
