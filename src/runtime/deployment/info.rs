//! What a deployment is and what it tells others: its fixed facts ([`DeploymentInfo`]), the
//! lock-free numbers the router reads ([`Live`]) and the state `llm.deployments` reports
//! ([`DeploymentStatus`]).

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    limits::CapacitySnapshot, policy::health::HealthState, pricing::Price, providers::Provider,
    wire::ratelimit::Window,
};

/// What the rest of the worker knows about a deployment; fixed for the deployment's life.
#[derive(Debug)]
pub struct DeploymentInfo {
    /// Unique id (`model_info.id`, else `<model_group>-<hash of the upstream>`, the same on
    /// every worker: [`crate::config::deployment_ids`]).
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

impl DeploymentInfo {
    /// The same facts with fresh [`Live`] numbers but the latency averages: for a deployment
    /// that replaces this one while it keeps running for the calls it holds.
    pub fn renewed(&self) -> DeploymentInfo {
        let live = Live::default();
        for (to, from) in [
            (&live.latency_ewma_us, &self.live.latency_ewma_us),
            (&live.ttft_ewma_us, &self.live.ttft_ewma_us),
        ] {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        DeploymentInfo {
            id: self.id.clone(),
            identity: self.identity.clone(),
            model_group: self.model_group.clone(),
            model: self.model.clone(),
            upstream_model: self.upstream_model.clone(),
            provider: self.provider.clone(),
            timeout: self.timeout,
            stream_timeout: self.stream_timeout,
            weight: self.weight,
            price: self.price,
            rpm: self.rpm,
            tpm: self.tpm,
            max_parallel: self.max_parallel,
            tags: self.tags.clone(),
            max_input_tokens: self.max_input_tokens,
            misconfigured: self.misconfigured.clone(),
            live,
        }
    }
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

impl DeploymentInfo {
    /// Its `rpm` and `tpm` limits with what the trailing minute used, as last published: the
    /// reply's `x-ratelimit-*` headers.
    pub fn rate_windows(&self) -> (Option<Window>, Option<Window>) {
        let window = |limit: Option<u64>, used: &AtomicU64| {
            limit.map(|limit| Window {
                limit,
                used: used.load(Ordering::Relaxed),
            })
        };
        (
            window(self.rpm, &self.live.rpm_used),
            window(self.tpm, &self.live.tpm_used),
        )
    }
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
    /// Where its `rpm`/`tpm` hold: `shared` (the whole cluster) or `local` (this worker alone:
    /// the cluster lets N times the limit through); absent without `rpm`/`tpm`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<&'static str>,
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
