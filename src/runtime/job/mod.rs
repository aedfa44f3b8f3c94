//! A job: one request's whole life, run as one tokio task — the "request actor" role of the
//! design, carried out as a task because spawning a ractor actor per job cost 15 µs and a
//! mailbox per job (see the crate docs for the measurements).
//!
//! The task validates the job, reads the routing table, takes capacity on a deployment, makes
//! the upstream call in place (no second task), retries on another deployment or falls back
//! to another group, and answers. Four things can end it early, whichever comes first:
//! - its **deadline** (`Llm-Timeout-Ms`, else the configured timeout): a 504, or a 429 when it
//!   was still waiting for capacity; a call cut short counts as a timeout of its deployment;
//! - the worker's **cut-off** at the end of a drain's grace period: a 503
//!   `worker_shutting_down`;
//! - a **cancel** from its requester (`llm.cancel`): no answer, the call and capacity go;
//! - a **panic** anywhere in it: [`supervise`] answers a 500, and no other job notices.
//!
//! Dropping the job's future is what stops it: the upstream connection closes, the capacity
//! lease goes back to its deployment (`deployment::Lease`), the cancel registration is removed,
//! and the gate's ticket frees the place. No per-job state outlives the task.
//!
//! - `attempt`: routing, capacity, the upstream call, retries and fallbacks.
//! - `answer`: replies, stream chunks, sentinels, errors, reply headers, metrics and usage.
//! - `parse`: the body.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::FutureExt;
use tracing::Instrument;

use super::{WorkerContext, deployment::Lease, gate::Ticket, table::Route};
use crate::{
    auth::Caller,
    limits::Demand,
    providers::ErrorClass,
    wire::{
        ApiError,
        headers::RequestHeaders,
        openai::{ChatCompletionChunk, ChatCompletionRequest, EmbeddingRequest, Usage},
    },
};

mod answer;
mod attempt;
pub mod parse;
pub mod reply;

pub use answer::answer_failed_job;

/// What a job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// A chat completion (`llm.completion`).
    Completion,
    /// Embeddings (`llm.embedding`).
    Embedding,
}

/// One job as ingress hands it over.
pub struct Job {
    /// What it asks for.
    pub kind: JobKind,
    /// The request (payload, headers) and where it answers: a NATS reply subject, or the
    /// in-process front ([`reply`]).
    pub request: reply::Request,
    /// When the worker received it.
    pub received: Instant,
    /// The job id that logs and the `Llm-Job-Id` header carry.
    pub id: String,
}

/// A parsed request body, as sent upstream.
#[derive(Clone)]
enum Body {
    Chat(Arc<ChatCompletionRequest>),
    Embedding(Arc<EmbeddingRequest>),
}

/// How a job ended before its own answer.
enum Stop {
    /// It answered.
    Done,
    /// Its deadline passed.
    Deadline,
    /// The worker's grace period ran out.
    CutOff,
    /// Its requester cancelled it.
    Cancelled,
}

/// Runs `job` to its end and answers it whatever happens, a panic included. `ticket` is the
/// job's place in the gate, given back when this returns.
pub async fn supervise(job: Job, ctx: Arc<WorkerContext>, ticket: Ticket) {
    let on_failure = job.request.on_failure();
    let id = job.id.clone();
    let answered = AtomicBool::new(false);
    let span = tracing::info_span!("job", job_id = %job.id, traceparent = tracing::field::Empty);
    // Boxed: the job's state machine is several kilobytes, and a task's future is moved by
    // value on spawn; this way only a pointer moves.
    let run = Box::pin(JobState::new(job, &ctx, &answered, span.clone()).run());
    if AssertUnwindSafe(run.instrument(span))
        .catch_unwind()
        .await
        .is_err()
    {
        tracing::error!(job_id = %id, "a job failed with a panic; answering it with a 500");
        metrics::counter!(crate::telemetry::REQUESTS, "model_group" => "unknown", "deployment" => "none", "status" => "500").increment(1);
        if !answered.swap(true, Ordering::AcqRel) {
            on_failure.answer(&ctx.client, &id).await;
        }
    }
    drop(ticket);
}

/// The upstream call of the current attempt.
struct Call {
    route: Route,
    /// The deployment's capacity this call holds; dropping the call gives it back.
    held: Lease,
    started: Instant,
    first_chunk: Option<Duration>,
}

/// What a job's upstream use cost, for its usage event.
struct Spent {
    usage: Usage,
    cost: f64,
    /// From receipt to a stream's first chunk.
    ttft: Option<Duration>,
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

/// Everything about one job while it runs.
struct JobState<'a> {
    job: Job,
    ctx: &'a WorkerContext,
    /// The config's rules, as they were when the job arrived.
    settings: Arc<super::JobSettings>,
    /// Set once the job's final message has gone out.
    answered: &'a AtomicBool,
    span: tracing::Span,
    /// Who the job runs for, once the key is checked.
    caller: Option<Caller>,
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
    /// What each attempt reserves on its deployment (prompt and output bound).
    demand: Demand,
    group_index: usize,
    tries_in_group: u32,
    excluded: Vec<String>,
    attempts: u32,
    /// True while a back-off runs, and for the attempt right after it.
    waited: bool,
    /// True while the job waits in a deployment's queue for capacity.
    waiting_for_capacity: bool,
    call: Option<Call>,
    /// The answer should nothing else work, and the `Retry-After` it carries (a cooldown's
    /// end, or the upstream's own).
    last_error: Option<ApiError>,
    error_retry_after: Option<Duration>,
    /// The upstream's `Retry-After` of the last failed attempt, for the back-off.
    last_retry_after: Option<Duration>,
    /// The `Retry-After` header of the job's error answer (429 and 503 only).
    retry_after: Option<Duration>,
    /// The group the requested model resolved to.
    first_group: Option<Arc<str>>,
    served_group: Option<Arc<str>>,
    /// The deployment of the last attempt that failed, for the reply headers.
    last_route: Option<Route>,
    upstream_time: Duration,
    out: StreamOut,
    /// Tokens and cost, once priced.
    spent: Option<Spent>,
    /// For a failure, the error class of its answer.
    error_class: Option<String>,
    /// Set once the job's usage event is recorded; a job dropped before that (a panic)
    /// records one as it goes (`Drop`).
    recorded: bool,
}

impl<'a> JobState<'a> {
    fn new(
        job: Job,
        ctx: &'a WorkerContext,
        answered: &'a AtomicBool,
        span: tracing::Span,
    ) -> Self {
        let settings = ctx.settings.load_full();
        let deadline = job.received + settings.default_timeout;
        Self {
            job,
            ctx,
            settings,
            answered,
            span,
            caller: None,
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
            demand: Demand::input_only(0),
            group_index: 0,
            tries_in_group: 0,
            excluded: Vec::new(),
            attempts: 0,
            waited: false,
            waiting_for_capacity: false,
            call: None,
            last_error: None,
            error_retry_after: None,
            last_retry_after: None,
            retry_after: None,
            first_group: None,
            served_group: None,
            last_route: None,
            upstream_time: Duration::ZERO,
            out: StreamOut::default(),
            spent: None,
            error_class: None,
            recorded: false,
        }
    }

    async fn run(mut self) {
        let ctx = self.ctx;
        let message = self.job.request.message();
        let registration = ctx
            .cancels
            .register(message.reply.as_ref(), message.headers.as_ref());
        // An in-process requester gone is its cancel.
        let gone = self.job.request.gone();
        if let Err(e) = self.prepare() {
            return self.fail(e).await;
        }
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let stop = tokio::select! {
            biased;
            _ = ctx.gate.cutoff().cancelled() => Stop::CutOff,
            _ = registration.cancelled() => Stop::Cancelled,
            _ = gone => Stop::Cancelled,
            _ = tokio::time::sleep_until(deadline) => Stop::Deadline,
            _ = self.attempts() => Stop::Done,
        };
        match stop {
            Stop::Done => {}
            Stop::Deadline => self.deadline_passed().await,
            Stop::CutOff => {
                ctx.gate.count_cut_off();
                tracing::warn!("the shutdown grace period ran out: answering 503");
                let e = ApiError::unavailable(
                    "the worker stopped before this job finished (its shutdown grace period ran \
                     out); retry it",
                )
                .with_code("worker_shutting_down");
                self.fail(e).await;
            }
            Stop::Cancelled => self.cancelled(),
        }
    }

    /// Checks the key, reads the headers and the body. An error here is the caller's.
    fn prepare(&mut self) -> Result<(), ApiError> {
        let message = self.job.request.message();
        self.caller = Some(self.settings.auth.check(message.headers.as_ref())?);
        let parsed = RequestHeaders::from_nats(message.headers.as_ref())?;
        if let Some(t) = parsed.timeout {
            self.deadline = self.job.received + t;
        }
        self.traceparent = parsed.traceparent;
        self.request_fallbacks = parsed.fallbacks;
        self.tags = parsed.tags;
        if let Some(tp) = &self.traceparent {
            self.span.record("traceparent", tp.as_str());
        }
        match self.job.kind {
            JobKind::Embedding => {
                let mut body = match self.job.request.take_embedding() {
                    Some(body) => body,
                    None => parse::embedding(&self.job.request.message().payload)?,
                };
                self.request_fallbacks
                    .extend(parse::take_fallbacks(&mut body.extra));
                self.prompt_tokens = body
                    .input
                    .texts()
                    .iter()
                    .map(|t| crate::limits::estimate_text_tokens(t))
                    .sum();
                self.demand = Demand::input_only(self.prompt_tokens);
                self.groups.push(body.model.clone());
                self.body = Some(Body::Embedding(Arc::new(body)));
            }
            JobKind::Completion => {
                let mut body = match self.job.request.take_chat() {
                    Some(body) => body,
                    None => parse::chat(&self.job.request.message().payload)?,
                };
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
                self.request_fallbacks
                    .extend(parse::take_fallbacks(&mut body.extra));
                self.demand = Demand::of_chat(&body);
                self.prompt_tokens = self.demand.prompt;
                self.groups.push(body.model.clone());
                self.body = Some(Body::Chat(Arc::new(body)));
            }
        }
        Ok(())
    }

    /// The deadline passed before the job answered.
    async fn deadline_passed(&mut self) {
        let ms = self.deadline.duration_since(self.job.received).as_millis();
        if self.waiting_for_capacity {
            let group = self.served_group.clone().or(self.first_group.clone());
            let e = ApiError::rate_limited(format!(
                "no capacity on model group `{}` within the job's deadline of {ms} ms \
                 (rpm/tpm/max_parallel_requests limits are reached); retry later",
                group.as_deref().unwrap_or("?")
            ));
            return self.fail(e).await;
        }
        let e = if self.call.is_some() {
            ApiError::deadline(format!(
                "the job's deadline of {ms} ms passed before the upstream answered"
            ))
        } else {
            ApiError::deadline(format!("the job's deadline of {ms} ms passed"))
        };
        // A call cut by the deadline is a timeout of its deployment.
        if let Some(mut call) = self.call.take() {
            call.held.settle_tokens(self.cut_usage());
            self.upstream_time += call.started.elapsed();
            call.route.deployment.outcome(
                call.started.elapsed(),
                call.first_chunk,
                Some((ErrorClass::Timeout, None)),
                Instant::now(),
            );
            self.last_route = Some(call.route.clone());
        }
        self.fail(e).await;
    }

    /// The requester gave up: stop without answering, and count what was used.
    fn cancelled(&mut self) {
        tracing::debug!("cancelled by the requester");
        let mut route = self.last_route.take();
        if let Some(mut call) = self.call.take() {
            let upstream = call.started.elapsed();
            self.upstream_time += upstream;
            let usage = self.stream_usage();
            call.held.settle_tokens(self.cut_usage());
            self.price(&call.route, &usage, upstream, None);
            route = Some(call.route.clone());
        }
        self.error_class = Some("cancelled".into());
        self.answered.store(true, Ordering::Release);
        self.observe(499, route.as_ref());
    }

    /// The tokens a call cut short used: a stream's, counted from what it sent; unknown for a
    /// call that had not answered yet (its reservation stands, since the upstream may have
    /// spent it).
    fn cut_usage(&self) -> Option<u64> {
        self.stream.then(|| self.stream_usage().total_tokens)
    }

    /// The usage of the stream so far: the upstream's when it sent one, else an estimate.
    fn stream_usage(&self) -> Usage {
        self.out
            .usage
            .clone()
            .unwrap_or_else(|| Usage::new(self.prompt_tokens, (self.out.text as u64).div_ceil(4)))
    }
}

/// Every job records one usage event. One that answered did so as it answered; one dropped
/// before that — a panic unwinding through it (its 500 goes from [`supervise`]), or its task
/// dropped — records one here, with what it knew: the deployment it was calling or last
/// tried, the usage priced so far, status 500 and the error class `panic` (else `abandoned`).
impl Drop for JobState<'_> {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        let route = self
            .call
            .as_ref()
            .map(|c| c.route.clone())
            .or_else(|| self.last_route.clone());
        self.error_class = Some(
            if std::thread::panicking() {
                "panic"
            } else {
                "abandoned"
            }
            .into(),
        );
        self.record_usage(route.as_ref(), 500);
    }
}
