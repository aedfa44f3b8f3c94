//! Errors as HTTP responses: every failure of the HTTP front is the OpenAI error body
//! `{"error":{"message","type","param","code"}}` with the matching HTTP status, the same body a
//! NATS client gets with `Llm-Status`.

use axum::{
    extract::rejection::BytesRejection,
    http::{Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};

use crate::wire::ApiError;

/// An [`ApiError`] as an HTTP response.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        json(status(self.0.status), self.0.to_json())
    }
}

/// A JSON response with `status` and `body`.
pub fn json(status: StatusCode, body: bytes::Bytes) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from(body),
    )
        .into_response()
}

/// The HTTP status for a contract status; 502 for one that is not a valid HTTP status.
pub fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code)
        .ok()
        .filter(|s| !s.is_informational())
        .unwrap_or(StatusCode::BAD_GATEWAY)
}

/// A request body axum could not read: 413 over the limit, 408 (and the connection closed)
/// past `llmbus.http_body_timeout_secs`, else 400.
pub fn body_rejected(rejection: BytesRejection, limit: usize) -> Response {
    let code = rejection.status();
    if code == StatusCode::PAYLOAD_TOO_LARGE {
        return HttpError(ApiError::too_large(format!(
            "the request body is larger than {limit} bytes (the NATS server's max_payload)"
        )))
        .into_response();
    }
    if super::conn::is_body_timeout(&rejection) {
        let e = ApiError::new(408, "invalid_request_error", source_text(&rejection))
            .with_code("body_timeout");
        let mut response = HttpError(e).into_response();
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return response;
    }
    HttpError(ApiError::bad_request(format!(
        "the request body could not be read: {rejection}"
    )))
    .into_response()
}

/// The innermost error's text.
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// 404 for a route the front does not serve, in OpenAI's words.
pub async fn unknown_route(method: Method, uri: Uri) -> HttpError {
    HttpError(
        ApiError::new(
            404,
            "invalid_request_error",
            format!("Invalid URL ({method} {})", short(uri.path())),
        )
        .with_code("not_found"),
    )
}

/// 405 for a known route with another method.
pub async fn wrong_method(method: Method, uri: Uri) -> HttpError {
    HttpError(
        ApiError::new(
            405,
            "invalid_request_error",
            format!("{method} is not allowed on {}", short(uri.path())),
        )
        .with_code("method_not_allowed"),
    )
}

/// At most 200 characters of what a caller sent, marked when cut.
fn short(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}… (cut)", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_statuses_become_http_statuses() {
        assert_eq!(status(429), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(status(200), StatusCode::OK);
        assert_eq!(status(99), StatusCode::BAD_GATEWAY);
        assert_eq!(status(100), StatusCode::BAD_GATEWAY);
        assert_eq!(status(1000), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn long_paths_are_cut() {
        let long = "/x".repeat(500);
        let s = short(&long);
        assert!(s.ends_with("(cut)") && s.len() < 220, "{s}");
        assert_eq!(short("/v1/nope"), "/v1/nope");
    }
}
