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
//! - a **cancel** from its requester (`llm.cancel`, or an in-process requester gone): no
//!   answer, the call and capacity go;
//! - a **panic** anywhere in it: [`supervise`] answers a 500, and no other job notices.
//!
//! Dropping the job's future is what stops it: the upstream connection closes, the capacity
//! lease goes back to its deployment (`deployment::Lease`), the cancel registration is removed,
//! and the gate's ticket frees the place. No per-job state outlives the task.
//!
//! A running job's state (`JobState`) is three parts, by when they change:
//! - `ask::Ask`, **the request**: what the job asks (body, headers, settings, deadline),
//!   read once before the first attempt;
//! - `attempt::Attempts`, **the attempts**: the groups and deployments tried so far, the
//!   call in progress and its timings; `attempt::Attempts::finish` closes a call, the one
//!   place that settles its capacity and tells its deployment how it went;
//! - `answer::Outcome`, **the outcome**: what reached the caller, what the job used and
//!   cost, and how it ended (for its usage event and metrics).
//!
//! Its answer goes out through its `reply::Reply`, the one place that knows where the answer
//! goes: the requester's NATS reply subject, or, for a job the in-worker HTTP front handed
//! over in process ([`crate::runtime::local`]), the channel the front reads.
//!
//! The state is generic over the job's `kind::Kind`: what differs between a chat completion
//! and embeddings (and the kinds to come) — the body, the provider call, the framing of the
//! answer and the stream, reading usage — is one module per kind in `kind`, and [`KINDS`]
//! is the one table of them. Everything in this module is written once for every kind.
//!
//! - `kind`: the kinds of job and their table.
//! - `ask`: the request part, and reading the headers and the body.
//! - `attempt`: routing, capacity, the upstream call, retries and fallbacks.
//! - `call`: one upstream call, how it ends, and its errors (a panic of the adapter included).
//! - `answer`: replies, stream chunks, errors, reply headers, metrics and usage.
//! - `reply`: where the answer goes.
//! - `parse`: checking the bodies the kinds read.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use futures::FutureExt;
use tracing::Instrument;

use super::{WorkerContext, gate::Ticket};
use crate::{providers::ErrorClass, wire::ApiError};

mod answer;
mod ask;
mod attempt;
mod call;
pub mod kind;
pub mod parse;
mod reply;

pub use kind::{COMPLETION, EMBEDDING, JobKind, KINDS, Preparsed};
pub use reply::{Answer, Request, stream_cut};

use answer::Outcome;
use ask::Ask;
use attempt::Attempts;
use call::Ending;
use kind::Kind;
use reply::{Reply, answer_failed_job};

/// One job as ingress hands it over.
pub struct Job {
    /// What it asks for: its row in [`KINDS`].
    pub kind: &'static JobKind,
    /// Where it came from (payload, headers) and where it answers: a NATS request, or the
    /// in-process front.
    pub request: Request,
    /// Its body, when the in-process front read it already.
    pub parsed: Option<Preparsed>,
    /// When the worker received it.
    pub received: Instant,
    /// The job id that logs and the `Llm-Job-Id` header carry.
    pub id: String,
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
    let requester = job.request.requester();
    let id = job.id.clone();
    let answered = AtomicBool::new(false);
    let span = tracing::info_span!("job", job_id = %job.id, traceparent = tracing::field::Empty);
    // Boxed by its kind's row: the job's state machine is several kilobytes, and a task's
    // future is moved by value on spawn; this way only a pointer moves.
    let kind = job.kind;
    let run = kind.run(job, &ctx, &answered, span.clone());
    if AssertUnwindSafe(run.instrument(span))
        .catch_unwind()
        .await
        .is_err()
    {
        tracing::error!(job_id = %id, "a job failed with a panic; answering it with a 500");
        metrics::counter!(crate::telemetry::REQUESTS, "model_group" => "unknown", "deployment" => "none", "status" => "500").increment(1);
        if !answered.swap(true, Ordering::AcqRel) {
            answer_failed_job(&ctx.client, requester, Some(&id)).await;
        }
    }
    drop(ticket);
}

/// Everything about one job while it runs: the request, the attempts, the outcome, and where
/// the answer goes.
struct JobState<'a, K: Kind> {
    ctx: &'a WorkerContext,
    span: tracing::Span,
    /// What the job asks.
    ask: Ask<K>,
    /// Where it is on its way through groups and deployments.
    attempts: Attempts,
    /// What it produced and used so far.
    outcome: Outcome<K::Chunk>,
    /// Where its answer goes.
    reply: Reply<'a>,
    /// Its body, read already (taken when the job reads its body).
    preparsed: Option<Preparsed>,
}

impl<'a, K: Kind> JobState<'a, K> {
    fn new(
        job: Job,
        ctx: &'a WorkerContext,
        answered: &'a AtomicBool,
        span: tracing::Span,
    ) -> Self {
        let Job {
            kind,
            request,
            parsed,
            received,
            id,
        } = job;
        Self {
            ctx,
            span,
            ask: Ask::new(id, kind, received, ctx.settings.load_full()),
            attempts: Attempts::default(),
            outcome: Outcome::default(),
            reply: Reply::new(request, &ctx.client, answered),
            preparsed: parsed,
        }
    }

    async fn run(mut self) {
        let ctx = self.ctx;
        let message = self.reply.message();
        let registration = ctx
            .cancels
            .register(message.reply.as_ref(), message.headers.as_ref());
        // An in-process requester gone is its cancel.
        let gone = self.reply.gone();
        let preparsed = self.preparsed.take();
        if let Err(e) = self
            .ask
            .prepare(self.reply.message(), preparsed, &self.span)
        {
            return self.fail(e).await;
        }
        self.attempts.groups.push(self.ask.model().to_string());
        let deadline = tokio::time::Instant::from_std(self.ask.deadline);
        let stop = tokio::select! {
            biased;
            _ = ctx.gate.cutoff().cancelled() => Stop::CutOff,
            _ = registration.cancelled() => Stop::Cancelled,
            _ = gone => Stop::Cancelled,
            _ = tokio::time::sleep_until(deadline) => Stop::Deadline,
            _ = self.attempt_all() => Stop::Done,
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

    /// The deadline passed before the job answered.
    async fn deadline_passed(&mut self) {
        let ms = self.ask.deadline_ms();
        if self.attempts.waiting_for_capacity {
            let group = self.attempts.group();
            let e = ApiError::rate_limited(format!(
                "no capacity on model group `{}` within the job's deadline of {ms} ms \
                 (rpm/tpm/max_parallel_requests limits are reached); retry later",
                group.as_deref().unwrap_or("?")
            ));
            return self.fail(e).await;
        }
        let e = if self.attempts.call.is_some() {
            ApiError::deadline(format!(
                "the job's deadline of {ms} ms passed before the upstream answered"
            ))
        } else {
            ApiError::deadline(format!("the job's deadline of {ms} ms passed"))
        };
        // A call cut by the deadline is a timeout of its deployment.
        let tokens = self.cut_usage();
        self.attempts.finish(Ending::Failed {
            class: ErrorClass::Timeout,
            retry_after: None,
            tokens,
        });
        self.fail(e).await;
    }

    /// The requester gave up: stop without answering, and count what was used.
    fn cancelled(&mut self) {
        tracing::debug!("cancelled by the requester");
        let usage = self.stream_usage();
        if let Some(closed) = self.attempts.finish(Ending::Cancelled(self.cut_usage())) {
            self.outcome
                .price(&closed.route, &usage, closed.latency, None);
        }
        self.outcome.error_class = Some("cancelled".into());
        self.reply.mark_answered();
        let route = self.attempts.last_route.take();
        self.observe(499, route.as_ref());
    }

    /// The tokens a call cut short used: a stream's, counted from what it sent; unknown for a
    /// call that had not answered yet (its reservation stands, since the upstream may have
    /// spent it).
    fn cut_usage(&self) -> Option<u64> {
        self.ask.stream.then(|| self.stream_usage().total_tokens)
    }

    /// The usage of the stream so far: the upstream's when it sent one, else an estimate.
    fn stream_usage(&self) -> crate::wire::openai::Usage {
        self.outcome.out.usage(self.ask.prompt_tokens())
    }
}

/// Every job records one usage event. One that answered did so as it answered; one dropped
/// before that — a panic unwinding through it (its 500 goes from [`supervise`]), or its task
/// dropped — records one here, with what it knew: the deployment it was calling or last
/// tried, the usage priced so far, status 500 and the error class `panic` (else `abandoned`).
impl<K: Kind> Drop for JobState<'_, K> {
    fn drop(&mut self) {
        if self.outcome.recorded {
            return;
        }
        let route = self
            .attempts
            .call
            .as_ref()
            .map(|c| c.route.clone())
            .or_else(|| self.attempts.last_route.clone());
        self.outcome.error_class = Some(
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
