//! The request part of a job: what it asks, read once from its headers and its body before
//! the first attempt, and not changed after.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::Message;

use super::{Body, JobKind, parse};
use crate::{
    auth::Caller,
    limits::Demand,
    runtime::JobSettings,
    wire::{ApiError, headers::RequestHeaders},
};

/// What a job asks.
pub(super) struct Ask {
    /// The job id that logs and the `Llm-Job-Id` header carry.
    pub id: String,
    /// What it asks for.
    pub kind: JobKind,
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
    pub body: Option<Body>,
    /// True for a streamed answer.
    pub stream: bool,
    /// True when the client asked for a stream's usage chunk itself.
    pub client_wants_usage: bool,
    /// What each attempt reserves on its deployment (prompt and output bound).
    pub demand: Demand,
}

impl Ask {
    /// A job received at `received`, before its headers and body are read.
    pub fn new(id: String, kind: JobKind, received: Instant, settings: Arc<JobSettings>) -> Self {
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

    /// Checks the key, reads the headers and the body of `message`. An error here is the
    /// caller's; what was read before it stays (the usage event tells it).
    pub fn prepare(&mut self, message: &Message, span: &tracing::Span) -> Result<(), ApiError> {
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
        match self.kind {
            JobKind::Embedding => {
                let mut body = parse::embedding(&message.payload)?;
                self.fallbacks
                    .extend(parse::take_fallbacks(&mut body.extra));
                let prompt_tokens = body
                    .input
                    .texts()
                    .iter()
                    .map(|t| crate::limits::estimate_text_tokens(t))
                    .sum();
                self.demand = Demand::input_only(prompt_tokens);
                self.body = Some(Body::Embedding(Arc::new(body)));
            }
            JobKind::Completion => {
                let mut body = parse::chat(&message.payload)?;
                self.stream = body.is_stream();
                self.client_wants_usage = body.include_usage();
                if self.stream && !self.client_wants_usage {
                    // Ask for usage anyway so the cost is right; the client does not see it.
                    let opts = body.stream_options.get_or_insert_with(|| {
                        crate::wire::openai::StreamOptions {
                            include_usage: None,
                            extra: Default::default(),
                        }
                    });
                    opts.include_usage = Some(true);
                }
                self.fallbacks
                    .extend(parse::take_fallbacks(&mut body.extra));
                self.demand = Demand::of_chat(&body);
                self.body = Some(Body::Chat(Arc::new(body)));
            }
        }
        Ok(())
    }

    /// The prompt's estimated tokens.
    pub fn prompt_tokens(&self) -> u64 {
        self.demand.prompt
    }

    /// The model the body names (empty before the body is read).
    pub fn model(&self) -> &str {
        match &self.body {
            Some(Body::Chat(b)) => &b.model,
            Some(Body::Embedding(b)) => &b.model,
            None => "",
        }
    }

    /// The body's `user`.
    pub fn user(&self) -> Option<String> {
        match &self.body {
            Some(Body::Chat(b)) => b.user.clone(),
            Some(Body::Embedding(b)) => b.user.clone(),
            None => None,
        }
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
