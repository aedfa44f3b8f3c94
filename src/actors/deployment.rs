//! The deployment actor: one per deployment. It owns the deployment's capacity (RPM and TPM
//! token buckets, calls in flight) and its health numbers, and it grants and settles capacity.
//!
//! It never makes the HTTP call: a request actor asks it for a [`Permit`], runs the call in a
//! task of its own, and hands the permit back with the tokens really used. A job that finds no
//! capacity waits in this actor's queue (first come, first served) until capacity frees up or
//! the job's own deadline passes.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use crate::{
    limits::{Capacity, CapacitySnapshot, Permit},
    pricing::Price,
    providers::{ErrorClass, Provider},
    telemetry,
};

/// What the rest of the worker knows about a deployment; fixed for the deployment's life.
#[derive(Debug)]
pub struct DeploymentInfo {
    /// Unique id (`model_info.id`, else `<model_group>-<n>`).
    pub id: String,
    /// The model group it serves.
    pub model_group: String,
    /// `litellm_params.model`, for example `openai/gpt-4o`.
    pub model: String,
    /// The name the provider knows, for example `gpt-4o`.
    pub upstream_model: String,
    /// How to call it.
    pub provider: Arc<dyn Provider>,
    /// The most one call may take.
    pub timeout: Option<Duration>,
    /// The most a stream may stay silent between chunks.
    pub stream_timeout: Option<Duration>,
    /// Share of traffic under weighted shuffle (`weight`, else `rpm`, else `tpm`, else 1).
    pub weight: f64,
    /// Prices for the cost of each call, when known.
    pub price: Option<Price>,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Calls in flight at once.
    pub max_parallel: Option<u32>,
    /// Numbers the router reads without asking the actor.
    pub live: Live,
}

/// Lock-free numbers a deployment actor keeps up to date for the router.
#[derive(Debug, Default)]
pub struct Live {
    /// Calls in flight.
    pub in_flight: AtomicU32,
    /// True while a new job would have to wait for capacity.
    pub saturated: AtomicBool,
    /// Moving average of successful call latency, microseconds.
    pub latency_ewma_us: AtomicU64,
}

impl Live {
    /// True when a new job would be admitted right away.
    pub fn has_capacity(&self) -> bool {
        !self.saturated.load(Ordering::Relaxed)
    }
}

/// Messages a deployment actor takes.
pub enum DeploymentMsg {
    /// Grant capacity for a call that expects to use `est_tokens`; the answer may wait.
    Acquire {
        /// Tokens reserved against TPM until the call settles.
        est_tokens: u64,
        /// Where the permit goes.
        reply: RpcReplyPort<Permit>,
    },
    /// A call ended: give its capacity back, corrected with the tokens it really used.
    Release {
        /// The permit of the call.
        permit: Permit,
        /// Tokens really used, when known.
        actual_tokens: Option<u64>,
    },
    /// How a call went, for the health numbers.
    Outcome {
        /// Upstream latency.
        latency: Duration,
        /// `None` on success.
        failure: Option<ErrorClass>,
    },
    /// Time to look at the waiting queue again.
    Wake,
    /// The deployment's state, for `llm.deployments`.
    Status(RpcReplyPort<DeploymentStatus>),
}

/// A deployment's state as `llm.deployments` reports it. Holds no secret.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentStatus {
    /// Deployment id.
    pub id: String,
    /// Model group.
    pub model_group: String,
    /// `provider/model`.
    pub model: String,
    /// Capacity in use and limits.
    pub capacity: CapacitySnapshot,
    /// Jobs waiting for capacity.
    pub waiting: usize,
    /// Moving average latency of successful calls, milliseconds.
    pub latency_ms: f64,
    /// Successful calls.
    pub successes: u64,
    /// Failed calls.
    pub failures: u64,
}

/// The actor; its arguments are the deployment's [`DeploymentInfo`].
pub struct DeploymentActor;

/// The actor's state.
pub struct DeploymentState {
    info: Arc<DeploymentInfo>,
    capacity: Capacity,
    waiting: VecDeque<(u64, RpcReplyPort<Permit>)>,
    wake_at: Option<Instant>,
    successes: u64,
    failures: u64,
}

impl Actor for DeploymentActor {
    type Msg = DeploymentMsg;
    type State = DeploymentState;
    type Arguments = Arc<DeploymentInfo>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        info: Arc<DeploymentInfo>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let capacity = Capacity::new(info.rpm, info.tpm, info.max_parallel);
        Ok(DeploymentState {
            info,
            capacity,
            waiting: VecDeque::new(),
            wake_at: None,
            successes: 0,
            failures: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match msg {
            DeploymentMsg::Acquire { est_tokens, reply } => {
                state.waiting.push_back((est_tokens, reply));
                state.serve_waiting(&myself, now);
            }
            DeploymentMsg::Release {
                permit,
                actual_tokens,
            } => {
                state.capacity.release(permit, actual_tokens, now);
                state.serve_waiting(&myself, now);
            }
            DeploymentMsg::Wake => {
                state.wake_at = None;
                state.serve_waiting(&myself, now);
            }
            DeploymentMsg::Outcome { latency, failure } => match failure {
                None => {
                    state.successes += 1;
                    let sample = latency.as_micros() as u64;
                    let live = &state.info.live.latency_ewma_us;
                    let old = live.load(Ordering::Relaxed);
                    let new = if old == 0 {
                        sample
                    } else {
                        (old * 4 + sample) / 5
                    };
                    live.store(new, Ordering::Relaxed);
                }
                Some(class) => {
                    state.failures += 1;
                    metrics::counter!(telemetry::UPSTREAM_FAILURES,
                        "deployment" => state.info.id.clone(),
                        "class" => format!("{class:?}"))
                    .increment(1);
                }
            },
            DeploymentMsg::Status(reply) => {
                let _ = reply.send(state.status(now));
            }
        }
        Ok(())
    }
}

impl DeploymentState {
    /// Grants capacity to waiting jobs in arrival order, while there is capacity.
    fn serve_waiting(&mut self, myself: &ActorRef<DeploymentMsg>, now: Instant) {
        while let Some((est_tokens, reply)) = self.waiting.front() {
            if reply.is_closed() {
                // The job gave up (its deadline passed); forget it.
                self.waiting.pop_front();
                continue;
            }
            match self.capacity.try_acquire(*est_tokens, now) {
                Ok(permit) => {
                    let (_, reply) = self.waiting.pop_front().expect("front exists");
                    if let Err(ractor::MessagingErr::SendErr(permit)) = reply.send(permit) {
                        // The job went away between the check and the send.
                        self.capacity.cancel(permit, now);
                    }
                }
                Err(wait) => {
                    if let Some(after) = wait.duration() {
                        self.schedule_wake(myself, now + after, after);
                    }
                    break;
                }
            }
        }
        self.publish_live(now);
    }

    fn schedule_wake(&mut self, myself: &ActorRef<DeploymentMsg>, at: Instant, after: Duration) {
        if self.wake_at.is_some_and(|w| w <= at) {
            return;
        }
        self.wake_at = Some(at);
        myself.send_after(after, || DeploymentMsg::Wake);
    }

    fn publish_live(&mut self, now: Instant) {
        let snap = self.capacity.snapshot(now);
        let live = &self.info.live;
        live.in_flight.store(snap.in_flight, Ordering::Relaxed);
        let full = |used: u64, limit: Option<u64>| limit.is_some_and(|l| used >= l);
        let saturated = !self.waiting.is_empty()
            || snap.max_parallel.is_some_and(|m| snap.in_flight >= m)
            || full(snap.rpm_used, snap.rpm_limit)
            || full(snap.tpm_used, snap.tpm_limit);
        live.saturated.store(saturated, Ordering::Relaxed);
        let id = self.info.id.clone();
        metrics::gauge!(telemetry::DEPLOYMENT_IN_FLIGHT, "deployment" => id.clone())
            .set(snap.in_flight as f64);
        metrics::gauge!(telemetry::DEPLOYMENT_RPM_USED, "deployment" => id.clone())
            .set(snap.rpm_used as f64);
        metrics::gauge!(telemetry::DEPLOYMENT_TPM_USED, "deployment" => id)
            .set(snap.tpm_used as f64);
    }

    fn status(&mut self, now: Instant) -> DeploymentStatus {
        DeploymentStatus {
            id: self.info.id.clone(),
            model_group: self.info.model_group.clone(),
            model: self.info.model.clone(),
            capacity: self.capacity.snapshot(now),
            waiting: self.waiting.iter().filter(|(_, r)| !r.is_closed()).count(),
            latency_ms: self.info.live.latency_ewma_us.load(Ordering::Relaxed) as f64 / 1000.0,
            successes: self.successes,
            failures: self.failures,
        }
    }
}
