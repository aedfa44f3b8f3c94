//! A deployment: one upstream model behind one provider, its capacity (RPM and TPM sliding
//! windows, calls in flight) and its health (failures of the last minute, cooldown, half-open
//! probe; rules in [`crate::policy::health`]).
//!
//! [`Deployment`] is the deployment's state, shared by every job of the worker. Its fast path
//! needs no message: a job takes a [`Lease`] with [`Deployment::try_acquire`] under a short,
//! uncontended lock, gives it back by dropping it (`lease`) and reports how the call went
//! with [`Deployment::outcome`]. The [`DeploymentActor`] (in `queue`) owns what needs a
//! mailbox: the jobs waiting for capacity and the cooldown announcements. A job asks the actor
//! only when it has to wait. What the deployment is and reports is in `info`.
//!
//! It never makes the HTTP call: the job runs it in its own task.

mod handover;
mod info;
mod lease;
mod queue;
pub mod selfcheck;

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use ractor::{ActorRef, rpc::CallResult};

pub use info::{DeploymentInfo, DeploymentStatus, Live, epoch_ms};
pub use lease::Lease;
pub use queue::{
    DeploymentActor, DeploymentArgs, DeploymentMsg, DeploymentState, Gossip, HealthEvent,
};

use crate::{
    cluster::quota::{ClusterLimit, ClusterQuota, LimitKind},
    limits::{Capacity, Demand, Permit, SharedLimit},
    policy::health::{Health, HealthPolicy, HealthState},
    providers::ErrorClass,
    telemetry,
};

/// How long a half-open deployment's probe may take before another job may probe it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Average output tokens per choice of its calls, reserved for calls that set no bound.
    output_avg: AtomicU64,
    /// Calls the idle self-check found in flight with no job running (`selfcheck`).
    lost: AtomicU32,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("id", &self.info.id)
            .finish_non_exhaustive()
    }
}

impl Deployment {
    /// A deployment with empty windows and good health; its actor is set by [`DeploymentActor`].
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
            output_avg: AtomicU64::new(0),
            lost: AtomicU32::new(0),
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

    /// The tokens a call of `demand` reserves here: its prompt and output bound, or this
    /// deployment's average output when the request sets none.
    pub fn reservation(&self, demand: &Demand) -> u64 {
        demand.tokens(self.observed_output())
    }

    /// A lease now, when capacity is free and no job is queued for it.
    pub fn try_acquire(self: &Arc<Self>, demand: &Demand, now: Instant) -> Option<Lease> {
        let permit = {
            let mut core = self.lock();
            if core.waiting > 0 {
                return None;
            }
            let permit = core
                .capacity
                .try_acquire(self.reservation(demand), now)
                .ok()?;
            self.publish_capacity(&mut core, now);
            permit
        };
        Some(Lease::new(self.clone(), permit, demand.choices))
    }

    /// A lease for a call of `demand`: at once when capacity is free, else from the actor's
    /// queue within `patience`. A lease granted to a job that has gone meanwhile goes back by
    /// itself (see [`Lease`]).
    pub async fn acquire(
        self: &Arc<Self>,
        demand: Demand,
        patience: Duration,
    ) -> Result<Lease, AcquireError> {
        if let Some(lease) = self.try_acquire(&demand, Instant::now()) {
            return Ok(lease);
        }
        let Some(actor) = self.actor.load_full() else {
            return Err(AcquireError::Unavailable);
        };
        // A job that leaves the queue (deadline, cancel, timeout) tells the actor, so that its
        // count of waiting jobs never stays stale (a stale count marks the deployment
        // saturated and sends every job through the queue).
        let left = LeftQueue(Some(actor.clone()));
        let answer = actor
            .call(
                |reply| DeploymentMsg::Acquire { demand, reply },
                Some(patience),
            )
            .await;
        if matches!(answer, Ok(CallResult::Success(_))) {
            left.disarm();
        }
        match answer {
            Ok(CallResult::Success(lease)) => Ok(lease),
            Ok(CallResult::Timeout) => Err(AcquireError::TimedOut),
            _ => Err(AcquireError::Unavailable),
        }
    }

    /// Gives a permit back after the call, with the tokens it really used when known. Only a
    /// [`Lease`]'s drop calls it.
    fn release(&self, permit: Permit, actual_tokens: Option<u64>, now: Instant) {
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
    /// Only a [`Lease`]'s drop calls it.
    fn cancel(&self, permit: Permit, now: Instant) {
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
            limits: (self.info.rpm.is_some() || self.info.tpm.is_some()).then_some(
                if self.cluster_limited() {
                    "shared"
                } else {
                    "local"
                },
            ),
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

/// Wakes the deployment's actor when dropped armed: a job left its queue without a lease.
struct LeftQueue(Option<Arc<ActorRef<DeploymentMsg>>>);

impl LeftQueue {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for LeftQueue {
    fn drop(&mut self) {
        if let Some(actor) = self.0.take() {
            let _ = actor.cast(DeploymentMsg::Wake);
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

/// A deployment for unit tests: a mock upstream with `rpm: 100`, `tpm: 100000` (local) and
/// `max_parallel` slots.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use super::{Deployment, DeploymentInfo, Live};
    use crate::providers::mock::MockProvider;

    pub fn deployment(id: &str, max_parallel: u32) -> Arc<Deployment> {
        let info = DeploymentInfo {
            id: id.into(),
            identity: id.into(),
            model_group: "g".into(),
            model: "mock/m".into(),
            upstream_model: "m".into(),
            provider: Arc::new(MockProvider::new("hi")),
            timeout: None,
            stream_timeout: None,
            weight: 1.0,
            price: None,
            rpm: Some(100),
            tpm: Some(100_000),
            max_parallel: Some(max_parallel),
            tags: Vec::new(),
            max_input_tokens: None,
            misconfigured: None,
            live: Live::default(),
        };
        Deployment::new(Arc::new(info), None, None)
    }
}
