//! The publisher task: it empties the job side's buffer ([`super::publisher`]) every 20 ms and
//! stores each event in the `LLM_USAGE` stream, and nothing counts as delivered until
//! JetStream acknowledged it.
//!
//! - **Pipelined**: a round publishes up to [`MAX_IN_FLIGHT`] events back to back
//!   (`Nats-Msg-Id` = the job id), then awaits their acknowledgements together; one round
//!   trip per round, not per event.
//! - **Retried until stored**: an event that is not acknowledged (no stream, JetStream down,
//!   the server restarting, an ack that timed out) goes back to the front of the queue and is
//!   published again after a back-off that doubles from 100 ms to 5 s. The stream stores a
//!   job's event once even when it is published twice (the duplicate window is 2 minutes; an
//!   event retried after longer than that whose first publish was stored without its ack
//!   reaching us may be stored twice). It holds its place in the buffer until stored, so an
//!   outage fills the buffer and then new events are dropped and counted, never memory
//!   without bound.
//! - **Loud**: every event not stored on a try counts in `llmbus_usage_publish_retries_total`;
//!   a warning at most every 10 s says how many are waiting and why, and a line says when they
//!   are stored again. When the stream is missing it is created again (at most every 5 s),
//!   with the configured retention.
//! - **Without JetStream** at start-up ([`Durability::Core`]) events go out on core NATS only,
//!   as before the stream existed; every 30 s the task tries to create the stream, and from
//!   then on stores events durably.
//!
//! What a `kill -9` of a worker loses: the events still in the buffer, that is those of the
//! jobs that finished within the last drain interval (20 ms) plus one acknowledgement round
//! trip, or, during an outage, everything buffered. A test in `tests/it/usage.rs` measures it
//! (`a_worker_killed_with_sigkill_loses_only_the_events_not_yet_stored`).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self,
    context::{PublishError, PublishErrorKind},
    message::PublishMessage,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    publisher::{Buffer, Item, Pending, Spend, UsageReceiver, count},
    stream::{self, Ensured, Keep},
};
use crate::{telemetry, wire::Subjects};

/// How often the publisher empties the buffer.
pub const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Events published before their acknowledgements are awaited.
pub const MAX_IN_FLIGHT: usize = 1024;

/// The first back-off after a round with failures; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// How often, at most, the publisher says that events wait to be stored.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How often, at most, a missing stream is created again.
const ENSURE_EVERY: Duration = Duration::from_secs(5);

/// How often a worker without the stream tries to create it.
const CORE_ENSURE_EVERY: Duration = Duration::from_secs(30);

/// How long one try to create the stream may take.
const ENSURE_WAIT: Duration = Duration::from_secs(10);

/// Where events go.
#[derive(Debug, Clone, PartialEq)]
pub enum Durability {
    /// Into the usage stream, acknowledged, retried until stored. With a retention, a missing
    /// stream is created again with it.
    JetStream {
        /// The stream's retention and replicas, to create it again when it is missing.
        ensure: Option<Keep>,
    },
    /// On core NATS only (JetStream was not there at start-up). With a retention, the task
    /// tries to create the stream every 30 s and switches to [`Durability::JetStream`] once
    /// it exists.
    Core {
        /// The stream's retention and replicas, to create it.
        ensure: Option<Keep>,
    },
}

struct Delivery {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    buffer: Arc<Buffer>,
    totals: Arc<Mutex<Spend>>,
    /// True while events are stored with acknowledgements.
    durable: bool,
    /// What to create the stream with, when the task may.
    ensure: Option<Keep>,
    last_ensure: Instant,
    /// Events taken from the buffer, not yet stored, oldest first.
    queue: VecDeque<Box<Pending>>,
    /// Flushes waiting for the queue to be empty.
    waiters: Vec<oneshot::Sender<()>>,
    backoff: Duration,
    retry_at: Option<Instant>,
    /// Since when events fail to be stored.
    failing: Option<Instant>,
    last_log: Option<Instant>,
}

pub(super) async fn run(
    client: async_nats::Client,
    subjects: Subjects,
    rx: UsageReceiver,
    totals: Arc<Mutex<Spend>>,
    durability: Durability,
) {
    let UsageReceiver { mut rx, buffer } = rx;
    let (durable, ensure) = match durability {
        Durability::JetStream { ensure } => (true, ensure),
        Durability::Core { ensure } => (false, ensure),
    };
    let mut d = Delivery {
        js: jetstream::new(client.clone()),
        client,
        subjects,
        buffer,
        totals,
        durable,
        ensure,
        last_ensure: Instant::now(),
        queue: VecDeque::new(),
        waiters: Vec::new(),
        backoff: Duration::ZERO,
        retry_at: None,
        failing: None,
        last_log: None,
    };
    // The task drains the buffer on a timer instead of waiting in `recv`: with no waker
    // registered, `record` is a plain push and never pays for waking a thread. Events go out
    // at most `DRAIN_EVERY` late.
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let open = d.take(&mut rx);
        d.maybe_become_durable().await;
        // Round after round until the queue is empty, unless one fails (then the back-off).
        while !d.queue.is_empty() && d.retry_at.is_none_or(|t| Instant::now() >= t) {
            if d.durable {
                d.store_round().await;
            } else {
                d.publish_core().await;
            }
        }
        if d.queue.is_empty() {
            if !d.waiters.is_empty() {
                if let Err(e) = d.client.flush().await {
                    tracing::debug!(error = %e, "usage events not flushed");
                }
                for w in d.waiters.drain(..) {
                    let _ = w.send(());
                }
            }
            if !open {
                return;
            }
        }
    }
}

impl Delivery {
    /// Moves what the jobs recorded into the queue, counting each event once. False when
    /// every sink is gone.
    fn take(&mut self, rx: &mut mpsc::UnboundedReceiver<Item>) -> bool {
        loop {
            match rx.try_recv() {
                Ok(Item::Event(p)) => {
                    count(&p.event, &self.totals);
                    self.queue.push_back(p);
                }
                Ok(Item::Flush(done)) => self.waiters.push(done),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// One round: publish up to [`MAX_IN_FLIGHT`] events, await their acknowledgements, put
    /// back what was not stored.
    async fn store_round(&mut self) {
        let n = self.queue.len().min(MAX_IN_FLIGHT);
        let mut batch = self.queue.drain(..n).collect::<Vec<_>>().into_iter();
        let mut sent = Vec::with_capacity(n);
        let mut acks = Vec::with_capacity(n);
        let mut failed = Vec::new();
        let mut error: Option<PublishError> = None;
        for p in batch.by_ref() {
            let Some(body) = self.body(&p) else { continue };
            let mut publish = PublishMessage::build().payload(body.into());
            if !p.event.job_id.is_empty() {
                publish = publish.message_id(&p.event.job_id);
            }
            let subject = self.subjects.usage(&p.event.model_group);
            match self.js.send_publish(subject, publish).await {
                Ok(ack) => {
                    acks.push(ack.into_future());
                    sent.push(p);
                }
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    self.give_up(&p, "it is larger than the server's max_payload");
                }
                Err(e) => {
                    // The connection is down or choked: the rest waits for the next round.
                    failed.push(p);
                    error = Some(e);
                    break;
                }
            }
        }
        failed.extend(batch);
        let results = futures::future::join_all(acks).await;
        for (p, result) in sent.into_iter().zip(results) {
            match result {
                Ok(_) => {
                    self.buffer.release(p.size);
                    metrics::counter!(telemetry::USAGE_PUBLISHED).increment(1);
                }
                Err(e) => {
                    failed.push(p);
                    error.get_or_insert(e);
                }
            }
        }
        match error {
            None => self.stored_again(),
            Some(e) => self.not_stored(failed, &e).await,
        }
    }

    /// Core NATS only: publish everything, nothing to wait for.
    async fn publish_core(&mut self) {
        while let Some(p) = self.queue.pop_front() {
            let Some(body) = self.body(&p) else { continue };
            let mut headers = async_nats::HeaderMap::new();
            if !p.event.job_id.is_empty() {
                headers.insert(async_nats::header::NATS_MESSAGE_ID, p.event.job_id.as_str());
            }
            let subject = self.subjects.usage(&p.event.model_group);
            self.buffer.release(p.size);
            match self
                .client
                .publish_with_headers(subject, headers, body.into())
                .await
            {
                Ok(()) => metrics::counter!(telemetry::USAGE_PUBLISHED).increment(1),
                Err(e) => self
                    .buffer
                    .dropped(&format!("publishing on core NATS failed: {e}")),
            }
        }
    }

    /// The event as JSON; `None` (the event given up) when it does not serialize.
    fn body(&self, p: &Pending) -> Option<Vec<u8>> {
        match serde_json::to_vec(&p.event) {
            Ok(b) => Some(b),
            Err(e) => {
                self.give_up(p, &format!("it did not serialize: {e}"));
                None
            }
        }
    }

    /// An event that can never be stored: dropped, counted and logged.
    fn give_up(&self, p: &Pending, why: &str) {
        self.buffer.release(p.size);
        self.buffer.dropped(&format!(
            "the usage event of job {} cannot be stored: {why}",
            p.event.job_id
        ));
    }

    fn stored_again(&mut self) {
        if let Some(since) = self.failing.take() {
            tracing::info!(
                outage_secs = since.elapsed().as_secs_f64(),
                "usage events are stored in {} again after {:.1} s",
                self.subjects.usage_stream(),
                since.elapsed().as_secs_f64()
            );
        }
        self.backoff = Duration::ZERO;
        self.retry_at = None;
    }

    /// Some events were not stored (`e` says why): back to the front of the queue, retried
    /// after the back-off; loud; a missing stream is created again.
    // The boxes come from the buffer's channel and go back into the queue as they are.
    #[allow(clippy::vec_box)]
    async fn not_stored(&mut self, failed: Vec<Box<Pending>>, e: &PublishError) {
        let now = Instant::now();
        metrics::counter!(telemetry::USAGE_RETRIES).increment(failed.len() as u64);
        let n = failed.len();
        for p in failed.into_iter().rev() {
            self.queue.push_front(p);
        }
        self.backoff = (self.backoff * 2).clamp(RETRY_FIRST, RETRY_MAX);
        self.retry_at = Some(now + self.backoff);
        let since = *self.failing.get_or_insert(now);
        let missing = e.kind() == PublishErrorKind::StreamNotFound;
        if self.last_log.is_none_or(|t| now - t >= LOG_EVERY) {
            self.last_log = Some(now);
            let (events, bytes) = self.buffer.held();
            let stream = self.subjects.usage_stream();
            let why = if missing {
                format!(
                    "no stream captures the usage subjects (is {stream} deleted, or JetStream down?)"
                )
            } else {
                e.to_string()
            };
            tracing::warn!(
                failed = n,
                buffered_events = events,
                buffered_bytes = bytes,
                failing_secs = since.elapsed().as_secs_f64(),
                "{n} usage event(s) not stored in {stream}: {why}; retrying every {:?} at \
                 most; {events} events ({bytes} bytes) wait; see \
                 llmbus_usage_publish_retries_total",
                self.backoff
            );
        }
        if missing && self.ensure.is_some() && now - self.last_ensure >= ENSURE_EVERY {
            self.ensure_stream().await;
        }
    }

    /// Without JetStream: every 30 s, try to create the stream, and store from then on.
    async fn maybe_become_durable(&mut self) {
        if self.durable || self.ensure.is_none() || self.last_ensure.elapsed() < CORE_ENSURE_EVERY {
            return;
        }
        if self.ensure_stream().await {
            self.durable = true;
            tracing::info!(
                "the {} stream is there now: usage events are stored durably from now on",
                self.subjects.usage_stream()
            );
        }
    }

    /// Creates the stream when it is missing; true when it captures the usage subjects now.
    async fn ensure_stream(&mut self) -> bool {
        self.last_ensure = Instant::now();
        let Some(keep) = self.ensure else {
            return false;
        };
        let name = self.subjects.usage_stream();
        match tokio::time::timeout(
            ENSURE_WAIT,
            stream::ensure(&self.js, &self.subjects, keep.retention, keep.replicas),
        )
        .await
        {
            Ok(Ok(Ensured::Created)) => {
                tracing::warn!("the {name} stream was missing: created it again");
                true
            }
            Ok(Ok(Ensured::LeftAlone(why))) => {
                tracing::warn!("the {name} stream: {why}");
                false
            }
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "the {name} stream could not be ensured");
                false
            }
            Err(_) => false,
        }
    }
}
