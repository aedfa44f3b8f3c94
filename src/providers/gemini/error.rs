//! Google's error bodies → classified [`ProviderError`]s.
//!
//! Google answers `{"error": {"code": 429, "message": "…", "status": "RESOURCE_EXHAUSTED",
//! "details": [...]}}` (Vertex AI streams sometimes wrap it in a one-element array). The class
//! comes from the canonical `status` when there is one, else from the HTTP status:
//!
//! | `status` | class |
//! | --- | --- |
//! | `INVALID_ARGUMENT`, `FAILED_PRECONDITION`, `OUT_OF_RANGE` | `BadRequest`; `ContextWindowExceeded` when the message is about the token limit; `Authentication` for an invalid API key (AI Studio answers those with 400) |
//! | `UNAUTHENTICATED` | `Authentication` |
//! | `PERMISSION_DENIED` | `PermissionDenied` |
//! | `NOT_FOUND` | `NotFound` |
//! | `RESOURCE_EXHAUSTED` | `RateLimit`, waiting `Retry-After` or the `RetryInfo.retryDelay` detail |
//! | `DEADLINE_EXCEEDED` | `Timeout` |
//! | `INTERNAL`, `UNAVAILABLE`, `UNKNOWN`, `ABORTED`, `DATA_LOSS` | `InternalServer` |

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::providers::{ErrorClass, ProviderError, http};

/// The error of a non-2xx answer.
pub fn from_response(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed.as_ref().and_then(google_error) {
        Some(error) => classify(error, Some(status))
            .with_retry_after(http::retry_after(headers).or_else(|| retry_delay(error))),
        None => http::error_from_response(status, headers, body),
    }
}

/// The error inside a document that should have been a result (a stream event), when it is
/// one.
pub fn from_document(document: &Value) -> Option<ProviderError> {
    let error = google_error(document)?;
    let status = error
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok());
    Some(classify(error, status).with_retry_after(retry_delay(error)))
}

/// The `error` object of a Google error body (or of the first element of an array of them).
fn google_error(body: &Value) -> Option<&Value> {
    let body = match body {
        Value::Array(items) => items.first()?,
        other => other,
    };
    body.get("error").filter(|e| e.is_object())
}

fn classify(error: &Value, http_status: Option<u16>) -> ProviderError {
    let text = |k: &str| error.get(k).and_then(Value::as_str);
    let message = text("message")
        .filter(|m| !m.trim().is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| "the upstream answered an error without a message".into());
    let code = error
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok());
    let status = http_status.or(code);
    let class = match text("status") {
        Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE") => ErrorClass::BadRequest,
        Some("UNAUTHENTICATED") => ErrorClass::Authentication,
        Some("PERMISSION_DENIED") => ErrorClass::PermissionDenied,
        Some("NOT_FOUND") => ErrorClass::NotFound,
        Some("RESOURCE_EXHAUSTED") => ErrorClass::RateLimit,
        Some("DEADLINE_EXCEEDED") => ErrorClass::Timeout,
        Some("INTERNAL" | "UNAVAILABLE" | "UNKNOWN" | "ABORTED" | "DATA_LOSS") => {
            ErrorClass::InternalServer
        }
        _ => status.map_or(ErrorClass::InternalServer, ErrorClass::from_status),
    };
    let class = if class == ErrorClass::BadRequest {
        refine(error, &message)
    } else {
        class
    };
    let err = ProviderError::new(class, message);
    match status {
        Some(status) => err.with_status(status),
        None => err,
    }
}

/// A 400 that is really an invalid key or a prompt over the context window.
fn refine(error: &Value, message: &str) -> ErrorClass {
    let lower = message.to_ascii_lowercase();
    let reason_is = |wanted: &str| {
        error
            .get("details")
            .and_then(Value::as_array)
            .is_some_and(|d| {
                d.iter()
                    .any(|x| x.get("reason").and_then(Value::as_str) == Some(wanted))
            })
    };
    if reason_is("API_KEY_INVALID")
        || lower.contains("api key not valid")
        || lower.contains("api key expired")
    {
        return ErrorClass::Authentication;
    }
    let token_limit = lower.contains("exceeds the maximum number of tokens")
        || (lower.contains("token count") && lower.contains("exceed"))
        || lower.contains("maximum context length")
        || lower.contains("context window")
        || lower.contains("too many tokens");
    if token_limit {
        ErrorClass::ContextWindowExceeded
    } else {
        ErrorClass::BadRequest
    }
}

/// The `retryDelay` of a `google.rpc.RetryInfo` detail (`"37s"`, `"1.5s"`).
fn retry_delay(error: &Value) -> Option<Duration> {
    error
        .get("details")?
        .as_array()?
        .iter()
        .filter(|d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })
        .find_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .and_then(|s| s.trim().strip_suffix('s'))
        .and_then(|s| s.parse::<f64>().ok())
        .and_then(http::wait_of_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_and_unknown_bodies() {
        let body = br#"[{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}]"#;
        let err = from_response(503, &HeaderMap::new(), body);
        assert_eq!(err.class, ErrorClass::InternalServer);
        assert_eq!(err.message, "overloaded");
        let err = from_response(502, &HeaderMap::new(), b"<html>bad gateway</html>");
        assert_eq!(err.class, ErrorClass::InternalServer);
        assert!(err.message.contains("bad gateway"));
    }

    #[test]
    fn retry_delays_parse() {
        let error = serde_json::json!({"details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}
        ]});
        assert_eq!(retry_delay(&error), Some(Duration::from_millis(1500)));
        assert_eq!(retry_delay(&serde_json::json!({})), None);
    }
}
