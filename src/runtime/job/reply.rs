//! Where a job's answer goes: the one place that knows it is the requester's NATS reply
//! subject. A job sends its messages before the last (stream chunks, a broken stream's error
//! body) with [`Reply::send`] and its last one (reply, error or sentinel) with
//! [`Reply::last`]; nothing else in the job publishes.
//!
//! An answer that cannot be published (larger than the server's `max_payload`, or any other
//! publish error) is replaced by a small error with the same status, so the requester is
//! never left waiting; the failure is logged and counted.

use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::{HeaderMap, Message, Subject, service::Request};
use bytes::Bytes;

use super::answer::status_str;
use crate::{
    telemetry,
    wire::{ApiError, headers},
};

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
    /// The NATS request: payload, headers and reply subject.
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

    /// The job's message as it came (headers, payload, reply subject).
    pub fn message(&self) -> &Message {
        &self.request.message
    }

    /// No answer is owed any more (cancelled, or handed to another worker that answers).
    pub fn mark_answered(&self) {
        self.answered.store(true, Ordering::Release);
    }

    /// True when the job has somewhere to answer.
    pub fn answerable(&self) -> bool {
        self.request.message.reply.is_some()
    }

    /// Sends one message of the answer before its last (a chunk, a stream's error body).
    pub async fn send(&self, headers: HeaderMap, payload: Bytes) -> Result<(), SendError> {
        let reply = self
            .request
            .message
            .reply
            .clone()
            .ok_or(SendError::NoReply)?;
        self.client
            .publish_with_headers(reply, headers, payload)
            .await?;
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
        if let Err(e) = self
            .request
            .respond_with_headers(Ok(payload), headers)
            .await
        {
            // Boxed: a rare path, kept out of the state every job holds while it runs.
            Box::pin(self.answer_unpublished(e.to_string(), status, job_id)).await;
        }
    }

    /// The job's last message could not be published (`reason`): a small error with the same
    /// status (a 502 for a 200) goes instead.
    async fn answer_unpublished(&self, reason: String, status: u16, job_id: &str) {
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
        let _ = self
            .request
            .respond_with_headers(Ok(fallback.to_json()), h)
            .await;
    }
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

/// A job that could not run to its answer (a panic): a 500 error body, then a sentinel (so a
/// streaming requester stops reading too).
pub async fn answer_failed_job(client: &async_nats::Client, reply: Subject, job_id: Option<&str>) {
    let e = ApiError::internal("internal error while running the job; it was not completed");
    let mut h = HeaderMap::new();
    h.insert(headers::STATUS, "500");
    if let Some(id) = job_id {
        h.insert(headers::JOB_ID, id);
    }
    let _ = client
        .publish_with_headers(reply.clone(), h.clone(), e.to_json())
        .await;
    let _ = client.publish_with_headers(reply, h, Bytes::new()).await;
}
