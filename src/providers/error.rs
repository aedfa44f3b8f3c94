//! The error of one upstream call, classified the way the router's retry and cooldown
//! policies (LiteLLM's error classes) need it.

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
