//! The Google service-account key and the OAuth2 access token it buys (protocol.md §4.4):
//! an RS256-signed JWT grant to the key's `token_uri` for the scope
//! `https://www.googleapis.com/auth/firebase.messaging`, the token cached until shortly
//! before it expires.
//!
//! Owns the key's parsing and checks (at boot, so an unusable key stops the relay before it
//! binds), the JWT, and the token cache. Never shows a secret: [`ServiceAccount`] and
//! [`AccessToken`] have redacting `Debug`, and no error quotes any part of the key, the JWT,
//! the token or a reply body (serde_json's own messages can quote values, so they are never
//! passed on).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use hyper::Uri;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde_json::{json, Value};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::PrivatePkcs8KeyDer;

use super::client::{CallError, HttpsClient};

/// The OAuth2 scope FCM HTTP v1 needs (§4.4).
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Lifetime asked for in the JWT (Google's maximum).
const JWT_LIFETIME: Duration = Duration::from_secs(3600);
/// A cached token is dropped this long before it expires, so no send carries a token that
/// dies on the way.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
const GRANT_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";

/// Why a service-account key cannot be used. Names fields, never their values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("it is not JSON")]
    NotJson,
    #[error("it is not a JSON object")]
    NotObject,
    #[error("its \"type\" is not \"service_account\" (is this the Firebase service-account key?)")]
    NotServiceAccount,
    #[error("it has no \"{0}\" string")]
    Missing(&'static str),
    #[error("its \"private_key\" is not a PEM PKCS#8 private key")]
    PrivateKeyNotPem,
    #[error("its \"private_key\" is not a usable RSA key (RS256 needs RSA of 2048 bits or more)")]
    PrivateKeyNotRsa,
    #[error("its \"token_uri\" is not an https:// URL")]
    TokenUriNotHttps,
}

/// The parts of a Google service-account key the relay uses.
pub struct ServiceAccount {
    client_email: String,
    private_key_id: Option<String>,
    project_id: Option<String>,
    token_uri: Uri,
    /// As written in the key: the JWT's `aud` must be exactly this.
    token_uri_raw: String,
    key: RsaKeyPair,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceAccount(<redacted>)")
    }
}

fn string<'a>(obj: &'a serde_json::Map<String, Value>, field: &'static str) -> Option<&'a str> {
    obj.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl ServiceAccount {
    /// Parses and checks a key file's JSON: type, client_email, private_key (RSA, PKCS#8 PEM),
    /// token_uri (https).
    pub fn from_json(json: &[u8]) -> Result<ServiceAccount, KeyError> {
        let value: Value = serde_json::from_slice(json).map_err(|_| KeyError::NotJson)?;
        let obj = value.as_object().ok_or(KeyError::NotObject)?;
        if string(obj, "type") != Some("service_account") {
            return Err(KeyError::NotServiceAccount);
        }
        let client_email = string(obj, "client_email").ok_or(KeyError::Missing("client_email"))?;
        let pem = string(obj, "private_key").ok_or(KeyError::Missing("private_key"))?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| KeyError::PrivateKeyNotPem)?;
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|_| KeyError::PrivateKeyNotRsa)?;
        let token_uri_raw = string(obj, "token_uri").ok_or(KeyError::Missing("token_uri"))?;
        let token_uri: Uri = token_uri_raw
            .parse()
            .map_err(|_| KeyError::TokenUriNotHttps)?;
        if token_uri.scheme_str() != Some("https") || token_uri.authority().is_none() {
            return Err(KeyError::TokenUriNotHttps);
        }
        Ok(ServiceAccount {
            client_email: client_email.to_owned(),
            private_key_id: string(obj, "private_key_id").map(str::to_owned),
            project_id: string(obj, "project_id").map(str::to_owned),
            token_uri,
            token_uri_raw: token_uri_raw.to_owned(),
            key,
        })
    }

    /// The key's `project_id`, the default of `--fcm-project-id`.
    pub fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }

    pub fn token_uri(&self) -> &Uri {
        &self.token_uri
    }

    /// The signed JWT of the grant, issued at `iat` (seconds since the epoch).
    pub fn assertion(&self, iat: u64) -> Result<String, ring::error::Unspecified> {
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.private_key_id {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri_raw,
            "iat": iat,
            "exp": iat + JWT_LIFETIME.as_secs(),
        });
        let mut jwt = URL_SAFE_NO_PAD.encode(header.to_string());
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            jwt.as_bytes(),
            &mut sig,
        )?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(jwt)
    }
}

/// An OAuth2 access token. Never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(Arc<str>);

impl AccessToken {
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// Why no access token could be had. The messages quote nothing the endpoint sent.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token endpoint: {0}")]
    Call(#[from] CallError),
    #[error("token endpoint answered HTTP {0}")]
    Status(u16),
    #[error("token endpoint reply has no access_token and expires_in")]
    BadReply,
    #[error("signing the JWT failed")]
    Sign,
    #[error("the fetch this send waited for failed")]
    FailedMeanwhile,
}

/// A token and when to stop using it.
#[derive(Clone, Debug)]
struct Cached {
    token: AccessToken,
    use_until: Instant,
}

/// How long a token that lives `expires_in` is used: until [`EXPIRY_MARGIN`] before it
/// expires, or half its life if that is shorter.
pub fn usable_for(expires_in: Duration) -> Duration {
    expires_in.saturating_sub(EXPIRY_MARGIN.min(expires_in / 2))
}

/// Hands out the cached access token, fetching a new one when it is missing or due. One fetch
/// at a time: sends that wait for a fetch share its outcome rather than each trying again.
pub struct TokenSource {
    account: Arc<ServiceAccount>,
    client: HttpsClient,
    cache: tokio::sync::Mutex<Option<Cached>>,
    /// Fetches finished (either way): a waiter that sees it move and no fresh token knows
    /// the fetch it waited for failed.
    fetches: AtomicU64,
}

impl TokenSource {
    pub fn new(account: Arc<ServiceAccount>, client: HttpsClient) -> Self {
        TokenSource {
            account,
            client,
            cache: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
        }
    }

    /// A token fit to use now.
    pub async fn get(&self) -> Result<AccessToken, TokenError> {
        let seen = self.fetches.load(Ordering::Acquire);
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref().filter(|c| Instant::now() < c.use_until) {
            return Ok(c.token.clone());
        }
        if self.fetches.load(Ordering::Acquire) != seen {
            return Err(TokenError::FailedMeanwhile);
        }
        let fetched = self.fetch().await;
        self.fetches.fetch_add(1, Ordering::Release);
        let fresh = fetched?;
        let token = fresh.token.clone();
        *cache = Some(fresh);
        Ok(token)
    }

    /// FCM refused `token` (401): forget it so the next send fetches another.
    pub async fn invalidate(&self, token: &AccessToken) {
        let mut cache = self.cache.lock().await;
        if cache.as_ref().is_some_and(|c| &c.token == token) {
            *cache = None;
        }
    }

    async fn fetch(&self) -> Result<Cached, TokenError> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let jwt = self.account.assertion(iat).map_err(|_| TokenError::Sign)?;
        let body = format!("grant_type={GRANT_TYPE}&assertion={jwt}");
        let asked = Instant::now();
        let reply = self
            .client
            .post(
                self.account.token_uri(),
                "application/x-www-form-urlencoded",
                None,
                Bytes::from(body),
            )
            .await?;
        if !reply.status.is_success() {
            return Err(TokenError::Status(reply.status.as_u16()));
        }
        let v: Value = serde_json::from_slice(&reply.body).map_err(|_| TokenError::BadReply)?;
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or(TokenError::BadReply)?;
        let expires_in = v
            .get("expires_in")
            .and_then(Value::as_u64)
            .filter(|s| *s > 0)
            .ok_or(TokenError::BadReply)?;
        Ok(Cached {
            token: AccessToken(token.into()),
            // Counted from when it was asked for: the token's life started no later.
            use_until: asked + usable_for(Duration::from_secs(expires_in)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test-only key of relay-testkit (a fixture, not a secret).
    fn key_json(token_uri: &str) -> String {
        relay_testkit::fcm::service_account_json("demo-project", token_uri)
    }

    #[test]
    fn a_good_key_parses_and_its_project_id_is_the_default() {
        let sa = ServiceAccount::from_json(key_json("https://127.0.0.1:1/token").as_bytes())
            .expect("the fixture key is usable");
        assert_eq!(sa.project_id(), Some("demo-project"));
        assert_eq!(sa.token_uri().to_string(), "https://127.0.0.1:1/token");
        assert_eq!(format!("{sa:?}"), "ServiceAccount(<redacted>)");
    }

    #[test]
    fn unusable_keys_are_refused_without_quoting_them() {
        let good: Value = serde_json::from_str(&key_json("https://h/token")).unwrap();
        let with = |field: &str, v: Value| {
            let mut k = good.clone();
            k[field] = v;
            k.to_string()
        };
        let without = |field: &str| {
            let mut k = good.clone();
            k.as_object_mut().unwrap().remove(field);
            k.to_string()
        };
        let cases: Vec<(String, KeyError)> = vec![
            ("not json s3cret".into(), KeyError::NotJson),
            ("[\"s3cret\"]".into(), KeyError::NotObject),
            (with("type", json!("s3cret")), KeyError::NotServiceAccount),
            (without("type"), KeyError::NotServiceAccount),
            (without("client_email"), KeyError::Missing("client_email")),
            (
                with("client_email", json!(7)),
                KeyError::Missing("client_email"),
            ),
            (without("private_key"), KeyError::Missing("private_key")),
            (
                with("private_key", json!("s3cret")),
                KeyError::PrivateKeyNotPem,
            ),
            (
                with(
                    "private_key",
                    json!("-----BEGIN PRIVATE KEY-----\nczNjcmV0\n-----END PRIVATE KEY-----\n"),
                ),
                KeyError::PrivateKeyNotRsa,
            ),
            (without("token_uri"), KeyError::Missing("token_uri")),
            (
                with("token_uri", json!("http://s3cret/token")),
                KeyError::TokenUriNotHttps,
            ),
            (
                with("token_uri", json!("s3cret")),
                KeyError::TokenUriNotHttps,
            ),
        ];
        for (json, want) in cases {
            let got = ServiceAccount::from_json(json.as_bytes()).unwrap_err();
            assert_eq!(got, want, "{json}");
            assert!(!got.to_string().contains("s3cret"), "{got}");
        }
    }

    #[test]
    fn the_assertion_is_an_rs256_jwt_with_the_grant_claims() {
        let sa =
            ServiceAccount::from_json(key_json("https://127.0.0.1:9/token").as_bytes()).unwrap();
        let jwt = sa.assertion(1_700_000_000).unwrap();
        let claims = relay_testkit::fcm::verify_jwt(&jwt).expect("signed by the fixture key");
        assert_eq!(claims["iss"], relay_testkit::fcm::CLIENT_EMAIL);
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["aud"], "https://127.0.0.1:9/token");
        assert_eq!(claims["iat"], 1_700_000_000u64);
        assert_eq!(claims["exp"], 1_700_003_600u64);
        // A flipped byte of the signed part breaks the signature.
        let mut bad = jwt.clone().into_bytes();
        bad[10] ^= 1;
        assert!(relay_testkit::fcm::verify_jwt(&String::from_utf8(bad).unwrap()).is_err());
    }

    #[test]
    fn a_token_is_used_until_shortly_before_it_expires() {
        assert_eq!(
            usable_for(Duration::from_secs(3599)),
            Duration::from_secs(3539)
        );
        assert_eq!(usable_for(Duration::from_secs(60)), Duration::from_secs(30));
        assert_eq!(
            usable_for(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn access_token_debug_is_redacted() {
        let t = AccessToken("ya29.s3cret".into());
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
