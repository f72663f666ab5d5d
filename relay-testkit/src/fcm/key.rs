//! The stand-in FCM's fake Google service account: a checked-in test-only RSA key (see
//! `fixtures/fcm-test-key.pem` for why it is checked in rather than generated), the
//! service-account JSON around it, and RS256 JWT verification against its public half.
//!
//! Nothing here is a secret: no Google project knows this key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{KeyPair, RsaKeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde_json::{json, Value};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::PrivatePkcs8KeyDer;

/// The fixture file: an explanation, then the PEM.
const FIXTURE: &str = include_str!("../../fixtures/fcm-test-key.pem");

/// The fake service account's e-mail (the JWT's `iss`).
pub const CLIENT_EMAIL: &str = "relay-test@relay-test-project.iam.gserviceaccount.com";
/// The fake key's id (the JWT header's `kid`).
pub const KEY_ID: &str = "relay-test-key-0001";
/// The FCM OAuth2 scope the grant must ask for.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The test key as PKCS#8 PEM.
pub fn private_key_pem() -> &'static str {
    let start = FIXTURE
        .find("-----BEGIN PRIVATE KEY-----")
        .expect("fixture has a key");
    &FIXTURE[start..]
}

fn key_pair() -> RsaKeyPair {
    let der =
        PrivatePkcs8KeyDer::from_pem_slice(private_key_pem().as_bytes()).expect("fixture PEM");
    RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("fixture is RSA")
}

/// A service-account key file's JSON, shaped like the ones the Google Cloud console hands
/// out, around the test key.
pub fn service_account_json(project_id: &str, token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": KEY_ID,
        "private_key": private_key_pem(),
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    })
    .to_string()
}

/// Why a JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not three base64url parts")]
    Shape,
    #[error("header or claims are not JSON objects")]
    NotJson,
    #[error("header alg is not RS256 or kid is not the key's")]
    Header,
    #[error("RS256 signature does not verify against the key's public half")]
    Signature,
}

/// Checks `jwt`'s header (`alg` RS256, `typ` JWT, `kid` [`KEY_ID`]) and RS256 signature
/// against the test key's public half; returns its claims.
pub fn verify_jwt(jwt: &str) -> Result<Value, JwtError> {
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Shape);
    };
    let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| JwtError::Shape);
    let (header, claims, sig) = (decode(h)?, decode(c)?, decode(s)?);
    let header: Value = serde_json::from_slice(&header).map_err(|_| JwtError::NotJson)?;
    let claims: Value = serde_json::from_slice(&claims).map_err(|_| JwtError::NotJson)?;
    if !header.is_object() || !claims.is_object() {
        return Err(JwtError::NotJson);
    }
    if header["alg"] != "RS256" || header["typ"] != "JWT" || header["kid"] != KEY_ID {
        return Err(JwtError::Header);
    }
    let pair = key_pair();
    let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pair.public_key().as_ref());
    let signed = &jwt[..h.len() + 1 + c.len()];
    public
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| JwtError::Signature)?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_key_is_an_rsa_2048_key() {
        assert_eq!(key_pair().public().modulus_len(), 256);
        let v: Value = serde_json::from_str(&service_account_json("p", "https://t/token")).unwrap();
        assert_eq!(v["private_key"], private_key_pem());
        assert!(!private_key_pem().contains("FIXTURE"));
    }

    #[test]
    fn a_jwt_signed_by_the_key_verifies_and_a_tampered_one_does_not() {
        let pair = key_pair();
        let h = URL_SAFE_NO_PAD.encode(json!({"alg":"RS256","typ":"JWT","kid":KEY_ID}).to_string());
        let c = URL_SAFE_NO_PAD.encode(json!({"iss":"me"}).to_string());
        let input = format!("{h}.{c}");
        let mut sig = vec![0; pair.public().modulus_len()];
        pair.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .unwrap();
        let jwt = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
        assert_eq!(verify_jwt(&jwt).unwrap()["iss"], "me");
        let other = URL_SAFE_NO_PAD.encode(json!({"iss":"you"}).to_string());
        assert_eq!(
            verify_jwt(&format!("{h}.{other}.{}", URL_SAFE_NO_PAD.encode(&sig))),
            Err(JwtError::Signature)
        );
        assert_eq!(verify_jwt("a.b"), Err(JwtError::Shape));
    }
}
