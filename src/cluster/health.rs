//! Cooldowns shared with every worker, including the ones that start later: the JetStream KV
//! bucket `LLM_HEALTH`, one key per deployment.
//!
//! The core-NATS gossip on `llm.health.<deployment>` reaches the workers that are running; a
//! worker that starts during a cooldown would not know it. So a worker that decides a cooldown
//! also writes it here ([`HealthBoard::publish`]): `{deployment, until_ms, reason, worker}`.
//! A starting worker reads every entry once ([`HealthBoard::initial`]: the cooldowns still in
//! force) after it started following the bucket ([`HealthBoard::watch`]); a KV watch delivers
//! a write within milliseconds, well within the 1 s the cluster promises.
//!
//! Writes keep the latest end: a cooldown that ends earlier than the one stored does not
//! replace it (compare-and-set on the revision). Entries are never deleted; one that has ended
//! is ignored and the bucket's `max_age` (24 h) removes it eventually. Times are epoch
//! milliseconds of the NATS server's clock as each worker measures it ([`super::clock`]), so
//! a worker whose own clock is off still writes and reads the same ends as the others.
//!
//! The board is only as trustworthy as who may write it: the shipped NATS config lets only the
//! workers' user write `$KV.>`. A reader still checks each entry ([`crate::runtime::announced`]:
//! from a current member, no longer than it lets another worker impose); an entry that is not
//! a cooldown is skipped and counted (`llmbus_cooldown_announcements_ignored_total`,
//! `reason="malformed"`).

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{
    ClusterError, Replicas, bucket_name, clock::Clock, ensure_bucket, jetstream, key_token,
};

/// A deployment's cooldown, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cooldown {
    /// The deployment id.
    pub deployment: String,
    /// When it ends, epoch ms.
    pub until_ms: u64,
    /// Why (the error class that caused it).
    pub reason: String,
    /// The worker that decided it.
    pub worker: String,
}

impl Cooldown {
    /// How long it still lasts at `now_ms`; `None` once it has ended.
    pub fn remaining(&self, now_ms: u64) -> Option<Duration> {
        (self.until_ms > now_ms).then(|| Duration::from_millis(self.until_ms - now_ms))
    }
}

/// The cluster's cooldown board.
#[derive(Clone)]
pub struct HealthBoard {
    kv: kv::Store,
    worker: String,
    clock: Clock,
}

/// The health bucket under `prefix` (`LLM_HEALTH`).
pub fn bucket(prefix: &str) -> kv::Config {
    kv::Config {
        bucket: bucket_name(prefix, "HEALTH"),
        description: "llmbus deployment cooldowns, for workers that start later".into(),
        history: 1,
        max_age: Duration::from_secs(24 * 3600),
        ..Default::default()
    }
}

impl HealthBoard {
    /// Opens (creating if needed, with `replicas`) the health bucket under `prefix`; `worker`
    /// signs the writes.
    pub async fn open(
        client: async_nats::Client,
        prefix: &str,
        worker: impl Into<String>,
        replicas: Replicas,
    ) -> Result<Self, ClusterError> {
        let js = jetstream(client, Duration::from_secs(5));
        let kv = ensure_bucket(&js, bucket(prefix), replicas).await?;
        Ok(Self {
            kv,
            worker: worker.into(),
            clock: Clock::system(),
        })
    }

    /// The same board with its times taken from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The cluster's time now, epoch ms: what cooldown ends are written in.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// How long `cooldown` still lasts now; `None` once it has ended.
    pub fn remaining(&self, cooldown: &Cooldown) -> Option<Duration> {
        cooldown.remaining(self.now_ms())
    }

    /// Records that `deployment` cools down for `length` from now (see [`HealthBoard::publish`]).
    pub async fn publish_for(
        &self,
        deployment: &str,
        length: Duration,
        reason: &str,
    ) -> Result<bool, ClusterError> {
        let until = self.now_ms() + length.as_millis() as u64;
        self.publish(deployment, until, reason).await
    }

    /// Records that `deployment` cools down until `until_ms` (epoch ms) because of `reason`.
    ///
    /// Returns false when a cooldown that ends at least as late is already stored (nothing is
    /// written). Safe against concurrent writers: the latest end wins.
    pub async fn publish(
        &self,
        deployment: &str,
        until_ms: u64,
        reason: &str,
    ) -> Result<bool, ClusterError> {
        let key = key_token(deployment);
        let value = Cooldown {
            deployment: deployment.to_string(),
            until_ms,
            reason: reason.to_string(),
            worker: self.worker.clone(),
        };
        let body: bytes::Bytes = serde_json::to_vec(&value)
            .map_err(|e| self.error(e))?
            .into();
        for _ in 0..10 {
            let current = self.kv.entry(&key).await.map_err(|e| self.error(e))?;
            let revision = match current {
                Some(entry) => {
                    if entry.operation == kv::Operation::Put
                        && let Ok(stored) = serde_json::from_slice::<Cooldown>(&entry.value)
                        && stored.until_ms >= until_ms
                    {
                        return Ok(false);
                    }
                    entry.revision
                }
                None => 0,
            };
            match self.kv.update(&key, body.clone(), revision).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(self.error(e)),
            }
        }
        Err(self.error("too many concurrent writes"))
    }

    /// The cooldowns in force now, one per deployment.
    pub async fn initial(&self) -> Result<Vec<Cooldown>, ClusterError> {
        let now = self.now_ms();
        let mut keys = self.kv.keys().await.map_err(|e| self.error(e))?;
        let mut out = vec![];
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| self.error(e))?;
            let Some(value) = self.kv.get(&key).await.map_err(|e| self.error(e))? else {
                continue;
            };
            match serde_json::from_slice::<Cooldown>(&value) {
                Ok(c) if c.remaining(now).is_some() => out.push(c),
                Ok(_) => {}
                Err(_) => malformed(),
            }
        }
        Ok(out)
    }

    /// Every cooldown written from now on, as it is written. No write made after this returns
    /// is missed: call it before [`HealthBoard::initial`] and nothing falls in between. The
    /// watch survives NATS outages (it is re-created, and then replays the entries stored, so
    /// none written meanwhile is missed). Cooldowns that have already ended are left out. The
    /// watch runs as long as the stream is held.
    pub async fn watch(
        &self,
    ) -> Result<impl Stream<Item = Cooldown> + Send + 'static, ClusterError> {
        let first = self.kv.watch(">").await.map_err(|e| self.error(e))?;
        let (tx, rx) = mpsc::channel(256);
        let kv = self.kv.clone();
        let clock = self.clock.clone();
        tokio::spawn(async move {
            let mut current = Some(first);
            let mut backoff = Duration::from_millis(100);
            loop {
                let mut watch = match current.take() {
                    Some(w) => w,
                    // After an outage: what is stored, then new writes.
                    None => match kv.watch_with_history(">").await {
                        Ok(w) => {
                            backoff = Duration::from_millis(100);
                            w
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "health watch failed; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = tx.closed() => return,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                            continue;
                        }
                    },
                };
                loop {
                    let entry = tokio::select! {
                        entry = watch.next() => entry,
                        _ = tx.closed() => return,
                    };
                    let Some(Ok(entry)) = entry else { break };
                    if entry.operation != kv::Operation::Put {
                        continue;
                    }
                    let Ok(c) = serde_json::from_slice::<Cooldown>(&entry.value) else {
                        malformed();
                        continue;
                    };
                    if c.remaining(clock.now_ms()).is_some() && tx.send(c).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(stream_of(rx))
    }

    fn error(&self, source: impl Into<async_nats::Error>) -> ClusterError {
        ClusterError::kv(&self.kv.name, source)
    }
}

/// Counts an announcement (a board entry, a gossip message) that is not a cooldown.
pub(crate) fn malformed() {
    metrics::counter!(crate::telemetry::COOLDOWNS_IGNORED, "reason" => "malformed").increment(1);
}

/// An mpsc receiver as a stream, without another crate.
fn stream_of<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}
