//! The spend aggregator: a background task in every worker that reads `LLM_USAGE` from the
//! durable cursor in `LLM_SPEND` and folds each batch of events into the day documents with
//! compare-and-set, as [`super::spend`] explains. It never touches the job path: a slow or
//! absent JetStream only delays the aggregates.
//!
//! Reading uses an ephemeral pull consumer (explicit acks, acknowledged once per batch; it
//! works on nats-server 2.9) that starts at `cursor + 1`. On any error the task drops the
//! consumer, waits (1 s doubling to 60 s) and starts over from the cursor, which is always
//! safe: the watermarks make re-reading harmless.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    kv,
};
use futures::StreamExt;

use super::{
    UsageEvent,
    event::now_ms,
    spend::{self, Cursor, DayDoc},
    stream::STREAM,
};

/// Events per batch, at most.
pub const BATCH: usize = 500;

/// How long one fetch waits for a batch to fill: the aggregates' lag when traffic is low.
const FETCH_WAIT: Duration = Duration::from_secs(1);

/// Compare-and-set attempts on one document before the batch is given up (and retried from
/// the cursor).
const CAS_TRIES: usize = 50;

/// Runs the aggregator until the task is aborted.
pub async fn run(client: async_nats::Client) {
    let js = jetstream::new(client);
    let mut pause = Duration::from_secs(1);
    let mut warned = false;
    loop {
        let e = session(&js, &mut pause).await;
        if warned {
            tracing::debug!(error = %e, "the spend aggregator stopped; retrying");
        } else {
            tracing::warn!(
                error = %e,
                "the spend aggregator cannot run (retrying in the background); usage events \
                 still flow, `llmbus spend` lags until it can"
            );
            warned = true;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(60));
    }
}

/// Reads and applies batches until something fails; returns why.
async fn session(js: &jetstream::Context, pause: &mut Duration) -> String {
    match session_inner(js, pause).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

async fn session_inner(js: &jetstream::Context, pause: &mut Duration) -> Result<Never, String> {
    let kv = spend::bucket(js).await?;
    let mut stream = js
        .get_stream(STREAM)
        .await
        .map_err(|e| format!("the {STREAM} stream: {e}"))?;
    let (cursor, _) = spend::read::<Cursor>(&kv, spend::CURSOR_KEY).await?;
    let last = stream
        .info()
        .await
        .map_err(|e| format!("the {STREAM} stream: {e}"))?
        .state
        .last_sequence;
    if cursor.applied_through > last {
        return Err(format!(
            "{}'s cursor ({}) is beyond the end of {STREAM} ({last}): was the stream deleted \
             and created again? Delete the {} bucket to start the aggregates over",
            spend::BUCKET,
            cursor.applied_through,
            spend::BUCKET
        ));
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
        .map_err(|e| format!("a consumer on {STREAM}: {e}"))?;
    tracing::debug!(
        from = cursor.applied_through + 1,
        "the spend aggregator reads {STREAM}"
    );
    // Every event up to `base` is counted.
    let mut base = cursor.applied_through;
    loop {
        let mut messages = consumer
            .batch()
            .max_messages(BATCH)
            .expires(FETCH_WAIT)
            .messages()
            .await
            .map_err(|e| format!("fetching from {STREAM}: {e}"))?;
        let mut batch: Vec<(u64, UsageEvent)> = Vec::new();
        let mut end = base;
        let mut last_msg = None;
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| format!("fetching from {STREAM}: {e}"))?;
            let seq = m
                .info()
                .map_err(|e| format!("a message of {STREAM} without metadata: {e}"))?
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
        last_msg
            .ack()
            .await
            .map_err(|e| format!("acknowledging {STREAM} messages: {e}"))?;
        *pause = Duration::from_secs(1);
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
) -> Result<(), String> {
    let (cursor, _) = spend::read::<Cursor>(kv, spend::CURSOR_KEY).await?;
    if cursor.applied_through >= end {
        // Another worker has counted all of it.
        return Ok(());
    }
    if cursor.applied_through < base {
        return Err(format!(
            "the {} cursor went back from {base} to {}: was it reset? Starting over from it",
            spend::BUCKET,
            cursor.applied_through
        ));
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
                return Err(format!(
                    "{key}: gave up after {CAS_TRIES} conflicting writes"
                ));
            }
        }
    }
    advance(kv, end).await
}

/// Moves the cursor to `end` unless it is there or beyond already.
async fn advance(kv: &kv::Store, end: u64) -> Result<(), String> {
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
    Err(format!(
        "the {} cursor: gave up after {CAS_TRIES} conflicting writes",
        spend::BUCKET
    ))
}
