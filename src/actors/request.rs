//! The request actor: one per job. It owns the job's whole life — validation, deadline,
//! asking the router for a deployment and the deployment for capacity, the upstream call,
//! retries and fallbacks, forwarding the reply or the stream chunks, and reporting usage.
//!
//! It is a small state machine. The upstream call runs in a task of its own; the task sends
//! its result (or each stream chunk) back to the actor as a message tagged with the attempt
//! number, so a late message from an abandoned attempt is recognised and dropped. A deadline
//! message, scheduled at start, guarantees the requester an answer even if the upstream never
//! answers.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::{HeaderMap, service::Request};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use ractor::{Actor, ActorProcessingErr, ActorRef, rpc::CallResult};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::{
    WorkerContext,
    deployment::DeploymentMsg,
    router::{Route, RouteError, RouteRequest, RouterMsg},
};
use crate::{
    limits::{Permit, estimate_prompt_tokens, estimate_text_tokens},
    policy::{retry::FallbackKind, routing::random},
    pricing,
    providers::{CallContext, ErrorClass, ProviderError},
    telemetry,
    usage::UsageEvent,
    wire::{
        ApiError,
        headers::{self, RequestHeaders},
        openai::{
            ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, EmbeddingRequest,
            EmbeddingResponse, Usage,
        },
    },
};

/// What a job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// A chat completion (`llm.completion`).
    Completion,
    /// Embeddings (`llm.embedding`).
    Embedding,
}

/// A parsed request body, as sent upstream.
#[derive(Clone)]
enum Body {
    Chat(Arc<ChatCompletionRequest>),
    Embedding(Arc<EmbeddingRequest>),
}

/// One job as ingress hands it over.
pub struct Job {
    /// What it asks for.
    pub kind: JobKind,
    /// The NATS request (payload, headers, reply subject).
    pub request: Request,
    /// When the worker received it.
    pub received: Instant,
    /// The job id that logs and the `Llm-Job-Id` header carry.
    pub id: String,
    /// Set once the job's final message has gone out; ingress answers a job whose actor
    /// failed before that.
    pub done: Arc<AtomicBool>,
}

/// Messages the request actor takes.
pub enum RequestMsg {
    /// Begin.
    Start,
    /// A non-streaming call ended.
    Reply {
        /// Which attempt.
        attempt: u32,
        /// The upstream's answer.
        result: Result<ChatCompletionResponse, ProviderError>,
    },
    /// An embeddings call ended.
    Embedded {
        /// Which attempt.
        attempt: u32,
        /// The upstream's answer.
        result: Result<EmbeddingResponse, ProviderError>,
    },
    /// One item of a streaming call.
    Chunk {
        /// Which attempt.
        attempt: u32,
        /// The chunk, or the failure that ends the stream.
        item: Result<ChatCompletionChunk, ProviderError>,
    },
    /// A streaming call ended normally.
    StreamEnd {
        /// Which attempt.
        attempt: u32,
    },
    /// A back-off before a retry is over.
    Retry,
    /// The job's deadline passed.
    Deadline,
}

/// The request actor; its arguments are the job and the worker's shared context.
pub struct RequestActor;

/// Capacity held on a deployment; given back when dropped, even if the actor panics.
struct Held {
    actor: ActorRef<DeploymentMsg>,
    permit: Option<Permit>,
    actual_tokens: Option<u64>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let _ = self.actor.cast(DeploymentMsg::Release {
                permit,
                actual_tokens: self.actual_tokens,
            });
        }
    }
}

/// The upstream call of the current attempt; aborted when dropped.
struct Call {
    route: Route,
    held: Held,
    started: Instant,
    first_chunk: Option<Duration>,
    task: JoinHandle<()>,
}

impl Drop for Call {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The actor's state: everything about one job.
pub struct RequestState {
    job: Job,
    ctx: Arc<WorkerContext>,
    span: tracing::Span,
    deadline: Instant,
    traceparent: Option<String>,
    /// The body sent upstream (streams always ask for usage, to count cost).
    body: Option<Body>,
    stream: bool,
    client_wants_usage: bool,
    /// Model groups to try: the requested one, then fallbacks.
    groups: Vec<String>,
    /// Fallbacks the request itself named (`Llm-Fallbacks`, then the body's `fallbacks`).
    request_fallbacks: Vec<String>,
    fallbacks_planned: bool,
    tags: Vec<String>,
    prompt_tokens: u64,
    group_index: usize,
    tries_in_group: u32,
    excluded: Vec<String>,
    attempts: u32,
    /// True while a back-off runs, and for the attempt right after it.
    waited: bool,
    call: Option<Call>,
    last_error: Option<ApiError>,
    last_retry_after: Option<Duration>,
    /// The group the requested model resolved to.
    first_group: Option<String>,
    served_group: Option<String>,
    /// The deployment of the last attempt that failed, for the reply headers.
    last_route: Option<Route>,
    upstream_time: Duration,
    out: StreamOut,
    finished: bool,
}

/// What a stream has sent so far.
#[derive(Default)]
struct StreamOut {
    seq: u64,
    committed: bool,
    pending: Vec<ChatCompletionChunk>,
    usage: Option<Usage>,
    text: usize,
}

impl Actor for RequestActor {
    type Msg = RequestMsg;
    type State = RequestState;
    type Arguments = (Job, Arc<WorkerContext>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (job, ctx): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let span =
            tracing::info_span!("job", job_id = %job.id, traceparent = tracing::field::Empty);
        let deadline = job.received + ctx.default_timeout;
        myself.cast(RequestMsg::Start)?;
        Ok(RequestState {
            job,
            ctx,
            span,
            deadline,
            traceparent: None,
            body: None,
            stream: false,
            client_wants_usage: false,
            groups: Vec::new(),
            request_fallbacks: Vec::new(),
            fallbacks_planned: false,
            tags: Vec::new(),
            prompt_tokens: 0,
            group_index: 0,
            tries_in_group: 0,
            excluded: Vec::new(),
            attempts: 0,
            waited: false,
            call: None,
            last_error: None,
            last_retry_after: None,
            first_group: None,
            served_group: None,
            last_route: None,
            upstream_time: Duration::ZERO,
            out: StreamOut::default(),
            finished: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        async {
            if state.finished {
                return;
            }
            match msg {
                RequestMsg::Start => state.start(&myself).await,
                RequestMsg::Reply { attempt, result } if attempt == state.attempts => {
                    match result {
                        Ok(response) => state.reply(response).await,
                        Err(e) => state.upstream_failed(&myself, e).await,
                    }
                }
                RequestMsg::Embedded { attempt, result } if attempt == state.attempts => {
                    match result {
                        Ok(response) => state.embedded(response).await,
                        Err(e) => state.upstream_failed(&myself, e).await,
                    }
                }
                RequestMsg::Chunk { attempt, item } if attempt == state.attempts => match item {
                    Ok(chunk) => state.chunk(chunk).await,
                    Err(e) if state.out.committed => state.fail_stream(&e).await,
                    Err(e) => state.upstream_failed(&myself, e).await,
                },
                RequestMsg::StreamEnd { attempt } if attempt == state.attempts => {
                    state.end_stream().await
                }
                RequestMsg::Retry if state.call.is_none() => state.next_attempt(&myself).await,
                RequestMsg::Deadline => {
                    let ms = state
                        .deadline
                        .duration_since(state.job.received)
                        .as_millis();
                    let e = ApiError::deadline(format!(
                        "the job's deadline of {ms} ms passed before the upstream answered"
                    ));
                    // A call cut by the deadline is a timeout of its deployment.
                    if let Some(call) = state.call.take() {
                        let _ = call.route.actor.cast(DeploymentMsg::Outcome {
                            latency: call.started.elapsed(),
                            ttft: call.first_chunk,
                            failure: Some((ErrorClass::Timeout, None)),
                        });
                        state.last_route = Some(call.route.clone());
                    }
                    state.fail(e).await;
                }
                // A late message from an attempt already given up.
                _ => {}
            }
            if state.finished {
                myself.stop(None);
            }
        }
        .instrument(span)
        .await;
        Ok(())
    }
}

impl RequestState {
    async fn start(&mut self, myself: &ActorRef<RequestMsg>) {
        let message = &self.job.request.message;
        let parsed = match RequestHeaders::from_nats(message.headers.as_ref()) {
            Ok(h) => h,
            Err(e) => return self.fail(e).await,
        };
        if let Some(t) = parsed.timeout {
            self.deadline = self.job.received + t;
        }
        self.traceparent = parsed.traceparent;
        self.request_fallbacks = parsed.fallbacks;
        self.tags = parsed.tags;
        if let Some(tp) = &self.traceparent {
            self.span.record("traceparent", tp.as_str());
            tracing::debug!(traceparent = %tp, "job has a trace context");
        }
        let after = self.deadline.saturating_duration_since(Instant::now());
        myself.send_after(after, || RequestMsg::Deadline);

        if self.job.kind == JobKind::Embedding {
            let mut body = match parse_embedding(&message.payload) {
                Ok(b) => b,
                Err(e) => return self.fail(e).await,
            };
            self.request_fallbacks
                .extend(take_fallbacks(&mut body.extra));
            self.prompt_tokens = body
                .input
                .texts()
                .iter()
                .map(|t| estimate_text_tokens(t))
                .sum();
            self.groups.push(body.model.clone());
            self.body = Some(Body::Embedding(Arc::new(body)));
            return self.next_attempt(myself).await;
        }
        let mut body = match parse_body(&message.payload) {
            Ok(b) => b,
            Err(e) => return self.fail(e).await,
        };
        self.stream = body.is_stream();
        self.client_wants_usage = body.include_usage();
        if self.stream && !self.client_wants_usage {
            // Ask for usage anyway so the cost is right; the client does not see it.
            let opts =
                body.stream_options
                    .get_or_insert_with(|| crate::wire::openai::StreamOptions {
                        include_usage: None,
                        extra: Default::default(),
                    });
            opts.include_usage = Some(true);
        }
        self.request_fallbacks
            .extend(take_fallbacks(&mut body.extra));
        self.prompt_tokens = estimate_prompt_tokens(&body);
        self.groups.push(body.model.clone());
        self.body = Some(Body::Chat(Arc::new(body)));
        self.next_attempt(myself).await;
    }

    /// Picks a deployment, waits for its capacity and starts the upstream call; or answers
    /// the job when nothing is left to try.
    async fn next_attempt(&mut self, myself: &ActorRef<RequestMsg>) {
        loop {
            let Some(model) = self.groups.get(self.group_index).cloned() else {
                let e = self
                    .last_error
                    .take()
                    .unwrap_or_else(|| ApiError::unavailable("no deployment could serve the job"));
                return self.fail(e).await;
            };
            let remaining = self.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return self.fail(deadline_error(self)).await;
            }
            let request = RouteRequest {
                model,
                exclude: self.excluded.clone(),
                tags: self.tags.clone(),
                prompt_tokens: self.prompt_tokens,
                stream: self.stream,
            };
            let routed = self
                .ctx
                .router
                .call(|reply| RouterMsg::Route(request, reply), Some(remaining))
                .await;
            let route = match routed {
                Ok(CallResult::Success(Ok(route))) => route,
                Ok(CallResult::Success(Err(RouteError::UnknownModel(e)))) => {
                    if self.group_index == 0 {
                        return self.fail(e).await;
                    }
                    // A fallback group that does not exist: skip it.
                    self.next_group();
                    continue;
                }
                Ok(CallResult::Success(Err(RouteError::Unavailable {
                    group,
                    error,
                    retry_in,
                }))) => {
                    self.first_group.get_or_insert(group);
                    self.last_error = Some(error);
                    // Every deployment is cooling down: wait for the first to come back when
                    // the retries and the deadline allow it, else fall back.
                    let retries = self.ctx.retry.retries_for(ErrorClass::RateLimit);
                    if let Some(wait) = retry_in
                        && !self.waited
                        && self.tries_in_group < retries + 1
                        && self.wait_then_retry(myself, wait)
                    {
                        self.tries_in_group += 1;
                        return;
                    }
                    self.exhaust_group(FallbackKind::Generic);
                    continue;
                }
                Ok(CallResult::Success(Err(RouteError::ContextWindow { group, error }))) => {
                    self.first_group.get_or_insert(group);
                    self.last_error = Some(error);
                    self.exhaust_group(FallbackKind::ContextWindow);
                    continue;
                }
                Ok(CallResult::Timeout) => return self.fail(deadline_error(self)).await,
                _ => {
                    return self
                        .fail(ApiError::internal("the router is not running"))
                        .await;
                }
            };
            self.first_group.get_or_insert_with(|| route.group.clone());
            if !route.fresh && self.attempts > 0 && !self.waited {
                // Nothing but the deployment that just failed: back off before trying it again.
                let jitter = random();
                let wait =
                    self.ctx
                        .retry
                        .backoff(self.tries_in_group, self.last_retry_after, jitter);
                if self.wait_then_retry(myself, wait) {
                    return;
                }
                self.exhaust_group(FallbackKind::Generic);
                continue;
            }
            self.waited = false;

            let body = self
                .body
                .clone()
                .expect("body parsed before the first attempt");
            let est_tokens = self.prompt_tokens;
            let permit = match route
                .actor
                .call(
                    |reply| DeploymentMsg::Acquire { est_tokens, reply },
                    Some(remaining),
                )
                .await
            {
                Ok(CallResult::Success(permit)) => permit,
                Ok(CallResult::Timeout) => {
                    let ms = self.deadline.duration_since(self.job.received).as_millis();
                    return self
                        .fail(ApiError::rate_limited(format!(
                            "no capacity on model group `{}` within the job's deadline of {ms} ms \
                             (rpm/tpm/max_parallel_requests limits are reached); retry later",
                            route.group
                        )))
                        .await;
                }
                _ => {
                    // The deployment actor is being restarted: try another one.
                    self.excluded.push(route.deployment.id.clone());
                    continue;
                }
            };
            self.attempts += 1;
            self.tries_in_group += 1;
            self.served_group = Some(route.group.clone());
            let held = Held {
                actor: route.actor.clone(),
                permit: Some(permit),
                actual_tokens: Some(0),
            };
            let task = self.spawn_call(myself, &route, body, remaining);
            self.call = Some(Call {
                route,
                held,
                started: Instant::now(),
                first_chunk: None,
                task,
            });
            return;
        }
    }

    /// Schedules a [`RequestMsg::Retry`] after `wait`, unless that would pass the deadline.
    fn wait_then_retry(&mut self, myself: &ActorRef<RequestMsg>, wait: Duration) -> bool {
        if Instant::now() + wait >= self.deadline {
            return false;
        }
        self.waited = true;
        myself.send_after(wait, || RequestMsg::Retry);
        true
    }

    /// The current group is done for: move on to the next, planning the fallbacks when the
    /// first group is left (by the kind of its last failure).
    fn exhaust_group(&mut self, kind: FallbackKind) {
        if !self.fallbacks_planned {
            self.fallbacks_planned = true;
            let first = self
                .first_group
                .clone()
                .unwrap_or_else(|| self.groups[0].clone());
            let planned = self.ctx.fallbacks.for_group(&first, kind);
            let max = self.ctx.fallbacks.max();
            for g in planned.into_iter().chain(self.request_fallbacks.clone()) {
                if self.groups.len() > max {
                    break;
                }
                if g != first && !self.groups.contains(&g) {
                    self.groups.push(g);
                }
            }
        }
        self.next_group();
    }

    fn next_group(&mut self) {
        self.group_index += 1;
        self.tries_in_group = 0;
        self.excluded.clear();
        self.waited = false;
    }

    fn spawn_call(
        &self,
        myself: &ActorRef<RequestMsg>,
        route: &Route,
        body: Body,
        remaining: Duration,
    ) -> JoinHandle<()> {
        let dep = route.deployment.clone();
        let attempt = self.attempts;
        let me = myself.clone();
        let timeout = dep.timeout.map_or(remaining, |t| t.min(remaining));
        let cctx = CallContext {
            upstream_model: dep.upstream_model.clone(),
            timeout,
            traceparent: self.traceparent.clone(),
        };
        let stream = self.stream;
        let idle = dep.stream_timeout.map_or(remaining, |t| t.min(remaining));
        let work = async move {
            let body = match body {
                Body::Embedding(body) => {
                    let result = dep.provider.embed(&body, &cctx).await;
                    let _ = me.cast(RequestMsg::Embedded { attempt, result });
                    return;
                }
                Body::Chat(body) => body,
            };
            if !stream {
                let result = dep.provider.complete(&body, &cctx).await;
                let _ = me.cast(RequestMsg::Reply { attempt, result });
                return;
            }
            let mut chunks = match dep.provider.stream(&body, &cctx).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = me.cast(RequestMsg::Chunk {
                        attempt,
                        item: Err(e),
                    });
                    return;
                }
            };
            loop {
                match tokio::time::timeout(idle, chunks.next()).await {
                    Ok(Some(item)) => {
                        let failed = item.is_err();
                        if me.cast(RequestMsg::Chunk { attempt, item }).is_err() || failed {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = me.cast(RequestMsg::StreamEnd { attempt });
                        return;
                    }
                    Err(_) => {
                        let e = ProviderError::new(
                            ErrorClass::Timeout,
                            format!("the stream sent nothing for {} ms", idle.as_millis()),
                        );
                        let _ = me.cast(RequestMsg::Chunk {
                            attempt,
                            item: Err(e),
                        });
                        return;
                    }
                }
            }
        };
        let me = myself.clone();
        tokio::spawn(
            async move {
                // A panic in a provider adapter answers this job with a 500 and harms no other.
                if AssertUnwindSafe(work).catch_unwind().await.is_err() {
                    let e = ProviderError::new(
                        ErrorClass::InvalidResponse,
                        "internal error in the provider adapter (panic)",
                    );
                    let _ = me.cast(RequestMsg::Chunk {
                        attempt,
                        item: Err(ProviderError {
                            status: Some(500),
                            ..e
                        }),
                    });
                }
            }
            .in_current_span(),
        )
    }

    /// The current attempt failed before anything reached the client: retry, fall back, or
    /// answer with the error.
    async fn upstream_failed(&mut self, myself: &ActorRef<RequestMsg>, e: ProviderError) {
        let Some(call) = self.call.take() else { return };
        let dep = call.route.deployment.clone();
        let latency = call.started.elapsed();
        self.upstream_time += latency;
        let _ = call.route.actor.cast(DeploymentMsg::Outcome {
            latency,
            ttft: None,
            failure: Some((e.class, e.retry_after)),
        });
        self.last_route = Some(call.route.clone());
        drop(call);
        // Nothing of this attempt reached the client: forget what it buffered.
        self.out = StreamOut::default();
        tracing::warn!(deployment = %dep.id, class = ?e.class, status = ?e.status, error = %e.message, "upstream attempt failed");
        let panicked = e.status == Some(500) && e.message.contains("(panic)");
        if panicked {
            let err = ApiError::internal(format!(
                "internal error while calling deployment `{}`; the job was not completed",
                dep.id
            ));
            return self.fail(err).await;
        }
        self.last_error = Some(upstream_error(&dep.id, &e));
        self.last_retry_after = e.retry_after;
        if self.tries_in_group <= self.ctx.retry.retries_for(e.class) {
            self.excluded.push(dep.id.clone());
            metrics::counter!(telemetry::RETRIES, "model_group" => dep.model_group.clone())
                .increment(1);
        } else {
            self.exhaust_group(FallbackKind::of(e.class));
        }
        self.next_attempt(myself).await;
    }

    async fn reply(&mut self, mut response: ChatCompletionResponse) {
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
        call.held.actual_tokens = Some(usage.total_tokens);
        let _ = call.route.actor.cast(DeploymentMsg::Outcome {
            latency,
            ttft: None,
            failure: None,
        });
        let cost = self.record_usage(&call.route, &usage, None);
        // Settle the capacity before answering, so the next job sees the real usage.
        let route = call.route.clone();
        drop(call);
        self.send_payload(&response, &route, cost).await;
    }

    async fn embedded(&mut self, mut response: EmbeddingResponse) {
        let Some(mut call) = self.call.take() else {
            return;
        };
        let latency = call.started.elapsed();
        self.upstream_time += latency;
        if response.usage.prompt_tokens == 0 {
            response.usage = Usage::new(self.prompt_tokens, 0);
        }
        let usage = response.usage.clone();
        call.held.actual_tokens = Some(usage.total_tokens);
        let _ = call.route.actor.cast(DeploymentMsg::Outcome {
            latency,
            ttft: None,
            failure: None,
        });
        let cost = self.record_usage(&call.route, &usage, None);
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
        self.send_final(payload, headers).await;
        self.observe(200, Some(route));
    }

    async fn chunk(&mut self, mut chunk: ChatCompletionChunk) {
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
                return;
            }
            chunk.usage = None;
        }
        if self.out.committed {
            return self.publish_chunk(&chunk).await;
        }
        if !chunk.has_content() {
            self.out.pending.push(chunk);
            return;
        }
        // The first content: the stream is committed to this deployment.
        self.out.committed = true;
        if let Some(call) = &self.call {
            metrics::histogram!(telemetry::TTFT_SECONDS, "model_group" => call.route.group.clone())
                .record(self.job.received.elapsed().as_secs_f64());
        }
        for pending in std::mem::take(&mut self.out.pending) {
            self.publish_chunk(&pending).await;
        }
        self.publish_chunk(&chunk).await;
    }

    async fn end_stream(&mut self) {
        for pending in std::mem::take(&mut self.out.pending) {
            self.publish_chunk(&pending).await;
        }
        let Some(mut call) = self.call.take() else {
            return;
        };
        let latency = call.started.elapsed();
        self.upstream_time += latency;
        let usage =
            self.out.usage.clone().unwrap_or_else(|| {
                Usage::new(self.prompt_tokens, (self.out.text as u64).div_ceil(4))
            });
        call.held.actual_tokens = Some(usage.total_tokens);
        let _ = call.route.actor.cast(DeploymentMsg::Outcome {
            latency,
            ttft: call.first_chunk,
            failure: None,
        });
        let ttft = call
            .first_chunk
            .map(|f| call.started.saturating_duration_since(self.job.received) + f);
        let cost = self.record_usage(&call.route, &usage, ttft);
        let route = call.route.clone();
        drop(call);
        let headers = self.final_headers(200, Some(&route), Some(cost));
        self.send_final(Bytes::new(), headers).await;
        self.observe(200, Some(&route));
    }

    /// A committed stream broke: an error body, then the sentinel with the error status.
    async fn fail_stream(&mut self, e: &ProviderError) {
        let Some(call) = self.call.take() else { return };
        let latency = call.started.elapsed();
        self.upstream_time += latency;
        let _ = call.route.actor.cast(DeploymentMsg::Outcome {
            latency,
            ttft: call.first_chunk,
            failure: Some((e.class, e.retry_after)),
        });
        tracing::warn!(deployment = %call.route.deployment.id, error = %e.message, "stream failed after its first chunk");
        let mut err = upstream_error(&call.route.deployment.id, e);
        err.message = format!("the stream broke after it started: {}", err.message);
        let route = call.route.clone();
        drop(call);
        self.send_error(&err, Some(&route)).await;
    }

    async fn publish_chunk(&mut self, chunk: &ChatCompletionChunk) {
        let Some(reply) = self.job.request.message.reply.clone() else {
            return;
        };
        self.out.seq += 1;
        let mut headers = HeaderMap::new();
        headers.insert(headers::SEQ, self.out.seq.to_string().as_str());
        let payload = match serde_json::to_vec(chunk) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "chunk did not serialize");
                return;
            }
        };
        if let Err(e) = self
            .ctx
            .client
            .publish_with_headers(reply, headers, payload.into())
            .await
        {
            tracing::debug!(error = %e, "chunk not published");
        }
    }

    /// Answers the job with an error (and, for a stream, the sentinel after it).
    async fn fail(&mut self, e: ApiError) {
        let route = self
            .call
            .take()
            .map(|c| c.route.clone())
            .or_else(|| self.last_route.take());
        self.send_error(&e, route.as_ref()).await;
    }

    async fn send_error(&mut self, e: &ApiError, route: Option<&Route>) {
        if e.status >= 500 {
            tracing::warn!(status = e.status, error = %e.message, "job failed");
        } else {
            tracing::debug!(status = e.status, error = %e.message, "job refused");
        }
        let mut event = self.usage_event(route, e.status);
        event.error_class = Some(UsageEvent::error_class_of(e));
        self.ctx.usage.record(event);
        let headers = self.final_headers(e.status, route, None);
        if self.stream {
            self.out.seq += 1;
            let mut h = headers.clone();
            h.insert(headers::SEQ, self.out.seq.to_string().as_str());
            if let Some(reply) = self.job.request.message.reply.clone() {
                let _ = self
                    .ctx
                    .client
                    .publish_with_headers(reply, h, e.to_json())
                    .await;
            }
            self.send_final(Bytes::new(), headers).await;
        } else {
            self.send_final(e.to_json(), headers).await;
        }
        self.observe(e.status, route);
    }

    fn final_headers(&self, status: u16, route: Option<&Route>, cost: Option<f64>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(headers::STATUS, status.to_string().as_str());
        h.insert(headers::JOB_ID, self.job.id.as_str());
        h.insert(headers::ATTEMPTS, self.attempts.to_string().as_str());
        if let Some(route) = route {
            h.insert(headers::MODEL_GROUP, route.group.as_str());
            h.insert(headers::DEPLOYMENT, route.deployment.id.as_str());
        }
        if let Some(cost) = cost {
            h.insert(headers::COST_USD, cost.to_string().as_str());
        }
        h
    }

    /// Sends the job's last message (reply, error or sentinel) and marks the job done.
    async fn send_final(&mut self, payload: Bytes, headers: HeaderMap) {
        self.finished = true;
        self.call = None;
        if self.job.done.swap(true, Ordering::AcqRel) {
            // Ingress already answered this job (it was cut off at shutdown).
            return;
        }
        if self.job.request.message.reply.is_none() {
            return;
        }
        if let Err(e) = self
            .job
            .request
            .respond_with_headers(Ok(payload), headers)
            .await
        {
            tracing::debug!(error = %e, "reply not published");
        }
    }

    /// Prices `usage` and hands the job's usage event to the usage sink (never waits).
    fn record_usage(&self, route: &Route, usage: &Usage, ttft: Option<Duration>) -> f64 {
        let d = &route.deployment;
        let cost = pricing::cost_or_unpriced(d.price.as_ref(), &d.model, usage);
        let mut event = self.usage_event(Some(route), 200);
        event.prompt_tokens = usage.prompt_tokens;
        event.cached_tokens = usage.cached_tokens();
        event.cache_creation_tokens = usage
            .extra
            .get("cache_creation_input_tokens")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        event.completion_tokens = usage.completion_tokens;
        event.reasoning_tokens = usage.reasoning_tokens();
        event.cost_usd = cost;
        event.ttft_ms = ttft.map(|t| t.as_secs_f64() * 1000.0);
        self.ctx.usage.record(event);
        cost
    }

    /// The usage event of this job as it ends with `status`, tokens and cost not filled in.
    fn usage_event(&self, route: Option<&Route>, status: u16) -> UsageEvent {
        let requested = match &self.body {
            Some(Body::Chat(b)) => Some((b.model.clone(), b.user.clone())),
            Some(Body::Embedding(b)) => Some((b.model.clone(), b.user.clone())),
            None => None,
        };
        let (model, user) = requested.unzip();
        UsageEvent {
            job_id: self.job.id.clone(),
            timestamp_ms: crate::usage::event::now_ms(),
            model_group: route
                .map(|r| r.group.clone())
                .or_else(|| self.served_group.clone())
                .or_else(|| self.first_group.clone())
                .or(model)
                .unwrap_or_default(),
            deployment: route.map(|r| r.deployment.id.clone()),
            provider: route.map(|r| {
                crate::providers::prefix(&r.deployment.model)
                    .unwrap_or("openai")
                    .to_string()
            }),
            model: route.map(|r| r.deployment.model.clone()),
            user: user.flatten(),
            tags: self.tags.clone(),
            latency_ms: self.job.received.elapsed().as_secs_f64() * 1000.0,
            status,
            stream: self.stream,
            attempts: self.attempts,
            traceparent: self.traceparent.clone(),
            ..UsageEvent::default()
        }
    }

    fn observe(&self, status: u16, route: Option<&Route>) {
        let total = self.job.received.elapsed();
        let group = route.map_or_else(
            || {
                self.served_group
                    .clone()
                    .unwrap_or_else(|| "unknown".into())
            },
            |r| r.group.clone(),
        );
        let deployment = route.map_or_else(|| "none".to_string(), |r| r.deployment.id.clone());
        if self.group_index > 0
            && let Some(first) = &self.first_group
        {
            let result = if status == 200 { "success" } else { "failure" };
            metrics::counter!(telemetry::FALLBACKS, "model_group" => first.clone(), "result" => result)
                .increment(1);
        }
        let status = status.to_string();
        metrics::counter!(telemetry::REQUESTS, "model_group" => group.clone(), "deployment" => deployment.clone(), "status" => status.clone()).increment(1);
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

/// Parses and checks the body: JSON, the field types, `model` and `messages`.
fn parse_body(payload: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty: publish an OpenAI chat completion request as JSON",
        ));
    }
    let body: ChatCompletionRequest = serde_json::from_slice(payload)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    if body.model.trim().is_empty() {
        return Err(ApiError::bad_request("`model` must not be empty").with_param("model"));
    }
    if body.messages.is_empty() {
        return Err(
            ApiError::bad_request("`messages` must hold at least one message")
                .with_param("messages"),
        );
    }
    Ok(body)
}

/// Parses and checks an embeddings body: JSON, the field types, `model` and `input`.
fn parse_embedding(payload: &[u8]) -> Result<EmbeddingRequest, ApiError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty: publish an OpenAI embeddings request as JSON",
        ));
    }
    let body: EmbeddingRequest = serde_json::from_slice(payload)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
    if body.model.trim().is_empty() {
        return Err(ApiError::bad_request("`model` must not be empty").with_param("model"));
    }
    if body.input.is_empty() {
        return Err(ApiError::bad_request("`input` must not be empty").with_param("input"));
    }
    Ok(body)
}

/// Removes LiteLLM's client-side `fallbacks` from a body's extra fields (it must not reach
/// the upstream) and returns the groups it names: `["a", "b"]` or `[{"group": ["a", "b"]}]`.
fn take_fallbacks(extra: &mut crate::wire::openai::Extra) -> Vec<String> {
    let Some(value) = extra.remove("fallbacks") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in value.as_array().into_iter().flatten() {
        match item {
            serde_json::Value::String(g) => out.push(g.clone()),
            serde_json::Value::Object(map) => {
                for list in map.values() {
                    out.extend(
                        list.as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|g| g.as_str().map(str::to_string)),
                    );
                }
            }
            _ => {}
        }
    }
    out
}

fn deadline_error(state: &RequestState) -> ApiError {
    let ms = state
        .deadline
        .duration_since(state.job.received)
        .as_millis();
    ApiError::deadline(format!("the job's deadline of {ms} ms passed"))
}

/// Turns a failed upstream call into the error the client gets.
fn upstream_error(deployment: &str, e: &ProviderError) -> ApiError {
    let message = format!("deployment `{deployment}`: {}", e.message);
    match e.class {
        ErrorClass::Authentication => ApiError::unauthorized(message),
        ErrorClass::PermissionDenied => ApiError::new(403, "permission_error", message),
        ErrorClass::NotFound => {
            ApiError::new(e.status.unwrap_or(404), "invalid_request_error", message)
        }
        ErrorClass::BadRequest => {
            ApiError::new(e.status.unwrap_or(400), "invalid_request_error", message)
        }
        ErrorClass::ContextWindowExceeded => ApiError::new(400, "invalid_request_error", message)
            .with_code("context_length_exceeded"),
        ErrorClass::ContentPolicyViolation => ApiError::new(400, "invalid_request_error", message)
            .with_code("content_policy_violation"),
        ErrorClass::RateLimit => ApiError::rate_limited(message),
        ErrorClass::Timeout => ApiError::deadline(message),
        ErrorClass::Connection | ErrorClass::InternalServer | ErrorClass::InvalidResponse => {
            ApiError::bad_gateway(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked() {
        assert_eq!(parse_body(b"  ").unwrap_err().status, 400);
        let e = parse_body(b"{not json").unwrap_err();
        assert!(e.message.starts_with("invalid request body"), "{e}");
        let e = parse_body(br#"{"messages":[]}"#).unwrap_err();
        assert!(e.message.contains("missing field `model`"), "{e}");
        let e = parse_body(br#"{"model":"m","messages":[]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = parse_body(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":"x"}"#,
        )
        .unwrap_err();
        assert!(
            e.message.contains("max_tokens") || e.message.contains("invalid type"),
            "{e}"
        );
        assert!(
            parse_body(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).is_ok()
        );
    }

    #[test]
    fn upstream_client_errors_keep_their_status() {
        let e = ProviderError {
            class: ErrorClass::BadRequest,
            status: Some(422),
            message: "bad".into(),
            retry_after: None,
        };
        assert_eq!(upstream_error("d", &e).status, 422);
        let e = ProviderError::new(ErrorClass::InternalServer, "boom");
        assert_eq!(upstream_error("d", &e).status, 502);
        let e = ProviderError::new(ErrorClass::Authentication, "no");
        assert_eq!(upstream_error("d", &e).status, 401);
    }
}
