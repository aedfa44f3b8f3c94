//! One job's attempts: pick a deployment from the routing table, take its capacity, call the
//! upstream, and on failure retry on another deployment of the group (after a back-off when
//! none is left), then fall back to other groups, until something answers or nothing is left.
//! A group none of whose deployments can take the job now (all cooling down or misconfigured)
//! is left at once: a job waits for capacity that frees before its deadline, never for a
//! cooldown.

use std::{
    panic::AssertUnwindSafe,
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt};

use super::{Body, Call, JobState, StreamOut};
use crate::{
    policy::{retry::FallbackKind, routing::random},
    providers::{CallContext, ErrorClass, ProviderError},
    runtime::{
        deployment::AcquireError,
        table::{RouteError, RouteRequest},
    },
    telemetry,
    wire::ApiError,
};

/// What the job does after an upstream call.
pub(super) enum Flow {
    /// It answered.
    Done,
    /// Try again (another deployment, a back-off, or a fallback group).
    Next,
}

/// A provider future that turns a panic inside the adapter into an error of this job.
async fn guarded<T>(
    work: impl std::future::Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(panicked()))
}

fn panicked() -> ProviderError {
    ProviderError::new(
        ErrorClass::InvalidResponse,
        "internal error in the provider adapter (panic)",
    )
    .with_status(500)
}

impl JobState<'_> {
    /// Attempts until the job is answered.
    pub(super) async fn attempts(&mut self) {
        loop {
            let Some(model) = self.groups.get(self.group_index) else {
                let e = self
                    .last_error
                    .take()
                    .unwrap_or_else(|| ApiError::unavailable("no deployment could serve the job"));
                self.retry_after = self.error_retry_after.take();
                return self.fail(e).await;
            };
            let now = Instant::now();
            let remaining = self.deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                return self.fail(self.deadline_error()).await;
            }
            let routed = self.ctx.table.load().route(
                &RouteRequest {
                    model,
                    exclude: &self.excluded,
                    tags: &self.tags,
                    prompt_tokens: self.prompt_tokens,
                    stream: self.stream,
                },
                now,
            );
            let route = match routed {
                Ok(route) => route,
                Err(RouteError::UnknownModel(e)) => {
                    if self.group_index == 0 {
                        return match self.hand_over().await {
                            Ok(()) => {}
                            Err(unreachable) => self.fail(unreachable.unwrap_or(e)).await,
                        };
                    }
                    // A fallback group that does not exist: skip it.
                    self.next_group();
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
                    self.first_group.get_or_insert(group);
                    self.set_error(error, retry_in);
                    self.exhaust_group(FallbackKind::Generic);
                    continue;
                }
                Err(RouteError::ContextWindow { group, error }) => {
                    self.first_group.get_or_insert(group);
                    self.set_error(error, None);
                    self.exhaust_group(FallbackKind::ContextWindow);
                    continue;
                }
            };
            self.first_group.get_or_insert_with(|| route.group.clone());
            if !route.fresh && self.attempts > 0 && !self.waited {
                // Nothing but the deployment that just failed: back off before trying it again.
                let wait = self.settings.retry.backoff(
                    self.tries_in_group,
                    self.last_retry_after,
                    random(),
                );
                if !self.back_off(wait).await {
                    self.exhaust_group(FallbackKind::Generic);
                }
                continue;
            }
            self.waited = false;

            self.served_group = Some(route.group.clone());
            self.waiting_for_capacity = true;
            let acquired = route.deployment.acquire(self.demand, remaining).await;
            self.waiting_for_capacity = false;
            let mut held = match acquired {
                Ok(lease) => lease,
                Err(AcquireError::TimedOut) => {
                    // The deadline itself ends the job with the capacity error.
                    self.waiting_for_capacity = true;
                    std::future::pending::<()>().await;
                    unreachable!("a pending future never resolves");
                }
                Err(AcquireError::Unavailable) => {
                    // The deployment actor is being restarted: try another one.
                    self.excluded.push(route.info().id.clone());
                    continue;
                }
            };
            self.attempts += 1;
            self.tries_in_group += 1;
            held.start_call();
            self.call = Some(Call {
                route,
                held,
                started: Instant::now(),
                first_chunk: None,
            });
            let body = self
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
        if self.job.request.is_local() {
            // The in-process front sends only jobs for groups this worker serves; a group gone
            // since (a new config) is answered here.
            return Err(None);
        }
        let message = self.job.request.message();
        match direct::hand_over(
            self.ctx,
            self.job.kind,
            message,
            &self.groups[0],
            self.deadline,
        )
        .await
        {
            HandOver::Sent => {
                self.answered
                    .store(true, std::sync::atomic::Ordering::Release);
                Ok(())
            }
            HandOver::NoTaker => Err(None),
            HandOver::Unreachable(e) => Err(Some(e)),
        }
    }

    /// Keeps `error` as the answer should nothing else work, with the `Retry-After` it carries.
    fn set_error(&mut self, error: ApiError, retry_after: Option<Duration>) {
        self.last_error = Some(error);
        self.error_retry_after = retry_after;
    }

    /// Waits `wait` before the next attempt, unless that would pass the deadline.
    async fn back_off(&mut self, wait: Duration) -> bool {
        if Instant::now() + wait >= self.deadline {
            return false;
        }
        self.waited = true;
        tokio::time::sleep(wait).await;
        true
    }

    /// The current group is done for: move on to the next, planning the fallbacks when the
    /// first group is left (by the kind of its last failure).
    fn exhaust_group(&mut self, kind: FallbackKind) {
        if !self.fallbacks_planned {
            self.fallbacks_planned = true;
            let first = self
                .first_group
                .as_deref()
                .map_or_else(|| self.groups[0].clone(), str::to_string);
            let planned = self.settings.fallbacks.for_group(&first, kind);
            let max = self.settings.fallbacks.max();
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

    /// Makes the current attempt's upstream call and answers, or says to try again. The
    /// failure paths are boxed (`Box::pin(..).await`): their state then lives in an allocation
    /// of its own when they run, instead of enlarging the state machine every open stream holds.
    async fn call_upstream(&mut self, body: Body, remaining: Duration) -> Flow {
        let route = &self
            .call
            .as_ref()
            .expect("a call is set up before it is made")
            .route;
        let info = route.deployment.info.clone();
        let cctx = CallContext {
            upstream_model: route.upstream_model().to_string(),
            timeout: info.timeout.map_or(remaining, |t| t.min(remaining)),
            traceparent: self.traceparent.clone(),
        };
        let provider = &info.provider;
        match body {
            Body::Embedding(body) => match guarded(provider.embed(&body, &cctx)).await {
                Ok(response) => {
                    self.embedded(response).await;
                    Flow::Done
                }
                Err(e) => Box::pin(self.upstream_failed(e)).await,
            },
            Body::Chat(body) if !self.stream => {
                match guarded(provider.complete(&body, &cctx)).await {
                    Ok(response) => {
                        self.reply(response).await;
                        Flow::Done
                    }
                    Err(e) => Box::pin(self.upstream_failed(e)).await,
                }
            }
            Body::Chat(body) => {
                let mut chunks = match guarded(provider.stream(&body, &cctx)).await {
                    Ok(s) => s,
                    Err(e) => return Box::pin(self.upstream_failed(e)).await,
                };
                let idle = info.stream_timeout.map_or(remaining, |t| t.min(remaining));
                loop {
                    let next =
                        tokio::time::timeout(idle, AssertUnwindSafe(chunks.next()).catch_unwind())
                            .await;
                    let item = match next {
                        Ok(Ok(Some(item))) => item,
                        Ok(Ok(None)) => {
                            self.end_stream().await;
                            return Flow::Done;
                        }
                        Ok(Err(_)) => Err(panicked()),
                        Err(_) => Err(ProviderError::new(
                            ErrorClass::Timeout,
                            format!("the stream sent nothing for {} ms", idle.as_millis()),
                        )),
                    };
                    match item {
                        Ok(chunk) => {
                            if !self.chunk(chunk).await {
                                return Flow::Done;
                            }
                        }
                        Err(e) if self.out.committed => {
                            Box::pin(self.fail_stream(&e)).await;
                            return Flow::Done;
                        }
                        Err(e) => return Box::pin(self.upstream_failed(e)).await,
                    }
                }
            }
        }
    }

    /// The current attempt failed before anything reached the client: retry, fall back, or
    /// answer with the error.
    async fn upstream_failed(&mut self, e: ProviderError) -> Flow {
        let Some(mut call) = self.call.take() else {
            return Flow::Next;
        };
        let latency = call.started.elapsed();
        self.upstream_time += latency;
        call.held.settle_tokens(self.failed_usage(&e));
        let dep = call.route.deployment.clone();
        dep.outcome(
            latency,
            None,
            Some((e.class, e.retry_after)),
            Instant::now(),
        );
        self.last_route = Some(call.route.clone());
        drop(call);
        // Nothing of this attempt reached the client: forget what it buffered.
        self.out = StreamOut::default();
        let id = dep.id();
        tracing::warn!(deployment = %id, class = ?e.class, status = ?e.status, error = %e.message, "upstream attempt failed");
        if e.status == Some(500) && e.message.contains("(panic)") {
            let err = ApiError::internal(format!(
                "internal error while calling deployment `{id}`; the job was not completed"
            ));
            self.fail(err).await;
            return Flow::Done;
        }
        // The upstream's own `Retry-After` goes on to the requester with its 429 or 503.
        self.set_error(upstream_error(id, &e), e.retry_after);
        self.last_retry_after = e.retry_after;
        if self.tries_in_group <= self.settings.retry.retries_for(e.class) {
            self.excluded.push(id.to_string());
            metrics::counter!(telemetry::RETRIES, "model_group" => dep.info.model_group.clone())
                .increment(1);
        } else {
            self.exhaust_group(FallbackKind::of(e.class));
        }
        Flow::Next
    }

    /// What a failed attempt used: nothing when the upstream answered with an error status,
    /// what a stream sent before it broke, else unknown (the reservation stands).
    fn failed_usage(&self, e: &ProviderError) -> Option<u64> {
        if self.out.text > 0 || self.out.usage.is_some() {
            return Some(self.stream_usage().total_tokens);
        }
        match (e.status, e.class) {
            (Some(_), _) => Some(0),
            (None, ErrorClass::Timeout | ErrorClass::InvalidResponse) => None,
            (None, _) => Some(0),
        }
    }

    pub(super) fn deadline_error(&self) -> ApiError {
        let ms = self.deadline.duration_since(self.job.received).as_millis();
        ApiError::deadline(format!("the job's deadline of {ms} ms passed"))
    }
}

/// Turns a failed upstream call into the error the client gets.
pub(super) fn upstream_error(deployment: &str, e: &ProviderError) -> ApiError {
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
