//! What every HTTP adapter shares: turning an upstream's error status and body, a transport
//! failure from `reqwest`, or an error event inside a stream into a classified
//! [`ProviderError`], and reading `Retry-After`.
//!
//! Nothing here knows a provider: the OpenAI-compatible adapter uses it today, and the
//! Anthropic and Gemini adapters are meant to reuse it as it is.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::{ErrorClass, ProviderError};

/// The longest upstream text kept in a message when the body is not an error body we know.
const EXCERPT_CHARS: usize = 200;

/// The error for an upstream answer with a non-2xx `status`: the class from the status
/// (refined by the body for context-window and content-policy errors), the message from the
/// OpenAI-style error body (else a short excerpt of the body), and `retry_after` from the
/// headers.
pub fn error_from_response(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let detail = parsed
        .as_ref()
        .map(ErrorDetail::from_body)
        .unwrap_or_default();
    let message = detail
        .message
        .clone()
        .unwrap_or_else(|| fallback_message(status, body));
    let mut class = ErrorClass::from_status(status);
    if class == ErrorClass::BadRequest {
        class = detail.refine(class);
    }
    ProviderError::new(class, message)
        .with_status(status)
        .with_retry_after(retry_after(headers))
}

/// The error for an `{"error": {...}}` object an upstream sent where a success belonged (an
/// SSE event in the middle of a stream, or a 2xx body). The class comes from the error's
/// numeric `code`/`status` when it has one, else from its `type`/`code` strings.
pub fn error_from_event(body: &Value) -> ProviderError {
    let detail = ErrorDetail::from_body(body);
    let status = detail.status;
    let class = match status {
        Some(status) => ErrorClass::from_status(status),
        None => detail.class_from_type(),
    };
    let class = if class == ErrorClass::BadRequest {
        detail.refine(class)
    } else {
        class
    };
    let message = detail
        .message
        .unwrap_or_else(|| "the upstream sent an error event without a message".into());
    let err = ProviderError::new(class, message);
    match status {
        Some(status) => err.with_status(status),
        None => err,
    }
}

/// True when a JSON document is an error object (`{"error": ...}`) rather than a result.
pub fn is_error_body(body: &Value) -> bool {
    body.get("error").is_some_and(|e| !e.is_null())
}

/// The error for a failed `reqwest` call: a timeout is `Timeout`, everything else (refused,
/// reset, broken body, TLS) is `Connection`. The message never holds the URL.
pub fn error_from_reqwest(err: reqwest::Error) -> ProviderError {
    let class = if err.is_timeout() {
        ErrorClass::Timeout
    } else {
        ErrorClass::Connection
    };
    let status = err.status().map(|s| s.as_u16());
    let err = err.without_url();
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    let err = ProviderError::new(class, strip_urls(&message));
    match status {
        Some(status) => err.with_status(status),
        None => err,
    }
}

/// The longest wait an upstream's `Retry-After` (or Gemini's `retryDelay`) is taken at: a longer
/// one is cut to this. Unbounded, `Retry-After: 1e20` made `Duration::from_secs_f64` panic and
/// `1e19` overflowed the `Instant` a cooldown ends at (found writing the `responses` fuzz
/// target's invariants; with its dictionary the fuzzer finds both within two minutes).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// `secs` seconds as an upstream's requested wait: `None` unless a number of 0 or more, and at
/// most [`MAX_RETRY_AFTER`].
pub fn wait_of_secs(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0)
        .then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())))
}

/// How long the upstream asked us to wait: `retry-after-ms` (milliseconds, OpenAI and Azure)
/// first, then `Retry-After` as seconds or as an HTTP date; at most [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(wait) = text("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| wait_of_secs(ms / 1000.0))
    {
        return Some(wait);
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return wait_of_secs(secs);
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// A short, single-line excerpt of an upstream body, for errors that have no error body.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
        if out.chars().count() > EXCERPT_CHARS {
            let cut: String = out.chars().take(EXCERPT_CHARS).collect();
            return format!("{cut}…");
        }
    }
    out
}

fn fallback_message(status: u16, body: &[u8]) -> String {
    let text = excerpt(body);
    if text.is_empty() {
        format!("the upstream answered HTTP {status} with an empty body")
    } else {
        format!("the upstream answered HTTP {status}: {text}")
    }
}

/// Replaces every `http://…` or `https://…` run with `<url>`: transport errors must not carry
/// a URL (one may hold a key in its query).
fn strip_urls(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = ["http://", "https://"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        out.push_str(&rest[..at]);
        out.push_str("<url>");
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c.is_whitespace() || c == ')' || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The parts of an error body that classification needs. It reads OpenAI's
/// `{"error":{"message","type","param","code"}}` and the common variants of
/// OpenAI-compatible servers: `{"error":"text"}`, `{"message":...}`, `{"detail":...}`.
#[derive(Debug, Default)]
struct ErrorDetail {
    message: Option<String>,
    kind: Option<String>,
    code: Option<String>,
    status: Option<u16>,
}

impl ErrorDetail {
    fn from_body(body: &Value) -> Self {
        let inner = body.get("error").unwrap_or(body);
        let string = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let message = match inner {
            Value::String(text) => Some(text.clone()),
            _ => string(inner.get("message"))
                .or_else(|| string(body.get("message")))
                .or_else(|| string(body.get("detail"))),
        };
        let code_value = inner.get("code");
        let numeric = |v: Option<&Value>| {
            v.and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse::<u64>().ok()))
            })
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| (400..600).contains(n))
        };
        Self {
            message,
            kind: string(inner.get("type")),
            code: string(code_value),
            status: numeric(code_value).or_else(|| numeric(inner.get("status"))),
        }
    }

    /// Context-window and content-policy errors arrive as 400s; the code, type or message
    /// tells them apart.
    fn refine(&self, class: ErrorClass) -> ErrorClass {
        let is = |field: &Option<String>, names: &[&str]| {
            field.as_deref().is_some_and(|v| names.contains(&v))
        };
        let message = self.message.as_deref().unwrap_or("").to_ascii_lowercase();
        if is(
            &self.code,
            &["context_length_exceeded", "string_above_max_length"],
        ) || message.contains("maximum context length")
            || message.contains("context length exceeded")
            || message.contains("context_length_exceeded")
        {
            return ErrorClass::ContextWindowExceeded;
        }
        let policy = ["content_filter", "content_policy_violation"];
        if is(&self.code, &policy) || is(&self.kind, &policy) {
            return ErrorClass::ContentPolicyViolation;
        }
        class
    }

    /// The class of an error event with no numeric status, from OpenAI's error types.
    fn class_from_type(&self) -> ErrorClass {
        let names = [self.kind.as_deref(), self.code.as_deref()];
        let any = |wanted: &[&str]| names.iter().flatten().any(|n| wanted.contains(n));
        if any(&[
            "rate_limit_error",
            "rate_limit_exceeded",
            "requests",
            "tokens",
        ]) {
            ErrorClass::RateLimit
        } else if any(&["invalid_request_error", "context_length_exceeded"]) {
            ErrorClass::BadRequest
        } else if any(&["authentication_error", "invalid_api_key"]) {
            ErrorClass::Authentication
        } else if any(&["permission_error"]) {
            ErrorClass::PermissionDenied
        } else {
            ErrorClass::InternalServer
        }
    }
}

/// `response` when its status is 2xx; otherwise the error `to_error` makes of its status,
/// headers and body (each wire format has its own error body).
pub async fn successful(
    response: reqwest::Response,
    to_error: impl FnOnce(u16, &HeaderMap, &[u8]) -> ProviderError,
) -> Result<reqwest::Response, ProviderError> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap_or_default();
    Err(to_error(status, &headers, &body))
}

/// Runs one upstream call within the call's time budget (`ctx.timeout`): past it, a `Timeout`
/// error that says what did not arrive (`what`: "answer", "response headers", ...). Every
/// error that comes out has `key` scrubbed from its message.
pub async fn within<T>(
    ctx: &super::CallContext,
    what: &str,
    key: Option<&str>,
    call: impl std::future::Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    tokio::time::timeout(ctx.timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(ProviderError::new(
                ErrorClass::Timeout,
                format!("no {what} from the upstream within {:?}", ctx.timeout),
            ))
        })
        .map_err(|e| e.redact(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn statuses_map_to_classes() {
        let cases = [
            (400, ErrorClass::BadRequest),
            (401, ErrorClass::Authentication),
            (403, ErrorClass::PermissionDenied),
            (404, ErrorClass::NotFound),
            (408, ErrorClass::Timeout),
            (413, ErrorClass::BadRequest),
            (422, ErrorClass::BadRequest),
            (429, ErrorClass::RateLimit),
            (500, ErrorClass::InternalServer),
            (503, ErrorClass::InternalServer),
            (529, ErrorClass::InternalServer),
        ];
        for (status, class) in cases {
            let err = error_from_response(status, &HeaderMap::new(), b"");
            assert_eq!(err.class, class, "status {status}");
            assert_eq!(err.status, Some(status));
        }
    }

    #[test]
    fn openai_body_gives_message_and_refines_class() {
        let body = br#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let err = error_from_response(400, &HeaderMap::new(), body);
        assert_eq!(err.class, ErrorClass::ContextWindowExceeded);
        assert!(
            err.message
                .starts_with("This model's maximum context length")
        );

        let body = br#"{"error":{"message":"rejected","type":"invalid_request_error","code":"content_policy_violation"}}"#;
        let err = error_from_response(400, &HeaderMap::new(), body);
        assert_eq!(err.class, ErrorClass::ContentPolicyViolation);
    }

    #[test]
    fn non_json_body_gives_a_short_excerpt() {
        let body = format!("<html>\n  bad   gateway {}</html>", "x".repeat(1000));
        let err = error_from_response(502, &HeaderMap::new(), body.as_bytes());
        assert!(err.message.contains("<html> bad gateway"));
        assert!(err.message.chars().count() < 300);
    }

    #[test]
    fn retry_after_reads_ms_seconds_and_dates() {
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "1500")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        let later = SystemTime::now() + Duration::from_secs(120);
        let date = httpdate::fmt_http_date(later);
        let got = retry_after(&headers(&[("retry-after", &date)])).unwrap();
        assert!(got > Duration::from_secs(100) && got <= Duration::from_secs(120));
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn error_events_are_classified() {
        let event: Value = serde_json::from_str(
            r#"{"error":{"message":"overloaded","type":"server_error","code":null}}"#,
        )
        .unwrap();
        assert!(is_error_body(&event));
        let err = error_from_event(&event);
        assert_eq!(err.class, ErrorClass::InternalServer);
        assert_eq!(err.message, "overloaded");

        let event: Value =
            serde_json::from_str(r#"{"error":{"message":"slow down","code":429}}"#).unwrap();
        let err = error_from_event(&event);
        assert_eq!(err.class, ErrorClass::RateLimit);
        assert_eq!(err.status, Some(429));
    }

    #[test]
    fn urls_are_stripped() {
        assert_eq!(
            strip_urls("error sending request for url (http://127.0.0.1:1/v1?key=sk-1)"),
            "error sending request for url (<url>)"
        );
    }
}
