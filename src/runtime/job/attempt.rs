//! One job's attempts: pick a deployment from the routing table, take its capacity, call the
//! upstream, and on failure retry on another deployment of the group (after a back-off when
//! none is left), then fall back to other groups, until something answers or nothing is left.
//! A group none of whose deployments can take the job now (all cooling down or misconfigured)
//! is left at once: a job waits for capacity that frees before its deadline, never for a
//! cooldown.
//!
//! [`Attempts`] is the part of a job's state these change; [`Attempts::finish`] closes a call.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt};

use super::{
    JobState,
    answer::StreamOut,
    ask::Ask,
    call::{Call, CallError, Closed, Ending, guarded, upstream_error},
    kind::Kind,
};
use crate::{
    policy::{retry::FallbackKind, routing::random},
    providers::{CallContext, ErrorClass, ProviderError},
    runtime::{
        deployment::AcquireError,
        table::{Route, RouteError, RouteRequest},
    },
    telemetry,
    wire::ApiError,
};

/// Where a job is on its way through groups and deployments, and the call in progress.
#[derive(Default)]
pub(super) struct Attempts {
    /// Model groups to try: the requested one, then fallbacks.
    pub groups: Vec<String>,
    /// True once the fallbacks are added to `groups`.
    fallbacks_planned: bool,
    /// The group tried now.
    pub group_index: usize,
    /// Calls made in the current group.
    tries_in_group: u32,
    /// Deployments of the current group that failed this job.
    excluded: Vec<String>,
    /// Calls made in all.
    pub count: u32,
    /// True while a back-off runs, and for the attempt right after it.
    waited: bool,
    /// True while the job waits in a deployment's queue for capacity.
    pub waiting_for_capacity: bool,
    /// The upstream call in progress.
    pub call: Option<Call>,
    /// The time the upstream calls took, all attempts together.
    pub upstream_time: Duration,
    /// The group the requested model resolved to.
    pub first_group: Option<Arc<str>>,
    /// The group of the last deployment picked.
    pub served_group: Option<Arc<str>>,
    /// The deployment of the last call closed, for the reply headers.
    pub last_route: Option<Route>,
    /// The answer should nothing else work, and the `Retry-After` it carries (a cooldown's
    /// end, or the upstream's own).
    last_error: Option<(ApiError, Option<Duration>)>,
    /// The upstream's `Retry-After` of the last failed attempt, for the back-off.
    last_retry_after: Option<Duration>,
}

impl Attempts {
    /// Closes the call in progress, if any, as `ending` says: its capacity settles to what it
    /// used, its time counts, its deployment hears how it went, and it becomes the job's last
    /// route. Dropping the call then gives its capacity back. The one place a call ends.
    pub fn finish(&mut self, ending: Ending<'_>) -> Option<Closed> {
        let mut call = self.call.take()?;
        let latency = call.started.elapsed();
        let failure = match ending {
            Ending::Answered(usage) => {
                call.held.settle(usage);
                Some(None)
            }
            Ending::Failed {
                class,
                retry_after,
                tokens,
            } => {
                call.held.settle_tokens(tokens);
                Some(Some((class, retry_after)))
            }
            Ending::Broke {
                class,
                retry_after,
                usage,
            } => {
                call.held.settle(usage);
                Some(Some((class, retry_after)))
            }
            Ending::Cancelled(tokens) => {
                call.held.settle_tokens(tokens);
                None
            }
            Ending::Dropped(usage) => {
                if let Some(usage) = usage {
                    call.held.settle(usage);
                }
                self.last_route = Some(call.route.clone());
                return None;
            }
        };
        self.upstream_time += latency;
        if let Some(failure) = failure {
            call.route
                .deployment
                .outcome(latency, call.first_chunk, failure, Instant::now());
        }
        self.last_route = Some(call.route.clone());
        Some(Closed {
            route: call.route.clone(),
            latency,
            started: call.started,
            first_chunk: call.first_chunk,
        })
    }

    /// The group the job is served by, else the one it asked for.
    pub fn group(&self) -> Option<Arc<str>> {
        self.served_group.clone().or(self.first_group.clone())
    }

    /// Keeps `error` as the answer should nothing else work, with the `Retry-After` it carries.
    fn set_error(&mut self, error: ApiError, retry_after: Option<Duration>) {
        self.last_error = Some((error, retry_after));
    }

    /// The current group is done for: move on to the next, planning the fallbacks when the
    /// first group is left (by the kind of its last failure).
    fn exhaust_group<K: Kind>(&mut self, ask: &Ask<K>, kind: FallbackKind) {
        if !self.fallbacks_planned {
            self.fallbacks_planned = true;
            let first = self
                .first_group
                .as_deref()
                .map_or_else(|| self.groups[0].clone(), str::to_string);
            let fallbacks = &ask.settings.fallbacks;
            let planned = fallbacks.for_group(&first, kind);
            let max = fallbacks.max();
            for g in planned.into_iter().chain(ask.fallbacks.iter().cloned()) {
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
}

/// What the job does after an upstream call.
pub(super) enum Flow {
    /// It answered.
    Done,
    /// Try again (another deployment, a back-off, or a fallback group).
    Next,
}

impl<K: Kind> JobState<'_, K> {
    /// Attempts until the job is answered.
    pub(super) async fn attempt_all(&mut self) {
        loop {
            let Some(model) = self.attempts.groups.get(self.attempts.group_index) else {
                let (e, retry_after) = self.attempts.last_error.take().unwrap_or_else(|| {
                    (
                        ApiError::unavailable("no deployment could serve the job"),
                        None,
                    )
                });
                self.outcome.retry_after = retry_after;
                return self.fail(e).await;
            };
            let now = Instant::now();
            let remaining = self.ask.remaining(now);
            if remaining.is_zero() {
                return self.fail(self.ask.deadline_error()).await;
            }
            let routed = self.ctx.table.load().route(
                &RouteRequest {
                    model,
                    exclude: &self.attempts.excluded,
                    tags: &self.ask.tags,
                    prompt_tokens: self.ask.prompt_tokens(),
                    stream: self.ask.stream,
                },
                now,
            );
            let attempts = &mut self.attempts;
            let route = match routed {
                Ok(route) => route,
                Err(RouteError::UnknownModel(e)) => {
                    if attempts.group_index == 0 {
                        return match self.hand_over().await {
                            Ok(()) => {}
                            Err(unreachable) => self.fail(unreachable.unwrap_or(e)).await,
                        };
                    }
                    // A fallback group that does not exist: skip it.
                    attempts.next_group();
                    continue;
                }
                Err(RouteError::Unavailable {
                    group,
                    error,
                    retry_in,
                }) => {
                    // No deployment of the group can take the job now (all cooling down or
                    // misconfigured): fall back at once, never wait out a cooldown. Without a
                    // fallback the job answers this error, with `Retry-After` from `retry_in`.
                    attempts.first_group.get_or_insert(group);
                    attempts.set_error(error, retry_in);
                    attempts.exhaust_group(&self.ask, FallbackKind::Generic);
                    continue;
                }
                Err(RouteError::ContextWindow { group, error }) => {
                    attempts.first_group.get_or_insert(group);
                    attempts.set_error(error, None);
                    attempts.exhaust_group(&self.ask, FallbackKind::ContextWindow);
                    continue;
                }
            };
            attempts
                .first_group
                .get_or_insert_with(|| route.group.clone());
            if !route.fresh && attempts.count > 0 && !attempts.waited {
                // Nothing but the deployment that just failed: back off before trying it again.
                let wait = self.ask.settings.retry.backoff(
                    attempts.tries_in_group,
                    attempts.last_retry_after,
                    random(),
                );
                if !self.back_off(wait).await {
                    self.attempts
                        .exhaust_group(&self.ask, FallbackKind::Generic);
                }
                continue;
            }
            attempts.waited = false;

            attempts.served_group = Some(route.group.clone());
            attempts.waiting_for_capacity = true;
            let acquired = route.deployment.acquire(self.ask.demand, remaining).await;
            let attempts = &mut self.attempts;
            attempts.waiting_for_capacity = false;
            let mut held = match acquired {
                Ok(lease) => lease,
                Err(AcquireError::TimedOut) => {
                    // The deadline itself ends the job with the capacity error.
                    attempts.waiting_for_capacity = true;
                    std::future::pending::<()>().await;
                    unreachable!("a pending future never resolves");
                }
                Err(AcquireError::Unavailable) => {
                    // The deployment actor is being restarted: try another one.
                    attempts.excluded.push(route.info().id.clone());
                    continue;
                }
            };
            attempts.count += 1;
            attempts.tries_in_group += 1;
            held.start_call();
            attempts.call = Some(Call {
                route,
                held,
                started: Instant::now(),
                first_chunk: None,
            });
            let body = self
                .ask
                .body
                .clone()
                .expect("the body is parsed before the first attempt");
            match self.call_upstream(body, remaining).await {
                Flow::Done => return,
                Flow::Next => continue,
            }
        }
    }

    /// The requested model is no group of this worker's: hand the job, unchanged, to a worker
    /// that serves it and answers ([`crate::runtime::direct`]); it answers the requester
    /// directly. `Some(error)` when workers serve it but none answered; `None` when no other
    /// worker serves it (the job gets its 404).
    async fn hand_over(&mut self) -> Result<(), Option<ApiError>> {
        use crate::runtime::direct::{self, HandOver};
        if self.reply.is_local() {
            // The in-process front sends only jobs for groups this worker serves; a group gone
            // since (a new config) is answered here.
            return Err(None);
        }
        match direct::hand_over(
            self.ctx,
            self.ask.kind,
            self.reply.message(),
            &self.attempts.groups[0],
            self.ask.deadline,
        )
        .await
        {
            HandOver::Sent => {
                self.reply.mark_answered();
                Ok(())
            }
            HandOver::NoTaker => Err(None),
            HandOver::Unreachable(e) => Err(Some(e)),
        }
    }

    /// Waits `wait` before the next attempt, unless that would pass the deadline.
    async fn back_off(&mut self, wait: Duration) -> bool {
        if Instant::now() + wait >= self.ask.deadline {
            return false;
        }
        self.attempts.waited = true;
        tokio::time::sleep(wait).await;
        true
    }

    /// Makes the current attempt's upstream call and answers, or says to try again. The
    /// failure paths are boxed (`Box::pin(..).await`): their state then lives in an allocation
    /// of its own when they run, instead of enlarging the state machine every open stream holds.
    async fn call_upstream(&mut self, body: Arc<K::Body>, remaining: Duration) -> Flow {
        let route = &self
            .attempts
            .call
            .as_ref()
            .expect("a call is set up before it is made")
            .route;
        let info = route.deployment.info.clone();
        let cctx = CallContext {
            upstream_model: route.upstream_model().to_string(),
            timeout: info.timeout.map_or(remaining, |t| t.min(remaining)),
            traceparent: self.ask.traceparent.clone(),
        };
        let provider = &*info.provider;
        if !self.ask.stream {
            return match guarded(K::call(provider, &body, &cctx)).await {
                Ok(answer) => {
                    self.answer_whole(answer).await;
                    Flow::Done
                }
                Err(e) => Box::pin(self.upstream_failed(e)).await,
            };
        }
        let mut chunks = match guarded(K::stream(provider, &body, &cctx)).await {
            Ok(s) => s,
            Err(e) => return Box::pin(self.upstream_failed(e)).await,
        };
        let idle = info.stream_timeout.map_or(remaining, |t| t.min(remaining));
        loop {
            let next =
                tokio::time::timeout(idle, AssertUnwindSafe(chunks.next()).catch_unwind()).await;
            let item = match next {
                Ok(Ok(Some(item))) => item.map_err(CallError::Upstream),
                Ok(Ok(None)) => {
                    self.end_stream().await;
                    return Flow::Done;
                }
                Ok(Err(_)) => Err(CallError::Panicked),
                Err(_) => Err(CallError::Upstream(ProviderError::new(
                    ErrorClass::Timeout,
                    format!("the stream sent nothing for {} ms", idle.as_millis()),
                ))),
            };
            match item {
                Ok(chunk) => {
                    if !self.chunk(chunk).await {
                        return Flow::Done;
                    }
                }
                Err(e) if self.outcome.out.committed => {
                    Box::pin(self.fail_stream(&e.provider())).await;
                    return Flow::Done;
                }
                Err(e) => return Box::pin(self.upstream_failed(e)).await,
            }
        }
    }

    /// The current attempt failed before anything reached the client: retry, fall back, or
    /// answer with the error. A panic of the adapter answers a 500 at once.
    async fn upstream_failed(&mut self, error: CallError) -> Flow {
        let e = error.provider();
        let tokens = self.failed_usage(&e);
        let Some(closed) = self.attempts.finish(Ending::Failed {
            class: e.class,
            retry_after: e.retry_after,
            tokens,
        }) else {
            return Flow::Next;
        };
        // Nothing of this attempt reached the client: forget what it buffered.
        self.outcome.out = StreamOut::default();
        let dep = &closed.route.deployment;
        let id = dep.id();
        tracing::warn!(deployment = %id, class = ?e.class, status = ?e.status, error = %e.message, "upstream attempt failed");
        if let CallError::Panicked = error {
            let err = ApiError::internal(format!(
                "internal error while calling deployment `{id}`; the job was not completed"
            ));
            self.fail(err).await;
            return Flow::Done;
        }
        // The upstream's own `Retry-After` goes on to the requester with its 429 or 503.
        let attempts = &mut self.attempts;
        attempts.set_error(upstream_error(id, &e), e.retry_after);
        attempts.last_retry_after = e.retry_after;
        if attempts.tries_in_group <= self.ask.settings.retry.retries_for(e.class) {
            attempts.excluded.push(id.to_string());
            metrics::counter!(telemetry::RETRIES, "model_group" => dep.info.model_group.clone())
                .increment(1);
        } else {
            attempts.exhaust_group(&self.ask, FallbackKind::of(e.class));
        }
        Flow::Next
    }

    /// What a failed attempt used: nothing when the upstream answered with an error status,
    /// what a stream sent before it broke, else unknown (the reservation stands).
    fn failed_usage(&self, e: &ProviderError) -> Option<u64> {
        if self.outcome.out.text > 0 || self.outcome.out.usage.is_some() {
            return Some(self.stream_usage().total_tokens);
        }
        match (e.status, e.class) {
            (Some(_), _) => Some(0),
            (None, ErrorClass::Timeout | ErrorClass::InvalidResponse) => None,
            (None, _) => Some(0),
        }
    }
}
