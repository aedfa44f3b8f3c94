//! From the job to NATS without slowing the job: [`UsageSink`] is what the job side holds, a
//! buffer bounded in bytes (and in events) that it fills with [`UsageSink::record`], which
//! never waits and never fails the job; [`spawn`] starts the task ([`super::delivery`]) that
//! empties the buffer every 20 ms (so that recording never wakes a thread: it costs a push
//! into the buffer), counts the worker's own totals and metrics, and stores each event in the
//! `LLM_USAGE` stream with a JetStream acknowledgement, retrying until it is stored.
//!
//! An event holds its place in the buffer until the stream acknowledged it, so the bound
//! covers events waiting for a retry too. When the buffer is full (JetStream slow or
//! unreachable for long), a new event is dropped: counted in
//! `llmbus_usage_events_dropped_total` and logged at most every 10 s with the number dropped
//! since the last line.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::UsageEvent;
use crate::{config::DEFAULT_USAGE_BUFFER_BYTES, telemetry, wire::Subjects};

pub use super::delivery::Durability;

/// How often, at most, a drop is logged.
const DROP_LOG_EVERY_MS: u64 = 10_000;

/// One event on its way, with the bytes it holds in the buffer.
pub(super) struct Pending {
    pub(super) event: UsageEvent,
    pub(super) size: usize,
}

pub(super) enum Item {
    Event(Box<Pending>),
    Flush(oneshot::Sender<()>),
}

/// The job side's handle on the usage pipeline. Cheap to clone; every clone feeds the same
/// bounded buffer.
#[derive(Clone)]
pub struct UsageSink {
    tx: mpsc::UnboundedSender<Item>,
    buffer: Arc<Buffer>,
}

impl std::fmt::Debug for UsageSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageSink")
            .field("max_events", &self.buffer.max_events)
            .field("max_bytes", &self.buffer.max_bytes)
            .field("events", &self.buffer.events.load(Ordering::Relaxed))
            .field("bytes", &self.buffer.bytes.load(Ordering::Relaxed))
            .finish()
    }
}

/// What the buffer holds (events recorded and not yet stored or given up), its bounds, and
/// the drops.
pub(super) struct Buffer {
    max_events: usize,
    max_bytes: usize,
    events: AtomicUsize,
    bytes: AtomicUsize,
    /// Dropped since start.
    dropped: AtomicU64,
    /// Dropped since the last log line.
    since_log: AtomicU64,
    /// Unix milliseconds of the last log line (0: never).
    last_log_ms: AtomicU64,
}

impl Buffer {
    /// Takes room for one event of `size` bytes; false when the buffer is full.
    fn reserve(&self, size: usize) -> bool {
        let bytes = self.bytes.fetch_add(size, Ordering::AcqRel) + size;
        let events = self.events.fetch_add(1, Ordering::AcqRel) + 1;
        if bytes > self.max_bytes || events > self.max_events {
            self.release(size);
            return false;
        }
        self.gauge(bytes);
        true
    }

    /// Gives one event's room back (stored, or given up).
    pub(super) fn release(&self, size: usize) {
        let bytes = self.bytes.fetch_sub(size, Ordering::AcqRel) - size;
        self.events.fetch_sub(1, Ordering::AcqRel);
        self.gauge(bytes);
    }

    fn gauge(&self, bytes: usize) {
        metrics::gauge!(telemetry::USAGE_BUFFERED_BYTES).set(bytes as f64);
    }

    /// Events and bytes held now.
    pub(super) fn held(&self) -> (usize, usize) {
        (
            self.events.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Counts one dropped event and logs, at most every 10 s, why.
    pub(super) fn dropped(&self, why: &str) {
        metrics::counter!(telemetry::USAGE_DROPPED).increment(1);
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.since_log.fetch_add(1, Ordering::Relaxed);
        let now = crate::wire::usage::now_ms().max(1);
        let last = self.last_log_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= DROP_LOG_EVERY_MS;
        if due
            && self
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let n = self.since_log.swap(0, Ordering::Relaxed).max(1);
            let (events, bytes) = self.held();
            tracing::warn!(
                dropped = n,
                buffered_events = events,
                buffered_bytes = bytes,
                "{n} usage event(s) dropped: {why} ({events} events, {bytes} bytes wait to be \
                 stored; JetStream slow or unreachable?); see \
                 llmbus_usage_events_dropped_total"
            );
        }
    }
}

/// The publisher's end of the buffer: hand it to [`spawn`].
pub struct UsageReceiver {
    pub(super) rx: mpsc::UnboundedReceiver<Item>,
    pub(super) buffer: Arc<Buffer>,
}

impl UsageReceiver {
    /// The next buffered event without waiting (`Err(true)`: none buffered now; `Err(false)`:
    /// every sink is gone). For benchmarks and tools that drain the buffer themselves, as the
    /// publisher does, instead of [`spawn`]ing it. The event's room in the buffer is given
    /// back at once.
    pub fn try_recv_event(&mut self) -> Result<UsageEvent, bool> {
        loop {
            match self.rx.try_recv() {
                Ok(Item::Event(p)) => {
                    self.buffer.release(p.size);
                    return Ok(p.event);
                }
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
    /// A sink and the receiver for [`spawn`], with room for `capacity` events (at least 1) and
    /// [`DEFAULT_USAGE_BUFFER_BYTES`].
    pub fn channel(capacity: usize) -> (Self, UsageReceiver) {
        Self::bounded(capacity, DEFAULT_USAGE_BUFFER_BYTES)
    }

    /// A sink and the receiver for [`spawn`], with room for `max_events` events and
    /// `max_bytes` bytes of events (each at least 1), whichever is reached first.
    pub fn bounded(max_events: usize, max_bytes: usize) -> (Self, UsageReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let buffer = Arc::new(Buffer {
            max_events: max_events.max(1),
            max_bytes: max_bytes.max(1),
            events: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            since_log: AtomicU64::new(0),
            last_log_ms: AtomicU64::new(0),
        });
        (
            Self {
                tx,
                buffer: buffer.clone(),
            },
            UsageReceiver { rx, buffer },
        )
    }

    /// Hands one finished job's event to the publisher. Never waits: when the buffer is full
    /// (or the publisher has stopped), the event is dropped and counted. Returns true when the
    /// event was buffered.
    pub fn record(&self, event: UsageEvent) -> bool {
        let size = approx_size(&event);
        if !self.buffer.reserve(size) {
            self.buffer
                .dropped("the usage buffer is full (llmbus.usage_buffer_bytes)");
            return false;
        }
        if let Err(mpsc::error::SendError(item)) =
            self.tx.send(Item::Event(Box::new(Pending { event, size })))
        {
            self.buffer.release(size);
            drop(item);
            self.buffer.dropped("the usage publisher has stopped");
            return false;
        }
        true
    }

    /// Waits until every event recorded before this call is stored (or given up), or the
    /// publisher has stopped. For shutdown, never for a job.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Item::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Events dropped since start (full buffer or stopped publisher).
    pub fn dropped(&self) -> u64 {
        self.buffer.dropped.load(Ordering::Relaxed)
    }

    /// Events and bytes in the buffer now: recorded, not yet stored.
    pub fn buffered(&self) -> (usize, usize) {
        self.buffer.held()
    }
}

/// What an event holds in the buffer, in bytes: about the size of its JSON (field names,
/// numbers and the strings), without serializing it on the job's path.
pub fn approx_size(e: &UsageEvent) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    // Field names, punctuation and numbers of an event with empty strings: ~520 bytes.
    520 + e.job_id.len()
        + e.model_group.len()
        + opt(&e.deployment)
        + opt(&e.provider)
        + opt(&e.model)
        + opt(&e.key)
        + opt(&e.user)
        + opt(&e.team)
        + opt(&e.error_class)
        + opt(&e.traceparent)
        + e.tags.iter().map(|t| t.len() + 3).sum::<usize>()
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

/// Starts the publisher task: it stores every event of `rx` (see [`Durability`]), keeping
/// `totals` and the token and spend metrics up to date. It ends when every [`UsageSink`] is
/// gone and everything buffered is stored.
pub fn spawn(
    client: async_nats::Client,
    subjects: Subjects,
    rx: UsageReceiver,
    totals: Arc<Mutex<Spend>>,
    durability: Durability,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(super::delivery::run(
        client, subjects, rx, totals, durability,
    ))
}

/// Counts one event in this worker's totals and metrics (once, when the publisher takes it).
pub(super) fn count(e: &UsageEvent, totals: &Mutex<Spend>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(job: &str) -> UsageEvent {
        UsageEvent {
            job_id: job.into(),
            status: 200,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_full_buffer_drops_instead_of_waiting() {
        let (sink, rx) = UsageSink::channel(2);
        assert!(sink.record(event("j")));
        assert!(sink.record(event("j")));
        // Nobody reads: the third is dropped at once, the call does not wait.
        assert!(!sink.record(event("j")));
        assert_eq!(
            sink.buffer.since_log.load(Ordering::Relaxed),
            0,
            "logged at once"
        );
        assert!(!sink.record(event("j")));
        assert_eq!(
            sink.buffer.since_log.load(Ordering::Relaxed),
            1,
            "rate-limited"
        );
        assert_eq!(sink.dropped(), 2);
        drop(rx);
        assert!(!sink.record(event("j")), "a stopped publisher drops too");
        assert_eq!(sink.dropped(), 3);
    }

    #[tokio::test]
    async fn the_buffer_is_bounded_in_bytes_drops_and_counts() {
        let small = event("j-1");
        let size = approx_size(&small);
        // Room for three small events by bytes, many more by count.
        let (sink, mut rx) = UsageSink::bounded(1_000, 3 * size + size / 2);
        for i in 0..3 {
            assert!(sink.record(event("j-1")), "event {i} fits");
        }
        assert_eq!(sink.buffered(), (3, 3 * size));
        assert!(
            !sink.record(event("j-1")),
            "a fourth is over the byte bound"
        );
        // A big event does not fit where a small one would.
        let (sink2, _rx2) = UsageSink::bounded(1_000, 2 * size);
        let mut big = event("j-big");
        big.tags = vec!["x".repeat(size); 2];
        assert!(!sink2.record(big), "one event larger than the bound");
        assert!(sink2.record(event("j-1")));
        assert_eq!((sink.dropped(), sink2.dropped()), (1, 1));
        // Taking an event out gives its bytes back: room again.
        assert!(rx.try_recv_event().is_ok());
        assert_eq!(sink.buffered(), (2, 2 * size));
        assert!(sink.record(event("j-1")));
        assert_eq!(sink.dropped(), 1);
    }

    #[test]
    fn the_size_estimate_is_close_to_the_json() {
        let e = UsageEvent {
            job_id: "worker-0123456789-42".into(),
            timestamp_ms: 1_764_458_991_511,
            model_group: "gpt-4o-mini".into(),
            deployment: Some("gpt-4o-mini-1".into()),
            provider: Some("openai".into()),
            model: Some("openai/gpt-4o-mini".into()),
            tags: vec!["eu".into(), "batch".into()],
            prompt_tokens: 56_000,
            completion_tokens: 12_000,
            cost_usd: 0.0000156,
            latency_ms: 412.123_456,
            ttft_ms: Some(100.5),
            status: 200,
            attempts: 1,
            ..Default::default()
        };
        let json = serde_json::to_vec(&e).unwrap().len();
        let guess = approx_size(&e);
        assert!(
            guess >= json && guess < json + 200,
            "estimate {guess} for {json} bytes of JSON"
        );
    }
}
