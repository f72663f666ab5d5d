//! `--dev-tls` (protocol.md §9): a self-signed certificate made at boot for `localhost`,
//! `127.0.0.1` and `::1`, so a newcomer gets wss on loopback without any file.
//!
//! Owns making the certificate, writing its PEM (the certificate only, never the key) to
//! `--dev-tls-cert-out` for clients to trust, and its SHA-256 fingerprint. The key lives only
//! in memory and dies with the process. It never binds: config already keeps this mode on
//! loopback.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::sign::CertifiedKey;

/// The names of the development certificate.
pub const DEV_TLS_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A freshly made development certificate.
pub struct DevCert {
    pub key: Arc<CertifiedKey>,
    /// The certificate as PEM (what `--dev-tls-cert-out` gets).
    pub pem: String,
    /// SHA-256 of the DER certificate, `AB:CD:...` as browsers and `openssl x509 -fingerprint`
    /// show it.
    pub fingerprint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DevTlsError {
    #[error("--dev-tls: cannot make a certificate: {0}")]
    Generate(String),
    #[error("--dev-tls-cert-out {}: cannot write the certificate: {err}", path.display())]
    Write {
        path: std::path::PathBuf,
        err: std::io::Error,
    },
}

/// Makes the certificate (ECDSA P-256, self-signed).
pub fn generate() -> Result<DevCert, DevTlsError> {
    let names: Vec<String> = DEV_TLS_NAMES.iter().map(|n| n.to_string()).collect();
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| DevTlsError::Generate(e.to_string()))?;
    let der: CertificateDer<'static> = made.cert.der().clone();
    let fingerprint = sha256_fingerprint(&der);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.key_pair.serialize_der()));
    let key = super::tls::certified(vec![der], key).map_err(DevTlsError::Generate)?;
    Ok(DevCert {
        key,
        pem: made.cert.pem(),
        fingerprint,
    })
}

/// Writes the certificate's PEM to `path` (replacing an older one).
pub fn write_pem(cert: &DevCert, path: &Path) -> Result<(), DevTlsError> {
    std::fs::write(path, cert.pem.as_bytes()).map_err(|err| DevTlsError::Write {
        path: path.to_owned(),
        err,
    })
}

pub fn sha256_fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::host::parse_host;
    use crate::listen::tls::certificate_names;

    #[test]
    fn dev_certificate_names_localhost_and_both_loopback_addresses_only() {
        let cert = generate().unwrap();
        for host in [
            "localhost",
            "LOCALHOST:8443",
            "127.0.0.1:8443",
            "[::1]:8443",
        ] {
            let name = parse_host(host.as_bytes()).unwrap();
            assert!(certificate_names(&cert.key, &name), "{host}");
        }
        for host in [
            "relay.example.com",
            "127.0.0.2",
            "[::2]",
            "localhost.evil.net",
        ] {
            let name = parse_host(host.as_bytes()).unwrap();
            assert!(!certificate_names(&cert.key, &name), "{host}");
        }
        assert!(cert.pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!cert.pem.contains("PRIVATE KEY"));
        assert_eq!(cert.fingerprint.len(), 32 * 3 - 1);
    }
}
