//! From the job to NATS without slowing the job: [`UsageSink`] is what the job side holds, a
//! bounded buffer it fills with [`UsageSink::record`], which never waits and never fails the
//! job; [`spawn`] starts the task that empties the buffer every 20 ms (so that recording
//! never wakes a thread: it costs a push into the buffer), counts the worker's own totals and
//! metrics, and publishes each event on `llm.usage.<model_group>` with `Nats-Msg-Id` set to
//! the job id (so the `LLM_USAGE` stream stores a job's event once even if it is published
//! twice).
//!
//! When the buffer is full (NATS slow or unreachable for long), the event is dropped: counted
//! in `llmbus_usage_events_dropped_total` and logged at most every 10 s with the number dropped
//! since the last line.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::UsageEvent;
use crate::{telemetry, wire::Subjects};

/// Events the buffer holds by default before it drops.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// How often the publisher empties the buffer.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// How often, at most, a drop is logged.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

enum Item {
    Event(Box<UsageEvent>),
    Flush(oneshot::Sender<()>),
}

/// The job side's handle on the usage pipeline. Cheap to clone; every clone feeds the same
/// bounded buffer.
#[derive(Clone)]
pub struct UsageSink {
    tx: mpsc::Sender<Item>,
    drops: Arc<Drops>,
}

impl std::fmt::Debug for UsageSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageSink")
            .field("capacity", &self.tx.max_capacity())
            .field("free", &self.tx.capacity())
            .finish()
    }
}

#[derive(Default)]
struct Drops {
    /// Dropped since the last log line.
    since_log: AtomicU64,
    /// Unix milliseconds of the last log line (0: never).
    last_log_ms: AtomicU64,
}

/// The publisher's end of the buffer: hand it to [`spawn`].
pub struct UsageReceiver(mpsc::Receiver<Item>);

impl UsageReceiver {
    /// The next buffered event without waiting (`Err(true)`: none buffered now; `Err(false)`:
    /// every sink is gone). For benchmarks and tools that drain the buffer themselves, as the
    /// publisher does, instead of [`spawn`]ing it.
    pub fn try_recv_event(&mut self) -> Result<UsageEvent, bool> {
        loop {
            match self.0.try_recv() {
                Ok(Item::Event(e)) => return Ok(*e),
                Ok(Item::Flush(done)) => {
                    let _ = done.send(());
                }
                Err(mpsc::error::TryRecvError::Empty) => return Err(true),
                Err(mpsc::error::TryRecvError::Disconnected) => return Err(false),
            }
        }
    }
}

impl UsageSink {
    /// A sink and the receiver for [`spawn`], with room for `capacity` events (at least 1).
    pub fn channel(capacity: usize) -> (Self, UsageReceiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Self {
                tx,
                drops: Arc::default(),
            },
            UsageReceiver(rx),
        )
    }

    /// Hands one finished job's event to the publisher. Never waits: when the buffer is full
    /// (or the publisher has stopped), the event is dropped and counted. Returns true when the
    /// event was buffered.
    pub fn record(&self, event: UsageEvent) -> bool {
        match self.tx.try_send(Item::Event(Box::new(event))) {
            Ok(()) => true,
            Err(e) => {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "the usage buffer is full",
                    mpsc::error::TrySendError::Closed(_) => "the usage publisher has stopped",
                };
                self.dropped(why);
                false
            }
        }
    }

    /// Waits until every event recorded before this call is published and flushed to the
    /// NATS server (or the publisher has stopped). For shutdown, never for a job.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Item::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    fn dropped(&self, why: &str) {
        metrics::counter!(telemetry::USAGE_DROPPED).increment(1);
        self.drops.since_log.fetch_add(1, Ordering::Relaxed);
        let now = super::event::now_ms().max(1);
        let last = self.drops.last_log_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= DROP_LOG_EVERY.as_millis() as u64;
        if due
            && self
                .drops
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let n = self.drops.since_log.swap(0, Ordering::Relaxed).max(1);
            tracing::warn!(
                dropped = n,
                "{n} usage event(s) dropped: {why} (NATS slow or unreachable?); \
                 see llmbus_usage_events_dropped_total"
            );
        }
    }
}

/// Totals for one model group or deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Jobs counted.
    pub requests: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// USD.
    pub cost_usd: f64,
}

impl Totals {
    fn add(&mut self, e: &UsageEvent) {
        self.requests += 1;
        self.prompt_tokens += e.prompt_tokens;
        self.completion_tokens += e.completion_tokens;
        self.cost_usd += e.cost_usd;
    }
}

/// This worker's totals since it started, by model group and by deployment (successful jobs
/// only). The cluster's durable totals are [`super::spend`]'s.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Spend {
    /// By model group.
    pub by_model_group: BTreeMap<String, Totals>,
    /// By deployment.
    pub by_deployment: BTreeMap<String, Totals>,
}

/// Starts the publisher task: it publishes every event of `rx` on `client`, keeping `totals`
/// and the token and spend metrics up to date. It ends when every [`UsageSink`] is gone.
pub fn spawn(
    client: async_nats::Client,
    subjects: Subjects,
    rx: UsageReceiver,
    totals: Arc<Mutex<Spend>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(client, subjects, rx.0, totals))
}

async fn run(
    client: async_nats::Client,
    subjects: Subjects,
    mut rx: mpsc::Receiver<Item>,
    totals: Arc<Mutex<Spend>>,
) {
    // The task drains the buffer on a timer instead of waiting in `recv`: with no waker
    // registered, `record` is a plain push and never pays for waking a thread. Events go out
    // at most `DRAIN_EVERY` late.
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            match rx.try_recv() {
                Ok(Item::Event(event)) => {
                    count(&event, &totals);
                    publish(&client, &subjects, &event).await;
                }
                Ok(Item::Flush(done)) => {
                    if let Err(e) = client.flush().await {
                        tracing::debug!(error = %e, "usage events not flushed");
                    }
                    let _ = done.send(());
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    let _ = client.flush().await;
                    return;
                }
            }
        }
    }
}

fn count(e: &UsageEvent, totals: &Mutex<Spend>) {
    let Some(deployment) = e.deployment.as_ref().filter(|_| e.is_success()) else {
        return;
    };
    let labels = [
        ("model_group", e.model_group.clone()),
        ("deployment", deployment.clone()),
    ];
    metrics::counter!(telemetry::TOKENS_IN, &labels).increment(e.prompt_tokens);
    metrics::counter!(telemetry::TOKENS_OUT, &labels).increment(e.completion_tokens);
    // `metrics` counters are integers: spend is a gauge that only ever grows.
    metrics::gauge!(telemetry::COST_USD, &labels).increment(e.cost_usd);
    let mut t = totals.lock().unwrap_or_else(|p| p.into_inner());
    t.by_model_group
        .entry(e.model_group.clone())
        .or_default()
        .add(e);
    t.by_deployment
        .entry(deployment.clone())
        .or_default()
        .add(e);
}

async fn publish(client: &async_nats::Client, subjects: &Subjects, e: &UsageEvent) {
    let body = match serde_json::to_vec(e) {
        Ok(b) => b,
        Err(err) => {
            tracing::warn!(error = %err, job_id = %e.job_id, "a usage event did not serialize");
            return;
        }
    };
    let mut headers = async_nats::HeaderMap::new();
    if !e.job_id.is_empty() {
        headers.insert(async_nats::header::NATS_MESSAGE_ID, e.job_id.as_str());
    }
    match client
        .publish_with_headers(subjects.usage(&e.model_group), headers, body.into())
        .await
    {
        Ok(()) => metrics::counter!(telemetry::USAGE_PUBLISHED).increment(1),
        Err(err) => {
            metrics::counter!(telemetry::USAGE_DROPPED).increment(1);
            tracing::debug!(error = %err, "a usage event was not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_buffer_drops_instead_of_waiting() {
        let (sink, rx) = UsageSink::channel(2);
        let event = UsageEvent {
            job_id: "j".into(),
            status: 200,
            ..Default::default()
        };
        assert!(sink.record(event.clone()));
        assert!(sink.record(event.clone()));
        // Nobody reads: the third is dropped at once, the call does not wait.
        assert!(!sink.record(event.clone()));
        assert_eq!(
            sink.drops.since_log.load(Ordering::Relaxed),
            0,
            "logged at once"
        );
        assert!(!sink.record(event.clone()));
        assert_eq!(
            sink.drops.since_log.load(Ordering::Relaxed),
            1,
            "rate-limited"
        );
        drop(rx);
        assert!(!sink.record(event), "a stopped publisher drops too");
    }
}
