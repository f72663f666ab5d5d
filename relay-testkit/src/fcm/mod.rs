//! A stand-in for Google's OAuth2 token endpoint and FCM HTTP v1, over real HTTPS, for the
//! relay's push-wake tests and demo (protocol.md §4.4).
//!
//! [`FakeFcm::start`] serves, on an ephemeral loopback port with a certificate from its own
//! rcgen CA ([`FakeFcm::ca_pem`], what `--fcm-ca-root` trusts):
//! - `POST /token`: a JWT-bearer grant. The assertion's RS256 signature is checked against
//!   the test key's public half ([`key`]) and its claims (`iss`, `scope`, `aud` = this
//!   `token_uri`, `iat`/`exp`); a good grant gets a fresh access token.
//! - `POST /v1/projects/{project}/messages:send`: the bearer token must be one this server
//!   issued and has not expired, and the project this server's; then the next scripted
//!   [`Reply`] is given (200 by default).
//!
//! Every request is recorded exactly ([`Recorded`]: method, path, headers, body, and what the
//! checks found), so tests assert on what the relay really sent. Replies are scripted per
//! request: success, 404 `UNREGISTERED`, 400 `INVALID_ARGUMENT`, any status, a redirect, an
//! endless body, a delay, or a hang until [`FakeFcm::release`].

pub mod key;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

pub use key::{service_account_json, verify_jwt, JwtError, CLIENT_EMAIL, KEY_ID, SCOPE};

/// The project the stand-in serves.
pub const PROJECT_ID: &str = "relay-test-project";
/// What a JWT-bearer grant's `grant_type` is, form-encoded.
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// One scripted reply.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Success: on `/token` a fresh access token; on a send `200 {"name": …}`.
    Ok,
    /// 404 with FCM error `UNREGISTERED`, as FCM answers for a token that is gone.
    Unregistered,
    /// 400 `INVALID_ARGUMENT` about the registration token.
    InvalidToken,
    /// This status with a small Google-style error body.
    Status(u16),
    /// 302 to another path of this server (which must never be asked for).
    Redirect,
    /// This status and a body that never ends (a chunk every 10 ms).
    Endless(u16),
    /// Waits, then gives the inner reply.
    Delay(Duration, Box<Reply>),
    /// Never answers until [`FakeFcm::release`] (or the client goes away).
    Hang,
}

/// Which of the stand-in's endpoints a request was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Token,
    Send,
    /// Anything else (a followed redirect would land here).
    Other,
}

/// One request, exactly as it arrived.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub endpoint: Endpoint,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Lowercase names, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// What the stand-in's checks found: `Ok` for a good JWT grant or a send with a valid
    /// bearer token for this project; `Err(why)` otherwise.
    pub verdict: Result<(), String>,
    /// When the request's head arrived.
    pub at: Instant,
}

impl Recorded {
    /// The value of header `name` (lowercase), if sent once or more (the first).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    token_uri: String,
    requests: Mutex<Vec<Recorded>>,
    recorded: Notify,
    send_script: Mutex<VecDeque<Reply>>,
    token_script: Mutex<VecDeque<Reply>>,
    token_lifetime: AtomicU64,
    /// Issued access tokens and when each expires.
    issued: Mutex<Vec<(String, Instant)>>,
    next_token: AtomicU64,
    next_message: AtomicU64,
    release: watch::Sender<u64>,
    /// Requests whose reply has not been given yet (hanging, delayed, or being handled).
    open: AtomicUsize,
}

/// The running stand-in. Stops serving when dropped.
pub struct FakeFcm {
    addr: SocketAddr,
    state: Arc<State>,
    ca_pem: String,
    dir: tempfile::TempDir,
    accept: JoinHandle<()>,
}

impl Drop for FakeFcm {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FakeFcm {
    /// Starts serving on `127.0.0.1:0`.
    pub async fn start() -> io::Result<FakeFcm> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (ca_pem, tls) = certificates().map_err(io::Error::other)?;
        let (release, _) = watch::channel(0);
        let state = Arc::new(State {
            token_uri: format!("https://127.0.0.1:{}/token", addr.port()),
            requests: Mutex::new(Vec::new()),
            recorded: Notify::new(),
            send_script: Mutex::new(VecDeque::new()),
            token_script: Mutex::new(VecDeque::new()),
            token_lifetime: AtomicU64::new(3599),
            issued: Mutex::new(Vec::new()),
            next_token: AtomicU64::new(1),
            next_message: AtomicU64::new(1),
            release,
            open: AtomicUsize::new(0),
        });
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let accept = tokio::spawn(accept_loop(listener, acceptor, state.clone()));
        let fcm = FakeFcm {
            addr,
            state,
            ca_pem,
            dir: tempfile::tempdir()?,
            accept,
        };
        std::fs::write(fcm.key_path(), fcm.service_account_json())?;
        std::fs::write(fcm.ca_path(), &fcm.ca_pem)?;
        Ok(fcm)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What `--fcm-endpoint` must be.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// The `token_uri` of [`FakeFcm::service_account_json`].
    pub fn token_uri(&self) -> &str {
        &self.state.token_uri
    }

    /// The path FCM sends for [`PROJECT_ID`] go to.
    pub fn send_path(&self) -> String {
        format!("/v1/projects/{PROJECT_ID}/messages:send")
    }

    /// The PEM of the CA that signed this server's certificate (`--fcm-ca-root`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A service-account key for [`PROJECT_ID`] whose `token_uri` is this server.
    pub fn service_account_json(&self) -> String {
        service_account_json(PROJECT_ID, self.token_uri())
    }

    /// [`FakeFcm::service_account_json`], written to a file (`--fcm-credentials`).
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("service-account.json")
    }

    /// [`FakeFcm::ca_pem`], written to a file (`--fcm-ca-root`).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("fake-fcm-ca.pem")
    }

    /// Queues replies for the next sends, in order; once used up, sends get [`Reply::Ok`].
    pub fn script_sends(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state.send_script).extend(replies);
    }

    /// Queues replies for the next token requests; once used up, good grants get a token.
    pub fn script_tokens(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state.token_script).extend(replies);
    }

    /// `expires_in` of the tokens issued from now on (default 3599 s, as Google's).
    pub fn set_token_lifetime(&self, secs: u64) {
        self.state.token_lifetime.store(secs, Ordering::Relaxed);
    }

    /// Lets every request hanging now finish: each then gets the endpoint's success.
    pub fn release(&self) {
        self.state.release.send_modify(|g| *g += 1);
    }

    /// Every access token issued so far, oldest first.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.state.issued)
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests).clone()
    }

    /// The requests so far to `endpoint`.
    pub fn requests_to(&self, endpoint: Endpoint) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.endpoint == endpoint)
            .collect()
    }

    /// Requests still waiting for their reply (hanging or delayed).
    pub fn open_requests(&self) -> usize {
        self.state.open.load(Ordering::Acquire)
    }

    /// Waits until `n` requests to `endpoint` have arrived; panics after `within`.
    pub async fn wait_for(&self, endpoint: Endpoint, n: usize, within: Duration) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.state.recorded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self.requests_to(endpoint);
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "{n} {endpoint:?} requests expected within {within:?}, got {}",
                    got.len()
                );
            }
        }
    }

    /// Waits until no request is waiting for its reply; panics after `within`.
    pub async fn wait_idle(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.open_requests() > 0 {
            assert!(
                Instant::now() < deadline,
                "{} requests still open after {within:?}",
                self.open_requests()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A CA and a leaf for `127.0.0.1` and `localhost` signed by it.
fn certificates() -> Result<(String, ServerConfig), Box<dyn std::error::Error + Send + Sync>> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "relay-testkit fake FCM CA");
    let ca_cert = ca.self_signed(&ca_key)?;

    let leaf_key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    leaf.distinguished_name
        .push(DnType::CommonName, "relay-testkit fake FCM");
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )?;
    Ok((ca_cert.pem(), config))
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let svc = service_fn(move |req| handle(state.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn body(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into()).boxed()
}

/// Counts a request as open until dropped (also when hyper drops it for a vanished client).
struct Open(Arc<State>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    state.open.fetch_add(1, Ordering::AcqRel);
    let _open = Open(state.clone());
    let at = Instant::now();
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body_bytes = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let endpoint = if path == "/token" {
        Endpoint::Token
    } else if path.starts_with("/v1/projects/") && path.ends_with("/messages:send") {
        Endpoint::Send
    } else {
        Endpoint::Other
    };
    let verdict = match endpoint {
        Endpoint::Token if method == "POST" => check_grant(&state, &body_bytes),
        Endpoint::Send if method == "POST" => check_send(&state, &path, &headers),
        _ => Err(format!("unexpected {method} {path}")),
    };
    let reply = match (&endpoint, &verdict) {
        (Endpoint::Other, _) => None,
        (_, Err(_)) => None,
        (Endpoint::Token, Ok(())) => {
            Some(lock(&state.token_script).pop_front().unwrap_or(Reply::Ok))
        }
        (Endpoint::Send, Ok(())) => Some(lock(&state.send_script).pop_front().unwrap_or(Reply::Ok)),
    };
    lock(&state.requests).push(Recorded {
        endpoint,
        method,
        path,
        headers,
        body: body_bytes,
        verdict: verdict.clone(),
        at,
    });
    state.recorded.notify_waiters();
    let response = match (endpoint, verdict, reply) {
        (Endpoint::Other, _, _) => error(404, "NOT_FOUND", "no such path on the stand-in"),
        (Endpoint::Token, Err(why), _) => Response::builder()
            .status(400)
            .header("content-type", "application/json")
            .body(body(
                json!({"error": "invalid_grant", "error_description": why}).to_string(),
            ))
            .unwrap_or_default(),
        (Endpoint::Send, Err(why), _) => error(401, "UNAUTHENTICATED", &why),
        (endpoint, Ok(()), Some(reply)) => respond(&state, endpoint, reply).await,
        (_, Ok(()), None) => error(500, "INTERNAL", "unreachable"),
    };
    Ok(response)
}

fn check_grant(state: &State, form: &[u8]) -> Result<(), String> {
    let form = String::from_utf8_lossy(form);
    let field = |name: &str| {
        form.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    };
    if field("grant_type").as_deref() != Some(GRANT_TYPE) {
        return Err("grant_type is not jwt-bearer".into());
    }
    let jwt = field("assertion").ok_or("no assertion")?;
    let claims = verify_jwt(&jwt).map_err(|e| e.to_string())?;
    if claims["iss"] != CLIENT_EMAIL {
        return Err("iss is not the service account".into());
    }
    if claims["scope"] != SCOPE {
        return Err("scope is not firebase.messaging".into());
    }
    if claims["aud"] != state.token_uri.as_str() {
        return Err("aud is not the token_uri".into());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64()) else {
        return Err("iat/exp are not integers".into());
    };
    if iat > now + 300 || iat + 300 < now {
        return Err("iat is not now".into());
    }
    if exp <= now || exp <= iat || exp - iat > 3600 {
        return Err("exp is not within an hour after iat".into());
    }
    Ok(())
}

fn check_send(state: &State, path: &str, headers: &[(String, String)]) -> Result<(), String> {
    let bearer = headers
        .iter()
        .find(|(n, _)| n == "authorization")
        .and_then(|(_, v)| v.strip_prefix("Bearer "))
        .ok_or("no bearer token")?;
    let now = Instant::now();
    let valid = lock(&state.issued)
        .iter()
        .any(|(t, until)| t == bearer && now < *until);
    if !valid {
        return Err("bearer token was not issued here or has expired".into());
    }
    if path != format!("/v1/projects/{PROJECT_ID}/messages:send") {
        return Err("not this project".into());
    }
    Ok(())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn error(status: u16, code: &str, message: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=UTF-8")
        .body(body(
            json!({"error": {"code": status, "message": message, "status": code}}).to_string(),
        ))
        .unwrap_or_default()
}

fn respond<'a>(
    state: &'a Arc<State>,
    endpoint: Endpoint,
    reply: Reply,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send + 'a>> {
    Box::pin(async move {
        match reply {
            Reply::Ok => match endpoint {
                Endpoint::Token => {
                    let n = state.next_token.fetch_add(1, Ordering::Relaxed);
                    let token = format!("ya29.fake-access-token-{n}");
                    let lifetime = state.token_lifetime.load(Ordering::Relaxed);
                    lock(&state.issued)
                        .push((token.clone(), Instant::now() + Duration::from_secs(lifetime)));
                    Response::builder()
                        .header("content-type", "application/json; charset=utf-8")
                        .body(body(
                            json!({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"})
                                .to_string(),
                        ))
                        .unwrap_or_default()
                }
                _ => Response::builder()
                    .header("content-type", "application/json; charset=UTF-8")
                    .body(body(
                        json!({"name": format!("projects/{PROJECT_ID}/messages/0:{}", state.next_message.fetch_add(1, Ordering::Relaxed))})
                            .to_string(),
                    ))
                    .unwrap_or_default(),
            },
            Reply::Unregistered => Response::builder()
                .status(404)
                .header("content-type", "application/json; charset=UTF-8")
                .body(body(json!({"error": {
                    "code": 404,
                    "message": "Requested entity was not found.",
                    "status": "NOT_FOUND",
                    "details": [{
                        "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                        "errorCode": "UNREGISTERED"
                    }]
                }}).to_string()))
                .unwrap_or_default(),
            Reply::InvalidToken => Response::builder()
                .status(400)
                .header("content-type", "application/json; charset=UTF-8")
                .body(body(json!({"error": {
                    "code": 400,
                    "message": "The registration token is not a valid FCM registration token",
                    "status": "INVALID_ARGUMENT",
                    "details": [{
                        "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                        "errorCode": "INVALID_ARGUMENT"
                    }]
                }}).to_string()))
                .unwrap_or_default(),
            Reply::Status(code) => error(code, "SCRIPTED", "scripted failure"),
            Reply::Redirect => Response::builder()
                .status(302)
                .header("location", "/redirected")
                .body(body(Bytes::new()))
                .unwrap_or_default(),
            Reply::Endless(code) => {
                let stream = futures_util::stream::unfold((), |()| async {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Some((Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b' '; 1024]))), ()))
                });
                Response::builder()
                    .status(code)
                    .body(BodyExt::boxed(StreamBody::new(stream)))
                    .unwrap_or_default()
            }
            Reply::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                respond(state, endpoint, *inner).await
            }
            Reply::Hang => {
                let mut rx = state.release.subscribe();
                let _ = rx.changed().await;
                respond(state, endpoint, Reply::Ok).await
            }
        }
    })
}
