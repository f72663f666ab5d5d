//! The challenge responses of the order in flight: HTTP-01 key authorizations by token, and
//! the TLS-ALPN-01 certificate.
//!
//! Owns publishing a response before the CA is told to validate and withdrawing it after
//! (on drop, so an order that fails or times out leaves nothing behind). The resolver and the
//! HTTP-01 responder only read it; neither ever sees the account key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio_rustls::rustls::sign::CertifiedKey;

#[derive(Debug, Default)]
pub struct Pending {
    http01: Mutex<HashMap<String, String>>,
    tls_alpn01: RwLock<Option<Arc<CertifiedKey>>>,
}

impl Pending {
    /// The key authorization to answer `GET /.well-known/acme-challenge/<token>` with.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    /// The certificate for a handshake offering ALPN `acme-tls/1`.
    pub fn tls_alpn01(&self) -> Option<Arc<CertifiedKey>> {
        self.tls_alpn01
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Publishes an HTTP-01 response until the guard drops.
    pub fn publish_http01(self: &Arc<Self>, token: String, key_authorization: String) -> Published {
        self.http01
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.clone(), key_authorization);
        Published {
            pending: self.clone(),
            what: What::Http01(token),
        }
    }

    /// Publishes the TLS-ALPN-01 certificate until the guard drops.
    pub fn publish_tls_alpn01(self: &Arc<Self>, cert: Arc<CertifiedKey>) -> Published {
        *self
            .tls_alpn01
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(cert);
        Published {
            pending: self.clone(),
            what: What::TlsAlpn01,
        }
    }
}

enum What {
    Http01(String),
    TlsAlpn01,
}

/// Withdraws one challenge response when dropped.
pub struct Published {
    pending: Arc<Pending>,
    what: What,
}

impl Drop for Published {
    fn drop(&mut self) {
        match &self.what {
            What::Http01(token) => {
                self.pending
                    .http01
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(token);
            }
            What::TlsAlpn01 => {
                *self
                    .pending
                    .tls_alpn01
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_withdrawn_when_its_guard_drops() {
        let pending = Arc::new(Pending::default());
        let guard = pending.publish_http01("tok".into(), "tok.thumb".into());
        assert_eq!(pending.http01("tok").as_deref(), Some("tok.thumb"));
        assert_eq!(pending.http01("other"), None);
        drop(guard);
        assert_eq!(pending.http01("tok"), None);

        let cert = super::super::material::tls_alpn01_certificate("a.example", &[0; 32]).unwrap();
        let guard = pending.publish_tls_alpn01(cert);
        assert!(pending.tls_alpn01().is_some());
        drop(guard);
        assert!(pending.tls_alpn01().is_none());
    }
}
