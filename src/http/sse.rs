//! A streaming job as server-sent events, exactly as OpenAI sends them: one `data: {chunk}\n\n`
//! event per NATS chunk (the body unchanged), `data: [DONE]\n\n` at the sentinel. An error after
//! the stream started is one `data: {"error":{...}}\n\n` event, then the stream ends (the OpenAI
//! SDKs raise it as an `APIError`).
//!
//! Until the first chunk, a `: keep-alive\n\n` comment goes out every keep-alive interval (15 s
//! by default), so proxies with idle timeouts do not cut slow reasoning models. An error that
//! comes before the first interval has passed is answered as a plain HTTP error with its status,
//! as OpenAI does; after that the 200 is sent and the error becomes an event.
//!
//! The stream's first chunk carries the deployment's `x-ratelimit-*` headers: when it comes
//! before the first keep-alive they go out with the status line.
//!
//! Dropping the body (the client went away) drops the [`Job`], which cancels it.

use std::{convert::Infallible, time::Duration};

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::{Instant, timeout_at};

use super::{backend::Job, chat::reply_response, error::HttpError};
use crate::{client::Reply, wire::ApiError};

/// The SSE comment sent while waiting for the first token.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";
/// The event that ends a stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// Answers a streaming job: an HTTP error when the job fails before the first keep-alive
/// interval has passed, else a `text/event-stream` body.
pub async fn respond(
    job: Job,
    deadline: Instant,
    keepalive: Duration,
    started: std::time::Instant,
) -> Response {
    let first_wake = (Instant::now() + keepalive).min(deadline);
    let mut stream = Events {
        job,
        deadline,
        keepalive,
        first: None,
        keepalive_now: false,
        streaming: false,
        done: false,
    };
    let mut limits = Vec::new();
    match timeout_at(first_wake, stream.job.next()).await {
        Ok(Some(reply)) if reply.status != 200 => {
            stream.job.finish();
            return reply_response(&reply, started.elapsed());
        }
        Ok(Some(reply)) => {
            limits = super::headers::rate_limits(&reply);
            stream.first = Some(reply);
        }
        Ok(None) => return HttpError(closed()).into_response(),
        Err(_) if Instant::now() >= deadline => {
            return HttpError(timed_out(deadline, started)).into_response();
        }
        Err(_) => stream.keepalive_now = true,
    }
    let body = futures::stream::unfold(stream, |mut s| async move {
        let bytes = s.step().await?;
        Some((Ok::<_, Infallible>(bytes), s))
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.extend(limits);
    response
}

/// The state of one SSE body.
struct Events {
    job: Job,
    deadline: Instant,
    keepalive: Duration,
    /// A message read before the response started.
    first: Option<Reply>,
    /// A keep-alive is due at once (the first interval passed before the response started).
    keepalive_now: bool,
    /// The first chunk went out: no more keep-alives.
    streaming: bool,
    done: bool,
}

impl Events {
    /// The next bytes of the body; `None` at its end.
    async fn step(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(self.event(first));
        }
        if std::mem::take(&mut self.keepalive_now) {
            return Some(Bytes::from_static(KEEP_ALIVE));
        }
        let wake = if self.streaming {
            self.deadline
        } else {
            (Instant::now() + self.keepalive).min(self.deadline)
        };
        match timeout_at(wake, self.job.next()).await {
            Ok(Some(reply)) => Some(self.event(reply)),
            Ok(None) => {
                self.done = true;
                Some(error_event(&closed()))
            }
            Err(_) if !self.streaming && Instant::now() < self.deadline => {
                Some(Bytes::from_static(KEEP_ALIVE))
            }
            Err(_) => {
                self.done = true;
                let e = ApiError::deadline(
                    "the stream did not end before the job's deadline; the HTTP front gave up",
                )
                .with_code("front_timeout");
                Some(error_event(&e))
            }
        }
    }

    /// One NATS message as SSE bytes.
    fn event(&mut self, reply: Reply) -> Bytes {
        self.streaming = true;
        if reply.body.is_empty() {
            // The sentinel.
            self.job.finish();
            self.done = true;
            if reply.status == 200 {
                return Bytes::from_static(DONE);
            }
            let e = ApiError::new(
                reply.status,
                "api_error",
                format!("the stream ended with status {}", reply.status),
            );
            return error_event(&e);
        }
        if reply.status != 200 {
            // An error body ends the stream; the worker's sentinel after it is not awaited.
            self.job.finish();
            self.done = true;
        }
        data(&reply.body)
    }
}

/// `data: <json>\n\n`. JSON holds a raw line break only as white space, so one is replaced by
/// a space to keep the event on one line.
fn data(json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + 8);
    out.put_slice(b"data: ");
    if json.iter().any(|b| *b == b'\n' || *b == b'\r') {
        out.extend(
            json.iter()
                .map(|b| if *b == b'\n' || *b == b'\r' { b' ' } else { *b }),
        );
    } else {
        out.put_slice(json);
    }
    out.put_slice(b"\n\n");
    out.freeze()
}

/// An error as one SSE event.
fn error_event(e: &ApiError) -> Bytes {
    data(&e.to_json())
}

fn closed() -> ApiError {
    ApiError::unavailable("the HTTP front lost its NATS connection before the answer came")
        .with_code("nats_unavailable")
}

/// 504 from the front itself: the job's deadline (plus the margin) passed without an answer.
pub fn timed_out(deadline: Instant, started: std::time::Instant) -> ApiError {
    let waited = deadline
        .into_std()
        .saturating_duration_since(started)
        .as_millis();
    ApiError::deadline(format!(
        "no answer from the llmbus workers within {waited} ms; the HTTP front gave up"
    ))
    .with_code("front_timeout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_line_each() {
        assert_eq!(&data(br#"{"a":1}"#)[..], b"data: {\"a\":1}\n\n");
        assert_eq!(&data(b"{\"a\":\n1}")[..], b"data: {\"a\": 1}\n\n");
        let e = error_event(&ApiError::bad_gateway("boom"));
        let text = std::str::from_utf8(&e).unwrap();
        assert!(text.starts_with("data: {\"error\":{"), "{text}");
        assert!(text.ends_with("}\n\n"));
    }
}
