//! The HTTPS client push wake talks to Google with (protocol.md §4.4): hyper-util's pooled
//! client over rustls (ring), trusting the web PKI roots plus `--fcm-ca-root`.
//!
//! Owns the limits every call obeys: bounded by one timeout from the request to the last byte
//! read, no redirect followed (hyper never follows one; a 3xx is handed back as it is), at
//! most [`MAX_REPLY`] bytes of a reply read. It never logs: headers and bodies carry an
//! access token, a JWT or a push token, and the caller decides what may be said.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// Most bytes of a reply ever read (§4.4).
pub const MAX_REPLY: usize = 4096;
/// Each call's bound, from sending the request to reading the reply (§4.4).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP reply, its body cut at [`MAX_REPLY`] bytes.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Why a call got no reply. The messages carry no header or body.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Transport(String),
}

/// A cheap-to-clone HTTPS client.
#[derive(Clone)]
pub struct HttpsClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

/// The TLS configuration: Mozilla's web PKI roots plus `extra` (§4.4 `--fcm-ca-root`), ring.
pub fn tls_config(extra: &[CertificateDer<'static>]) -> Result<ClientConfig, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra {
        roots.add(cert.clone())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl HttpsClient {
    /// Needs no runtime to build; calls must run on tokio.
    pub fn new(tls: ClientConfig, timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        // The scheme is checked by the HTTPS layer (https only), not by the TCP one.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);
        HttpsClient { client, timeout }
    }

    /// `POST url` with `body`; `bearer`, if any, goes in `Authorization` marked sensitive.
    pub async fn post(
        &self,
        url: &Uri,
        content_type: &'static str,
        bearer: Option<&str>,
        body: Bytes,
    ) -> Result<Reply, CallError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .header(CONTENT_TYPE, content_type)
            .header(
                USER_AGENT,
                concat!("pyrycode-relay/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = bearer {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| CallError::Transport("access token is not a header value".into()))?;
            value.set_sensitive(true);
            req = req.header(AUTHORIZATION, value);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| CallError::Transport(format!("bad request: {e}")))?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| CallError::Transport(chain(&e)))?;
            let status = resp.status();
            let body = read_at_most(resp.into_body(), MAX_REPLY).await?;
            Ok(Reply { status, body })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| CallError::Timeout(self.timeout))?
    }
}

/// Reads frames until `max` bytes are in hand or the body ends; the rest is never read (the
/// connection is then dropped rather than reused).
async fn read_at_most(mut body: hyper::body::Incoming, max: usize) -> Result<Bytes, CallError> {
    let mut out = BytesMut::new();
    while out.len() < max {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|e| CallError::Transport(chain(&e)))?;
        if let Ok(data) = frame.into_data() {
            let room = max - out.len();
            out.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(out.freeze())
}

/// An error and its sources on one line. hyper's and rustls's messages name no header or
/// body, only what went wrong (refused, certificate unknown, ...).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
