//! Cluster membership: which workers are alive, which model groups each serves and with which
//! config, kept in the JetStream KV bucket `LLM_WORKERS`.
//!
//! Each worker puts its [`MemberInfo`] under its worker id every heartbeat (2 s by default) and
//! deletes it when it stops cleanly. Every worker watches the bucket and keeps a local view,
//! swapped atomically ([`Members::snapshot`] is a pointer load, fit for a hot path), with a
//! notification on every change ([`Members::changed`]).
//!
//! A worker killed with `kill -9` leaves its key behind: the view drops it once its heartbeat
//! is older than three heartbeat periods (6 s by default; a KV watch does not report entries
//! that age out, so the view sweeps itself), and the bucket's `max_age` (15 s; nats-server 2.9
//! has no per-key TTL) removes the key itself, so a worker starting later never sees it.
//!
//! Meant for the relay (a job for a group this worker does not serve goes to one that serves
//! it) and for `llmbus health` (workers whose configs differ). Limits do not need it: the
//! quota ledger has no fixed per-worker shares to recompute (see [`super::quota`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    ClusterError, Replicas, bucket_name, clock::Clock, ensure_bucket, epoch_ms, jetstream,
    key_token,
};

/// What a worker tells the cluster about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The worker id (unique per process).
    pub worker: String,
    /// The model groups it serves.
    pub groups: Vec<String>,
    /// A fingerprint of its configuration: workers that differ have different fingerprints.
    pub config: String,
    /// When it started, epoch ms.
    pub started_ms: u64,
    /// Its last heartbeat, epoch ms (the server's clock as the worker measures it).
    #[serde(default)]
    pub heartbeat_ms: u64,
    /// Its heartbeat period, ms.
    #[serde(default)]
    pub every_ms: u64,
}

impl MemberInfo {
    /// True when `other` says the same as this but for its heartbeat's time.
    fn same_but_heartbeat(&self, other: &MemberInfo) -> bool {
        self.worker == other.worker
            && self.groups == other.groups
            && self.config == other.config
            && self.started_ms == other.started_ms
            && self.every_ms == other.every_ms
    }

    /// A member that serves `groups` with config fingerprint `config`, starting now.
    pub fn new(worker: impl Into<String>, groups: Vec<String>, config: impl Into<String>) -> Self {
        Self {
            worker: worker.into(),
            groups,
            config: config.into(),
            started_ms: epoch_ms(),
            heartbeat_ms: 0,
            every_ms: 0,
        }
    }
}

/// The live workers as one worker sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberView {
    /// Worker id → what it said last (its `heartbeat_ms` as of the last entry that changed
    /// something else: a heartbeat alone does not rebuild the view).
    pub members: BTreeMap<String, MemberInfo>,
}

impl MemberView {
    /// How many workers are alive.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when no worker is known (not even this one yet).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The workers that serve `group`.
    pub fn serving<'a>(&'a self, group: &'a str) -> impl Iterator<Item = &'a MemberInfo> + 'a {
        self.members
            .values()
            .filter(move |m| m.groups.iter().any(|g| g == group))
    }

    /// Whether some worker serves `group`.
    pub fn serves(&self, group: &str) -> bool {
        self.serving(group).next().is_some()
    }

    /// The workers other than `me` that would take a job for `model`: one of their groups or
    /// aliases is `model`, or one of their wildcard groups matches it.
    pub fn takers<'a>(&'a self, model: &'a str, me: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.members.values().filter_map(move |m| {
            let takes = m.worker != me
                && (m.groups.iter().any(|g| g == model)
                    || crate::policy::wildcard::Wildcards::new(
                        m.groups.iter().map(String::as_str),
                    )
                    .resolve(model)
                    .is_some());
            takes.then_some(m.worker.as_str())
        })
    }

    /// The distinct config fingerprints: more than one means the workers differ.
    pub fn fingerprints(&self) -> BTreeSet<&str> {
        self.members.values().map(|m| m.config.as_str()).collect()
    }
}

/// Timing of membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembersOptions {
    /// How often a worker writes its heartbeat.
    pub heartbeat: Duration,
    /// A worker whose last heartbeat is older than this many periods is dropped from the view.
    pub stale_after: u32,
    /// The bucket's `max_age` (only used when this worker creates the bucket).
    pub max_age: Duration,
    /// The bucket's replicas (only used when this worker creates the bucket).
    pub replicas: Replicas,
}

impl Default for MembersOptions {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(2),
            stale_after: 3,
            max_age: Duration::from_secs(15),
            replicas: Replicas::Auto,
        }
    }
}

/// A last-seen record: what a worker said and when we learnt it (local clock).
#[derive(Debug, Clone)]
struct Seen {
    info: MemberInfo,
    at: Instant,
}

struct Shared {
    view: ArcSwap<MemberView>,
    seen: Mutex<BTreeMap<String, Seen>>,
    changed: watch::Sender<u64>,
    me: Mutex<MemberInfo>,
    opts: MembersOptions,
    /// The time heartbeats are written and judged in.
    clock: Clock,
}

impl Shared {
    /// Rebuilds the view from the records, dropping stale ones; notifies when it changed.
    fn publish(&self, now: Instant) {
        let view = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.retain(|_, s| now.saturating_duration_since(s.at) <= self.stale_limit(&s.info));
            MemberView {
                members: seen
                    .iter()
                    .map(|(k, s)| (k.clone(), s.info.clone()))
                    .collect(),
            }
        };
        if **self.view.load() != view {
            self.view.store(Arc::new(view));
            self.changed.send_modify(|n| *n += 1);
        }
    }

    fn stale_limit(&self, info: &MemberInfo) -> Duration {
        let every = if info.every_ms > 0 {
            Duration::from_millis(info.every_ms)
        } else {
            self.opts.heartbeat
        };
        every * self.opts.stale_after
    }

    /// Records what a worker said; true when the view changes (a new worker, or new groups,
    /// config or timing). A heartbeat that says nothing new only moves its last-seen time: at
    /// 200 workers each worker hears 100 heartbeats a second, and rebuilding the view for each
    /// cost every worker time in the square of the cluster's size.
    fn record(&self, info: MemberInfo, now: Instant) -> bool {
        // A record read from history is as old as its heartbeat says.
        let age = Duration::from_millis(self.clock.now_ms().saturating_sub(info.heartbeat_ms));
        let at = now.checked_sub(age).unwrap_or(now);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get_mut(&info.worker) {
            Some(s) if s.info.same_but_heartbeat(&info) => {
                s.at = s.at.max(at);
                false
            }
            _ => {
                seen.insert(info.worker.clone(), Seen { info, at });
                true
            }
        }
    }

    fn forget(&self, worker: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.remove(worker);
    }
}

/// A reader of this worker's view of the members, for parts of the worker that hold it apart
/// from [`Members`] (the router checks who announces a cooldown). Cheap to clone.
#[derive(Clone)]
pub struct MemberWatch {
    shared: Arc<Shared>,
}

impl MemberWatch {
    /// The live workers now: a pointer load.
    pub fn snapshot(&self) -> Arc<MemberView> {
        self.shared.view.load_full()
    }

    /// A receiver that changes whenever the view changes.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }
}

/// This worker's membership: its heartbeat and its view of the others. Dropping it stops both
/// without deleting the key (as a crash would); [`Members::leave`] deletes it.
pub struct Members {
    shared: Arc<Shared>,
    kv: kv::Store,
    key: String,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The membership bucket under `prefix` (`LLM_WORKERS`), whose entries age out after
/// `max_age`.
pub fn bucket(prefix: &str, max_age: Duration) -> kv::Config {
    kv::Config {
        bucket: bucket_name(prefix, "WORKERS"),
        description: "llmbus workers: heartbeats, groups served, config fingerprint".into(),
        history: 1,
        max_age,
        ..Default::default()
    }
}

impl Members {
    /// Joins the cluster under `prefix` with the default timing.
    pub async fn start(
        client: async_nats::Client,
        prefix: &str,
        me: MemberInfo,
    ) -> Result<Self, ClusterError> {
        Self::start_with(client, prefix, me, MembersOptions::default()).await
    }

    /// Joins the cluster: creates the bucket if needed, writes the first heartbeat, starts the
    /// watcher and returns once the current members are known.
    pub async fn start_with(
        client: async_nats::Client,
        prefix: &str,
        me: MemberInfo,
        opts: MembersOptions,
    ) -> Result<Self, ClusterError> {
        Self::start_on(client, prefix, me, opts, Clock::system()).await
    }

    /// [`Members::start_with`], heartbeats written and judged on `clock`.
    pub async fn start_on(
        client: async_nats::Client,
        prefix: &str,
        me: MemberInfo,
        opts: MembersOptions,
        clock: Clock,
    ) -> Result<Self, ClusterError> {
        let js = jetstream(client, Duration::from_secs(5));
        let kv = ensure_bucket(&js, bucket(prefix, opts.max_age), opts.replicas).await?;
        let key = key_token(&me.worker);
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            view: ArcSwap::from_pointee(MemberView::default()),
            seen: Mutex::new(BTreeMap::new()),
            changed,
            me: Mutex::new(me),
            opts,
            clock,
        });
        heartbeat(&kv, &key, &shared).await?;
        // The current members, before the watcher takes over.
        let mut watch = kv
            .watch_with_history(">")
            .await
            .map_err(|e| ClusterError::kv(&kv.name, e))?;
        // Our own heartbeat is in the bucket, so the history is never empty: read up to the
        // newest entry (`delta` 0), with a bound in case the server stalls.
        let now = Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(entry)) = watch.next().await {
                let last = entry.delta == 0;
                apply(&shared, entry, now);
                if last {
                    break;
                }
            }
        })
        .await;
        shared.publish(Instant::now());
        let watcher = tokio::spawn(watch_loop(kv.clone(), shared.clone(), Some(watch)));
        let beater = tokio::spawn(heartbeat_loop(kv.clone(), key.clone(), shared.clone()));
        Ok(Self {
            shared,
            kv,
            key,
            tasks: Mutex::new(vec![watcher, beater]),
        })
    }

    /// The live workers now: a pointer load.
    pub fn snapshot(&self) -> Arc<MemberView> {
        self.shared.view.load_full()
    }

    /// A receiver that changes whenever the view changes.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// A reader of the view that can be held apart from this.
    pub fn watch(&self) -> MemberWatch {
        MemberWatch {
            shared: self.shared.clone(),
        }
    }

    /// This worker's id.
    pub fn worker(&self) -> String {
        self.lock_me().worker.clone()
    }

    /// Announces new groups and config fingerprint (after a config reload), at once.
    pub async fn update(&self, groups: Vec<String>, config: String) -> Result<(), ClusterError> {
        {
            let mut me = self.lock_me();
            me.groups = groups;
            me.config = config;
        }
        heartbeat(&self.kv, &self.key, &self.shared).await
    }

    /// Leaves the cluster cleanly: stops the heartbeat and deletes this worker's key, so the
    /// others drop it at once.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        for t in self.lock_tasks().drain(..) {
            t.abort();
        }
        self.kv
            .delete(&self.key)
            .await
            .map_err(|e| ClusterError::kv(&self.kv.name, e))
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_me(&self) -> std::sync::MutexGuard<'_, MemberInfo> {
        self.shared.me.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for t in self.lock_tasks().iter() {
            t.abort();
        }
    }
}

/// Applies one watched entry to the records; true when the view may have changed.
fn apply(shared: &Shared, entry: kv::Entry, now: Instant) -> bool {
    match entry.operation {
        kv::Operation::Put => serde_json::from_slice::<MemberInfo>(&entry.value)
            .is_ok_and(|info| shared.record(info, now)),
        kv::Operation::Delete | kv::Operation::Purge => {
            // The key is the worker id as a key token; the record is keyed by the id itself.
            let mut seen = shared.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.retain(|id, _| key_token(id) != entry.key);
            true
        }
    }
}

/// Writes this worker's entry with a fresh heartbeat.
async fn heartbeat(kv: &kv::Store, key: &str, shared: &Shared) -> Result<(), ClusterError> {
    let body = {
        let mut me = shared.me.lock().unwrap_or_else(|e| e.into_inner());
        me.heartbeat_ms = shared.clock.now_ms();
        me.every_ms = shared.opts.heartbeat.as_millis() as u64;
        serde_json::to_vec(&*me).map_err(|e| ClusterError::kv(&kv.name, e))?
    };
    kv.put(key, body.into())
        .await
        .map_err(|e| ClusterError::kv(&kv.name, e))?;
    Ok(())
}

async fn heartbeat_loop(kv: kv::Store, key: String, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.opts.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = heartbeat(&kv, &key, &shared).await {
            tracing::warn!(error = %e, "membership heartbeat failed; retrying");
        }
    }
}

/// Follows the bucket; restarts the watch when it ends (a NATS outage), and sweeps stale
/// members every heartbeat period.
async fn watch_loop(kv: kv::Store, shared: Arc<Shared>, mut first: Option<kv::Watch>) {
    let mut sweep = tokio::time::interval(shared.opts.heartbeat / 2);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut watch = match first.take() {
            Some(w) => w,
            None => match kv.watch_with_history(">").await {
                Ok(w) => {
                    backoff = Duration::from_millis(100);
                    w
                }
                Err(e) => {
                    tracing::debug!(error = %e, "membership watch failed; retrying");
                    shared.publish(Instant::now());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        loop {
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => {
                        let me = shared.me.lock().unwrap_or_else(|e| e.into_inner()).worker.clone();
                        let ours = key_token(&me) == entry.key;
                        let deleted = !matches!(entry.operation, kv::Operation::Put);
                        let changed = apply(&shared, entry, Instant::now());
                        if ours && deleted {
                            // Someone removed our key: the next heartbeat puts it back.
                            shared.forget(&me);
                        }
                        // A heartbeat that says nothing new changes no view; the sweep below
                        // drops the workers that went quiet.
                        if changed {
                            shared.publish(Instant::now());
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "membership watch error; restarting it");
                        break;
                    }
                    None => break,
                },
                _ = sweep.tick() => shared.publish(Instant::now()),
            }
        }
    }
}
