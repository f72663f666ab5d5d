//! `rediss://` (§11): the directory over TLS (rustls on ring) to a real TLS-only
//! `redis-server`, trusting a private CA the way an operator would (`SSL_CERT_FILE`), and
//! refusing a server whose certificate it cannot verify.
//!
//! Its own test binary: it sets `SSL_CERT_FILE` for the process.

#[path = "cluster/redis_server.rs"]
mod redis_server;

use std::path::PathBuf;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use redis_server::RedisServer;
use relay_core::ServerId;
use relay_server::cluster::directory::{Claim, DirError, Directory, Epoch, NodeId};
use relay_server::cluster::redis::{RedisDirectory, DEFAULT_PREFIX};

fn write(dir: &std::path::Path, name: &str, pem: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p
}

#[tokio::test]
async fn the_directory_works_over_tls_and_refuses_an_unverifiable_server() {
    let dir = std::env::temp_dir().join(format!("relay-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let cert_file = write(&dir, "server.pem", &cert.pem());
    let key_file = write(&dir, "server.key", &key.serialize_pem());
    let Some(server) = RedisServer::start_tls(cert_file, key_file) else {
        return;
    };
    let node = NodeId::new("tls-node").unwrap();
    let sid = ServerId::parse(b"tls-sid").unwrap();

    // Without the CA in the trust store, the handshake fails: an error, never a hang.
    std::env::set_var("SSL_CERT_FILE", write(&dir, "empty.pem", ""));
    let untrusted = RedisDirectory::new(&server.url(), DEFAULT_PREFIX).unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        untrusted.join(&node, "a:7000", Duration::from_secs(10), Epoch(0)),
    )
    .await
    .expect("bounded");
    assert!(
        matches!(r, Err(DirError::Unavailable(_) | DirError::Timeout(_))),
        "{r:?}"
    );

    std::env::set_var("SSL_CERT_FILE", write(&dir, "ca.pem", &ca.pem()));
    let trusted = RedisDirectory::new(&server.url(), DEFAULT_PREFIX).unwrap();
    let e = trusted
        .join(&node, "a:7000", Duration::from_secs(10), Epoch(0))
        .await
        .expect("joins over TLS");
    assert_eq!(
        trusted.claim(&sid, &node, e).await.unwrap(),
        Claim::Took { from: None }
    );
    assert_eq!(trusted.claim(&sid, &node, e).await.unwrap(), Claim::Ours);
    std::fs::remove_dir_all(&dir).unwrap();
}
