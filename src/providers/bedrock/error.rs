//! Bedrock errors → [`ProviderError`]. The error's name comes from the `x-amzn-ErrorType`
//! header (`ValidationException:http://…`), else the body's `__type`; the message from the
//! body's `message` (or `Message`). Exception events inside a ConverseStream carry the same
//! names in camelCase (`throttlingException`) with the same JSON payload.

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::providers::{ErrorClass, ProviderError, http};

/// The class of a Bedrock exception name (any case, with or without a `:…`/`#…` suffix or
/// namespace prefix), or `None` for a name llmbus does not know.
pub fn class_of(name: &str) -> Option<ErrorClass> {
    let name = name.split(':').next().unwrap_or(name);
    let name = name.rsplit('#').next().unwrap_or(name);
    let lower = name.to_ascii_lowercase();
    let class = match lower.trim_end_matches("exception") {
        "validation" | "serialization" => ErrorClass::BadRequest,
        "accessdenied" => ErrorClass::PermissionDenied,
        "unrecognizedclient"
        | "invalidsignature"
        | "expiredtoken"
        | "incompletesignature"
        | "missingauthenticationtoken"
        | "invalidclienttokenid" => ErrorClass::Authentication,
        "resourcenotfound" => ErrorClass::NotFound,
        "throttling" | "toomanyrequests" | "servicequotaexceeded" | "modelnotready" => {
            ErrorClass::RateLimit
        }
        "modeltimeout" => ErrorClass::Timeout,
        "serviceunavailable" | "internalserver" | "internalfailure" | "modelerror"
        | "modelstreamerror" => ErrorClass::InternalServer,
        _ => return None,
    };
    Some(class)
}

/// Validation messages that mean the prompt does not fit the model.
fn is_context_window(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "input is too long",
        "too many input tokens",
        "too many tokens",
        "prompt is too long",
        "context window",
        "context length",
        "maximum context length",
        "expected maxlength",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

fn message_of(body: &Value) -> Option<String> {
    ["message", "Message"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
}

fn refine(class: ErrorClass, message: &str) -> ErrorClass {
    if class == ErrorClass::BadRequest && is_context_window(message) {
        ErrorClass::ContextWindowExceeded
    } else {
        class
    }
}

/// The error of a non-2xx Bedrock answer.
pub fn from_response(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let name = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            parsed
                .as_ref()
                .and_then(|b| b.get("__type"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    let Some(message) = parsed.as_ref().and_then(message_of) else {
        // Not Bedrock's error shape (a proxy, a load balancer): the generic reading.
        return http::error_from_response(status, headers, body);
    };
    let class = name
        .as_deref()
        .and_then(class_of)
        .unwrap_or_else(|| ErrorClass::from_status(status));
    let message = match &name {
        Some(name) => format!("{}: {message}", name.split(':').next().unwrap_or(name)),
        None => message,
    };
    ProviderError::new(refine(class, &message), message)
        .with_status(status)
        .with_retry_after(http::retry_after(headers))
}

/// The error of an exception frame in a ConverseStream (`:exception-type` and its payload).
pub fn from_exception(name: &str, payload: &[u8]) -> ProviderError {
    let message = serde_json::from_slice::<Value>(payload)
        .ok()
        .as_ref()
        .and_then(message_of)
        .unwrap_or_else(|| http::excerpt(payload));
    let class = class_of(name).unwrap_or(ErrorClass::InternalServer);
    let message = format!("{name}: {message}");
    ProviderError::new(refine(class, &message), message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn typed(name: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-amzn-errortype", HeaderValue::from_str(name).unwrap());
        h
    }

    #[test]
    fn names_map_to_classes() {
        let cases = [
            ("ValidationException", ErrorClass::BadRequest),
            ("AccessDeniedException", ErrorClass::PermissionDenied),
            ("UnrecognizedClientException", ErrorClass::Authentication),
            ("ExpiredTokenException", ErrorClass::Authentication),
            ("ResourceNotFoundException", ErrorClass::NotFound),
            ("ThrottlingException", ErrorClass::RateLimit),
            ("ServiceUnavailableException", ErrorClass::InternalServer),
            ("ModelTimeoutException", ErrorClass::Timeout),
            ("InternalServerException", ErrorClass::InternalServer),
            ("modelStreamErrorException", ErrorClass::InternalServer),
            ("throttlingException", ErrorClass::RateLimit),
        ];
        for (name, class) in cases {
            assert_eq!(class_of(name), Some(class), "{name}");
        }
        assert_eq!(class_of("NoSuchThing"), None);
    }

    #[test]
    fn header_names_win_and_long_inputs_are_context_window_errors() {
        let body = br#"{"message":"Input is too long for requested model."}"#;
        let err = from_response(
            400,
            &typed("ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            body,
        );
        assert_eq!(err.class, ErrorClass::ContextWindowExceeded);
        assert_eq!(
            err.message,
            "ValidationException: Input is too long for requested model."
        );
        assert_eq!(err.status, Some(400));

        let err = from_response(
            403,
            &HeaderMap::new(),
            br#"{"__type":"com.amazon.coral.service#UnrecognizedClientException","Message":"The security token included in the request is invalid."}"#,
        );
        assert_eq!(err.class, ErrorClass::Authentication);
    }

    #[test]
    fn foreign_bodies_fall_back_to_the_status() {
        let err = from_response(502, &HeaderMap::new(), b"<html>bad gateway</html>");
        assert_eq!(err.class, ErrorClass::InternalServer);
    }
}
