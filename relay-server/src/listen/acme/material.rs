//! Certificate material: turning the cached or freshly issued PEM into what rustls serves,
//! reading a certificate's validity window and serial, and making the TLS-ALPN-01 challenge
//! certificate (RFC 8737).
//!
//! Owns parsing and checking only (the chain names the domain, the key matches it). It never
//! reads files, never talks to the CA, and its errors never include key bytes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::schedule::Validity;

#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("no certificate in the PEM")]
    NoCertificate,
    #[error("no private key in the PEM")]
    NoKey,
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error("the certificate does not name {domain}")]
    WrongName { domain: String },
    #[error("the private key does not match the certificate: {0}")]
    KeyMismatch(String),
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What the relay knows about the certificate it serves (never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub validity: Validity,
    /// The serial number in lowercase hex, as `openssl x509 -serial` and Pebble print it.
    pub serial: String,
}

/// A certificate ready to serve, with what the schedule and the logs need about it.
#[derive(Clone)]
pub struct Served {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Deliberately omits the key.
        f.debug_struct("Served").field("info", &self.info).finish()
    }
}

/// The cache file format: the private key, then the chain (leaf first), all PEM.
pub fn bundle(key_pem: &str, chain_pem: &str) -> String {
    let mut out = String::with_capacity(key_pem.len() + chain_pem.len() + 1);
    out.push_str(key_pem.trim_end());
    out.push('\n');
    out.push_str(chain_pem.trim_start());
    out
}

/// Parses a bundle (key and chain, in any order) and checks it serves `domain`.
pub fn parse_bundle(pem: &str, domain: &str) -> Result<Served, MaterialError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| MaterialError::Unparsable(e.to_string()))?;
    let leaf = chain.first().ok_or(MaterialError::NoCertificate)?;
    let info = inspect(leaf, domain)?;
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| MaterialError::NoKey)?;
    let certified = CertifiedKey::from_der(chain, key, &default_provider())
        .map_err(|e| MaterialError::KeyMismatch(e.to_string()))?;
    Ok(Served {
        key: Arc::new(certified),
        info,
    })
}

/// Reads the validity window and serial of `leaf`, and checks that a DNS name in it is
/// `domain` (ASCII case-insensitive; the relay serves exactly one name).
pub fn inspect(leaf: &CertificateDer<'_>, domain: &str) -> Result<CertInfo, MaterialError> {
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| MaterialError::Unparsable(e.to_string()))?;
    let names_domain = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value.general_names.iter().any(|name| {
                matches!(name, GeneralName::DNSName(dns) if dns.eq_ignore_ascii_case(domain))
            })
        });
    if !names_domain {
        return Err(MaterialError::WrongName {
            domain: domain.to_owned(),
        });
    }
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    let validity = cert.validity();
    Ok(CertInfo {
        validity: Validity {
            not_before: at(validity.not_before.timestamp()),
            not_after: at(validity.not_after.timestamp()),
        },
        serial: cert
            .raw_serial()
            .iter()
            .skip_while(|b| **b == 0)
            .map(|b| format!("{b:02x}"))
            .collect(),
    })
}

/// A fresh ECDSA P-256 key and the DER CSR for `domain` signed by it; the key as PKCS#8 PEM.
pub fn key_and_csr(domain: &str) -> Result<(String, Vec<u8>), MaterialError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![domain.to_owned()])?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// The TLS-ALPN-01 challenge certificate for `domain` (RFC 8737 §3): self-signed, the domain
/// as its only SAN, and the critical acmeIdentifier extension holding SHA-256 of the key
/// authorization. Served only to handshakes offering ALPN `acme-tls/1` alone.
pub fn tls_alpn01_certificate(
    domain: &str,
    key_authorization_digest: &[u8],
) -> Result<Arc<CertifiedKey>, MaterialError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![domain.to_owned()])?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(
        key_authorization_digest,
    )];
    let cert = params.self_signed(&key)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // (rightly, for a normal certificate) refuses the critical acmeIdentifier extension.
    let signing_key = default_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| MaterialError::KeyMismatch(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (key.serialize_pem(), cert.pem())
    }

    #[test]
    fn a_bundle_round_trips_and_reports_validity_and_serial() {
        let (key, chain) = self_signed(&["relay.example.com"]);
        let served = parse_bundle(&bundle(&key, &chain), "Relay.Example.COM").unwrap();
        let v = served.info.validity;
        assert!(v.not_before < v.not_after);
        assert!(!served.info.serial.is_empty());
        assert!(served.info.serial.bytes().all(|b| b.is_ascii_hexdigit()));
        // Debug never prints key material.
        assert!(!format!("{served:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_bundle_for_another_name_or_with_another_key_is_refused() {
        let (key, chain) = self_signed(&["other.example.com"]);
        assert!(matches!(
            parse_bundle(&bundle(&key, &chain), "relay.example.com"),
            Err(MaterialError::WrongName { .. })
        ));
        let (_, chain) = self_signed(&["relay.example.com"]);
        let (other_key, _) = self_signed(&["relay.example.com"]);
        assert!(matches!(
            parse_bundle(&bundle(&other_key, &chain), "relay.example.com"),
            Err(MaterialError::KeyMismatch(_))
        ));
        assert!(matches!(
            parse_bundle(&chain, "relay.example.com"),
            Err(MaterialError::NoKey)
        ));
        assert!(matches!(
            parse_bundle("", "relay.example.com"),
            Err(MaterialError::NoCertificate)
        ));
    }

    #[test]
    fn the_tls_alpn01_certificate_carries_a_critical_acme_identifier() {
        let digest = [7u8; 32];
        let certified = tls_alpn01_certificate("relay.example.com", &digest).unwrap();
        let leaf = &certified.cert[0];
        let (_, cert) = X509Certificate::from_der(leaf.as_ref()).unwrap();
        // id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31 (RFC 8737 §6.1).
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // Its value is an OCTET STRING holding the 32-byte digest.
        assert_eq!(&ext.value[..2], &[0x04, 0x20]);
        assert_eq!(&ext.value[2..], &digest);
        assert!(inspect(leaf, "relay.example.com").is_ok());
    }

    #[test]
    fn the_csr_names_only_the_domain() {
        let (key_pem, csr) = key_and_csr("relay.example.com").unwrap();
        assert!(key_pem.contains("BEGIN PRIVATE KEY"));
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr).unwrap();
        let names: Vec<String> = req
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|ext| match ext {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => Some(
                    san.general_names
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(names, ["DNSName(relay.example.com)"]);
    }
}
