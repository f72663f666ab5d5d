//! The HTTPS client that talks to the ACME CA.
//!
//! Owns which roots verify the CA's directory: exactly the certificates in `--acme-ca-root`
//! when given (a private CA such as Pebble; trusting the system roots as well would let any
//! public CA vouch for a look-alike), otherwise the system's roots (`SSL_CERT_FILE`,
//! `SSL_CERT_DIR` or the distribution's bundle). TLS 1.2+ on ring, HTTPS only. It never
//! follows a plain-http URL and never logs request or response bodies (they carry the JWS
//! signed with the account key).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::BodyWrapper;
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// The client instant-acme drives (it implements `instant_acme::HttpClient`).
pub type CaClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

/// TCP connect to the CA; a request that hangs after that is cut by the order deadline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("--acme-ca-root {}: {reason}", path.display())]
    CaRoot { path: PathBuf, reason: String },
    #[error("no system root certificates found to verify the ACME directory (install the ca-certificates package, set SSL_CERT_FILE, or pass --acme-ca-root)")]
    NoSystemRoots,
    #[error("cannot build the ACME HTTPS client: {0}")]
    Tls(String),
}

/// Loads the roots and builds the client. Runs at boot, so a bad `--acme-ca-root` is a boot
/// error rather than a failure an hour later.
pub fn ca_client(ca_root: Option<&Path>) -> Result<CaClient, RootsError> {
    let roots = match ca_root {
        Some(path) => roots_from_file(path)?,
        None => system_roots()?,
    };
    let config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| RootsError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, RootsError> {
    let err = |reason: String| RootsError::CaRoot {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| err(format!("unusable certificate ({e})")))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, RootsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(RootsError::NoSystemRoots);
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_root_file_is_a_boot_error_naming_the_flag() {
        let dir = std::env::temp_dir().join(format!("relay-ca-root-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        for path in [&missing, &garbage] {
            let Err(err) = ca_client(Some(path)) else {
                panic!("accepted")
            };
            let line = err.to_string();
            assert!(line.starts_with("--acme-ca-root "), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
