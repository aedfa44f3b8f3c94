//! Deployment limits that hold across the cluster: `rpm` and `tpm` counted once for all
//! workers, exactly on a sliding 60-second window, without a round trip on the hot path.
//!
//! # Design
//!
//! Each limit of each deployment has one entry in the JetStream KV bucket `LLM_QUOTA`, key
//! `<deployment>.rpm` or `<deployment>.tpm`, holding a [`Ledger`]: the slices of the limit that
//! workers leased in the last window. A worker's [`ClusterLimit`] leases a slice by
//! compare-and-set on the entry's revision, only if the live slices plus the new one stay
//! within the limit, and spends it locally within τ (1 s) of the lease. The ledger module
//! ([`crate::limits::ledger`]) proves that no 60-second window then sees more than the limit
//! spent, whatever the number of workers, the spread of the load or the timing of the writes.
//!
//! - **Hot path.** [`ClusterLimit::try_take`] locks a mutex that only this limiter's
//!   background task shares (uncontended: tens of nanoseconds), takes units from the open
//!   slices and returns. It never awaits. When the balance runs low it wakes the background
//!   task, which leases the next slice while the current one is still being spent; slices
//!   are sized to the local rate × τ (at most a tenth of the limit), so a job far from the
//!   limit does not wait for a round trip. An empty balance answers [`Wait::For`] with the
//!   expected wait; [`ClusterLimit::refilled`] (or [`ClusterLimit::on_refill`]) tells the
//!   caller when a slice arrived.
//! - **Races.** A write that loses the compare-and-set reads the entry again and retries,
//!   after a random pause that grows with the losses in a row (up to 2, 4 … 64 ms), so the
//!   workers that lost one race do not all run the next together. `benches/quota_scale.rs`
//!   counts the races lost per write.
//! - **TPM** reserves the estimate with `try_take` and [`ClusterLimit::settle`]s with the real
//!   usage: unused tokens go back, overage is written into the ledger even past the limit (the
//!   next leases wait for it to age out).
//! - **Returns.** What is left of a slice when its spend period ends is returned to the ledger
//!   at once, so uneven load does not strand the limit on an idle worker.
//! - **Membership changes.** There are no fixed shares to recompute: a worker that joins
//!   leases from the free room at once (or, when the limit is saturated, as soon as units age
//!   out — the ledger is polled every 250 ms at most while starved); a worker that stops
//!   cleanly ([`ClusterLimit::close`]) returns its unspent units in its last write.
//! - **`kill -9`.** A dead worker's slices stay counted until they age out (`H` ≈ 61.5 s). What
//!   it really spent must stay counted — that is the sliding window — so the only part of the
//!   limit stranded is what it leased and had not spent yet: at most its two open slices,
//!   each at most `rate × τ × 1.25` and at most a tenth of the limit. The rest of the limit is
//!   available to the others at once, with no detection delay at all. Returning the stranded
//!   units earlier (on a missing heartbeat) would need to know that they were not spent, which
//!   a dead worker cannot say: handing them out again could exceed the limit, so llmbus does
//!   not.
//! - **NATS outage.** Without NATS no new slice is leased: a worker spends what it holds until
//!   its spend period ends (at most τ, at most two slices) and then refuses with a wait; the
//!   deployment is limited to that bounded local share. Its local record of the slices it
//!   leased survives, and every write puts the writer's own slices back into the entry, so even
//!   a server restarted without its store gets the counted units back before anyone leases
//!   against them. After the outage the limit holds exactly as before.
//!
//! The KV entry is small: one `[leased_at_ms, amount]` pair per slice per worker, about one
//! slice per second per busy worker kept for `H`, so around 2 KB per busy worker.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::kv;
use tokio::{sync::Notify, task::JoinHandle};

use super::{
    ClusterError, Replicas, bucket_name, clock::Clock, ensure_bucket, jetstream, key_token,
};
use crate::limits::{Ledger, LocalShare, ShareParams, SharedLimit, SyncPlan, Taken, Wait};

/// Which limit of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Requests per minute.
    Rpm,
    /// Tokens per minute.
    Tpm,
}

impl LimitKind {
    /// `rpm` or `tpm`: the key suffix.
    pub fn as_str(&self) -> &'static str {
        match self {
            LimitKind::Rpm => "rpm",
            LimitKind::Tpm => "tpm",
        }
    }
}

/// Timing of the cluster limiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaOptions {
    /// The sliding window (60 s; tests shorten it).
    pub window: Duration,
    /// τ: how long a slice may be spent after its lease.
    pub spend: Duration,
    /// Allowance for clock differences between workers.
    pub skew: Duration,
    /// How long a KV request may take before NATS counts as unreachable.
    pub timeout: Duration,
    /// The bucket's replicas (only used when this worker creates the bucket).
    pub replicas: Replicas,
}

impl Default for QuotaOptions {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            spend: Duration::from_secs(1),
            skew: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
            replicas: Replicas::Auto,
        }
    }
}

/// The quota bucket under `prefix` (`LLM_QUOTA`).
pub fn bucket(prefix: &str) -> kv::Config {
    kv::Config {
        bucket: bucket_name(prefix, "QUOTA"),
        description: "llmbus deployment limits: slices leased in the last window".into(),
        history: 1,
        // Idle ledgers go away; busy ones are rewritten every few seconds.
        max_age: Duration::from_secs(3600),
        ..Default::default()
    }
}

/// One worker's access to the quota bucket: makes a [`ClusterLimit`] per deployment limit.
#[derive(Clone)]
pub struct ClusterQuota {
    kv: kv::Store,
    worker: String,
    opts: QuotaOptions,
    instances: Arc<AtomicU64>,
    /// The time of the ledger's stamps and window (the server's, see [`super::clock`]).
    clock: Clock,
}

impl ClusterQuota {
    /// Opens (creating if needed, with `replicas`) the quota bucket under `prefix` for worker
    /// `worker`.
    pub async fn open(
        client: async_nats::Client,
        prefix: &str,
        worker: impl Into<String>,
        replicas: Replicas,
    ) -> Result<Self, ClusterError> {
        let opts = QuotaOptions {
            replicas,
            ..QuotaOptions::default()
        };
        Self::open_with(client, prefix, worker, opts).await
    }

    /// Like [`ClusterQuota::open`] with other timing.
    pub async fn open_with(
        client: async_nats::Client,
        prefix: &str,
        worker: impl Into<String>,
        opts: QuotaOptions,
    ) -> Result<Self, ClusterError> {
        let js = jetstream(client, opts.timeout);
        let kv = ensure_bucket(&js, bucket(prefix), opts.replicas).await?;
        Ok(Self {
            kv,
            worker: worker.into(),
            opts,
            instances: Arc::new(AtomicU64::new(0)),
            clock: Clock::system(),
        })
    }

    /// The same access with the ledger's times taken from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// A limiter of `limit` units per window for `deployment`, with slices sized by the
    /// defaults; its background task starts at once (on the current Tokio runtime).
    pub fn limit(&self, deployment: &str, kind: LimitKind, limit: u64) -> ClusterLimit {
        let mut p = ShareParams::new(limit, self.opts.window);
        p.spend = self.opts.spend;
        p.skew = self.opts.skew;
        self.limit_with(deployment, kind, p)
    }

    /// A limiter with explicit parameters.
    pub fn limit_with(
        &self,
        deployment: &str,
        kind: LimitKind,
        params: ShareParams,
    ) -> ClusterLimit {
        let key = format!("{}.{}", key_token(deployment), kind.as_str());
        // One owner per limiter instance: a reloaded deployment never clobbers the slices of
        // the instance it replaces.
        let n = self.instances.fetch_add(1, Ordering::Relaxed);
        let owner = format!("{}:{n}", self.worker);
        let inner = Arc::new(Inner {
            share: Mutex::new(LocalShare::new(params)),
            wake: Notify::new(),
            refilled: Notify::new(),
            synced: Notify::new(),
            on_refill: Mutex::new(None),
            stats: Stats::default(),
            cluster_used: AtomicU64::new(0),
            clock: self.clock.clone(),
        });
        let task = tokio::spawn(run(
            inner.clone(),
            self.kv.clone(),
            key.clone(),
            owner.clone(),
        ));
        ClusterLimit {
            inner,
            task: Some(task),
            key,
            owner,
        }
    }
}

/// Counters of one limiter's background work.
#[derive(Debug, Default)]
pub struct Stats {
    /// Slices leased.
    pub leases: AtomicU64,
    /// Units leased in total.
    pub leased_units: AtomicU64,
    /// Successful writes of the entry.
    pub writes: AtomicU64,
    /// Writes that lost a compare-and-set race and were retried.
    pub conflicts: AtomicU64,
    /// Leases refused because the ledger was full.
    pub refusals: AtomicU64,
    /// NATS errors (timeouts, no connection).
    pub errors: AtomicU64,
}

/// A limiter's state for `llm.deployments` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSnapshot {
    /// Units per window, cluster-wide.
    pub limit: u64,
    /// Units this worker may spend now without a round trip.
    pub local: u64,
    /// Units counted in the ledger, all workers, at the last look.
    pub cluster_used: u64,
}

type Callback = Arc<dyn Fn() + Send + Sync>;

struct Inner {
    share: Mutex<LocalShare>,
    /// Wakes the background task.
    wake: Notify,
    /// Wakes callers waiting for a slice.
    refilled: Notify,
    /// Wakes `close` after each write.
    synced: Notify,
    on_refill: Mutex<Option<Callback>>,
    stats: Stats,
    cluster_used: AtomicU64,
    clock: Clock,
}

impl Inner {
    fn share(&self) -> std::sync::MutexGuard<'_, LocalShare> {
        self.share.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One deployment limit shared with the cluster. See the module docs.
///
/// Dropping it stops its background task without returning anything (like a crash: its open
/// slices age out); [`ClusterLimit::close`] returns them first.
pub struct ClusterLimit {
    inner: Arc<Inner>,
    task: Option<JoinHandle<()>>,
    key: String,
    owner: String,
}

impl ClusterLimit {
    /// Takes `n` units now, or says how long to wait. Never awaits; `now` is the caller's
    /// clock (one `Instant::now()` per job is enough for all its limits).
    #[inline]
    pub fn try_take(&self, n: u64, now: Instant) -> Result<Taken, Wait> {
        let (result, wake) = {
            let mut share = self.inner.share();
            let result = share.try_take(n, now);
            (result, share.take_wake())
        };
        if wake {
            self.inner.wake.notify_one();
        }
        result
    }

    /// Settles units taken with the real usage (`actual`): fewer go back, more are recorded.
    pub fn settle(&self, taken: Taken, actual: u64, now: Instant) {
        let wake = {
            let mut share = self.inner.share();
            share.settle(taken, actual, now);
            share.take_wake()
        };
        if wake {
            self.inner.wake.notify_one();
        }
    }

    /// Gives back units whose call was never made.
    pub fn cancel(&self, taken: Taken, now: Instant) {
        self.settle(taken, 0, now);
    }

    /// Resolves when a new slice arrives (then `try_take` may succeed). To miss none,
    /// `enable()` it before calling `try_take`.
    pub fn refilled(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.refilled.notified()
    }

    /// Calls `f` whenever a new slice arrives (for an actor: cast itself a wake-up). `f` runs
    /// on the background task and must not block.
    pub fn on_refill(&self, f: impl Fn() + Send + Sync + 'static) {
        *self
            .inner
            .on_refill
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(f));
    }

    /// The limit and what is available now.
    pub fn snapshot(&self, now: Instant) -> LimitSnapshot {
        let mut share = self.inner.share();
        LimitSnapshot {
            limit: share.params().limit,
            local: share.available(now),
            cluster_used: self.inner.cluster_used.load(Ordering::Relaxed),
        }
    }

    /// Counters of the background work.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// The KV key of the ledger.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// This limiter's owner name in the ledger (`<worker>:<n>`).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Stops granting, returns the unspent units to the ledger (waiting up to `timeout` for
    /// the write). The background task stops when the limiter is dropped.
    pub async fn close(&self, timeout: Duration) {
        self.inner.share().close(Instant::now());
        self.inner.wake.notify_one();
        let _ = tokio::time::timeout(timeout, async {
            loop {
                let synced = self.inner.synced.notified();
                if self.inner.share().is_synced() {
                    break;
                }
                synced.await;
            }
        })
        .await;
    }
}

impl std::fmt::Debug for ClusterLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLimit")
            .field("key", &self.key)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl SharedLimit for ClusterLimit {
    fn try_take(&self, n: u64, now: Instant) -> Result<Taken, Wait> {
        ClusterLimit::try_take(self, n, now)
    }

    fn settle(&self, taken: Taken, actual: u64, now: Instant) {
        ClusterLimit::settle(self, taken, actual, now)
    }

    fn limit(&self) -> u64 {
        self.inner.share().params().limit
    }

    fn used(&self, _now: Instant) -> u64 {
        self.inner.cluster_used.load(Ordering::Relaxed)
    }
}

impl Drop for ClusterLimit {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The background task of one limiter: leases, returns, retries.
async fn run(inner: Arc<Inner>, kv: kv::Store, key: String, owner: String) {
    // The entry as this task last wrote or read it, with its revision.
    let mut cached: Option<(Ledger, u64)> = None;
    loop {
        let plan = inner.share().plan(Instant::now(), inner.clock.now_ms());
        let Some(plan) = plan else {
            let next = inner.share().next_check(Instant::now());
            tokio::select! {
                _ = inner.wake.notified() => {}
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            continue;
        };
        sync(&inner, &kv, &key, &owner, plan, &mut cached).await;
        inner.synced.notify_waiters();
    }
}

/// Writes one plan: this owner's slices and maybe a new lease, retrying lost races.
async fn sync(
    inner: &Inner,
    kv: &kv::Store,
    key: &str,
    owner: &str,
    mut plan: SyncPlan,
    cached: &mut Option<(Ledger, u64)>,
) {
    let (limit, horizon) = {
        let share = inner.share();
        (share.params().limit, share.params().horizon_ms())
    };
    for attempt in 0..16 {
        if attempt > 0 {
            // Lost a race: plan again with what changed locally meanwhile.
            match inner.share().plan(Instant::now(), inner.clock.now_ms()) {
                Some(p) => plan = p,
                None => return,
            }
        }
        let fresh = cached.is_none();
        let (mut ledger, revision) = match cached.take() {
            Some(c) => c,
            None => match read(kv, key).await {
                Ok(c) => c,
                Err(e) => return failed(inner, e),
            },
        };
        // The stamp is taken after the state was read (see the proof in the ledger module).
        let started = Instant::now();
        let now_ms = inner.clock.now_ms();
        let stamp = inner.share().stamp(now_ms);
        ledger.prune(now_ms, horizon);
        let before_own = ledger.owners.get(owner).cloned().unwrap_or_default();
        ledger.replace_own(owner, plan.own.clone());
        let mut lease = plan
            .lease
            .and_then(|(min, max)| ledger.grant(min, max, limit, stamp, horizon))
            .map(|n| (stamp, n));
        if plan.lease.is_some() && lease.is_none() && !fresh {
            // "No room" from a cached copy may be stale: look at the real entry first.
            *cached = None;
            match read(kv, key).await {
                Ok(c) => *cached = Some(c),
                Err(e) => return failed(inner, e),
            }
            continue;
        }
        if let Some((at, n)) = lease {
            let mut own = plan.own.clone();
            own.push((at, n));
            ledger.replace_own(owner, own);
        }
        let fill = ledger.live_sum(now_ms, horizon) as f64 / limit.max(1) as f64;
        inner
            .cluster_used
            .store(ledger.live_sum(now_ms, horizon), Ordering::Relaxed);
        let own_after = ledger.owners.get(owner).cloned().unwrap_or_default();
        if lease.is_none() && own_after == before_own {
            // Nothing to write: refused, and our slices are already as recorded.
            let need = plan.lease.map_or(1, |(min, _)| min);
            refuse(
                inner,
                &ledger,
                need,
                limit,
                now_ms,
                horizon,
                fill,
                plan.lease.is_some(),
            );
            inner
                .share()
                .committed(&plan, None, started, fill, Instant::now());
            *cached = Some((ledger, revision));
            return;
        }
        match kv.update(key, ledger.encode().into(), revision).await {
            Ok(new_revision) => {
                inner.stats.writes.fetch_add(1, Ordering::Relaxed);
                if lease.is_none() && plan.lease.is_some() {
                    let need = plan.lease.map_or(1, |(min, _)| min);
                    refuse(inner, &ledger, need, limit, now_ms, horizon, fill, true);
                }
                let now = Instant::now();
                inner.share().committed(&plan, lease, started, fill, now);
                *cached = Some((ledger, new_revision));
                if let Some((_, n)) = lease.take() {
                    inner.stats.leases.fetch_add(1, Ordering::Relaxed);
                    inner.stats.leased_units.fetch_add(n, Ordering::Relaxed);
                    inner.refilled.notify_waiters();
                    let callback = inner
                        .on_refill
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    if let Some(f) = callback {
                        f();
                    }
                }
                return;
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                inner.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                *cached = None;
                // Every worker that lost this race would try again at once and race again:
                // spread the next tries over a window that grows with the losses.
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return failed(inner, ClusterError::kv(&kv.name, e)),
        }
    }
}

/// The pause after losing the `attempt`-th race in a row: a random time up to 2, 4, 8 ... ms,
/// at most 64 ms. The first loss (usually against a cached copy that was stale) retries at
/// once.
fn backoff(attempt: u32) -> Duration {
    use rand::Rng;
    if attempt == 0 {
        return Duration::ZERO;
    }
    let most = 1u64 << attempt.min(6);
    Duration::from_micros(rand::rng().random_range(0..=most * 1000))
}

#[allow(clippy::too_many_arguments)]
fn refuse(
    inner: &Inner,
    ledger: &Ledger,
    need: u64,
    limit: u64,
    now_ms: u64,
    horizon: u64,
    fill: f64,
    wanted: bool,
) {
    if !wanted {
        return;
    }
    inner.stats.refusals.fetch_add(1, Ordering::Relaxed);
    let room_ms = ledger
        .room_at(need, limit, now_ms, horizon)
        .unwrap_or(now_ms + 3_600_000);
    let now = Instant::now();
    let room_at = now + Duration::from_millis(room_ms.saturating_sub(now_ms));
    inner.share().refused(now, room_at, fill);
}

fn failed(inner: &Inner, error: ClusterError) {
    inner.stats.errors.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%error, "cluster quota: NATS did not answer; backing off");
    inner.share().failed(Instant::now());
}

/// The entry and the revision to compare against (0: the key does not exist).
async fn read(kv: &kv::Store, key: &str) -> Result<(Ledger, u64), ClusterError> {
    match kv
        .entry(key)
        .await
        .map_err(|e| ClusterError::kv(&kv.name, e))?
    {
        None => Ok((Ledger::new(), 0)),
        Some(entry) => {
            let ledger = match entry.operation {
                kv::Operation::Put => Ledger::decode(&entry.value).unwrap_or_else(|e| {
                    tracing::warn!(key, error = %e, "unreadable quota ledger; starting it afresh");
                    Ledger::new()
                }),
                kv::Operation::Delete | kv::Operation::Purge => Ledger::new(),
            };
            Ok((ledger, entry.revision))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_race_waits_a_random_time_that_grows_with_the_losses() {
        assert_eq!(backoff(0), Duration::ZERO);
        for attempt in 1..16 {
            let most = Duration::from_millis(1 << attempt.min(6));
            for _ in 0..50 {
                assert!(backoff(attempt) <= most, "{attempt}");
            }
        }
        // Random: 50 pauses after the sixth loss are not all alike.
        let pauses: std::collections::BTreeSet<Duration> = (0..50).map(|_| backoff(6)).collect();
        assert!(pauses.len() > 10, "{pauses:?}");
    }
}
