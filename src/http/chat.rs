//! `POST /v1/chat/completions` (and `/chat/completions`): the body goes to `<prefix>.completion`
//! unchanged; a single reply becomes the HTTP response (status from `Llm-Status`, the body
//! unchanged, the routing headers as `x-llmbus-*` and LiteLLM's `x-litellm-*`), a stream
//! (`"stream": true`) becomes server-sent events ([`super::sse`]).
//!
//! `llmbus front` reads only the body's `stream` flag; everything else, malformed JSON included,
//! is the worker's to judge (its 400 comes back as the HTTP 400). Inside a worker the front
//! parses the body once and, for a group the worker serves, hands it parsed to the job path in
//! process ([`crate::runtime::local`]); a body it cannot parse goes as it is, and the job path
//! answers its 400 (after the key check, as over NATS).

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{State, rejection::BytesRejection},
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use tokio::time::{Instant, timeout_at};

use super::{
    AppState,
    backend::{Job, JobKind},
    error::{HttpError, body_rejected, json, status},
    headers::{from_reply, to_job},
    sse,
};
use crate::{client::Reply, runtime::job::Preparsed, wire::ApiError};

/// The chat completions route.
pub async fn completions(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = std::time::Instant::now();
    let body = match body {
        Ok(b) => b,
        Err(r) => return body_rejected(r, app.max_body).into_response(),
    };
    // Inside a worker the body is read once, here: the job path takes it parsed.
    let (stream, parsed) = if app.backend.runs_locally() {
        match JobKind::Completion.row().preparse(&body) {
            Ok(p) => (p.stream(), Some(p)),
            Err(_) => (wants_stream(&body), None),
        }
    } else {
        (wants_stream(&body), None)
    };
    let (job, deadline) = match submit(&app, JobKind::Completion, &headers, body, parsed).await {
        Ok(j) => j,
        Err(e) => return HttpError(e).into_response(),
    };
    if stream {
        sse::respond(job, deadline, app.settings.keepalive, started).await
    } else {
        answer_one(job, deadline, started).await
    }
}

/// Starts the job for an HTTP request (`parsed`: its body, when the front read it); returns it
/// with the time the front waits for it until (the request's deadline, else the default, plus
/// the margin).
pub async fn submit(
    app: &AppState,
    kind: JobKind,
    headers: &HeaderMap,
    body: Bytes,
    parsed: Option<Preparsed>,
) -> Result<(Job, Instant), ApiError> {
    let job_headers = to_job(headers)?;
    let deadline = Instant::now()
        + job_headers.timeout.unwrap_or(app.settings.default_timeout)
        + app.settings.margin;
    let job = app
        .backend
        .submit(kind, job_headers.nats, body, parsed)
        .await?;
    Ok((job, deadline))
}

/// True when the body asks for a stream (`"stream": true`). A body that is not JSON is not a
/// stream: the worker answers it with one 400 reply.
pub fn wants_stream(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(default)]
        stream: Option<serde_json::Value>,
    }
    matches!(
        serde_json::from_slice::<Peek>(body),
        Ok(Peek {
            stream: Some(serde_json::Value::Bool(true))
        })
    )
}

/// Waits for a job's one reply (until `deadline`) and answers it.
pub async fn answer_one(mut job: Job, deadline: Instant, started: std::time::Instant) -> Response {
    match timeout_at(deadline, job.next()).await {
        Ok(Some(reply)) => {
            job.finish();
            reply_response(&reply, started.elapsed())
        }
        Ok(None) => HttpError(
            ApiError::unavailable("the HTTP front lost its NATS connection before the answer came")
                .with_code("nats_unavailable"),
        )
        .into_response(),
        // Dropping the job cancels it.
        Err(_) => HttpError(sse::timed_out(deadline, started)).into_response(),
    }
}

/// A reply as an HTTP response: its status, its body unchanged, its headers mapped.
pub fn reply_response(reply: &Reply, elapsed: Duration) -> Response {
    let mut response = if reply.body.is_empty() {
        // Only a sentinel: a stream that ended without a message (not a worker's habit).
        let e = ApiError::new(
            reply.status.max(400),
            "api_error",
            format!("the job ended with status {} and no body", reply.status),
        );
        HttpError(e).into_response()
    } else {
        json(status(reply.status), reply.body.clone())
    };
    response.headers_mut().extend(from_reply(reply, elapsed));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_true_stream_flag_streams() {
        assert!(wants_stream(
            br#"{"model":"m","stream":true,"messages":[]}"#
        ));
        assert!(!wants_stream(br#"{"model":"m","stream":false}"#));
        assert!(!wants_stream(br#"{"model":"m"}"#));
        assert!(!wants_stream(br#"{"model":"m","stream":"yes"}"#));
        assert!(!wants_stream(b"{not json"));
        assert!(!wants_stream(b""));
    }
}
