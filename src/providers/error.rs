//! The error of one upstream call, classified the way the router's retry and cooldown
//! policies (LiteLLM's error classes) need it.
//!
//! [`ErrorClass::from_status`] is the one status → class table; `providers::http` builds
//! errors from HTTP responses with it.

use std::time::Duration;

/// LiteLLM's error classes, which `retry_policy` and `allowed_fails_policy` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// 400 and other client errors: the request is at fault, not the deployment.
    BadRequest,
    /// 401.
    Authentication,
    /// 403.
    PermissionDenied,
    /// 404 from the upstream (wrong model name or URL).
    NotFound,
    /// The prompt does not fit the model's context window.
    ContextWindowExceeded,
    /// The provider refused the content.
    ContentPolicyViolation,
    /// 429.
    RateLimit,
    /// No answer in time.
    Timeout,
    /// Could not connect, or the connection broke.
    Connection,
    /// 5xx.
    InternalServer,
    /// The upstream answered something that is not its documented format.
    InvalidResponse,
}

impl ErrorClass {
    /// The class of an upstream HTTP status: 400/413/422 and other 4xx → `BadRequest`,
    /// 401 → `Authentication`, 403 → `PermissionDenied`, 404 → `NotFound`, 408 → `Timeout`,
    /// 429 → `RateLimit`, 5xx (and 529) → `InternalServer`; anything else (1xx, 3xx) →
    /// `InvalidResponse`. Context-window and content-policy errors are told apart by the
    /// body, not the status (see `providers::http`).
    pub fn from_status(status: u16) -> Self {
        match status {
            401 => ErrorClass::Authentication,
            403 => ErrorClass::PermissionDenied,
            404 => ErrorClass::NotFound,
            408 => ErrorClass::Timeout,
            429 => ErrorClass::RateLimit,
            400..=499 => ErrorClass::BadRequest,
            500..=599 => ErrorClass::InternalServer,
            _ => ErrorClass::InvalidResponse,
        }
    }
}

/// One failed upstream call. `message` never holds a key or a URL with a key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{class:?} ({status:?}): {message}")]
pub struct ProviderError {
    /// What kind of failure.
    pub class: ErrorClass,
    /// The upstream's HTTP status, when it answered.
    pub status: Option<u16>,
    /// A sentence for a person, from the upstream's error body when it had one.
    pub message: String,
    /// The upstream's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    /// An error of `class` with `message`.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            status: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Sets the upstream's HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Sets how long the upstream asked us to wait.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Replaces every occurrence of `secret` in the message with `***`. Adapters pass every
    /// error through this with their API key, so an upstream that echoes the key in its error
    /// text does not leak it. Empty secrets are ignored.
    pub fn redact(mut self, secret: Option<&str>) -> Self {
        if let Some(secret) = secret.filter(|s| !s.is_empty())
            && self.message.contains(secret)
        {
            self.message = redact_in(&self.message, secret);
        }
        self
    }

    /// True when another attempt (on this or another deployment) may succeed: rate limits,
    /// timeouts, connection errors, 5xx and broken upstream bodies.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.class,
            ErrorClass::RateLimit
                | ErrorClass::Timeout
                | ErrorClass::Connection
                | ErrorClass::InternalServer
                | ErrorClass::InvalidResponse
        )
    }
}

/// Replaces `secret` in `text` with `***`. A secret shorter than 8 characters (a test key such
/// as `k`) is replaced only where it stands as a whole word, so that redaction does not mangle
/// ordinary words that happen to contain it.
fn redact_in(text: &str, secret: &str) -> String {
    if secret.chars().count() >= 8 {
        return text.replace(secret, "***");
    }
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(secret) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + secret.len()..].chars().next();
        out.push_str(&rest[..i]);
        out.push_str(if word(before) || word(after) {
            secret
        } else {
            "***"
        });
        rest = &rest[i + secret.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod redact_tests {
    use super::*;

    #[test]
    fn long_secrets_go_everywhere_short_ones_as_whole_words() {
        let e = ProviderError::new(
            ErrorClass::Authentication,
            "key sk-abcdef123 is bad, sk-abcdef123!",
        );
        assert_eq!(
            e.redact(Some("sk-abcdef123")).message,
            "key *** is bad, ***!"
        );
        let e = ProviderError::new(ErrorClass::Authentication, "API key k refused");
        assert_eq!(e.redact(Some("k")).message, "API key *** refused");
    }
}
