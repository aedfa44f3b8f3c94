//! Where a job came from and where it answers: a NATS request (ingress took it from a subject;
//! it answers on the request's reply subject), or an in-process request (the in-worker HTTP
//! front handed it over, [`crate::runtime::local`]; it answers as [`Answer`] values on a
//! channel the front reads). The job path is the same for both: the same key check, limits,
//! deadline, retries, fallbacks, usage and cost; only the last step, putting a message on its
//! way, differs.
//!
//! An in-process request carries the NATS message it stands for (its headers and body, no reply
//! subject), so everything the job reads is read the same way, and may carry the body the front
//! parsed already, so the JSON is read once. The receiver dropped (the HTTP client went away,
//! or the front gave up waiting) is the job's cancel, as `llm.cancel` is for a NATS job. A
//! client that stops reading fills the channel (`llmbus.http_stream_buffer` messages): the
//! next message is the `stream_buffer_full` notice and the job is cancelled, as the NATS path
//! does it.

use std::{convert::Infallible, future::Future};

use async_nats::{HeaderMap, Message, Subject, service};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::wire::{
    ApiError, headers,
    openai::{ChatCompletionRequest, EmbeddingRequest},
};

/// One message of a job's answer, in process: what a NATS reply carries.
#[derive(Debug)]
pub struct Answer {
    /// `Llm-Status` (200 for a stream chunk).
    pub status: u16,
    /// The reply headers, as a NATS requester gets them.
    pub headers: HeaderMap,
    /// The body: an OpenAI response, chunk or error body; empty for a sentinel.
    pub body: Bytes,
}

/// A body the front parsed already.
pub enum Parsed {
    /// A chat completion request.
    Chat(ChatCompletionRequest),
    /// An embeddings request.
    Embedding(EmbeddingRequest),
}

/// A job's request and the way back.
pub struct Request {
    sink: Sink,
    /// What the front parsed already.
    parsed: Option<Parsed>,
}

enum Sink {
    Nats(service::Request),
    /// The request as a NATS message (headers and payload, no reply subject), and the way back.
    Local(Message, Local),
}

/// The in-process way back.
#[derive(Clone)]
pub(super) struct Local {
    tx: mpsc::Sender<Answer>,
    /// Cancelled when the reader fell too far behind.
    cut: CancellationToken,
}

impl Request {
    /// A request ingress took from NATS.
    pub fn nats(request: service::Request) -> Self {
        Self {
            sink: Sink::Nats(request),
            parsed: None,
        }
    }

    /// An in-process request: `headers` and `payload` as a NATS job would carry them, the body
    /// the front parsed (if it could), and where its answer goes. `buffer` messages wait for a
    /// slow reader.
    pub fn local(
        headers: HeaderMap,
        payload: Bytes,
        parsed: Option<Parsed>,
        buffer: usize,
    ) -> (Self, mpsc::Receiver<Answer>) {
        // One place more than the buffer, kept for the overflow notice.
        let (tx, rx) = mpsc::channel(buffer.max(1) + 1);
        let message = Message {
            subject: Subject::from_static(""),
            reply: None,
            payload,
            headers: Some(headers),
            status: None,
            description: None,
            length: 0,
        };
        let local = Local {
            tx,
            cut: CancellationToken::new(),
        };
        let request = Self {
            sink: Sink::Local(message, local),
            parsed,
        };
        (request, rx)
    }

    /// The request as a NATS message.
    pub fn message(&self) -> &Message {
        match &self.sink {
            Sink::Nats(r) => &r.message,
            Sink::Local(m, _) => m,
        }
    }

    /// True for an in-process request.
    pub fn is_local(&self) -> bool {
        matches!(self.sink, Sink::Local(..))
    }

    /// The chat body the front parsed, once.
    pub(super) fn take_chat(&mut self) -> Option<ChatCompletionRequest> {
        match self.parsed.take() {
            Some(Parsed::Chat(body)) => Some(body),
            _ => None,
        }
    }

    /// The embeddings body the front parsed, once.
    pub(super) fn take_embedding(&mut self) -> Option<EmbeddingRequest> {
        match self.parsed.take() {
            Some(Parsed::Embedding(body)) => Some(body),
            _ => None,
        }
    }

    /// Resolves when an in-process requester is gone (never, for a NATS job: its cancel comes
    /// through `llm.cancel`).
    pub(super) fn gone(&self) -> impl Future<Output = ()> + Send + 'static {
        let local = match &self.sink {
            Sink::Local(_, l) => Some(l.clone()),
            Sink::Nats(_) => None,
        };
        async move {
            match local {
                Some(l) => tokio::select! {
                    _ = l.tx.closed() => {}
                    _ = l.cut.cancelled() => {}
                },
                None => std::future::pending().await,
            }
        }
    }

    /// Sends one message of the answer that is not the last (a stream chunk, an error before
    /// the sentinel).
    pub(super) async fn publish(
        &self,
        client: &async_nats::Client,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), String> {
        match &self.sink {
            Sink::Nats(r) => {
                let Some(reply) = r.message.reply.clone() else {
                    return Err("the job has no reply subject".into());
                };
                client
                    .publish_with_headers(reply, headers, payload)
                    .await
                    .map_err(|e| e.to_string())
            }
            Sink::Local(_, l) => {
                l.push(headers, payload);
                Ok(())
            }
        }
    }

    /// Sends the answer's last message.
    pub(super) async fn respond_with_headers(
        &self,
        response: Result<Bytes, Infallible>,
        headers: HeaderMap,
    ) -> Result<(), String> {
        let Ok(payload) = response;
        match &self.sink {
            Sink::Nats(r) => r
                .respond_with_headers(Ok(payload), headers)
                .await
                .map_err(|e| e.to_string()),
            Sink::Local(_, l) => {
                l.push(headers, payload);
                Ok(())
            }
        }
    }

    /// Where a job that could not run to its answer (a panic) sends its 500.
    pub(super) fn on_failure(&self) -> Failure {
        match &self.sink {
            Sink::Nats(r) => Failure::Nats(r.message.reply.clone()),
            Sink::Local(_, l) => Failure::Local(l.clone()),
        }
    }
}

/// Where a failed job's 500 goes.
pub(super) enum Failure {
    Nats(Option<Subject>),
    Local(Local),
}

impl Failure {
    /// Answers a 500 and a sentinel (so a streaming requester stops reading too).
    pub(super) async fn answer(self, client: &async_nats::Client, job_id: &str) {
        match self {
            Failure::Nats(Some(reply)) => {
                super::answer_failed_job(client, reply, Some(job_id)).await;
            }
            Failure::Nats(None) => {}
            Failure::Local(l) => {
                let (h, body) = super::answer::failed_job(Some(job_id));
                l.push(h.clone(), body);
                l.push(h, Bytes::new());
            }
        }
    }
}

impl Local {
    /// Queues one message for the reader. A reader too far behind gets the
    /// `stream_buffer_full` notice instead, and the job is cancelled.
    fn push(&self, headers: HeaderMap, body: Bytes) {
        if self.cut.is_cancelled() {
            return;
        }
        if self.tx.capacity() > 1 {
            let status = headers
                .get(headers::STATUS)
                .and_then(|v| v.as_str().trim().parse().ok())
                .unwrap_or(200);
            let _ = self.tx.try_send(Answer {
                status,
                headers,
                body,
            });
            return;
        }
        // The last place is kept for the notice.
        self.cut.cancel();
        if self.tx.is_closed() {
            return;
        }
        let held = self.tx.max_capacity() - 1;
        metrics::counter!(crate::telemetry::HTTP_STREAMS_CUT).increment(1);
        tracing::warn!(
            held,
            "an HTTP client stopped reading its answer: the job is cancelled (llmbus.http_stream_buffer)"
        );
        let e = stream_buffer_full(held);
        let mut h = HeaderMap::new();
        h.insert(headers::STATUS, e.status.to_string().as_str());
        let _ = self.tx.try_send(Answer {
            status: e.status,
            headers: h,
            body: e.to_json(),
        });
    }
}

/// The error a client that read its answer too slowly finds after the `held` messages.
pub fn stream_buffer_full(held: usize) -> ApiError {
    ApiError::new(
        408,
        "api_error",
        format!(
            "the client read the answer too slowly: {held} messages waited for it \
             (llmbus.http_stream_buffer) and the job was cancelled"
        ),
    )
    .with_code("stream_buffer_full")
}
