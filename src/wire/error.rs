//! The OpenAI error body and the one error type every failure of a job becomes.
//!
//! Whatever goes wrong — malformed JSON, an unknown model, no capacity, an upstream failure,
//! a deadline — the requester gets `{"error":{"message","type","param","code"}}` with the
//! HTTP-style status in the `Llm-Status` header.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The body of every error reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an error body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// A sentence for a person.
    pub message: String,
    /// The error class: `invalid_request_error`, `authentication_error`, `rate_limit_error`,
    /// `timeout_error`, `api_error`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `429`, ...), always a string.
    pub code: Option<String>,
}

/// A failed job: the status that goes in `Llm-Status` and the OpenAI error body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{status} {kind}: {message}")]
pub struct ApiError {
    /// HTTP-style status.
    pub status: u16,
    /// The OpenAI error type.
    pub kind: &'static str,
    /// A sentence for a person. Never holds a secret.
    pub message: String,
    /// The request field at fault.
    pub param: Option<String>,
    /// A machine-readable code; the status as a string when there is no better one.
    pub code: Option<String>,
}

impl ApiError {
    /// An error with `status`, `kind` and `message`; `code` is the status as a string.
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            param: None,
            code: Some(status.to_string()),
        }
    }

    /// Sets the field at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Sets the code.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// 400: the request is malformed or has a wrong field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message)
    }

    /// 401: the credentials were refused.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "authentication_error", message)
    }

    /// 404: no model group of that name (echoing at most a short prefix of it).
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            format!(
                "The model `{}` does not exist on this gateway; ask `llm.models` for the list.",
                echo(model)
            ),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    /// 413: the request or its reply does not fit in a NATS message.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "invalid_request_error", message).with_code("payload_too_large")
    }

    /// 429: no capacity (rate limit) before the deadline.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(429, "rate_limit_error", message)
    }

    /// 500: a bug in llmbus; the job was answered anyway.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "api_error", message)
    }

    /// 502: the upstream failed.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(502, "api_error", message)
    }

    /// 503: the worker is at its limit of jobs in flight, or nothing can serve the model.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "service_unavailable_error", message)
    }

    /// 504: the job's deadline passed.
    pub fn deadline(message: impl Into<String>) -> Self {
        Self::new(504, "timeout_error", message)
    }

    /// The OpenAI error body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind.to_string(),
                param: self.param.clone(),
                code: self.code.clone(),
            },
        }
    }

    /// The OpenAI error body as JSON bytes.
    pub fn to_json(&self) -> bytes::Bytes {
        serde_json::to_vec(&self.body())
            .expect("an error body always serializes")
            .into()
    }
}

/// The most of a caller's input an error message repeats.
pub const ECHO_MAX: usize = 64;

/// A caller's input as an error message may repeat it: whole when short, else its first
/// [`ECHO_MAX`] characters, marked as cut, with the full length (so a huge input never makes
/// a huge error).
pub fn echo(input: &str) -> std::borrow::Cow<'_, str> {
    match input.char_indices().nth(ECHO_MAX) {
        None => input.into(),
        Some((end, _)) => format!("{}… ({} bytes)", &input[..end], input.len()).into(),
    }
}

/// A message built from a parser's error (which quotes the input in backticks or quotes):
/// every quoted run longer than [`ECHO_MAX`] is cut with [`echo`], and the whole message is
/// kept under about 512 bytes.
pub fn clip_message(message: String) -> String {
    if message.len() <= 256 {
        return message;
    }
    let mut out = String::with_capacity(512);
    let mut rest = message.as_str();
    while let Some(open) = rest.find(['`', '"']) {
        let quote = rest.as_bytes()[open] as char;
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        let (inner, after) = match rest.find(quote) {
            Some(close) => (&rest[..close], &rest[close..]),
            None => (rest, ""),
        };
        out.push_str(&echo(inner));
        rest = after;
        if let Some(stripped) = rest.strip_prefix(quote) {
            out.push(quote);
            rest = stripped;
        }
    }
    out.push_str(rest);
    if out.len() > 512 {
        let mut end = 512;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_echo_only_a_short_prefix_of_the_input() {
        let name = "m".repeat(1_048_400);
        let e = ApiError::model_not_found(&name);
        assert!(e.message.len() < 300, "{}", e.message.len());
        assert!(e.message.contains("1048400 bytes"), "{}", e.message);
        assert_eq!(echo("gpt-4o"), "gpt-4o");
        let m = clip_message(format!(
            "unknown variant `{}`, expected one of `a`",
            "r".repeat(5000)
        ));
        assert!(m.len() < 300, "{m}");
        assert!(m.ends_with("expected one of `a`"), "{m}");
        let m = clip_message("é".repeat(2000));
        assert!(m.len() <= 520);
    }

    #[test]
    fn error_body_has_the_openai_shape_with_a_string_code() {
        let e = ApiError::model_not_found("nope");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        let e = ApiError::rate_limited("slow down");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["error"]["code"], "429");
        assert!(v["error"]["param"].is_null());
    }
}
