//! The spend aggregator: a background task that reads `LLM_USAGE` from the durable cursor in
//! `LLM_SPEND` and folds each batch of events into the day documents with compare-and-set, as
//! [`super::spend`] explains. It never touches the job path: a slow or absent JetStream only
//! delays the aggregates.
//!
//! Every worker runs one ([`Aggregator::spawn`]), but only the holder of the lease `lease` in
//! `LLM_SPEND` ([`crate::cluster::lease`]) reads the stream, so the cluster reads each event
//! once however many workers it has. When the holder stops cleanly it gives the lease back and
//! another worker takes over at its next look (every third of [`LEASE_TTL`]); when the holder
//! dies, within [`LEASE_TTL`] and a third. An overlap of two holders is harmless: the writes
//! are compare-and-set.
//!
//! Reading ([`follow`]) uses an ephemeral pull consumer (explicit acks, acknowledged once per
//! batch; it works on nats-server 2.9) that starts at `cursor + 1`. On any error it drops the
//! consumer, waits (1 s doubling to 60 s) and starts over from the cursor, which is always
//! safe: the watermarks make re-reading harmless.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    kv,
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{
    UsageError, UsageEvent,
    spend::{self, Cursor, DayDoc},
};
use crate::cluster::{Replicas, lease::Lease};
use crate::wire::{Subjects, usage::now_ms};

/// Events per batch, at most.
pub const BATCH: usize = 500;

/// How long one fetch waits for a batch to fill: the aggregates' lag when traffic is low.
const FETCH_WAIT: Duration = Duration::from_secs(1);

/// Compare-and-set attempts on one document before the batch is given up (and retried from
/// the cursor).
const CAS_TRIES: usize = 50;

/// The key of the aggregator's lease in `LLM_SPEND`.
pub const LEASE_KEY: &str = "lease";

/// How long a lease holder that stopped renewing keeps it.
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// A worker's aggregator task. Dropping it aborts the task (the lease then lapses after its
/// ttl); [`Aggregator::stop`] gives the lease back first.
pub struct Aggregator {
    name: String,
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

impl Aggregator {
    /// Starts the aggregator on `client`: it takes its turn for the lease and aggregates while
    /// it holds it. It creates the spend bucket with `replicas` when it is missing.
    pub fn spawn(client: async_nats::Client, subjects: &Subjects, replicas: Replicas) -> Self {
        Self::spawn_with_ttl(client, subjects, replicas, LEASE_TTL)
    }

    /// [`Aggregator::spawn`] with another lease ttl (tests use a short one).
    pub fn spawn_with_ttl(
        client: async_nats::Client,
        subjects: &Subjects,
        replicas: Replicas,
        ttl: Duration,
    ) -> Self {
        let name = uuid::Uuid::new_v4().simple().to_string();
        let stop = CancellationToken::new();
        let task = tokio::spawn(leased(
            client,
            subjects.clone(),
            replicas,
            name.clone(),
            ttl,
            stop.clone(),
        ));
        Self { name, task, stop }
    }

    /// The name it holds the lease by (random, one per aggregator).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops the aggregator, giving the lease back when it holds it, within `timeout`.
    pub async fn stop(mut self, timeout: Duration) {
        self.stop.cancel();
        let _ = tokio::time::timeout(timeout, &mut self.task).await;
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Takes turns for the lease and follows the stream while holding it, until `stop`.
async fn leased(
    client: async_nats::Client,
    subjects: Subjects,
    replicas: Replicas,
    name: String,
    ttl: Duration,
    stop: CancellationToken,
) {
    let js = jetstream::new(client.clone());
    let bucket = subjects.spend_bucket();
    let mut backoff = Backoff::new();
    let kv = loop {
        let e = match spend::bucket(&js, &bucket, replicas).await {
            Ok(kv) => break kv,
            Err(e) => e,
        };
        tokio::select! {
            _ = tokio::time::sleep(backoff.failed(&e)) => {}
            _ = stop.cancelled() => return,
        }
    };
    let lease = Lease::new(kv, LEASE_KEY, name, ttl);
    loop {
        tokio::select! {
            _ = lease.acquire() => {}
            _ = stop.cancelled() => {
                lease.release().await;
                return;
            }
        }
        tracing::info!(
            holder = lease.holder(),
            "this worker keeps the spend aggregates now (it holds the {bucket} lease)"
        );
        tokio::select! {
            never = follow(client.clone(), subjects.clone(), replicas) => match never {},
            why = lease.keep() => {
                tracing::info!(reason = %why, "this worker no longer keeps the spend aggregates");
            }
            _ = stop.cancelled() => {
                lease.release().await;
                return;
            }
        }
    }
}

/// The wait between tries after an error: 1 s, doubling to 60 s, back to 1 s after a success.
/// The first error is logged as a warning, the later ones at debug level.
struct Backoff {
    pause: Duration,
    warned: bool,
}

impl Backoff {
    fn new() -> Self {
        Self {
            pause: Duration::from_secs(1),
            warned: false,
        }
    }

    /// Work succeeded: the next error waits the shortest pause again.
    fn reset(&mut self) {
        self.pause = Duration::from_secs(1);
    }

    /// Logs `e` and returns how long to wait before the next try.
    fn failed(&mut self, e: &UsageError) -> Duration {
        if self.warned {
            tracing::debug!(error = %e, "the spend aggregator stopped; retrying");
        } else {
            tracing::warn!(
                error = %e,
                "the spend aggregator cannot run (retrying in the background); usage events \
                 still flow, `llmbus spend` lags until it can"
            );
            self.warned = true;
        }
        let wait = self.pause;
        self.pause = (wait * 2).min(Duration::from_secs(60));
        wait
    }
}

/// Reads the stream and applies it, batch after batch, retrying after any error, for ever;
/// with no lease (tests run several at once to prove the writes exactly-once). The spend
/// bucket is created with `replicas` when it is missing.
pub async fn follow(client: async_nats::Client, subjects: Subjects, replicas: Replicas) -> Never {
    let js = jetstream::new(client);
    let mut backoff = Backoff::new();
    loop {
        let e = session(&js, &subjects, replicas, &mut backoff).await;
        tokio::time::sleep(backoff.failed(&e)).await;
    }
}

/// Reads and applies batches until something fails; returns why.
async fn session(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: Replicas,
    backoff: &mut Backoff,
) -> UsageError {
    match session_inner(js, subjects, replicas, backoff).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// What never happens: [`follow`] does not return.
pub enum Never {}

async fn session_inner(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: Replicas,
    backoff: &mut Backoff,
) -> Result<Never, UsageError> {
    let kv = spend::bucket(js, &subjects.spend_bucket(), replicas).await?;
    let stream_name = subjects.usage_stream();
    let stream_name = stream_name.as_str();
    let on = |source: async_nats::Error| UsageError::Stream {
        stream: stream_name.to_owned(),
        source,
    };
    let mut stream = js.get_stream(stream_name).await.map_err(|e| on(e.into()))?;
    let (cursor, _) = spend::read::<Cursor>(&kv, spend::CURSOR_KEY).await?;
    let last = stream
        .info()
        .await
        .map_err(|e| on(e.into()))?
        .state
        .last_sequence;
    if cursor.applied_through > last {
        return Err(UsageError::CursorBeyond {
            bucket: kv.name.clone(),
            cursor: cursor.applied_through,
            stream: stream_name.to_owned(),
            last,
        });
    }
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: cursor.applied_through + 1,
            },
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: (BATCH * 2) as i64,
            inactive_threshold: Duration::from_secs(60),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| UsageError::Consumer {
            stream: stream_name.to_owned(),
            source: e.into(),
        })?;
    tracing::debug!(
        from = cursor.applied_through + 1,
        "the spend aggregator reads {stream_name}"
    );
    let fetching = |source: async_nats::Error| UsageError::Fetch {
        stream: stream_name.to_owned(),
        source,
    };
    // Every event up to `base` is counted.
    let mut base = cursor.applied_through;
    loop {
        let mut messages = consumer
            .batch()
            .max_messages(BATCH)
            .expires(FETCH_WAIT)
            .messages()
            .await
            .map_err(|e| fetching(e.into()))?;
        let mut batch: Vec<(u64, UsageEvent)> = Vec::new();
        let mut end = base;
        let mut last_msg = None;
        while let Some(m) = messages.next().await {
            let m = m.map_err(fetching)?;
            let seq = m
                .info()
                .map_err(|e| UsageError::NoMetadata {
                    stream: stream_name.to_owned(),
                    source: e,
                })?
                .stream_sequence;
            end = end.max(seq);
            match serde_json::from_slice::<UsageEvent>(&m.payload) {
                Ok(e) => batch.push((seq, e)),
                Err(e) => tracing::debug!(seq, error = %e, "not a usage event; skipped"),
            }
            last_msg = Some(m);
        }
        let Some(last_msg) = last_msg else { continue };
        apply(&kv, base, end, batch).await?;
        base = end;
        last_msg.ack().await.map_err(|source| UsageError::Ack {
            stream: stream_name.to_owned(),
            source,
        })?;
        backoff.reset();
    }
}

/// Applies the events of `(base, end]` (those of `batch`; sequences without a usage event
/// count as seen) to their day documents, then moves the cursor to `end`. Every event up to
/// `base` must already be counted.
pub async fn apply(
    kv: &kv::Store,
    base: u64,
    end: u64,
    mut batch: Vec<(u64, UsageEvent)>,
) -> Result<(), UsageError> {
    let (cursor, _) = spend::read::<Cursor>(kv, spend::CURSOR_KEY).await?;
    if cursor.applied_through >= end {
        // Another worker has counted all of it.
        return Ok(());
    }
    if cursor.applied_through < base {
        return Err(UsageError::CursorBack {
            bucket: kv.name.clone(),
            base,
            cursor: cursor.applied_through,
        });
    }
    batch.retain(|(seq, _)| *seq > cursor.applied_through);
    let mut by_day: std::collections::BTreeMap<String, Vec<(u64, UsageEvent)>> = Default::default();
    for (seq, e) in batch {
        by_day.entry(e.day()).or_default().push((seq, e));
    }
    for (day, events) in &by_day {
        let key = spend::day_key(day);
        let mut tries = 0;
        loop {
            let (mut doc, revision) = spend::read::<DayDoc>(kv, &key).await?;
            if doc.applied_through >= end {
                break;
            }
            doc.day.clone_from(day);
            doc.apply(events, end);
            if spend::write(kv, &key, &doc, revision).await? {
                break;
            }
            tries += 1;
            if tries >= CAS_TRIES {
                return Err(UsageError::Conflicts {
                    what: key,
                    tries: CAS_TRIES,
                });
            }
        }
    }
    advance(kv, end).await
}

/// Moves the cursor to `end` unless it is there or beyond already.
async fn advance(kv: &kv::Store, end: u64) -> Result<(), UsageError> {
    for _ in 0..CAS_TRIES {
        let (cursor, revision) = spend::read::<Cursor>(kv, spend::CURSOR_KEY).await?;
        if cursor.applied_through >= end {
            return Ok(());
        }
        let next = Cursor {
            applied_through: end,
            updated_ms: now_ms(),
        };
        if spend::write(kv, spend::CURSOR_KEY, &next, revision).await? {
            return Ok(());
        }
    }
    Err(UsageError::Conflicts {
        what: format!("the {} cursor", kv.name),
        tries: CAS_TRIES,
    })
}
