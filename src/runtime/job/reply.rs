//! Where a job's answer goes: the one place that knows it. A job came either from NATS
//! (ingress took it from a subject; it answers on the request's reply subject) or from the
//! in-worker HTTP front in process ([`crate::runtime::local`]; it answers as [`Answer`] values
//! on a channel the front reads). A job sends its messages before the last (stream chunks, a
//! broken stream's error body) with [`Reply::send`] and its last one (reply, error or
//! sentinel) with [`Reply::last`]; nothing else in the job sends.
//!
//! An answer that cannot be published on NATS (larger than the server's `max_payload`, or any
//! other publish error) is replaced by a small error with the same status, so the requester is
//! never left waiting; the failure is logged and counted.
//!
//! An in-process request carries the NATS message it stands for (its headers and payload, no
//! reply subject), so everything the job reads is read the same way. Its receiver dropped (the
//! HTTP client went away, or the front gave up waiting) is the job's cancel, as `llm.cancel` is
//! for a NATS job ([`Reply::gone`]). A reader that stops reading fills the channel
//! (`llmbus.http_stream_buffer` messages): the next message is the `stream_buffer_full`
//! notice and the job is cancelled, as the NATS path does it.

use std::{
    future::Future,
    sync::atomic::{AtomicBool, Ordering},
};

use async_nats::{HeaderMap, Message, Subject, service};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::answer::status_str;
use crate::{
    telemetry,
    wire::{ApiError, headers},
};

/// One message of a job's answer, in process: what a NATS reply carries, as a NATS
/// requester reads it.
pub type Answer = crate::client::Reply;

/// Where a job came from, and so where its answer goes.
pub struct Request(Sink);

enum Sink {
    /// Ingress took it from NATS: payload, headers and reply subject.
    Nats(service::Request),
    /// The in-worker front handed it over: the request as a NATS message (headers and
    /// payload, no reply subject), and the way back.
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
        Self(Sink::Nats(request))
    }

    /// An in-process request: `headers` and `payload` as a NATS job would carry them; its
    /// answer comes on the returned channel, where `buffer` messages wait for a slow reader.
    pub fn local(
        headers: HeaderMap,
        payload: Bytes,
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
        (Self(Sink::Local(message, local)), rx)
    }

    /// The request as a NATS message (headers, payload; the reply subject of a NATS job).
    pub fn message(&self) -> &Message {
        match &self.0 {
            Sink::Nats(r) => &r.message,
            Sink::Local(m, _) => m,
        }
    }

    /// Where a 500 goes if the job cannot run to its answer (a panic).
    pub(super) fn requester(&self) -> Requester {
        match &self.0 {
            Sink::Nats(r) => Requester::Nats(r.message.reply.clone()),
            Sink::Local(_, l) => Requester::Local(l.clone()),
        }
    }
}

/// Why a message of the answer did not go out.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    /// The job has no reply subject (ingress refuses those; kept for safety).
    #[error("the job has no reply subject")]
    NoReply,
    /// The message could not be encoded.
    #[error("{0}")]
    Encode(#[from] serde_json::Error),
    /// NATS did not take it.
    #[error("{0}")]
    Publish(#[from] async_nats::PublishError),
}

/// The requester's end of a job.
pub(super) struct Reply<'a> {
    /// Where the job came from and answers.
    request: Request,
    client: &'a async_nats::Client,
    /// Set once the job's final message has gone out (or no answer is owed).
    answered: &'a AtomicBool,
}

impl<'a> Reply<'a> {
    pub fn new(request: Request, client: &'a async_nats::Client, answered: &'a AtomicBool) -> Self {
        Self {
            request,
            client,
            answered,
        }
    }

    /// The job's message as it came (headers, payload; the reply subject of a NATS job).
    pub fn message(&self) -> &Message {
        self.request.message()
    }

    /// True for a job the in-worker front handed over in process.
    pub fn is_local(&self) -> bool {
        matches!(self.request.0, Sink::Local(..))
    }

    /// No answer is owed any more (cancelled, or handed to another worker that answers).
    pub fn mark_answered(&self) {
        self.answered.store(true, Ordering::Release);
    }

    /// True when the job has somewhere to answer.
    pub fn answerable(&self) -> bool {
        match &self.request.0 {
            Sink::Nats(r) => r.message.reply.is_some(),
            Sink::Local(..) => true,
        }
    }

    /// Resolves when an in-process requester is gone: its receiver dropped, or it read too
    /// slowly (never, for a NATS job: its cancel comes through `llm.cancel`).
    pub fn gone(&self) -> impl Future<Output = ()> + Send + 'static {
        let local = match &self.request.0 {
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

    /// Sends one message of the answer before its last (a chunk, a stream's error body).
    pub async fn send(&self, headers: HeaderMap, payload: Bytes) -> Result<(), SendError> {
        match &self.request.0 {
            Sink::Nats(r) => {
                let reply = r.message.reply.clone().ok_or(SendError::NoReply)?;
                self.client
                    .publish_with_headers(reply, headers, payload)
                    .await?;
            }
            Sink::Local(_, l) => l.push(headers, payload),
        }
        Ok(())
    }

    /// Sends the job's last message (reply, error or sentinel) and marks the job answered.
    /// When it cannot be published, a small error with the same status goes instead.
    pub async fn last(&self, payload: Bytes, headers: HeaderMap, status: u16, job_id: &str) {
        if self.answered.swap(true, Ordering::AcqRel) {
            return;
        }
        if !self.answerable() {
            return;
        }
        match &self.request.0 {
            Sink::Nats(r) => {
                if let Err(e) = r.respond_with_headers(Ok(payload), headers).await {
                    // Boxed: a rare path, kept out of the state every job holds while it runs.
                    Box::pin(self.answer_unpublished(r, e.to_string(), status, job_id)).await;
                }
            }
            Sink::Local(_, l) => l.push(headers, payload),
        }
    }

    /// The job's last message could not be published (`reason`): a small error with the same
    /// status (a 502 for a 200) goes instead.
    async fn answer_unpublished(
        &self,
        request: &service::Request,
        reason: String,
        status: u16,
        job_id: &str,
    ) {
        unpublished("reply", &reason);
        let fallback = ApiError::new(
            if status == 200 { 502 } else { status },
            "api_error",
            format!("the answer could not be published: {reason}"),
        )
        .with_code("reply_not_published");
        let mut h = HeaderMap::new();
        h.insert(headers::STATUS, status_str(fallback.status));
        h.insert(headers::JOB_ID, job_id);
        let _ = request
            .respond_with_headers(Ok(fallback.to_json()), h)
            .await;
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
            let _ = self.tx.try_send(Answer::from_parts(headers, body));
            return;
        }
        // The last place is kept for the notice.
        self.cut.cancel();
        if self.tx.is_closed() {
            return;
        }
        let e = stream_cut(self.tx.max_capacity() - 1);
        let mut h = HeaderMap::new();
        h.insert(headers::STATUS, status_str(e.status));
        let _ = self.tx.try_send(Answer::from_parts(h, e.to_json()));
    }
}

/// An HTTP client stopped reading its answer with `held` messages waiting: counted and
/// logged (its job is being cancelled); the error it finds after them.
pub fn stream_cut(held: usize) -> ApiError {
    metrics::counter!(telemetry::HTTP_STREAMS_CUT).increment(1);
    tracing::warn!(
        held,
        "an HTTP client stopped reading its answer: the job is cancelled (llmbus.http_stream_buffer)"
    );
    stream_buffer_full(held)
}

/// The error a client that read its answer too slowly finds after the `held` messages.
fn stream_buffer_full(held: usize) -> ApiError {
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

/// Logs and counts an answer that could not be published.
pub(super) fn unpublished(what: &'static str, reason: &str) {
    tracing::warn!(
        what,
        reason,
        "an answer could not be published; sending a small error instead"
    );
    metrics::counter!(telemetry::UNPUBLISHED, "what" => what).increment(1);
}

/// Where a job's 500 goes when it could not run to its answer: its NATS reply subject (none:
/// nowhere), or its in-process reader.
pub(super) enum Requester {
    Nats(Option<Subject>),
    Local(Local),
}

/// A job that could not run to its answer (a panic): a 500 error body, then a sentinel (so a
/// streaming requester stops reading too).
pub(super) async fn answer_failed_job(
    client: &async_nats::Client,
    to: Requester,
    job_id: Option<&str>,
) {
    match to {
        Requester::Nats(Some(reply)) => {
            let (h, body) = failed_job(job_id);
            let _ = client
                .publish_with_headers(reply.clone(), h.clone(), body)
                .await;
            let _ = client.publish_with_headers(reply, h, Bytes::new()).await;
        }
        Requester::Nats(None) => {}
        Requester::Local(l) => l.fail(job_id),
    }
}

/// The headers and 500 body of a job that could not run to its answer.
fn failed_job(job_id: Option<&str>) -> (HeaderMap, Bytes) {
    let e = ApiError::internal("internal error while running the job; it was not completed");
    let mut h = HeaderMap::new();
    h.insert(headers::STATUS, "500");
    if let Some(id) = job_id {
        h.insert(headers::JOB_ID, id);
    }
    (h, e.to_json())
}

impl Local {
    /// Answers a job that could not run to its answer: its 500, then the sentinel.
    fn fail(&self, job_id: Option<&str>) {
        let (h, body) = failed_job(job_id);
        self.push(h.clone(), body);
        self.push(h, Bytes::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(buffer: usize) -> (Local, mpsc::Receiver<Answer>) {
        let (request, rx) = Request::local(HeaderMap::new(), Bytes::from_static(b"{}"), buffer);
        match request.requester() {
            Requester::Local(l) => (l, rx),
            Requester::Nats(_) => unreachable!("an in-process request answers in process"),
        }
    }

    #[test]
    fn a_failed_in_process_job_answers_500_then_the_sentinel() {
        let (l, mut rx) = local(4);
        l.fail(Some("w-1"));
        let error = rx.try_recv().expect("the 500");
        assert_eq!(error.status, 500);
        assert_eq!(error.headers.get(headers::JOB_ID).unwrap().as_str(), "w-1");
        let body: serde_json::Value = serde_json::from_slice(&error.body).unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not completed"),
            "{body}"
        );
        let sentinel = rx.try_recv().expect("the sentinel");
        assert_eq!(sentinel.status, 500);
        assert!(sentinel.body.is_empty());
    }

    #[test]
    fn a_reader_too_far_behind_gets_stream_buffer_full_and_the_job_is_cut() {
        let (l, mut rx) = local(2);
        let mut h = HeaderMap::new();
        h.insert(headers::STATUS, "200");
        for _ in 0..4 {
            l.push(h.clone(), Bytes::from_static(b"chunk"));
        }
        assert!(l.cut.is_cancelled(), "the job is cancelled");
        assert_eq!(rx.try_recv().unwrap().body, "chunk");
        assert_eq!(rx.try_recv().unwrap().body, "chunk");
        let notice = rx.try_recv().expect("the notice");
        assert_eq!(notice.status, 408);
        let body: serde_json::Value = serde_json::from_slice(&notice.body).unwrap();
        assert_eq!(body["error"]["code"], "stream_buffer_full", "{body}");
        assert!(rx.try_recv().is_err(), "nothing after the notice");
    }
}
