//! Anthropic's errors → classified [`ProviderError`]s.
//!
//! This module owns reading Anthropic's error body `{"type":"error","error":{"type",
//! "message"}}`, from a non-2xx answer or from an `error` event inside a stream. The class
//! comes from the HTTP status (see [`ErrorClass::from_status`]; 529 `overloaded_error` is a
//! retryable `InternalServer`), refined by the error type and message: an
//! `invalid_request_error` saying the prompt is too long is `ContextWindowExceeded`. A stream
//! error event has no status, so the documented status of its type is used.

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::providers::{ErrorClass, ProviderError, http};

/// Anthropic's error types and the HTTP status each comes with.
pub const ERROR_TYPES: &[(&str, u16)] = &[
    ("invalid_request_error", 400),
    ("authentication_error", 401),
    ("billing_error", 402),
    ("permission_error", 403),
    ("not_found_error", 404),
    ("request_too_large", 413),
    ("rate_limit_error", 429),
    ("api_error", 500),
    ("timeout_error", 504),
    ("overloaded_error", 529),
];

/// The error of a non-2xx answer; `retry_after` from its headers. A body that is not
/// Anthropic's error shape falls back to the generic reading of [`http::error_from_response`].
pub fn from_response(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let Some((kind, message)) = parsed.as_ref().and_then(detail) else {
        return http::error_from_response(status, headers, body);
    };
    let class = refine(ErrorClass::from_status(status), kind, &message);
    ProviderError::new(class, message)
        .with_status(status)
        .with_retry_after(http::retry_after(headers))
}

/// The error of an `error` event in a stream (or an error body where a message belonged):
/// the status is the one documented for its type (`overloaded_error` → 529).
pub fn from_event(body: &Value) -> ProviderError {
    let Some((kind, message)) = detail(body) else {
        return http::error_from_event(body);
    };
    let status = ERROR_TYPES
        .iter()
        .find(|(name, _)| *name == kind)
        .map(|(_, status)| *status)
        .unwrap_or(500);
    let class = refine(ErrorClass::from_status(status), kind, &message);
    ProviderError::new(class, message).with_status(status)
}

/// The error's `type` and `message` (the message defaults to the type).
fn detail(body: &Value) -> Option<(&str, String)> {
    let error = body.get("error")?;
    let kind = error.get("type")?.as_str()?;
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map_or_else(|| kind.to_owned(), str::to_owned);
    Some((kind, message))
}

/// A 400 whose message says the prompt does not fit is a context-window error.
fn refine(class: ErrorClass, kind: &str, message: &str) -> ErrorClass {
    let message = message.to_ascii_lowercase();
    let too_long = message.contains("prompt is too long")
        || message.contains("exceed context limit")
        || message.contains("context window")
        || message.contains("context length");
    if class == ErrorClass::BadRequest && kind == "invalid_request_error" && too_long {
        ErrorClass::ContextWindowExceeded
    } else {
        class
    }
}
