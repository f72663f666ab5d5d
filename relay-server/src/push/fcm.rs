//! One wake, sent with FCM HTTP v1 (protocol.md §4.4): `POST
//! {endpoint}/v1/projects/{project_id}/messages:send` with the cached access token and the
//! body `{"message":{"token":…,"android":{"priority":"HIGH"}}}`, nothing else, and the reply
//! turned into an [`Outcome`].
//!
//! Owns the body and the reading of FCM's replies. It never retries (the daemon sends the next
//! wake when it has a reason to) and never logs: the caller logs the outcome with `token_fp`.

use std::sync::Arc;

use bytes::Bytes;
use hyper::{StatusCode, Uri};
use serde_json::Value;

use super::client::{CallError, HttpsClient};
use super::oauth::{ServiceAccount, TokenError, TokenSource};
use super::Outcome;

/// The request body of one wake: the token and high priority, nothing from a session.
pub fn message_body(push_token: &str) -> Bytes {
    let token = Value::from(push_token).to_string();
    Bytes::from(format!(
        r#"{{"message":{{"token":{token},"android":{{"priority":"HIGH"}}}}}}"#
    ))
}

/// Why a wake was not sent. The messages quote nothing FCM or the token endpoint sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("FCM: {0}")]
    Call(#[from] CallError),
    #[error("FCM answered HTTP {0}")]
    Status(u16),
    #[error("FCM answered a redirect (HTTP {0}), not followed")]
    Redirect(u16),
}

/// What FCM's reply means for the wake (§4.4): `sent` for 2xx; `unregistered` for 404 with
/// FCM error `UNREGISTERED`, or 400 `INVALID_ARGUMENT` naming the token; else a failure.
pub fn classify(status: StatusCode, body: &[u8]) -> Result<Outcome, SendError> {
    if status.is_success() {
        return Ok(Outcome::Sent);
    }
    if status.is_redirection() {
        return Err(SendError::Redirect(status.as_u16()));
    }
    let error = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").cloned());
    let unregistered = match (status.as_u16(), &error) {
        (404, Some(e)) => has_error_code(e, "UNREGISTERED"),
        (400, Some(e)) => {
            (e.get("status").and_then(Value::as_str) == Some("INVALID_ARGUMENT")
                || has_error_code(e, "INVALID_ARGUMENT"))
                && names_the_token(e)
        }
        _ => false,
    };
    if unregistered {
        Ok(Outcome::Unregistered)
    } else {
        Err(SendError::Status(status.as_u16()))
    }
}

/// `error.status` or an `FcmError` detail's `errorCode` is `code`.
fn has_error_code(e: &Value, code: &str) -> bool {
    e.get("status").and_then(Value::as_str) == Some(code)
        || details(e).any(|d| d.get("errorCode").and_then(Value::as_str) == Some(code))
}

/// A `BadRequest` field violation on `message.token`, or a message about the registration
/// token (FCM words it "The registration token is not a valid FCM registration token").
fn names_the_token(e: &Value) -> bool {
    let field = details(e).any(|d| {
        d.get("fieldViolations")
            .and_then(Value::as_array)
            .is_some_and(|vs| {
                vs.iter()
                    .any(|v| v.get("field").and_then(Value::as_str) == Some("message.token"))
            })
    });
    field
        || e.get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| m.to_ascii_lowercase().contains("registration token"))
}

fn details(e: &Value) -> impl Iterator<Item = &Value> {
    e.get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Sends wakes through one FCM project.
pub struct Fcm {
    client: HttpsClient,
    send_url: Uri,
    tokens: TokenSource,
}

impl Fcm {
    pub fn new(client: HttpsClient, send_url: Uri, account: Arc<ServiceAccount>) -> Self {
        Fcm {
            tokens: TokenSource::new(account, client.clone()),
            client,
            send_url,
        }
    }

    /// Sends one wake whose body [`message_body`] made. No retry.
    pub async fn send(&self, body: Bytes) -> Result<Outcome, SendError> {
        let token = self.tokens.get().await?;
        let reply = self
            .client
            .post(
                &self.send_url,
                "application/json; charset=utf-8",
                Some(token.secret()),
                body,
            )
            .await?;
        if reply.status == StatusCode::UNAUTHORIZED {
            // The cached token was refused: the next wake fetches another.
            self.tokens.invalidate(&token).await;
        }
        classify(reply.status, &reply.body)
    }
}

/// `{endpoint}/v1/projects/{project_id}/messages:send`.
pub fn send_url(endpoint: &str, project_id: &str) -> Result<Uri, hyper::http::uri::InvalidUri> {
    format!("{endpoint}/v1/projects/{project_id}/messages:send").parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_the_token_and_high_priority_and_nothing_else() {
        assert_eq!(
            &message_body("abc:DEF-123_x")[..],
            br#"{"message":{"token":"abc:DEF-123_x","android":{"priority":"HIGH"}}}"#
        );
        // A token is JSON-escaped, so no token can add a field.
        let body = message_body(r#"a","data":{"x":"1"#);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["message"]["token"], r#"a","data":{"x":"1"#);
        assert_eq!(v["message"].as_object().unwrap().len(), 2);
    }

    #[test]
    fn replies_map_to_the_outcomes_of_4_4() {
        let unregistered = br#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        let invalid_token = br#"{"error":{"code":400,"message":"The registration token is not a valid FCM registration token","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"INVALID_ARGUMENT"}]}}"#;
        let invalid_field = br#"{"error":{"code":400,"message":"Invalid value","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"message.token","description":"bad"}]}]}}"#;
        let invalid_other = br#"{"error":{"code":400,"message":"Invalid JSON payload received.","status":"INVALID_ARGUMENT"}}"#;
        let not_found =
            br#"{"error":{"code":404,"message":"Project not found","status":"NOT_FOUND"}}"#;
        let ok = |s: u16, b: &[u8]| classify(StatusCode::from_u16(s).unwrap(), b).ok();
        assert_eq!(ok(200, b"{}"), Some(Outcome::Sent));
        assert_eq!(ok(204, b""), Some(Outcome::Sent));
        assert_eq!(ok(404, unregistered), Some(Outcome::Unregistered));
        assert_eq!(ok(400, invalid_token), Some(Outcome::Unregistered));
        assert_eq!(ok(400, invalid_field), Some(Outcome::Unregistered));
        assert_eq!(ok(400, invalid_other), None, "400 not about the token");
        assert_eq!(ok(404, not_found), None, "404 without UNREGISTERED");
        assert_eq!(ok(404, &unregistered[..60]), None, "cut-off body");
        assert_eq!(ok(500, unregistered), None);
        assert_eq!(ok(401, b""), None);
        assert!(matches!(
            classify(StatusCode::FOUND, b""),
            Err(SendError::Redirect(302))
        ));
    }

    #[test]
    fn send_url_is_the_v1_messages_send_of_the_project() {
        assert_eq!(
            send_url("https://fcm.googleapis.com", "demo-1").unwrap(),
            "https://fcm.googleapis.com/v1/projects/demo-1/messages:send"
        );
    }
}
