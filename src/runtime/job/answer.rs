//! How a job answers: the reply (or each stream chunk with its `Llm-Seq`, then the
//! empty-payload sentinel), or the OpenAI error body; the reply headers; and, once it is
//! done, its metrics and usage.
//!
//! An answer that cannot be published (larger than the server's `max_payload`, or any other
//! publish error) is replaced by a small error with the same status, so the requester is
//! never left waiting; the failure is logged and counted.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use async_nats::{HeaderMap, Subject};
use bytes::Bytes;

use super::JobState;
use crate::{
    auth::Caller,
    pricing,
    runtime::table::Route,
    telemetry,
    usage::UsageEvent,
    wire::{
        ApiError, headers,
        openai::{ChatCompletionChunk, ChatCompletionResponse, EmbeddingResponse, Usage},
        ratelimit,
    },
};

impl JobState<'_> {
    /// A non-streaming completion came back.
    pub(super) async fn reply(&mut self, mut response: ChatCompletionResponse) {
        let Some(mut call) = self.call.take() else {
            return;
        };
        let latency = call.started.elapsed();
        self.upstream_time += latency;
        let usage = response.usage.clone().unwrap_or_else(|| {
            let text: usize = response
                .choices
                .iter()
                .map(|c| c.message.text_content().len())
                .sum();
            Usage::new(self.prompt_tokens, (text as u64).div_ceil(4))
        });
        if response.usage.is_none() {
            response.usage = Some(usage.clone());
        }
        call.held.settle(&usage);
        call.route
            .deployment
            .outcome(latency, None, None, Instant::now());
        let cost = self.price(&call.route, &usage, latency, None);
        // Settle the capacity before answering, so the next job sees the real usage.
        let route = call.route.clone();
        drop(call);
        self.send_payload(&response, &route, cost).await;
    }

    /// Embeddings came back.
    pub(super) async fn embedded(&mut self, mut response: EmbeddingResponse) {
        let Some(mut call) = self.call.take() else {
            return;
        };
        let latency = call.started.elapsed();
        self.upstream_time += latency;
        if response.usage.prompt_tokens == 0 {
            response.usage = Usage::new(self.prompt_tokens, 0);
        }
        let usage = response.usage.clone();
        call.held.settle(&usage);
        call.route
            .deployment
            .outcome(latency, None, None, Instant::now());
        let cost = self.price(&call.route, &usage, latency, None);
        let route = call.route.clone();
        drop(call);
        self.send_payload(&response, &route, cost).await;
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
        self.send_final(payload, headers, 200).await;
        self.observe(200, Some(route));
    }

    /// One chunk of a stream came: buffer it until the stream commits, else publish it.
    /// False when the job is over (the chunk could not be published).
    pub(super) async fn chunk(&mut self, mut chunk: ChatCompletionChunk) -> bool {
        if let Some(call) = &mut self.call {
            call.first_chunk
                .get_or_insert_with(|| call.started.elapsed());
        }
        if let Some(u) = &chunk.usage {
            self.out.usage = Some(u.clone());
        }
        self.out.text += chunk
            .choices
            .iter()
            .map(|c| c.delta.content.as_deref().map_or(0, str::len))
            .sum::<usize>();
        if !self.client_wants_usage {
            if chunk.choices.is_empty() && chunk.usage.is_some() {
                return true;
            }
            chunk.usage = None;
        }
        if self.out.committed {
            return self.publish_chunk(&chunk).await;
        }
        if !chunk.has_content() {
            self.out.pending.push(chunk);
            return true;
        }
        // The first content: the stream is committed to this deployment.
        self.out.committed = true;
        if let Some(call) = &self.call {
            metrics::histogram!(telemetry::TTFT_SECONDS, "model_group" => call.route.group.to_string())
                .record(self.job.received.elapsed().as_secs_f64());
        }
        for pending in std::mem::take(&mut self.out.pending) {
            if !self.publish_chunk(&pending).await {
                return false;
            }
        }
        self.publish_chunk(&chunk).await
    }

    /// The stream ended normally: the sentinel with the reply headers.
    pub(super) async fn end_stream(&mut self) {
        for pending in std::mem::take(&mut self.out.pending) {
            if !self.publish_chunk(&pending).await {
                return;
            }
        }
        let Some(mut call) = self.call.take() else {
            return;
        };
        let latency = call.started.elapsed();
        self.upstream_time += latency;
        let usage = self.stream_usage();
        call.held.settle(&usage);
        call.route
            .deployment
            .outcome(latency, call.first_chunk, None, Instant::now());
        let ttft = call
            .first_chunk
            .map(|f| call.started.saturating_duration_since(self.job.received) + f);
        let cost = self.price(&call.route, &usage, latency, ttft);
        let route = call.route.clone();
        drop(call);
        let headers = self.final_headers(200, Some(&route), Some(cost));
        self.send_final(Bytes::new(), headers, 200).await;
        self.observe(200, Some(&route));
    }

    /// A committed stream broke: an error body, then the sentinel with the error status.
    pub(super) async fn fail_stream(&mut self, e: &crate::providers::ProviderError) {
        let Some(mut call) = self.call.take() else {
            return;
        };
        // Count what the stream sent before it broke.
        call.held.settle(&self.stream_usage());
        let latency = call.started.elapsed();
        self.upstream_time += latency;
        call.route.deployment.outcome(
            latency,
            call.first_chunk,
            Some((e.class, e.retry_after)),
            Instant::now(),
        );
        tracing::warn!(deployment = %call.route.deployment.id(), error = %e.message, "stream failed after its first chunk");
        let mut err = super::attempt::upstream_error(call.route.deployment.id(), e);
        err.message = format!("the stream broke after it started: {}", err.message);
        let route = call.route.clone();
        drop(call);
        self.send_error(&err, Some(&route)).await;
    }

    /// Publishes one chunk. False when it could not be: the job then ended with an error.
    async fn publish_chunk(&mut self, chunk: &ChatCompletionChunk) -> bool {
        self.out.seq += 1;
        let mut h = HeaderMap::new();
        h.insert(headers::name::SEQ, self.out.seq.to_string());
        // The first chunk carries the rate limits, so that an HTTP stream can send them with
        // its status line (the sentinel's come after it).
        if self.out.seq == 1
            && let Some(call) = &self.call
        {
            let (requests, tokens) = call.route.info().rate_windows();
            ratelimit::put(&mut h, requests, tokens);
        }
        let sent = match serde_json::to_vec(chunk) {
            Ok(payload) => {
                self.job
                    .request
                    .publish(&self.ctx.client, h, payload.into())
                    .await
            }
            Err(e) => Err(e.to_string()),
        };
        match sent {
            Ok(()) => true,
            Err(reason) => {
                unpublished("chunk", &reason);
                // That number never went out: the error takes it, so the requester sees no gap.
                self.out.seq -= 1;
                let usage = self.stream_usage();
                let route = self.call.take().map(|mut c| {
                    c.held.settle(&usage);
                    c.route.clone()
                });
                let e = ApiError::bad_gateway(format!(
                    "chunk {} of the stream could not be published: {reason}",
                    self.out.seq
                ))
                .with_code("reply_not_published");
                // Boxed: a rare path, kept out of the state every open stream holds.
                Box::pin(self.send_error(&e, route.as_ref())).await;
                false
            }
        }
    }

    /// Answers the job with an error (and, for a stream, the sentinel after it).
    pub(super) async fn fail(&mut self, e: ApiError) {
        let route = self
            .call
            .take()
            .map(|c| c.route.clone())
            .or_else(|| self.last_route.take());
        self.send_error(&e, route.as_ref()).await;
    }

    async fn send_error(&mut self, e: &ApiError, route: Option<&Route>) {
        self.error_class = Some(UsageEvent::error_class_of(e));
        if e.status >= 500 {
            tracing::warn!(status = e.status, error = %e.message, "job failed");
        } else {
            tracing::debug!(status = e.status, error = %e.message, "job refused");
        }
        let headers = self.final_headers(e.status, route, None);
        if self.stream {
            self.out.seq += 1;
            let mut h = headers.clone();
            h.insert(headers::name::SEQ, self.out.seq.to_string());
            if let Err(err) = self
                .job
                .request
                .publish(&self.ctx.client, h, e.to_json())
                .await
            {
                unpublished("error", &err);
            }
            self.send_final(Bytes::new(), headers, e.status).await;
        } else {
            self.send_final(e.to_json(), headers, e.status).await;
        }
        self.observe(e.status, route);
    }

    fn final_headers(&self, status: u16, route: Option<&Route>, cost: Option<f64>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(headers::name::STATUS, status_str(status));
        h.insert(headers::name::JOB_ID, self.job.id.clone());
        h.insert(headers::name::ATTEMPTS, self.attempts.to_string());
        if let Some(route) = route {
            h.insert(headers::name::MODEL_GROUP, &*route.group);
            h.insert(headers::name::DEPLOYMENT, route.deployment.id());
            let (requests, tokens) = route.info().rate_windows();
            ratelimit::put(&mut h, requests, tokens);
        }
        if let Some(cost) = cost {
            h.insert(headers::name::COST_USD, cost.to_string());
        }
        if !self.upstream_time.is_zero() {
            let ms = self.upstream_time.as_secs_f64() * 1000.0;
            h.insert(headers::name::UPSTREAM_MS, format!("{ms:.3}"));
        }
        if let Some(wait) = self.retry_after
            && matches!(status, 429 | 503)
        {
            h.insert(
                headers::name::RETRY_AFTER,
                crate::runtime::table::retry_after_secs(wait).to_string(),
            );
        }
        h
    }

    /// Sends the job's last message (reply, error or sentinel) and marks the job answered.
    /// When it cannot be published, a small error with the same status goes instead.
    async fn send_final(&mut self, payload: Bytes, headers: HeaderMap, status: u16) {
        self.call = None;
        if self.answered.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.job.request.message().reply.is_none() && !self.job.request.is_local() {
            return;
        }
        if let Err(e) = self
            .job
            .request
            .respond_with_headers(Ok(payload), headers)
            .await
        {
            // Boxed: a rare path, kept out of the state every job holds while it runs.
            Box::pin(self.answer_unpublished(e, status)).await;
        }
    }

    /// The job's last message could not be published (`reason`): a small error with the same
    /// status (a 502 for a 200) goes instead.
    async fn answer_unpublished(&self, reason: String, status: u16) {
        unpublished("reply", &reason);
        let fallback = ApiError::new(
            if status == 200 { 502 } else { status },
            "api_error",
            format!("the answer could not be published: {reason}"),
        )
        .with_code("reply_not_published");
        let mut h = HeaderMap::new();
        h.insert(headers::STATUS, status_str(fallback.status));
        h.insert(headers::JOB_ID, self.job.id.as_str());
        let _ = self
            .job
            .request
            .respond_with_headers(Ok(fallback.to_json()), h)
            .await;
    }

    /// Prices `usage` of a call that took `upstream` (the cost reported to the requester) and
    /// keeps it for the job's usage event; `ttft` is the time from receipt to the first chunk
    /// of a stream.
    pub(super) fn price(
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
        self.spent = Some(super::Spent {
            usage: usage.clone(),
            cost,
            ttft,
        });
        cost
    }

    /// The job's usage event as it ends with `status`: one per job, success or failure.
    fn usage_event(&self, route: Option<&Route>, status: u16) -> UsageEvent {
        let (model, user) = match &self.body {
            Some(super::Body::Chat(b)) => (Some(&b.model), b.user.clone()),
            Some(super::Body::Embedding(b)) => (Some(&b.model), b.user.clone()),
            None => (None, None),
        };
        let mut event = UsageEvent {
            job_id: self.job.id.clone(),
            timestamp_ms: crate::usage::event::now_ms(),
            model_group: route
                .map(|r| r.group.to_string())
                .or_else(|| self.served_group.as_deref().map(str::to_string))
                .or_else(|| self.first_group.as_deref().map(str::to_string))
                .or_else(|| model.cloned())
                .unwrap_or_default(),
            deployment: route.map(|r| r.info().id.clone()),
            provider: route.map(|r| {
                crate::providers::prefix(&r.info().model)
                    .unwrap_or("openai")
                    .to_string()
            }),
            model: route.map(|r| {
                r.wildcard_model
                    .clone()
                    .unwrap_or_else(|| r.info().model.clone())
            }),
            key: match &self.caller {
                Some(c @ Caller::Master) => Some(c.label().to_string()),
                _ => None,
            },
            user,
            tags: self.tags.clone(),
            latency_ms: self.job.received.elapsed().as_secs_f64() * 1000.0,
            status,
            error_class: self.error_class.clone(),
            stream: self.stream,
            attempts: self.attempts,
            traceparent: self.traceparent.clone(),
            ..UsageEvent::default()
        };
        if let Some(spent) = &self.spent {
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
        if !std::mem::replace(&mut self.recorded, true) {
            self.ctx.usage.record(self.usage_event(route, status));
        }
    }

    /// Request metrics and the usage event, once the job is over.
    pub(super) fn observe(&mut self, status: u16, route: Option<&Route>) {
        self.record_usage(route, status);
        let total = self.job.received.elapsed();
        let group: String = match (route, &self.served_group) {
            (Some(r), _) => r.group.to_string(),
            (None, Some(g)) => g.to_string(),
            (None, None) => "unknown".into(),
        };
        let deployment = route.map_or_else(|| "none".to_string(), |r| r.info().id.clone());
        if self.group_index > 0
            && let Some(first) = &self.first_group
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
            metrics::histogram!(telemetry::UPSTREAM_SECONDS, "deployment" => deployment)
                .record(self.upstream_time.as_secs_f64());
            metrics::histogram!(telemetry::OVERHEAD_SECONDS)
                .record(total.saturating_sub(self.upstream_time).as_secs_f64());
        }
    }
}

/// A status as header text, without an allocation.
fn status_str(status: u16) -> &'static str {
    static TEXT: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| (0..600).map(|s| s.to_string()).collect());
    match TEXT.get(usize::from(status)) {
        Some(s) if status >= 100 => s,
        _ => "500",
    }
}

/// Logs and counts an answer that could not be published.
fn unpublished(what: &'static str, reason: &str) {
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
    let (h, body) = failed_job(job_id);
    let _ = client
        .publish_with_headers(reply.clone(), h.clone(), body)
        .await;
    let _ = client.publish_with_headers(reply, h, Bytes::new()).await;
}

/// The headers and 500 body of a job that could not run to its answer.
pub(super) fn failed_job(job_id: Option<&str>) -> (HeaderMap, Bytes) {
    let e = ApiError::internal("internal error while running the job; it was not completed");
    let mut h = HeaderMap::new();
    h.insert(headers::STATUS, "500");
    if let Some(id) = job_id {
        h.insert(headers::JOB_ID, id);
    }
    (h, e.to_json())
}
