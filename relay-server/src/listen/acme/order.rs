//! One ACME order for the domain (RFC 8555 §7.4): account, order, one challenge per pending
//! authorization, finalize with a fresh key, download the chain.
//!
//! Owns the conversation with the CA through instant-acme and the account credentials in the
//! cache. It publishes challenge responses through [`Pending`] and withdraws them when the
//! order ends, however it ends. It does not decide when to order (the schedule does), does not
//! swap what is served (the manager does), and its errors carry the CA's problem type and
//! detail but never a key, a JWS or a nonce.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, Problem, RetryPolicy,
};
use tracing::{info, warn};

use super::cache::CertCache;
use super::client::CaClient;
use super::material::{self, MaterialError, Served};
use super::pending::{Pending, Published};

/// The challenge types the relay answers (§9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// On the HTTPS listener, always.
    TlsAlpn01,
    /// On `--http-listen`, when it is on.
    Http01,
}

impl Challenge {
    pub fn name(self) -> &'static str {
        match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
        }
    }

    fn acme_type(self) -> ChallengeType {
        match self {
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            Challenge::Http01 => ChallengeType::Http01,
        }
    }
}

impl std::fmt::Display for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an order produced no certificate. The display is one line for the log.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The CA refused a request with a problem document (RFC 8555 §6.7).
    #[error("{stage}: the CA answered {problem_type}: {detail}")]
    Ca {
        stage: &'static str,
        problem_type: String,
        detail: String,
    },
    /// The CA could not validate the challenge: the authorization or order went `invalid`.
    #[error("{challenge} validation failed: the CA answered {problem_type}: {detail}")]
    Invalid {
        challenge: Challenge,
        problem_type: String,
        detail: String,
    },
    #[error("the CA offered no {0} challenge for the domain")]
    NoChallenge(Challenge),
    /// Network, TLS, protocol or local failures.
    #[error("{stage}: {reason}")]
    Other { stage: &'static str, reason: String },
    #[error("the certificate the CA returned is unusable: {0}")]
    Material(#[from] MaterialError),
    #[error("no answer from the CA within {0:?}")]
    Timeout(Duration),
}

impl OrderError {
    /// The CA tried the challenge and it failed: another challenge type may succeed.
    pub fn is_validation_failure(&self) -> bool {
        matches!(self, OrderError::Invalid { .. })
    }

    /// The CA's `urn:ietf:params:acme:error:*` type, when it sent one.
    pub fn problem_type(&self) -> Option<&str> {
        match self {
            OrderError::Ca { problem_type, .. } | OrderError::Invalid { problem_type, .. } => {
                Some(problem_type)
            }
            _ => None,
        }
    }
}

const ACCOUNT_DOES_NOT_EXIST: &str = "urn:ietf:params:acme:error:accountDoesNotExist";

/// A certificate just issued: what to serve, and the bundle to cache.
pub struct Obtained {
    pub served: Served,
    pub bundle_pem: String,
}

pub struct Orderer {
    pub(crate) client: CaClient,
    pub(crate) directory_url: String,
    /// `mailto:` URI from `--acme-email`.
    pub(crate) contact: Option<String>,
    pub(crate) domain: String,
    pub(crate) cache: CertCache,
    pub(crate) pending: Arc<Pending>,
    pub(crate) poll: RetryPolicy,
    pub(crate) account: Option<Account>,
}

impl Orderer {
    /// Runs one order answering `challenge`. Challenge responses are withdrawn when this
    /// returns (or is dropped at a deadline).
    pub async fn order(&mut self, challenge: Challenge) -> Result<Obtained, OrderError> {
        let identifiers = [Identifier::Dns(self.domain.clone())];
        let account = self.account().await?;
        let mut order = match account.new_order(&NewOrder::new(&identifiers)).await {
            // The CA forgot the account (a test CA restarted, or it was deactivated):
            // register again once.
            Err(instant_acme::Error::Api(p))
                if p.r#type.as_deref() == Some(ACCOUNT_DOES_NOT_EXIST) =>
            {
                warn!("the CA no longer knows the cached ACME account; registering a new one");
                self.account = None;
                let account = self.register().await?;
                account
                    .new_order(&NewOrder::new(&identifiers))
                    .await
                    .map_err(ca("new order"))?
            }
            other => other.map_err(ca("new order"))?,
        };

        let published = self.answer_challenges(&mut order, challenge).await?;
        match order.poll_ready(&self.poll).await {
            Ok(OrderStatus::Ready) => {}
            Ok(status) => {
                return Err(validation_error(&mut order, challenge, None, status).await);
            }
            Err(instant_acme::Error::Api(problem)) => {
                return Err(validation_error(
                    &mut order,
                    challenge,
                    Some(problem),
                    OrderStatus::Invalid,
                )
                .await);
            }
            Err(e) => return Err(ca("waiting for validation")(e)),
        }
        drop(published);

        let (key_pem, csr) = material::key_and_csr(&self.domain)?;
        order.finalize_csr(&csr).await.map_err(ca("finalize"))?;
        let chain = order
            .poll_certificate(&self.poll)
            .await
            .map_err(ca("certificate download"))?;
        let bundle_pem = material::bundle(&key_pem, &chain);
        let served = material::parse_bundle(&bundle_pem, &self.domain)?;
        Ok(Obtained { served, bundle_pem })
    }

    /// Publishes a response for every pending authorization and tells the CA it is ready.
    /// Authorizations the CA already holds valid (reuse) need nothing.
    async fn answer_challenges(
        &self,
        order: &mut Order,
        challenge: Challenge,
    ) -> Result<Vec<Published>, OrderError> {
        let mut published = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(ca("authorization"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => {
                    return Err(OrderError::Other {
                        stage: "authorization",
                        reason: format!("the CA reports the authorization {status:?}"),
                    })
                }
            }
            let mut handle = authz
                .challenge(challenge.acme_type())
                .ok_or(OrderError::NoChallenge(challenge))?;
            let key_authorization = handle.key_authorization();
            published.push(match challenge {
                Challenge::Http01 => self
                    .pending
                    .publish_http01(handle.token.clone(), key_authorization.as_str().to_owned()),
                Challenge::TlsAlpn01 => {
                    self.pending
                        .publish_tls_alpn01(material::tls_alpn01_certificate(
                            &self.domain,
                            key_authorization.digest().as_ref(),
                        )?)
                }
            });
            handle.set_ready().await.map_err(ca("challenge"))?;
        }
        Ok(published)
    }

    async fn account(&mut self) -> Result<Account, OrderError> {
        if let Some(account) = &self.account {
            return Ok(account.clone());
        }
        let path = self.cache.account_path(&self.directory_url);
        let cached = self.cache.read(&path).unwrap_or_else(|e| {
            warn!(path = %path.display(), err = %e, "cannot read the cached ACME account; registering a new one");
            None
        });
        if let Some(json) = cached {
            match serde_json::from_str::<AccountCredentials>(&json) {
                Ok(credentials) => {
                    let account = Account::builder_with_http(Box::new(self.client.clone()))
                        .from_credentials(credentials)
                        .await
                        .map_err(ca("account"))?;
                    self.account = Some(account.clone());
                    return Ok(account);
                }
                Err(_) => {
                    warn!(path = %path.display(), "the cached ACME account is unreadable; registering a new one")
                }
            }
        }
        self.register().await
    }

    /// Registers a new account and caches its credentials (0600).
    async fn register(&mut self) -> Result<Account, OrderError> {
        let contact: Vec<&str> = self.contact.iter().map(String::as_str).collect();
        let (account, credentials) = Account::builder_with_http(Box::new(self.client.clone()))
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.directory_url.clone(),
                None,
            )
            .await
            .map_err(ca("account registration"))?;
        let path = self.cache.account_path(&self.directory_url);
        match serde_json::to_vec(&credentials) {
            Ok(json) => match self.cache.write_private(&path, &json) {
                Ok(()) => info!(path = %path.display(), "ACME account registered and cached"),
                Err(e) => warn!(path = %path.display(), err = %e,
                    "ACME account registered but not cached: a restart registers another"),
            },
            Err(e) => warn!(err = %e, "cannot serialize the ACME account credentials"),
        }
        self.account = Some(account.clone());
        Ok(account)
    }
}

/// The most specific reason the CA gives for an order that did not become ready: the
/// challenge's error if it has one, else the order's, else the status.
async fn validation_error(
    order: &mut Order,
    challenge: Challenge,
    order_problem: Option<Problem>,
    status: OrderStatus,
) -> OrderError {
    let mut found = None;
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        if let Some(problem) = state.challenges.iter().find_map(|c| c.error.clone()) {
            found = Some(problem);
            break;
        }
    }
    match found.or(order_problem) {
        Some(problem) => OrderError::Invalid {
            challenge,
            problem_type: problem_type(&problem),
            detail: one_line(problem.detail.as_deref().unwrap_or("(no detail)")),
        },
        None => OrderError::Invalid {
            challenge,
            problem_type: "(none)".into(),
            detail: format!("the order ended {status:?}"),
        },
    }
}

fn problem_type(problem: &Problem) -> String {
    problem
        .r#type
        .clone()
        .unwrap_or_else(|| "(no problem type)".into())
}

/// Maps an instant-acme error at `stage` to an [`OrderError`].
fn ca(stage: &'static str) -> impl Fn(instant_acme::Error) -> OrderError {
    move |e| match e {
        instant_acme::Error::Api(problem) => OrderError::Ca {
            stage,
            problem_type: problem_type(&problem),
            detail: one_line(problem.detail.as_deref().unwrap_or("(no detail)")),
        },
        other => OrderError::Other {
            stage,
            reason: one_line(&with_sources(&other)),
        },
    }
}

/// "client error (Connect): tcp connect error: Connection refused", not just the outermost.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// CA details are free text: one line, bounded, so a log line stays a line.
fn one_line(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if text.chars().count() > 300 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_problems_keep_their_type_in_one_line() {
        let problem: Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many\ncertificates","status":429}"#,
        )
        .unwrap();
        let err = ca("new order")(instant_acme::Error::Api(problem));
        assert_eq!(
            err.problem_type(),
            Some("urn:ietf:params:acme:error:rateLimited")
        );
        assert_eq!(
            err.to_string(),
            "new order: the CA answered urn:ietf:params:acme:error:rateLimited: too many certificates"
        );
        assert!(!err.is_validation_failure());
        let long = one_line(&"x".repeat(1000));
        assert_eq!(long.chars().count(), 301);
    }
}
