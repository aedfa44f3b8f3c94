//! The deployment actor: one per deployment. It owns the deployment's capacity (RPM and TPM
//! token buckets, calls in flight) and its health (failures of the last minute, cooldown,
//! half-open probe; rules in [`crate::policy::health`]), and it grants and settles capacity.
//!
//! It never makes the HTTP call: a request actor asks it for a [`Permit`], runs the call in a
//! task of its own, reports the [`DeploymentMsg::Outcome`], and hands the permit back with the
//! tokens really used. A job that finds no capacity waits in this actor's queue (first come,
//! first served) until capacity frees up or the job's own deadline passes.
//!
//! When the deployment cools down, the actor tells every other worker on
//! `llm.health.<deployment>`, so the whole cluster stops sending it traffic, not just this
//! process; cooldowns reported by other workers arrive as [`DeploymentMsg::RemoteCooldown`].

use std::{
    collections::VecDeque,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use crate::{
    limits::{Capacity, CapacitySnapshot, Permit},
    policy::health::{Health, HealthPolicy, HealthState},
    pricing::Price,
    providers::{ErrorClass, Provider},
    telemetry,
    wire::Subjects,
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
    /// Routing tags.
    pub tags: Vec<String>,
    /// The context window, for pre-call checks.
    pub max_input_tokens: Option<u64>,
    /// Why the deployment cannot work, when it cannot: the router never routes to it
    /// (`providers::misconfigured`).
    pub misconfigured: Option<String>,
    /// Numbers the router reads without asking the actor.
    pub live: Live,
}

/// The instant all `*_ms` numbers in [`Live`] count from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds from the process epoch to `t` (0 for instants before it).
pub fn epoch_ms(t: Instant) -> u64 {
    t.saturating_duration_since(*EPOCH).as_millis() as u64
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
    /// Moving average of time to first chunk of streams, microseconds.
    pub ttft_ewma_us: AtomicU64,
    /// Requests in the current RPM window.
    pub rpm_used: AtomicU64,
    /// Tokens in the current TPM window.
    pub tpm_used: AtomicU64,
    /// [`HealthState::code`] as of the last outcome.
    pub state: AtomicU8,
    /// When the current cooldown ends, in [`epoch_ms`]; 0 when none.
    pub cooling_until_ms: AtomicU64,
}

impl Live {
    /// True when a new job would be admitted right away.
    pub fn has_capacity(&self) -> bool {
        !self.saturated.load(Ordering::Relaxed)
    }

    /// The health state at `now`, from the numbers the actor last wrote.
    pub fn health(&self, now: Instant) -> HealthState {
        match self.state.load(Ordering::Relaxed) {
            0 => HealthState::Healthy,
            _ if epoch_ms(now) >= self.cooling_until_ms.load(Ordering::Relaxed) => {
                HealthState::HalfOpen
            }
            _ => HealthState::CoolingDown,
        }
    }

    /// Time left in the current cooldown.
    pub fn cooldown_left(&self, now: Instant) -> Duration {
        let until = self.cooling_until_ms.load(Ordering::Relaxed);
        Duration::from_millis(until.saturating_sub(epoch_ms(now)))
    }
}

/// Publishes cooldowns for the other workers.
#[derive(Debug, Clone)]
pub struct Gossip {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// Subject names.
    pub subjects: Subjects,
    /// This worker's id, so it can ignore its own messages.
    pub worker: String,
}

/// A health change, as published on `llm.health.<deployment>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthEvent {
    /// The deployment.
    pub deployment: String,
    /// The worker that saw it.
    pub worker: String,
    /// `cooldown`.
    pub state: String,
    /// How long the cooldown lasts from now, milliseconds.
    pub cooldown_ms: u64,
    /// The error class that caused it.
    pub reason: String,
}

/// The actor's arguments.
pub struct DeploymentArgs {
    /// The deployment.
    pub info: Arc<DeploymentInfo>,
    /// Its health thresholds.
    pub policy: HealthPolicy,
    /// Where cooldowns are announced; `None` to keep them local.
    pub gossip: Option<Gossip>,
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
    /// How a call went, for health and latency.
    Outcome {
        /// Upstream latency (to the end of the reply or stream).
        latency: Duration,
        /// Time to the first chunk, for streams.
        ttft: Option<Duration>,
        /// `None` on success; else the class and the upstream's `Retry-After`.
        failure: Option<(ErrorClass, Option<Duration>)>,
    },
    /// Another worker cooled this deployment down for `cooldown`.
    RemoteCooldown {
        /// How long from now.
        cooldown: Duration,
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
    /// `healthy`, `cooling_down`, `half_open` or `misconfigured`.
    pub state: HealthState,
    /// Why the deployment cannot work (with state `misconfigured`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub misconfigured: Option<String>,
    /// Milliseconds left in the cooldown (0 when none).
    pub cooldown_remaining_ms: u64,
    /// Cooldowns started since the worker started.
    pub cooldowns: u64,
    /// Failures counted against the deployment in the last minute.
    pub failures_last_minute: usize,
    /// Calls that ended in the last minute.
    pub calls_last_minute: usize,
    /// Capacity in use and limits.
    pub capacity: CapacitySnapshot,
    /// Jobs waiting for capacity.
    pub waiting: usize,
    /// Moving average latency of successful calls, milliseconds.
    pub latency_ms: f64,
    /// Moving average time to first token of streams, milliseconds.
    pub ttft_ms: f64,
    /// Successful calls.
    pub successes: u64,
    /// Failed calls.
    pub failures: u64,
}

/// The actor.
pub struct DeploymentActor;

/// The actor's state.
pub struct DeploymentState {
    info: Arc<DeploymentInfo>,
    capacity: Capacity,
    health: Health,
    gossip: Option<Gossip>,
    waiting: VecDeque<(u64, RpcReplyPort<Permit>)>,
    wake_at: Option<Instant>,
    successes: u64,
    failures: u64,
}

impl Actor for DeploymentActor {
    type Msg = DeploymentMsg;
    type State = DeploymentState;
    type Arguments = DeploymentArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: DeploymentArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let info = args.info;
        let capacity = Capacity::new(info.rpm, info.tpm, info.max_parallel);
        // A restarted actor starts healthy.
        info.live.state.store(0, Ordering::Relaxed);
        if info.misconfigured.is_some() {
            metrics::gauge!(telemetry::DEPLOYMENT_STATE, "deployment" => info.id.clone())
                .set(HealthState::Misconfigured.code() as f64);
        }
        Ok(DeploymentState {
            info,
            capacity,
            health: Health::new(args.policy),
            gossip: args.gossip,
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
            DeploymentMsg::Outcome {
                latency,
                ttft,
                failure,
            } => state.outcome(latency, ttft, failure, now),
            DeploymentMsg::RemoteCooldown { cooldown } => {
                state.health.cool_down_until(now + cooldown, now);
                state.publish_health(now);
            }
            DeploymentMsg::Status(reply) => {
                let _ = reply.send(state.status(now));
            }
        }
        Ok(())
    }
}

impl DeploymentState {
    fn outcome(
        &mut self,
        latency: Duration,
        ttft: Option<Duration>,
        failure: Option<(ErrorClass, Option<Duration>)>,
        now: Instant,
    ) {
        let live = &self.info.live;
        match failure {
            None => {
                self.successes += 1;
                ewma(&live.latency_ewma_us, latency);
                if let Some(t) = ttft {
                    ewma(&live.ttft_ewma_us, t);
                }
                self.health.success(now);
            }
            Some((class, retry_after)) => {
                self.failures += 1;
                metrics::counter!(telemetry::UPSTREAM_FAILURES,
                    "deployment" => self.info.id.clone(),
                    "class" => format!("{class:?}"))
                .increment(1);
                if let Some(length) = self.health.failure(class, retry_after, now) {
                    tracing::warn!(deployment = %self.info.id, class = ?class, cooldown_ms = length.as_millis() as u64, "deployment cools down");
                    metrics::counter!(telemetry::COOLDOWNS, "deployment" => self.info.id.clone())
                        .increment(1);
                    self.announce(length, class);
                }
            }
        }
        self.publish_health(now);
    }

    /// Tells the other workers about a cooldown this worker started.
    fn announce(&self, length: Duration, class: ErrorClass) {
        let Some(g) = &self.gossip else { return };
        let event = HealthEvent {
            deployment: self.info.id.clone(),
            worker: g.worker.clone(),
            state: "cooldown".into(),
            cooldown_ms: length.as_millis() as u64,
            reason: format!("{class:?}"),
        };
        let client = g.client.clone();
        let subject = g.subjects.health(&self.info.id);
        if let Ok(body) = serde_json::to_vec(&event) {
            // Fire and forget: gossip never holds up the actor.
            tokio::spawn(async move {
                let _ = client.publish(subject, body.into()).await;
            });
        }
    }

    fn publish_health(&self, now: Instant) {
        let live = &self.info.live;
        let state = self.health.state(now);
        live.cooling_until_ms.store(
            self.health.cooling_until().map_or(0, epoch_ms),
            Ordering::Relaxed,
        );
        live.state.store(state.code(), Ordering::Relaxed);
        let shown = match self.info.misconfigured {
            Some(_) => HealthState::Misconfigured,
            None => state,
        };
        metrics::gauge!(telemetry::DEPLOYMENT_STATE, "deployment" => self.info.id.clone())
            .set(shown.code() as f64);
    }

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
        self.publish_capacity(now);
    }

    fn schedule_wake(&mut self, myself: &ActorRef<DeploymentMsg>, at: Instant, after: Duration) {
        if self.wake_at.is_some_and(|w| w <= at) {
            return;
        }
        self.wake_at = Some(at);
        myself.send_after(after, || DeploymentMsg::Wake);
    }

    fn publish_capacity(&mut self, now: Instant) {
        let snap = self.capacity.snapshot(now);
        let live = &self.info.live;
        live.in_flight.store(snap.in_flight, Ordering::Relaxed);
        live.rpm_used.store(snap.rpm_used, Ordering::Relaxed);
        live.tpm_used.store(snap.tpm_used, Ordering::Relaxed);
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
        let (failures_last_minute, calls_last_minute) = self.health.window_counts(now);
        let live = &self.info.live;
        DeploymentStatus {
            id: self.info.id.clone(),
            model_group: self.info.model_group.clone(),
            model: self.info.model.clone(),
            state: match self.info.misconfigured {
                Some(_) => HealthState::Misconfigured,
                None => self.health.state(now),
            },
            misconfigured: self.info.misconfigured.clone(),
            cooldown_remaining_ms: self
                .health
                .cooling_until()
                .map_or(0, |u| u.saturating_duration_since(now).as_millis() as u64),
            cooldowns: self.health.cooldowns(),
            failures_last_minute,
            calls_last_minute,
            capacity: self.capacity.snapshot(now),
            waiting: self.waiting.iter().filter(|(_, r)| !r.is_closed()).count(),
            latency_ms: live.latency_ewma_us.load(Ordering::Relaxed) as f64 / 1000.0,
            ttft_ms: live.ttft_ewma_us.load(Ordering::Relaxed) as f64 / 1000.0,
            successes: self.successes,
            failures: self.failures,
        }
    }
}

/// Folds a sample into a moving average (weight 1/5 for the new sample).
fn ewma(avg: &AtomicU64, sample: Duration) {
    let sample = (sample.as_micros() as u64).max(1);
    let old = avg.load(Ordering::Relaxed);
    let new = if old == 0 {
        sample
    } else {
        (old * 4 + sample) / 5
    };
    avg.store(new, Ordering::Relaxed);
}
