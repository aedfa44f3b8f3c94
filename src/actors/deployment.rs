//! A deployment: one upstream model behind one provider, its capacity (RPM and TPM token
//! buckets, calls in flight) and its health (failures of the last minute, cooldown, half-open
//! probe; rules in [`crate::policy::health`]).
//!
//! [`Deployment`] is the deployment's state, shared by every job of the worker. Its fast path
//! needs no message: a job takes a [`Permit`] with [`Deployment::try_acquire`] under a short,
//! uncontended lock, gives it back with [`Deployment::release`] and reports how the call went
//! with [`Deployment::outcome`]. The [`DeploymentActor`] owns what needs a mailbox: the queue of
//! jobs that found no capacity (first come, first served, each until its own deadline), the
//! timer that wakes them when the buckets refill, and the announcements of cooldowns to the
//! other workers on `llm.health.<deployment>`. A job asks the actor only when it has to wait.
//!
//! It never makes the HTTP call: the job runs it in its own task.

use std::{
    collections::VecDeque,
    sync::{
        Arc, LazyLock, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, rpc::CallResult};
use serde::{Deserialize, Serialize};

use crate::{
    cluster::{
        health::HealthBoard,
        quota::{ClusterLimit, ClusterQuota, LimitKind},
    },
    limits::{Capacity, CapacitySnapshot, Permit, SharedLimit},
    policy::health::{Health, HealthPolicy, HealthState},
    pricing::Price,
    providers::{ErrorClass, Provider},
    telemetry,
    wire::Subjects,
};

/// How long a half-open deployment's probe may take before another job may probe it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the rest of the worker knows about a deployment; fixed for the deployment's life.
#[derive(Debug)]
pub struct DeploymentInfo {
    /// Unique id (`model_info.id`, else `<model_group>-<n>`).
    pub id: String,
    /// A digest of everything that makes the deployment what it is: a config reload keeps a
    /// running deployment whose identity is unchanged.
    pub identity: String,
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
    /// Numbers the router reads without a lock.
    pub live: Live,
}

/// The instant all `*_ms` numbers in [`Live`] count from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds from the process epoch to `t` (0 for instants before it).
pub fn epoch_ms(t: Instant) -> u64 {
    t.saturating_duration_since(*EPOCH).as_millis() as u64
}

/// Lock-free numbers a deployment keeps up to date for the router.
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

    /// The health state at `now`, from the numbers last written.
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
#[derive(Clone)]
pub struct Gossip {
    /// The NATS connection.
    pub client: async_nats::Client,
    /// Subject names.
    pub subjects: Subjects,
    /// This worker's id, so it can ignore its own messages.
    pub worker: String,
    /// The cluster's cooldown board in JetStream KV (workers that start later read it); `None`
    /// without JetStream, when core NATS gossip is all there is.
    pub board: Option<HealthBoard>,
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip")
            .field("worker", &self.worker)
            .field("board", &self.board.is_some())
            .finish_non_exhaustive()
    }
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

/// Why [`Deployment::acquire`] gave no permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireError {
    /// No capacity came free within the time allowed.
    TimedOut,
    /// The deployment's actor is not running (being restarted): try another deployment.
    Unavailable,
}

/// The state behind the deployment's lock.
struct Core {
    capacity: Capacity,
    health: Health,
    /// Jobs in the actor's queue: while there are any, the fast path leaves capacity to them.
    waiting: usize,
    successes: u64,
    failures: u64,
    /// When a half-open probe went out, and for which cooldown (its end, in epoch ms).
    probe: Option<(Instant, u64)>,
}

/// Metric handles, looked up once.
struct Gauges {
    in_flight: metrics::Gauge,
    rpm_used: metrics::Gauge,
    tpm_used: metrics::Gauge,
    state: metrics::Gauge,
}

/// One deployment, shared by every job of the worker: its facts, its capacity and its health.
pub struct Deployment {
    /// What it is.
    pub info: Arc<DeploymentInfo>,
    core: Mutex<Core>,
    actor: ArcSwapOption<ActorRef<DeploymentMsg>>,
    gauges: Gauges,
    /// False when cooldowns are disabled: failures never take the deployment out.
    cooldowns: bool,
    /// The cluster-wide RPM and TPM limits, when the limits are shared with the cluster.
    shared: Vec<Arc<ClusterLimit>>,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("id", &self.info.id)
            .finish_non_exhaustive()
    }
}

impl Deployment {
    /// A deployment with full buckets and good health; its actor is set by [`DeploymentActor`].
    /// `policy` holds the cooldown thresholds; `None` disables cooldowns. With `quota`, its
    /// `rpm` and `tpm` are limits of the whole cluster ([`crate::cluster::quota`]): a new slice
    /// arriving wakes the jobs queued for capacity.
    pub fn new(
        info: Arc<DeploymentInfo>,
        policy: Option<HealthPolicy>,
        quota: Option<&ClusterQuota>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me: &std::sync::Weak<Deployment>| {
            let shared_limit = |kind: LimitKind, limit: u64| {
                let quota = quota?;
                let l = Arc::new(quota.limit(&info.id, kind, limit));
                let me = me.clone();
                l.on_refill(move || {
                    if let Some(d) = me.upgrade() {
                        d.wake();
                    }
                });
                Some(l)
            };
            let rpm = info.rpm.and_then(|n| shared_limit(LimitKind::Rpm, n));
            let tpm = info.tpm.and_then(|n| shared_limit(LimitKind::Tpm, n));
            let shared: Vec<Arc<ClusterLimit>> = rpm.iter().chain(&tpm).cloned().collect();
            let capacity = if shared.is_empty() {
                Capacity::new(info.rpm, info.tpm, info.max_parallel)
            } else {
                let dyn_limit = |l: Option<Arc<ClusterLimit>>| l.map(|l| l as Arc<dyn SharedLimit>);
                Capacity::with_shared(dyn_limit(rpm), dyn_limit(tpm), info.max_parallel, None)
            };
            Self::build(info, policy, capacity, shared)
        })
    }

    fn build(
        info: Arc<DeploymentInfo>,
        policy: Option<HealthPolicy>,
        capacity: Capacity,
        shared: Vec<Arc<ClusterLimit>>,
    ) -> Self {
        let cooldowns = policy.is_some();
        let policy = policy.unwrap_or_default();
        let id = info.id.clone();
        let gauges = Gauges {
            in_flight: metrics::gauge!(telemetry::DEPLOYMENT_IN_FLIGHT, "deployment" => id.clone()),
            rpm_used: metrics::gauge!(telemetry::DEPLOYMENT_RPM_USED, "deployment" => id.clone()),
            tpm_used: metrics::gauge!(telemetry::DEPLOYMENT_TPM_USED, "deployment" => id.clone()),
            state: metrics::gauge!(telemetry::DEPLOYMENT_STATE, "deployment" => id),
        };
        if info.misconfigured.is_some() {
            gauges.state.set(HealthState::Misconfigured.code() as f64);
        }
        Self {
            core: Mutex::new(Core {
                capacity,
                health: Health::new(policy),
                waiting: 0,
                successes: 0,
                failures: 0,
                probe: None,
            }),
            info,
            actor: ArcSwapOption::empty(),
            gauges,
            cooldowns,
            shared,
        }
    }

    /// Takes the deployment out of service (a reload removed it): its actor stops (jobs still
    /// queued for capacity are told, and pick again), and the unspent part of its cluster-wide
    /// limits goes back to the cluster. Calls in flight finish and release as usual.
    pub async fn retire(&self) {
        if let Some(actor) = self.actor.load_full() {
            actor.stop(Some("removed by a config reload".into()));
        }
        self.close_limits(Duration::from_secs(2)).await;
    }

    /// True when its `rpm`/`tpm` hold for the whole cluster.
    pub fn cluster_limited(&self) -> bool {
        !self.shared.is_empty()
    }

    /// Gives the unspent part of its cluster-wide limits back to the cluster (a worker that
    /// stops, or a deployment a reload removed), waiting up to `timeout` for the writes.
    pub async fn close_limits(&self, timeout: Duration) {
        for l in &self.shared {
            l.close(timeout).await;
        }
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // No code under this lock panics; if some ever did, the numbers are still usable.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A permit now, when capacity is free and no job is queued for it.
    pub fn try_acquire(&self, est_tokens: u64, now: Instant) -> Option<Permit> {
        let mut core = self.lock();
        if core.waiting > 0 {
            return None;
        }
        let permit = core.capacity.try_acquire(est_tokens, now).ok()?;
        self.publish_capacity(&mut core, now);
        Some(permit)
    }

    /// A permit for a call expected to use `est_tokens`: at once when capacity is free, else
    /// from the actor's queue within `patience`.
    pub async fn acquire(
        &self,
        est_tokens: u64,
        patience: Duration,
    ) -> Result<Permit, AcquireError> {
        if let Some(permit) = self.try_acquire(est_tokens, Instant::now()) {
            return Ok(permit);
        }
        let Some(actor) = self.actor.load_full() else {
            return Err(AcquireError::Unavailable);
        };
        match actor
            .call(
                |reply| DeploymentMsg::Acquire { est_tokens, reply },
                Some(patience),
            )
            .await
        {
            Ok(CallResult::Success(permit)) => Ok(permit),
            Ok(CallResult::Timeout) => Err(AcquireError::TimedOut),
            _ => Err(AcquireError::Unavailable),
        }
    }

    /// Gives a permit back after the call, with the tokens it really used when known.
    pub fn release(&self, permit: Permit, actual_tokens: Option<u64>, now: Instant) {
        let mut core = self.lock();
        core.capacity.release(permit, actual_tokens, now);
        self.publish_capacity(&mut core, now);
        let wake = core.waiting > 0;
        drop(core);
        if wake {
            self.wake();
        }
    }

    /// Gives a permit back whose call was never made: its request and tokens are refunded.
    pub fn cancel(&self, permit: Permit, now: Instant) {
        let mut core = self.lock();
        core.capacity.cancel(permit, now);
        self.publish_capacity(&mut core, now);
        let wake = core.waiting > 0;
        drop(core);
        if wake {
            self.wake();
        }
    }

    /// The id of the deployment's actor, while one runs.
    pub fn actor_id(&self) -> Option<ractor::ActorId> {
        self.actor.load().as_ref().map(|a| a.get_id())
    }

    fn wake(&self) {
        if let Some(actor) = self.actor.load_full() {
            let _ = actor.cast(DeploymentMsg::Wake);
        }
    }

    /// How a call went: latency averages on success, the failure rules otherwise. A failure
    /// that starts a cooldown is announced to the other workers.
    pub fn outcome(
        &self,
        latency: Duration,
        ttft: Option<Duration>,
        failure: Option<(ErrorClass, Option<Duration>)>,
        now: Instant,
    ) {
        let live = &self.info.live;
        let mut core = self.lock();
        let mut announce = None;
        match failure {
            None => {
                core.successes += 1;
                ewma(&live.latency_ewma_us, latency);
                if let Some(t) = ttft {
                    ewma(&live.ttft_ewma_us, t);
                }
                core.health.success(now);
            }
            Some((class, retry_after)) => {
                core.failures += 1;
                metrics::counter!(telemetry::UPSTREAM_FAILURES,
                    "deployment" => self.info.id.clone(),
                    "class" => format!("{class:?}"))
                .increment(1);
                let cooled = if self.cooldowns {
                    core.health.failure(class, retry_after, now)
                } else {
                    None
                };
                if let Some(length) = cooled {
                    tracing::warn!(deployment = %self.info.id, class = ?class, cooldown_ms = length.as_millis() as u64, "deployment cools down");
                    metrics::counter!(telemetry::COOLDOWNS, "deployment" => self.info.id.clone())
                        .increment(1);
                    announce = Some((length, class));
                }
            }
        }
        self.publish_health(&core, now);
        drop(core);
        if let Some((length, class)) = announce
            && let Some(actor) = self.actor.load_full()
        {
            let _ = actor.cast(DeploymentMsg::Announce { length, class });
        }
    }

    /// Another worker cooled this deployment down for `cooldown` from now.
    pub fn remote_cooldown(&self, cooldown: Duration, now: Instant) {
        let mut core = self.lock();
        core.health.cool_down_until(now + cooldown, now);
        self.publish_health(&core, now);
    }

    /// True when the deployment may take a job now: healthy, or half-open with no probe out.
    pub fn available(&self, now: Instant) -> bool {
        match self.info.live.health(now) {
            HealthState::Healthy => true,
            HealthState::CoolingDown | HealthState::Misconfigured => false,
            HealthState::HalfOpen => {
                let until = self.info.live.cooling_until_ms.load(Ordering::Relaxed);
                match self.lock().probe {
                    Some((sent, for_until)) if for_until == until => {
                        now.duration_since(sent) > PROBE_TIMEOUT
                    }
                    _ => true,
                }
            }
        }
    }

    /// Chosen for a job: when half-open, this job is the probe. False when another job took
    /// the probe first.
    pub fn claim(&self, now: Instant) -> bool {
        if self.info.live.health(now) != HealthState::HalfOpen {
            return true;
        }
        let until = self.info.live.cooling_until_ms.load(Ordering::Relaxed);
        let mut core = self.lock();
        match core.probe {
            Some((sent, for_until))
                if for_until == until && now.duration_since(sent) <= PROBE_TIMEOUT =>
            {
                false
            }
            _ => {
                core.probe = Some((now, until));
                true
            }
        }
    }

    /// The state `llm.deployments` reports.
    pub fn status(&self, now: Instant) -> DeploymentStatus {
        let live = &self.info.live;
        let mut core = self.lock();
        let (failures_last_minute, calls_last_minute) = core.health.window_counts(now);
        DeploymentStatus {
            id: self.info.id.clone(),
            model_group: self.info.model_group.clone(),
            model: self.info.model.clone(),
            state: match self.info.misconfigured {
                Some(_) => HealthState::Misconfigured,
                None => core.health.state(now),
            },
            misconfigured: self.info.misconfigured.clone(),
            cooldown_remaining_ms: core
                .health
                .cooling_until()
                .map_or(0, |u| u.saturating_duration_since(now).as_millis() as u64),
            cooldowns: core.health.cooldowns(),
            failures_last_minute,
            calls_last_minute,
            capacity: core.capacity.snapshot(now),
            waiting: core.waiting,
            latency_ms: live.latency_ewma_us.load(Ordering::Relaxed) as f64 / 1000.0,
            ttft_ms: live.ttft_ewma_us.load(Ordering::Relaxed) as f64 / 1000.0,
            successes: core.successes,
            failures: core.failures,
        }
    }

    fn publish_health(&self, core: &Core, now: Instant) {
        let live = &self.info.live;
        let state = core.health.state(now);
        live.cooling_until_ms.store(
            core.health.cooling_until().map_or(0, epoch_ms),
            Ordering::Relaxed,
        );
        live.state.store(state.code(), Ordering::Relaxed);
        let shown = match self.info.misconfigured {
            Some(_) => HealthState::Misconfigured,
            None => state,
        };
        self.gauges.state.set(shown.code() as f64);
    }

    fn publish_capacity(&self, core: &mut Core, now: Instant) {
        let snap = core.capacity.snapshot(now);
        let live = &self.info.live;
        live.in_flight.store(snap.in_flight, Ordering::Relaxed);
        live.rpm_used.store(snap.rpm_used, Ordering::Relaxed);
        live.tpm_used.store(snap.tpm_used, Ordering::Relaxed);
        let full = |used: u64, limit: Option<u64>| limit.is_some_and(|l| used >= l);
        let saturated = core.waiting > 0
            || snap.max_parallel.is_some_and(|m| snap.in_flight >= m)
            || full(snap.rpm_used, snap.rpm_limit)
            || full(snap.tpm_used, snap.tpm_limit);
        live.saturated.store(saturated, Ordering::Relaxed);
        self.gauges.in_flight.set(snap.in_flight as f64);
        self.gauges.rpm_used.set(snap.rpm_used as f64);
        self.gauges.tpm_used.set(snap.tpm_used as f64);
    }
}

/// The actor's arguments.
pub struct DeploymentArgs {
    /// The deployment.
    pub deployment: Arc<Deployment>,
    /// Where cooldowns are announced; `None` to keep them local.
    pub gossip: Option<Gossip>,
}

/// Messages a deployment actor takes.
pub enum DeploymentMsg {
    /// Grant capacity for a call that expects to use `est_tokens`, in arrival order, when
    /// there is some; the answer may wait.
    Acquire {
        /// Tokens reserved against TPM until the call settles.
        est_tokens: u64,
        /// Where the permit goes.
        reply: RpcReplyPort<Permit>,
    },
    /// Capacity may have come free: look at the queue again.
    Wake,
    /// A cooldown started here: tell the other workers.
    Announce {
        /// How long it lasts.
        length: Duration,
        /// The failure class that started it.
        class: ErrorClass,
    },
}

/// The actor: the queue of jobs waiting for capacity, and cooldown announcements.
pub struct DeploymentActor;

/// The actor's state.
pub struct DeploymentState {
    deployment: Arc<Deployment>,
    gossip: Option<Gossip>,
    waiting: VecDeque<(u64, RpcReplyPort<Permit>)>,
    wake_at: Option<Instant>,
}

impl Actor for DeploymentActor {
    type Msg = DeploymentMsg;
    type State = DeploymentState;
    type Arguments = DeploymentArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: DeploymentArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let deployment = args.deployment;
        // A restarted actor has lost its predecessor's queue (those jobs were told so).
        deployment.lock().waiting = 0;
        deployment.actor.store(Some(Arc::new(myself)));
        Ok(DeploymentState {
            deployment,
            gossip: args.gossip,
            waiting: VecDeque::new(),
            wake_at: None,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Forget ourselves unless a successor already took over.
        let slot = &state.deployment.actor;
        let current = slot.load_full();
        if current.is_some_and(|a| a.get_id() == myself.get_id()) {
            slot.store(None);
        }
        Ok(())
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
            DeploymentMsg::Wake => {
                state.serve_waiting(&myself, now);
            }
            DeploymentMsg::Announce { length, class } => state.announce(length, class),
        }
        Ok(())
    }
}

impl DeploymentState {
    /// Tells the other workers about a cooldown this worker started.
    fn announce(&self, length: Duration, class: ErrorClass) {
        let Some(g) = &self.gossip else { return };
        let id = &self.deployment.info.id;
        let event = HealthEvent {
            deployment: id.clone(),
            worker: g.worker.clone(),
            state: "cooldown".into(),
            cooldown_ms: length.as_millis() as u64,
            reason: format!("{class:?}"),
        };
        let client = g.client.clone();
        let subject = g.subjects.health(id);
        let board = g.board.clone();
        let until = crate::cluster::epoch_ms() + event.cooldown_ms;
        // Fire and forget: gossip never holds up the actor.
        tokio::spawn(async move {
            if let Ok(body) = serde_json::to_vec(&event) {
                let _ = client.publish(subject, body.into()).await;
            }
            if let Some(board) = board
                && let Err(e) = board.publish(&event.deployment, until, &event.reason).await
            {
                tracing::warn!(error = %e, "recording a cooldown in the cluster's health board");
            }
        });
    }

    /// Grants capacity to waiting jobs in arrival order, while there is capacity.
    fn serve_waiting(&mut self, myself: &ActorRef<DeploymentMsg>, now: Instant) {
        let deployment = self.deployment.clone();
        let mut core = deployment.lock();
        let mut wake = None;
        while let Some((est_tokens, reply)) = self.waiting.front() {
            if reply.is_closed() {
                // The job gave up (its deadline passed); forget it.
                self.waiting.pop_front();
                continue;
            }
            match core.capacity.try_acquire(*est_tokens, now) {
                Ok(permit) => {
                    let (_, reply) = self.waiting.pop_front().expect("front exists");
                    if let Err(ractor::MessagingErr::SendErr(permit)) = reply.send(permit) {
                        // The job went away between the check and the send.
                        core.capacity.cancel(permit, now);
                    }
                }
                Err(wait) => {
                    wake = wait.duration();
                    break;
                }
            }
        }
        core.waiting = self.waiting.len();
        deployment.publish_capacity(&mut core, now);
        drop(core);
        if let Some(after) = wake {
            self.schedule_wake(myself, now + after, after);
        }
    }

    fn schedule_wake(&mut self, myself: &ActorRef<DeploymentMsg>, at: Instant, after: Duration) {
        if self.wake_at.is_some_and(|w| w > Instant::now() && w <= at) {
            return;
        }
        self.wake_at = Some(at);
        // The timer holds the actor only until `after`, a refill time (well under a minute).
        myself.send_after(after, || DeploymentMsg::Wake);
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
