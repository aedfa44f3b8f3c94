//! How a job answers: the reply (or each stream chunk with its `Llm-Seq`, then the
//! empty-payload sentinel), or the OpenAI error body; the reply headers; and, once it is
//! done, its metrics and usage. [`Outcome`] is the part of a job's state these change.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;

use super::{
    JobState,
    call::{Ending, upstream_error},
    kind::{Chunk, Kind},
    reply::unpublished,
};
use crate::{
    auth::Caller,
    pricing,
    runtime::table::Route,
    telemetry,
    wire::{ApiError, headers, openai::Usage, ratelimit, usage::UsageEvent},
};

/// What a job produced and used so far, and how it ended.
pub(super) struct Outcome<C> {
    /// What its stream sent, or holds back, so far.
    pub out: StreamOut<C>,
    /// Tokens and cost, once priced.
    spent: Option<Spent>,
    /// For a failure, the error class of its answer.
    pub error_class: Option<String>,
    /// The `Retry-After` header of the job's error answer (429 and 503 only).
    pub retry_after: Option<Duration>,
    /// Set once the job's usage event is recorded; a job dropped before that (a panic)
    /// records one as it goes (`Drop`).
    pub recorded: bool,
}

/// What a job's upstream use cost, for its usage event.
struct Spent {
    usage: Usage,
    cost: f64,
    /// From receipt to a stream's first chunk.
    ttft: Option<Duration>,
}

impl<C> Default for Outcome<C> {
    fn default() -> Self {
        Self {
            out: StreamOut::default(),
            spent: None,
            error_class: None,
            retry_after: None,
            recorded: false,
        }
    }
}

/// What a stream has sent so far.
pub(super) struct StreamOut<C> {
    /// The `Llm-Seq` of the last message sent.
    seq: u64,
    /// True once the stream's first content went out: it stays with this deployment.
    pub committed: bool,
    /// Chunks held back until the first content.
    pending: Vec<C>,
    /// The upstream's usage, when it sent one.
    pub usage: Option<Usage>,
    /// Bytes of text the stream carried.
    pub text: usize,
}

impl<C> Default for StreamOut<C> {
    fn default() -> Self {
        Self {
            seq: 0,
            committed: false,
            pending: Vec::new(),
            usage: None,
            text: 0,
        }
    }
}

impl<C> StreamOut<C> {
    /// The usage of the stream so far: the upstream's when it sent one, else an estimate.
    pub fn usage(&self, prompt_tokens: u64) -> Usage {
        self.usage
            .clone()
            .unwrap_or_else(|| Usage::new(prompt_tokens, (self.text as u64).div_ceil(4)))
    }
}

impl<C> Outcome<C> {
    /// Prices `usage` of a call that took `upstream` (the cost reported to the requester) and
    /// keeps it for the job's usage event; `ttft` is the time from receipt to the first chunk
    /// of a stream.
    pub fn price(
        &mut self,
        route: &Route,
        usage: &Usage,
        upstream: Duration,
        ttft: Option<Duration>,
    ) -> f64 {
        let model = route
            .wildcard_model
            .as_deref()
            .unwrap_or(&route.info().model);
        let cost = pricing::cost_or_unpriced(route.price.as_ref(), model, usage, upstream);
        self.spent = Some(Spent {
            usage: usage.clone(),
            cost,
            ttft,
        });
        cost
    }
}

impl<K: Kind> JobState<'_, K> {
    /// A whole answer came back.
    pub(super) async fn answer_whole(&mut self, mut answer: K::Answer) {
        let usage = K::usage(&mut answer, self.ask.prompt_tokens());
        self.answer(&answer, &usage).await;
    }

    /// Closes the call that answered with `usage` and sends its answer. The capacity
    /// settles before the answer goes, so the next job sees the real usage.
    async fn answer<T: serde::Serialize>(&mut self, answer: &T, usage: &Usage) {
        let Some(closed) = self.attempts.finish(Ending::Answered(usage)) else {
            return;
        };
        let cost = self
            .outcome
            .price(&closed.route, usage, closed.latency, None);
        self.send_payload(answer, &closed.route, cost).await;
    }

    /// Sends a successful non-streaming answer, or a clear error when it does not fit in a
    /// NATS message.
    async fn send_payload<T: serde::Serialize>(&mut self, answer: &T, route: &Route, cost: f64) {
        let payload = match serde_json::to_vec(answer) {
            Ok(p) => Bytes::from(p),
            Err(e) => return self.fail(ApiError::internal(format!("reply: {e}"))).await,
        };
        if payload.len() > self.ctx.max_payload {
            let e = ApiError::bad_gateway(format!(
                "the upstream reply is {} bytes, more than the NATS max_payload of {} bytes",
                payload.len(),
                self.ctx.max_payload
            ))
            .with_code("reply_too_large");
            return self.send_error(&e, Some(route)).await;
        }
        let headers = self.final_headers(200, Some(route), Some(cost));
        self.reply.last(payload, headers, 200, &self.ask.id).await;
        self.observe(200, Some(route));
    }

    /// One chunk of a stream came: buffer it until the stream commits, else publish it.
    /// False when the job is over (the chunk could not be published).
    pub(super) async fn chunk(&mut self, chunk: K::Chunk) -> bool {
        if let Some(call) = &mut self.attempts.call {
            call.first_chunk
                .get_or_insert_with(|| call.started.elapsed());
        }
        let out = &mut self.outcome.out;
        if let Some(u) = chunk.usage() {
            out.usage = Some(u.clone());
        }
        out.text += chunk.text_len();
        let chunk = if self.ask.client_wants_usage {
            chunk
        } else {
            match chunk.without_usage() {
                Some(chunk) => chunk,
                None => return true,
            }
        };
        if out.committed {
            return self.publish_chunk(&chunk).await;
        }
        if !chunk.has_content() {
            out.pending.push(chunk);
            return true;
        }
        // The first content: the stream is committed to this deployment.
        out.committed = true;
        if let Some(call) = &self.attempts.call {
            metrics::histogram!(telemetry::TTFT_SECONDS, "model_group" => call.route.group.to_string())
                .record(self.ask.received.elapsed().as_secs_f64());
        }
        for pending in std::mem::take(&mut self.outcome.out.pending) {
            if !self.publish_chunk(&pending).await {
                return false;
            }
        }
        self.publish_chunk(&chunk).await
    }

    /// The stream ended normally: the sentinel with the reply headers.
    pub(super) async fn end_stream(&mut self) {
        for pending in std::mem::take(&mut self.outcome.out.pending) {
            if !self.publish_chunk(&pending).await {
                return;
            }
        }
        let usage = self.stream_usage();
        let Some(closed) = self.attempts.finish(Ending::Answered(&usage)) else {
            return;
        };
        let ttft = closed
            .first_chunk
            .map(|f| closed.started.saturating_duration_since(self.ask.received) + f);
        let cost = self
            .outcome
            .price(&closed.route, &usage, closed.latency, ttft);
        let headers = self.final_headers(200, Some(&closed.route), Some(cost));
        self.reply
            .last(Bytes::new(), headers, 200, &self.ask.id)
            .await;
        self.observe(200, Some(&closed.route));
    }

    /// A committed stream broke: an error body, then the sentinel with the error status.
    pub(super) async fn fail_stream(&mut self, e: &crate::providers::ProviderError) {
        // Count what the stream sent before it broke.
        let usage = self.stream_usage();
        let Some(closed) = self.attempts.finish(Ending::Broke {
            class: e.class,
            retry_after: e.retry_after,
            usage: &usage,
        }) else {
            return;
        };
        let id = closed.route.deployment.id();
        tracing::warn!(deployment = %id, error = %e.message, "stream failed after its first chunk");
        let mut err = upstream_error(id, e);
        err.message = format!("the stream broke after it started: {}", err.message);
        self.send_error(&err, Some(&closed.route)).await;
    }

    /// Publishes one chunk. False when it could not be: the job then ended with an error.
    async fn publish_chunk(&mut self, chunk: &K::Chunk) -> bool {
        if !self.reply.answerable() {
            return false;
        }
        let out = &mut self.outcome.out;
        out.seq += 1;
        let mut h = HeaderMap::new();
        h.insert(headers::name::SEQ, out.seq.to_string());
        // The first chunk carries the rate limits, so that an HTTP stream can send them with
        // its status line (the sentinel's come after it).
        if out.seq == 1
            && let Some(call) = &self.attempts.call
        {
            let (requests, tokens) = call.route.info().rate_windows();
            ratelimit::put(&mut h, requests, tokens);
        }
        let sent = match serde_json::to_vec(chunk) {
            Ok(payload) => self.reply.send(h, payload.into()).await,
            Err(e) => Err(e.into()),
        };
        let Err(reason) = sent else {
            return true;
        };
        let reason = reason.to_string();
        unpublished("chunk", &reason);
        // That number never went out: the error takes it, so the requester sees no gap.
        self.outcome.out.seq -= 1;
        let usage = self.stream_usage();
        self.attempts.finish(Ending::Dropped(Some(&usage)));
        let route = self.attempts.last_route.take();
        let e = ApiError::bad_gateway(format!(
            "chunk {} of the stream could not be published: {reason}",
            self.outcome.out.seq
        ))
        .with_code("reply_not_published");
        // Boxed: a rare path, kept out of the state every open stream holds.
        Box::pin(self.send_error(&e, route.as_ref())).await;
        false
    }

    /// Answers the job with an error (and, for a stream, the sentinel after it).
    pub(super) async fn fail(&mut self, e: ApiError) {
        self.attempts.finish(Ending::Dropped(None));
        let route = self.attempts.last_route.take();
        self.send_error(&e, route.as_ref()).await;
    }

    async fn send_error(&mut self, e: &ApiError, route: Option<&Route>) {
        self.outcome.error_class = Some(UsageEvent::error_class_of(e));
        if e.status >= 500 {
            tracing::warn!(status = e.status, error = %e.message, "job failed");
        } else {
            tracing::debug!(status = e.status, error = %e.message, "job refused");
        }
        let headers = self.final_headers(e.status, route, None);
        if self.ask.stream {
            self.outcome.out.seq += 1;
            let mut h = headers.clone();
            h.insert(headers::name::SEQ, self.outcome.out.seq.to_string());
            match self.reply.send(h, K::error_body(e)).await {
                Ok(()) | Err(super::reply::SendError::NoReply) => {}
                Err(err) => unpublished("error", &err.to_string()),
            }
            self.reply
                .last(Bytes::new(), headers, e.status, &self.ask.id)
                .await;
        } else {
            self.reply
                .last(K::error_body(e), headers, e.status, &self.ask.id)
                .await;
        }
        self.observe(e.status, route);
    }

    fn final_headers(&self, status: u16, route: Option<&Route>, cost: Option<f64>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(headers::name::STATUS, status_str(status));
        h.insert(headers::name::JOB_ID, self.ask.id.clone());
        h.insert(headers::name::ATTEMPTS, self.attempts.count.to_string());
        if let Some(route) = route {
            h.insert(headers::name::MODEL_GROUP, &*route.group);
            h.insert(headers::name::DEPLOYMENT, route.deployment.id());
            let (requests, tokens) = route.info().rate_windows();
            ratelimit::put(&mut h, requests, tokens);
        }
        if let Some(cost) = cost {
            h.insert(headers::name::COST_USD, cost.to_string());
        }
        let upstream = self.attempts.upstream_time;
        if !upstream.is_zero() {
            let ms = upstream.as_secs_f64() * 1000.0;
            h.insert(headers::name::UPSTREAM_MS, format!("{ms:.3}"));
        }
        if let Some(wait) = self.outcome.retry_after
            && matches!(status, 429 | 503)
        {
            h.insert(
                headers::name::RETRY_AFTER,
                crate::policy::routing::retry_after_secs(wait).to_string(),
            );
        }
        h
    }

    /// The job's usage event as it ends with `status`: one per job, success or failure.
    fn usage_event(&self, route: Option<&Route>, status: u16) -> UsageEvent {
        let (ask, attempts) = (&self.ask, &self.attempts);
        let mut event = UsageEvent {
            job_id: ask.id.clone(),
            timestamp_ms: crate::wire::usage::now_ms(),
            model_group: route
                .map(|r| r.group.to_string())
                .or_else(|| attempts.served_group.as_deref().map(str::to_string))
                .or_else(|| attempts.first_group.as_deref().map(str::to_string))
                .unwrap_or_else(|| ask.model().to_string()),
            deployment: route.map(|r| r.info().id.clone()),
            provider: route.map(|r| {
                crate::config::provider_prefix(&r.info().model)
                    .unwrap_or("openai")
                    .to_string()
            }),
            model: route.map(|r| {
                r.wildcard_model
                    .clone()
                    .unwrap_or_else(|| r.info().model.clone())
            }),
            key: match &ask.caller {
                Some(c @ Caller::Master) => Some(c.label().to_string()),
                _ => None,
            },
            user: ask.user(),
            tags: ask.tags.clone(),
            latency_ms: ask.received.elapsed().as_secs_f64() * 1000.0,
            status,
            error_class: self.outcome.error_class.clone(),
            stream: ask.stream,
            attempts: attempts.count,
            traceparent: ask.traceparent.clone(),
            ..UsageEvent::default()
        };
        if let Some(spent) = &self.outcome.spent {
            let u = &spent.usage;
            event.prompt_tokens = u.prompt_tokens;
            event.cached_tokens = u.cached_tokens();
            event.cache_creation_tokens = u
                .extra
                .get("cache_creation_input_tokens")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            event.completion_tokens = u.completion_tokens;
            event.reasoning_tokens = u.reasoning_tokens();
            event.cost_usd = spent.cost;
            event.ttft_ms = spent.ttft.map(|t| t.as_secs_f64() * 1000.0);
        }
        event
    }

    /// Records the job's usage event, once: the first call wins.
    pub(super) fn record_usage(&mut self, route: Option<&Route>, status: u16) {
        if !std::mem::replace(&mut self.outcome.recorded, true) {
            self.ctx.usage.record(self.usage_event(route, status));
        }
    }

    /// Request metrics and the usage event, once the job is over.
    pub(super) fn observe(&mut self, status: u16, route: Option<&Route>) {
        self.record_usage(route, status);
        let total = self.ask.received.elapsed();
        let attempts = &self.attempts;
        let group: String = match (route, &attempts.served_group) {
            (Some(r), _) => r.group.to_string(),
            (None, Some(g)) => g.to_string(),
            (None, None) => "unknown".into(),
        };
        let deployment = route.map_or_else(|| "none".to_string(), |r| r.info().id.clone());
        if attempts.group_index > 0
            && let Some(first) = &attempts.first_group
        {
            let result = if status == 200 { "success" } else { "failure" };
            metrics::counter!(telemetry::FALLBACKS, "model_group" => first.to_string(), "result" => result)
                .increment(1);
        }
        let status = status_str(status);
        metrics::counter!(telemetry::REQUESTS, "model_group" => group.clone(), "deployment" => deployment.clone(), "status" => status).increment(1);
        metrics::histogram!(telemetry::REQUEST_SECONDS, "model_group" => group, "status" => status)
            .record(total.as_secs_f64());
        if route.is_some() {
            let upstream = attempts.upstream_time;
            metrics::histogram!(telemetry::UPSTREAM_SECONDS, "deployment" => deployment)
                .record(upstream.as_secs_f64());
            metrics::histogram!(telemetry::OVERHEAD_SECONDS)
                .record(total.saturating_sub(upstream).as_secs_f64());
        }
    }
}

/// A status as header text, without an allocation.
pub(super) fn status_str(status: u16) -> &'static str {
    static TEXT: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| (0..600).map(|s| s.to_string()).collect());
    match TEXT.get(usize::from(status)) {
        Some(s) if status >= 100 => s,
        _ => "500",
    }
}
