//! Push wake's boot-time setup (protocol.md §4.4): the service-account key read and checked,
//! the FCM project and endpoint chosen, the extra trusted root loaded, before anything binds.
//!
//! Owns turning `config::Push` into [`PushSettings`] or one [`PushBootError`] line. No error
//! quotes any part of the key (from the file or from `PYRYCODE_RELAY_FCM_CREDENTIALS`).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::ClientConfig;

use super::admission::Limits;
use super::client::{self, CALL_TIMEOUT};
use super::oauth::{KeyError, ServiceAccount};
use crate::config::{self, FcmCredentials};

/// Everything a running push service needs. The relay binary uses
/// [`PushSettings::load`], which always takes §4.4's limits; a library user (tests) may
/// shorten [`PushSettings::limits`] and [`PushSettings::call_timeout`].
#[derive(Clone)]
pub struct PushSettings {
    pub account: Arc<ServiceAccount>,
    pub project_id: String,
    /// Without a trailing slash.
    pub endpoint: String,
    pub tls: Arc<ClientConfig>,
    pub limits: Limits,
    pub call_timeout: Duration,
}

impl fmt::Debug for PushSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushSettings")
            .field("project_id", &self.project_id)
            .field("endpoint", &self.endpoint)
            .field("limits", &self.limits)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

/// Why push wake cannot start. `main` prints `relay-server: <this>` and exits 2.
#[derive(Debug, thiserror::Error)]
pub enum PushBootError {
    #[error("--fcm-credentials: cannot read {}: {err}", path.display())]
    ReadKey { path: PathBuf, err: std::io::Error },
    #[error("{source_name}: the service-account key is unusable: {err}")]
    Key { source_name: String, err: KeyError },
    #[error("{source_name}: the key has no \"project_id\"; set --fcm-project-id")]
    NoProjectId { source_name: String },
    #[error(
        "{source_name}: the key's \"project_id\" is not a Google project id; set --fcm-project-id"
    )]
    BadProjectId { source_name: String },
    #[error("--fcm-endpoint: {0}")]
    Endpoint(String),
    #[error("--fcm-ca-root: cannot read {}: {err}", path.display())]
    ReadCa { path: PathBuf, err: std::io::Error },
    #[error("--fcm-ca-root: {} holds no usable PEM certificate", path.display())]
    BadCa { path: PathBuf },
    #[error("cannot set up TLS for FCM: {0}")]
    Tls(String),
}

impl PushSettings {
    /// Reads and checks the key, the project id, the endpoint and the extra root.
    pub fn load(push: &config::Push) -> Result<PushSettings, PushBootError> {
        let (json, source_name) = match &push.credentials {
            FcmCredentials::File(path) => (
                std::fs::read(path).map_err(|err| PushBootError::ReadKey {
                    path: path.clone(),
                    err,
                })?,
                format!("--fcm-credentials {}", path.display()),
            ),
            FcmCredentials::Inline(json) => (
                json.as_bytes().to_vec(),
                "PYRYCODE_RELAY_FCM_CREDENTIALS".to_owned(),
            ),
        };
        let account = ServiceAccount::from_json(&json).map_err(|err| PushBootError::Key {
            source_name: source_name.clone(),
            err,
        })?;
        let project_id = match (&push.project_id, account.project_id()) {
            (Some(id), _) => id.clone(),
            (None, Some(id)) => {
                config::validate_project_id(id).map_err(|_| PushBootError::BadProjectId {
                    source_name: source_name.clone(),
                })?
            }
            (None, None) => return Err(PushBootError::NoProjectId { source_name }),
        };
        super::fcm::send_url(&push.endpoint, &project_id)
            .map_err(|_| PushBootError::Endpoint("not a valid URL".into()))?;
        let mut extra = Vec::new();
        if let Some(path) = &push.ca_root {
            let pem = std::fs::read(path).map_err(|err| PushBootError::ReadCa {
                path: path.clone(),
                err,
            })?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                extra.push(cert.map_err(|_| PushBootError::BadCa { path: path.clone() })?);
            }
            if extra.is_empty() {
                return Err(PushBootError::BadCa { path: path.clone() });
            }
        }
        // With the web PKI roots built in, only an extra root can make this fail.
        let tls = client::tls_config(&extra).map_err(|e| match &push.ca_root {
            Some(path) => PushBootError::BadCa { path: path.clone() },
            None => PushBootError::Tls(e.to_string()),
        })?;
        Ok(PushSettings {
            account: Arc::new(account),
            project_id,
            endpoint: push.endpoint.clone(),
            tls: Arc::new(tls),
            limits: Limits::default(),
            call_timeout: CALL_TIMEOUT,
        })
    }
}
