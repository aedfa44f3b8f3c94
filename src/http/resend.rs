//! Sending a job again when the worker that held it died before answering: the front's side
//! of `Llm-Ack`.
//!
//! Every job the front sends asks for an ack ([`headers::ACK`]): the worker that admits it
//! (and each worker it is handed to) names itself by its `$SRV` service id before anything
//! else. The [`watch`] task pings the workers that hold jobs, once a second, on
//! `$SRV.PING.llmbus.<id>`. A worker killed with `kill -9` loses its subscriptions the moment
//! the server sees its connection close, so the ping gets NATS's no-responders status at once;
//! after [`STRIKES`] such answers in a row the worker is taken for dead, and each of its jobs
//! learns it ([`Event::WorkerLost`]). A job of which nothing reached the caller yet is then
//! published again, under a new reply subject (its old one is cancelled, so a worker taken
//! for dead wrongly can answer nobody twice), at most [`MAX_RESENDS`] times and only while
//! its deadline leaves room; a job already streaming ends with a clear 502 `worker_lost`
//! instead of waiting out its deadline.
//!
//! A ping that times out proves nothing (a busy worker, a slow network) and counts no strike.
//! Nor does anything in the [`SETTLE`] time after the front's own connection came back: after
//! a NATS server restart the workers reconnect one by one, and a worker not back yet is not
//! dead.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::{HeaderMap, StatusCode, client::RequestErrorKind};
use bytes::Bytes;
use tokio::{sync::mpsc, time::Instant};

use crate::{
    telemetry,
    wire::{headers, service::SERVICE_NAME},
};

/// How often the workers holding jobs are pinged.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// No-responders answers in a row that make a worker dead.
pub const STRIKES: u32 = 2;
/// How long a ping may take before it proves nothing.
const PING_PATIENCE: Duration = Duration::from_secs(2);
/// After the front's connection (re)connects, how long before a missing worker counts.
pub const SETTLE: Duration = Duration::from_secs(8);
/// How many times one HTTP request's job is sent again.
pub const MAX_RESENDS: u32 = 2;
/// A resend needs at least this much of the deadline left.
pub const MIN_LEFT: Duration = Duration::from_millis(100);

/// What reaches a job's channel.
#[derive(Debug)]
pub(crate) enum Event {
    /// A message on its reply subject.
    Message(async_nats::Message),
    /// The worker that acknowledged it has gone.
    WorkerLost,
}

/// One job in flight, as the dispatcher and the watch see it.
#[derive(Debug)]
pub(crate) struct Route {
    /// Bounded: `llmbus.http_stream_buffer` messages, and a place for the overflow notice.
    pub(crate) tx: mpsc::Sender<Event>,
    /// The `$SRV` id of the worker that last acknowledged it.
    pub(crate) holder: Option<Arc<str>>,
    /// The job's `Authorization` header, which its cancel carries.
    pub(crate) authorization: Option<async_nats::HeaderValue>,
}

/// The jobs in flight, by number (one entry per job, removed when the job is dropped).
pub(crate) type Routes = Arc<Mutex<HashMap<u64, Route>>>;

/// The worker an ack names: an empty message with `Llm-Ack` and no status.
pub(crate) fn ack_of(m: &async_nats::Message) -> Option<Arc<str>> {
    if !m.payload.is_empty() || m.status.is_some() {
        return None;
    }
    let h = m.headers.as_ref()?;
    if h.get(headers::STATUS).is_some() {
        return None;
    }
    Some(Arc::from(h.get(headers::ACK)?.as_str()))
}

/// `headers` for a resend that must end by `deadline`: `Llm-Timeout-Ms` is what is left of
/// it. `None` when less than [`MIN_LEFT`] is.
pub(crate) fn retimed(headers: &HeaderMap, deadline: Option<Instant>) -> Option<HeaderMap> {
    let mut h = headers.clone();
    if let Some(deadline) = deadline {
        let left = deadline.checked_duration_since(Instant::now())?;
        if left < MIN_LEFT {
            return None;
        }
        h.insert(headers::TIMEOUT_MS, left.as_millis().to_string().as_str());
    }
    Some(h)
}

/// Counts a worker lost under a job, by what became of the job (`resent`, `gave_up`,
/// `mid_stream`).
pub(crate) fn count(outcome: &'static str) {
    metrics::counter!(telemetry::HTTP_JOBS_RESENT, "outcome" => outcome).increment(1);
}

/// Pings the workers that hold jobs, every [`PROBE_EVERY`], and tells the jobs of a dead one.
/// Ends when `routes` has no other owner (the backend was dropped).
pub(crate) async fn watch(
    nats: async_nats::Client,
    routes: std::sync::Weak<Mutex<HashMap<u64, Route>>>,
) {
    let mut strikes: HashMap<Arc<str>, u32> = HashMap::new();
    let mut connects = connects(&nats);
    let mut settled = Instant::now();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(routes) = routes.upgrade() else {
            return;
        };
        let held: HashSet<Arc<str>> = lock(&routes)
            .values()
            .filter_map(|r| r.holder.clone())
            .collect();
        strikes.retain(|w, _| held.contains(w));
        if held.is_empty() {
            continue;
        }
        let now_connects = connects_of(&nats, &mut connects, &mut settled);
        if !now_connects || Instant::now() < settled {
            strikes.clear();
            continue;
        }
        let pings = held.iter().map(|w| {
            let nats = nats.clone();
            let w = w.clone();
            async move {
                let gone = gone(&nats, &w).await;
                (w, gone)
            }
        });
        for (worker, gone) in futures::future::join_all(pings).await {
            if !gone {
                strikes.remove(&worker);
                continue;
            }
            let n = strikes.entry(worker.clone()).or_default();
            *n += 1;
            if *n >= STRIKES {
                strikes.remove(&worker);
                lost(&routes, &worker);
            }
        }
    }
}

/// True when the front's connection is up; a new connection since the last look starts the
/// [`SETTLE`] time again.
fn connects_of(nats: &async_nats::Client, seen: &mut u64, settled: &mut Instant) -> bool {
    let now = connects(nats);
    if now != *seen {
        *seen = now;
        *settled = Instant::now() + SETTLE;
    }
    nats.connection_state() == async_nats::connection::State::Connected
}

fn connects(nats: &async_nats::Client) -> u64 {
    nats.statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// True when NATS says nobody serves the worker's `$SRV.PING` subject any more.
async fn gone(nats: &async_nats::Client, worker: &str) -> bool {
    let subject = format!("$SRV.PING.{SERVICE_NAME}.{worker}");
    let request = async_nats::Request::new()
        .payload(Bytes::new())
        .timeout(Some(PING_PATIENCE));
    match nats.send_request(subject, request).await {
        Ok(m) => m.status == Some(StatusCode::NO_RESPONDERS),
        Err(e) => e.kind() == RequestErrorKind::NoResponders,
    }
}

/// Tells every job `worker` holds that it has gone.
fn lost(routes: &Mutex<HashMap<u64, Route>>, worker: &Arc<str>) {
    let mut jobs = 0usize;
    for route in lock(routes).values_mut() {
        if route.holder.as_ref() == Some(worker) {
            route.holder = None;
            // A full channel holds messages already: the job started, no resend is due.
            let _ = route.tx.try_send(Event::WorkerLost);
            jobs += 1;
        }
    }
    tracing::warn!(
        worker = %worker,
        jobs,
        "a worker holding jobs of this HTTP front is gone (no responders to its $SRV ping); \
         jobs that sent nothing yet are sent again"
    );
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &'static [u8], h: &[(&str, &str)]) -> async_nats::Message {
        let mut headers = HeaderMap::new();
        for (k, v) in h {
            headers.insert(*k, *v);
        }
        async_nats::Message {
            subject: "_INBOX.x.1".into(),
            reply: None,
            payload: Bytes::from_static(payload),
            headers: Some(headers),
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn only_an_empty_message_without_status_is_an_ack() {
        let ack = message(b"", &[(headers::ACK, "svc1")]);
        assert_eq!(ack_of(&ack).as_deref(), Some("svc1"));
        assert!(ack_of(&message(b"{}", &[(headers::ACK, "svc1")])).is_none());
        assert!(
            ack_of(&message(
                b"",
                &[(headers::ACK, "svc1"), (headers::STATUS, "200")]
            ))
            .is_none()
        );
        assert!(ack_of(&message(b"", &[(headers::STATUS, "200")])).is_none());
    }

    #[tokio::test]
    async fn a_resend_carries_what_is_left_of_the_deadline() {
        let mut h = HeaderMap::new();
        h.insert(headers::TIMEOUT_MS, "30000");
        let deadline = Instant::now() + Duration::from_secs(10);
        let left: u64 = retimed(&h, Some(deadline))
            .unwrap()
            .get(headers::TIMEOUT_MS)
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        assert!(left <= 10_000 && left > 5_000, "{left}");
        assert!(retimed(&h, Some(Instant::now() + Duration::from_millis(10))).is_none());
        assert_eq!(
            retimed(&h, None)
                .unwrap()
                .get(headers::TIMEOUT_MS)
                .unwrap()
                .as_str(),
            "30000"
        );
    }
}
