//! Vertex AI authentication with a Google service-account key: an RS256-signed JWT is
//! exchanged at the key's `token_uri` for an OAuth 2.0 access token (Google's "OAuth 2.0 for
//! server to server applications" flow), which every call then sends as
//! `Authorization: Bearer …`.
//!
//! - [`ServiceAccountKey`] reads the key file (the JSON document Google Cloud hands out, or
//!   the path of a file holding it) and parses its PKCS#8 (or PKCS#1) RSA private key.
//! - [`ServiceAccountKey::sign_jwt`] builds the assertion: header `{"alg":"RS256","typ":"JWT"}`,
//!   claims `iss` (the key's `client_email`), `scope` ([`SCOPE`]), `aud` (the token URI),
//!   `exp` (`iat` + one hour) and `iat`, each part base64url without padding. RSASSA-PKCS1-v1_5
//!   is deterministic, so a fixed key and fixed claims give a fixed token (the tests check one).
//! - [`TokenSource`] posts the assertion with
//!   `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and caches the access token
//!   until shortly before it expires. The cache sits behind a `tokio::sync::Mutex` held across
//!   the refresh, so concurrent calls share one refresh instead of each fetching a token.

use std::{
    fmt,
    time::{Duration, Instant},
};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use ring::{
    rand::SystemRandom,
    signature::{RSA_PKCS1_SHA256, RsaKeyPair},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    config::Secret,
    providers::{ErrorClass, ProviderError, http},
};

/// The OAuth scope Vertex AI calls need.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's token endpoint, used when a key file names none.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The grant type of the JWT-bearer exchange (RFC 7523).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// How long a signed assertion is valid: the most Google accepts.
pub const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// A cached token is refreshed this long before it expires (or at half its lifetime, when that
/// is sooner), so no call goes out with a token about to lapse.
const REFRESH_MARGIN: Duration = Duration::from_secs(240);

/// Why a service-account key could not be used. No message quotes the key: a source that is
/// not JSON is named only when it can be a path ([`KeySource`]).
#[derive(Debug, thiserror::Error)]
pub enum VertexAuthError {
    /// The source is not JSON and no file could be read at it.
    #[error("cannot read the service-account key {path}: {source}")]
    Read {
        /// The path, or a note that the value is not shown.
        path: KeySource,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not a key file's JSON.
    #[error("the service-account key is not a key file's JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// Credentials of another kind (a user's, an external account's).
    #[error("the credentials are of type `{0}`; llmbus needs a `service_account` key")]
    WrongType(String),
    /// No `client_email`.
    #[error("the service-account key has no `client_email`")]
    NoClientEmail,
    /// No `private_key`.
    #[error("the service-account key has no `private_key`")]
    NoPrivateKey,
    /// `private_key` does not start as a PEM private key.
    #[error("the service-account `private_key` is not a PEM private key")]
    NotPem,
    /// `private_key`'s body is not base64.
    #[error("the service-account `private_key` is not valid base64 PEM")]
    NotBase64,
    /// ring refused the key.
    #[error("the service-account `private_key` is not a usable RSA key ({0})")]
    Unusable(ring::error::KeyRejected),
}

/// How [`VertexAuthError::Read`] names the source it could not read: the path when the value
/// can be one, else nothing of it (a PEM key or a base64-encoded key file given inline, taken
/// for a path, must not be printed).
#[derive(Debug)]
pub struct KeySource(Option<String>);

impl KeySource {
    /// Paths are short single lines (a file name is at most 255 bytes); a key is thousands of
    /// characters, and a PEM block has lines and a `-----BEGIN` marker.
    const LONGEST_SHOWN: usize = 256;

    fn of(source: &str) -> Self {
        let shown = source.len() <= Self::LONGEST_SHOWN
            && !source.contains("-----")
            && !source.chars().any(char::is_control);
        Self(shown.then(|| source.to_owned()))
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(path) => write!(f, "file `{path}`"),
            None => f.write_str(
                "(the value is neither a key file's JSON nor the path of a file; not shown)",
            ),
        }
    }
}

/// A Google service-account key: the fields of the key file llmbus uses.
pub struct ServiceAccountKey {
    /// The service account's e-mail address: the JWT's `iss`.
    pub client_email: String,
    /// Where to exchange the JWT for an access token: the JWT's `aud`.
    pub token_uri: String,
    /// The project the key belongs to (a default for `vertex_project`).
    pub project_id: Option<String>,
    key_pair: RsaKeyPair,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("project_id", &self.project_id)
            .field("private_key", &"***")
            .finish()
    }
}

/// The key file as Google writes it (only the fields read here).
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    client_email: Option<String>,
    #[serde(default)]
    private_key: Option<Secret>,
    #[serde(default)]
    token_uri: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
}

/// The JWT claims, in the order Google's documentation lists them.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
}

impl ServiceAccountKey {
    /// Reads a key from `source`: the JSON document itself when it starts with `{`, else the
    /// path of a file holding it. Errors never quote the key.
    pub fn load(source: &str) -> Result<Self, VertexAuthError> {
        let source = source.trim();
        if source.starts_with('{') {
            return Self::from_json(source);
        }
        let text = std::fs::read_to_string(source).map_err(|e| VertexAuthError::Read {
            path: KeySource::of(source),
            source: e,
        })?;
        Self::from_json(&text)
    }

    /// Parses a key file's JSON document.
    pub fn from_json(text: &str) -> Result<Self, VertexAuthError> {
        let file: KeyFile = serde_json::from_str(text).map_err(VertexAuthError::NotJson)?;
        if let Some(kind) = file.kind
            && kind != "service_account"
        {
            return Err(VertexAuthError::WrongType(kind));
        }
        let client_email = file
            .client_email
            .filter(|e| !e.trim().is_empty())
            .ok_or(VertexAuthError::NoClientEmail)?;
        let pem = file.private_key.ok_or(VertexAuthError::NoPrivateKey)?;
        let key_pair = parse_private_key(pem.expose())?;
        Ok(Self {
            client_email,
            token_uri: file
                .token_uri
                .filter(|u| !u.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned()),
            project_id: file.project_id.filter(|p| !p.trim().is_empty()),
            key_pair,
        })
    }

    /// A key made from a PEM private key and an e-mail address (tests and tools).
    pub fn from_pem(
        client_email: &str,
        pem: &str,
        token_uri: &str,
    ) -> Result<Self, VertexAuthError> {
        Ok(Self {
            client_email: client_email.to_owned(),
            token_uri: token_uri.to_owned(),
            project_id: None,
            key_pair: parse_private_key(pem)?,
        })
    }

    /// The unsigned part of the assertion issued at `iat` (Unix seconds):
    /// `base64url(header) "." base64url(claims)`.
    pub fn signing_input(&self, iat: u64) -> String {
        let header = br#"{"alg":"RS256","typ":"JWT"}"#;
        let claims = Claims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            exp: iat + ASSERTION_LIFETIME_SECS,
            iat,
        };
        // Serializing a struct of strings and integers cannot fail.
        let claims = serde_json::to_vec(&claims).unwrap_or_default();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    /// The signed assertion issued at `iat` (Unix seconds).
    pub fn sign_jwt(&self, iat: u64) -> Result<String, ProviderError> {
        let input = self.signing_input(iat);
        let mut signature = vec![0; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| {
                ProviderError::new(
                    ErrorClass::Authentication,
                    "signing the service-account JWT failed",
                )
            })?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// The public key (PKCS#1 `RSAPublicKey`, DER) matching the private key.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key_pair.public().as_ref().to_vec()
    }
}

/// Parses a PEM private key: `BEGIN PRIVATE KEY` (PKCS#8, what Google's key files hold) or
/// `BEGIN RSA PRIVATE KEY` (PKCS#1).
fn parse_private_key(pem: &str) -> Result<RsaKeyPair, VertexAuthError> {
    let pem = pem.trim();
    let pkcs1 = pem.starts_with("-----BEGIN RSA PRIVATE KEY-----");
    if !pkcs1 && !pem.starts_with("-----BEGIN PRIVATE KEY-----") {
        return Err(VertexAuthError::NotPem);
    }
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    let der = STANDARD
        .decode(body)
        .map_err(|_| VertexAuthError::NotBase64)?;
    let parsed = if pkcs1 {
        RsaKeyPair::from_der(&der)
    } else {
        RsaKeyPair::from_pkcs8(&der)
    };
    parsed.map_err(VertexAuthError::Unusable)
}

/// A token and when it stops being used.
#[derive(Clone)]
struct CachedToken {
    token: Secret,
    refresh_at: Instant,
}

/// Access tokens for one service account, cached and refreshed single-flight.
pub struct TokenSource {
    key: ServiceAccountKey,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<Option<CachedToken>>,
    /// How many tokens have been fetched (for tests and metrics).
    fetched: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("client_email", &self.key.client_email)
            .field("token_uri", &self.key.token_uri)
            .finish()
    }
}

/// The token endpoint's success answer.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenSource {
    /// A token source for `key`, fetching over `http`.
    pub fn new(key: ServiceAccountKey, http: reqwest::Client) -> Self {
        Self {
            key,
            http,
            cache: tokio::sync::Mutex::new(None),
            fetched: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The service-account key.
    pub fn key(&self) -> &ServiceAccountKey {
        &self.key
    }

    /// How many tokens this source has fetched so far.
    pub fn fetch_count(&self) -> u64 {
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A valid access token: the cached one while it is fresh, else a new one. Callers that
    /// arrive during a refresh wait for it and share its result.
    pub async fn access_token(&self) -> Result<Secret, ProviderError> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *cache = Some(fresh);
        Ok(token)
    }

    /// Forgets the cached token (after the upstream refused it).
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }

    async fn fetch(&self) -> Result<CachedToken, ProviderError> {
        let iat = crate::wire::openai::unix_now();
        let assertion = self.key.sign_jwt(iat)?;
        let form = format!(
            "grant_type={}&assertion={}",
            form_encode(GRANT_TYPE),
            form_encode(&assertion)
        );
        let response = self
            .http
            .post(&self.key.token_uri)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .map_err(http::error_from_reqwest)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(http::error_from_reqwest)?;
        if !(200..300).contains(&status) {
            return Err(token_error(status, &headers, &body));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            ProviderError::new(
                ErrorClass::InvalidResponse,
                format!("the token endpoint's answer has no access token: {e}"),
            )
            .with_status(status)
        })?;
        self.fetched
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(ASSERTION_LIFETIME_SECS));
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        Ok(CachedToken {
            token: Secret::new(parsed.access_token),
            refresh_at: Instant::now() + lifetime - margin,
        })
    }
}

/// The error of a failed token exchange. OAuth errors (`invalid_grant`, `invalid_client`, …)
/// come as 400/401 and mean the credentials are wrong: `Authentication`. A 5xx stays a
/// retryable server error.
fn token_error(status: u16, headers: &reqwest::header::HeaderMap, body: &[u8]) -> ProviderError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if let Some(code) = field("error") {
        let detail = field("error_description").unwrap_or_default();
        let class = if status >= 500 {
            ErrorClass::InternalServer
        } else {
            ErrorClass::Authentication
        };
        return ProviderError::new(
            class,
            format!("the service-account token exchange failed: {code} {detail}")
                .trim_end()
                .to_owned(),
        )
        .with_status(status)
        .with_retry_after(http::retry_after(headers));
    }
    let mut err = http::error_from_response(status, headers, body);
    if (400..500).contains(&status) && err.class == ErrorClass::BadRequest {
        err.class = ErrorClass::Authentication;
    }
    err.message = format!("the service-account token exchange failed: {}", err.message);
    err
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(byte as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_escapes_reserved_characters() {
        assert_eq!(
            form_encode("urn:ietf:params:oauth:grant-type:jwt-bearer"),
            "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
        );
        assert_eq!(form_encode("a b+c/d=e"), "a+b%2Bc%2Fd%3De");
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let err = ServiceAccountKey::from_json(
            r#"{"type":"service_account","client_email":"a@b","private_key":"SECRETSTUFF"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("SECRETSTUFF"), "{err}");
        let err = ServiceAccountKey::from_json(r#"{"type":"authorized_user"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("authorized_user"), "{err}");
        assert!(ServiceAccountKey::from_json("not json").is_err());
        assert!(ServiceAccountKey::load("/nonexistent/key.json").is_err());
    }

    /// A key given inline but not as JSON (the PEM alone, or the key file base64-encoded into
    /// a variable) is taken for a path; the error said "cannot read the service-account key
    /// file `<the whole key>`".
    #[test]
    fn a_key_that_is_no_path_is_not_echoed_as_one() {
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANSECRETSTUFF\n-----END PRIVATE KEY-----";
        let encoded = STANDARD.encode(format!(
            r#"{{"type":"service_account","private_key":"{}"}}"#,
            "SECRETSTUFF".repeat(200)
        ));
        for source in [pem, encoded.as_str()] {
            let err = ServiceAccountKey::load(source).unwrap_err().to_string();
            assert!(!err.contains("SECRETSTUFF"), "{err}");
            assert!(!err.contains(&encoded[..40]), "{err}");
            assert!(err.contains("cannot read the service-account key"), "{err}");
        }
        // A path is still named.
        let err = ServiceAccountKey::load("/nonexistent/key.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read the service-account key file `/nonexistent/key.json`"),
            "{err}"
        );
    }

    #[test]
    fn token_errors_are_authentication_errors() {
        let headers = reqwest::header::HeaderMap::new();
        let err = token_error(
            400,
            &headers,
            br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
        );
        assert_eq!(err.class, ErrorClass::Authentication);
        assert!(err.message.contains("invalid_grant"));
        let err = token_error(503, &headers, b"busy");
        assert_eq!(err.class, ErrorClass::InternalServer);
    }
}
