//! The request part of a job: what it asks, read once from its headers and its body before
//! the first attempt, and not changed after.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::Message;

use super::{
    JobKind,
    kind::{Kind, Preparsed},
};
use crate::{
    auth::Caller,
    limits::Demand,
    runtime::JobSettings,
    wire::{ApiError, headers::RequestHeaders},
};

/// What a job asks.
pub(super) struct Ask<K: Kind> {
    /// The job id that logs and the `Llm-Job-Id` header carry.
    pub id: String,
    /// What it asks for.
    pub kind: &'static JobKind,
    /// When the worker received it.
    pub received: Instant,
    /// The config's rules, as they were when the job arrived.
    pub settings: Arc<JobSettings>,
    /// Who the job runs for, once the key is checked.
    pub caller: Option<Caller>,
    /// When it must have answered (`Llm-Timeout-Ms`, else the configured timeout).
    pub deadline: Instant,
    /// The W3C trace context it came with, sent on upstream.
    pub traceparent: Option<String>,
    /// Its tags (`Llm-Tags`): routing and the usage event.
    pub tags: Vec<String>,
    /// Fallbacks the request itself named (`Llm-Fallbacks`, then the body's `fallbacks`).
    pub fallbacks: Vec<String>,
    /// The body sent upstream (streams always ask for usage, to count cost).
    pub body: Option<Arc<K::Body>>,
    /// True for a streamed answer.
    pub stream: bool,
    /// True when the client asked for a stream's usage chunk itself.
    pub client_wants_usage: bool,
    /// What each attempt reserves on its deployment (prompt and output bound).
    pub demand: Demand,
}

impl<K: Kind> Ask<K> {
    /// A job received at `received`, before its headers and body are read.
    pub fn new(
        id: String,
        kind: &'static JobKind,
        received: Instant,
        settings: Arc<JobSettings>,
    ) -> Self {
        let deadline = received + settings.default_timeout;
        Self {
            id,
            kind,
            received,
            settings,
            caller: None,
            deadline,
            traceparent: None,
            tags: Vec::new(),
            fallbacks: Vec::new(),
            body: None,
            stream: false,
            client_wants_usage: false,
            demand: Demand::input_only(0),
        }
    }

    /// Checks the key, reads the headers and the body of `message` (`preparsed`: the body,
    /// read already). An error here is the caller's; what was read before it stays (the usage
    /// event tells it).
    pub fn prepare(
        &mut self,
        message: &Message,
        preparsed: Option<Preparsed>,
        span: &tracing::Span,
    ) -> Result<(), ApiError> {
        self.caller = Some(self.settings.auth.check(message.headers.as_ref())?);
        let parsed = RequestHeaders::from_nats(message.headers.as_ref())?;
        if let Some(t) = parsed.timeout {
            self.deadline = self.received + t;
        }
        self.traceparent = parsed.traceparent;
        self.fallbacks = parsed.fallbacks;
        self.tags = parsed.tags;
        if let Some(tp) = &self.traceparent {
            span.record("traceparent", tp.as_str());
        }
        let parsed = match preparsed.and_then(|p| p.take::<K>(self.kind)) {
            Some(parsed) => parsed,
            None => K::parse(&message.payload)?,
        };
        self.fallbacks.extend(parsed.fallbacks);
        self.stream = parsed.stream;
        self.client_wants_usage = parsed.client_wants_usage;
        self.demand = parsed.demand;
        self.body = Some(Arc::new(parsed.body));
        Ok(())
    }

    /// The prompt's estimated tokens.
    pub fn prompt_tokens(&self) -> u64 {
        self.demand.prompt
    }

    /// The model the body names (empty before the body is read).
    pub fn model(&self) -> &str {
        self.body.as_deref().map_or("", K::model)
    }

    /// The body's `user`.
    pub fn user(&self) -> Option<String> {
        self.body.as_deref().and_then(K::user)
    }

    /// The job's whole time, from receipt to its deadline, in milliseconds.
    pub fn deadline_ms(&self) -> u128 {
        self.deadline.duration_since(self.received).as_millis()
    }

    /// The error of a job whose deadline passed.
    pub fn deadline_error(&self) -> ApiError {
        ApiError::deadline(format!(
            "the job's deadline of {} ms passed",
            self.deadline_ms()
        ))
    }

    /// What is left of the job's time at `now`.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }
}
