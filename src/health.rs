//! Readiness and health: the [`Readiness`] state one worker process reports (`/readyz`, and the
//! `state` in its `$SRV.STATS` endpoint data), and [`check`], the client side of
//! `llmbus health`: which llmbus workers answer on a NATS server and whether they serve.
//!
//! A worker is *ready* while it takes jobs. It is not ready before its subscriptions are in
//! place, nor once it drains (after `SIGTERM`), when it has left the queue group and only
//! finishes the jobs it already has. The services framework fixes `$SRV.INFO` metadata when
//! the service starts, so the live state travels in the `data` of each endpoint's `$SRV.STATS`
//! entry: `{"state": "serving" | "draining", "in_flight": <jobs>, "config": <fingerprint>,
//! "limits": {"mode": "shared" | "local", "note": <why, for people>, "clock_offset_ms": <ms>},
//! "capacity_lost": <calls>}` ([`limits_data`]; `capacity_lost` from the idle self-check,
//! [`crate::runtime::deployment::selfcheck`]).
//!
//! A worker whose limits are local (no JetStream, or a clock too far off the server's) still
//! serves, so `llmbus health` still exits 0, but says so on its line and in a warning.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use async_nats::{Client, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;

use crate::{cluster::sharing::Sharing, runtime::ingress::SERVICE_NAME, wire::Subjects};

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not subscribed yet.
    Starting,
    /// Taking jobs.
    Serving,
    /// Left the queue group; finishing the jobs in flight.
    Draining,
    /// Done.
    Stopped,
}

impl State {
    /// `starting`, `serving`, `draining` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Serving => "serving",
            State::Draining => "draining",
            State::Stopped => "stopped",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Serving,
            2 => State::Draining,
            3 => State::Stopped,
            _ => State::Starting,
        }
    }
}

/// A shared, cheap-to-clone readiness flag: every clone sees the same state.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicU8>);

impl Readiness {
    /// A new flag in [`State::Starting`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The current state.
    pub fn state(&self) -> State {
        State::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Moves to `state`.
    pub fn set(&self, state: State) {
        let v = match state {
            State::Starting => 0,
            State::Serving => 1,
            State::Draining => 2,
            State::Stopped => 3,
        };
        self.0.store(v, Ordering::Release);
    }

    /// True while serving.
    pub fn is_ready(&self) -> bool {
        self.state() == State::Serving
    }
}

/// What a worker's drain did (see `Worker::drain`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Jobs that ran during the drain: in flight when it began, or already delivered.
    pub jobs: usize,
    /// Of those, the jobs that finished with their own answer.
    pub finished: usize,
    /// Of those, the jobs still running when the grace period ran out, answered with a 503.
    pub cut_off: usize,
    /// Jobs and requests that arrived during the drain and were relayed to other workers.
    pub relayed: usize,
    /// How long the drain took.
    pub took: Duration,
}

/// What one worker said about itself.
#[derive(Debug, Clone)]
pub struct WorkerStatus {
    /// The service instance id.
    pub id: String,
    /// The llmbus version it runs.
    pub version: String,
    /// Its state from `$SRV.STATS` (`serving`, `draining`, or `unknown` when it did not say).
    pub state: String,
    /// Jobs it runs, when it said.
    pub in_flight: Option<u64>,
    /// True when its `$SRV.INFO` lists the completion endpoint of the prefix asked about.
    pub serves_prefix: bool,
    /// The fingerprint of the config it serves, when it said: workers that differ differ here.
    pub config: Option<String>,
    /// `shared` or `local`: where its `rpm`/`tpm` limits hold, when it said.
    pub limits: Option<String>,
    /// Why, for people (`local, not shared: JetStream KV is not available (...)`).
    pub limits_note: Option<String>,
    /// Its clock's offset from the NATS server, milliseconds, once measured.
    pub clock_offset_ms: Option<i64>,
    /// Calls its idle self-check found holding a deployment's capacity with no job running
    /// (a bug: that capacity is lost until the worker restarts), when it said.
    pub capacity_lost: Option<u64>,
}

impl WorkerStatus {
    /// Serves the prefix and takes jobs.
    pub fn is_ready(&self) -> bool {
        self.serves_prefix && self.state == State::Serving.as_str()
    }

    /// True when it said its limits hold for itself alone.
    pub fn limits_local(&self) -> bool {
        self.limits.as_deref() == Some("local")
    }
}

/// The `limits` object of a worker's `$SRV.STATS` data: where its limits hold and its clock
/// offset from the server.
pub fn limits_data(sharing: &Sharing) -> Value {
    let status = sharing.status();
    serde_json::json!({
        "mode": status.limits.as_str(),
        "note": status.limits.describe(),
        "clock_offset_ms": status.clock.map(|c| c.offset_ms),
    })
}

/// Asks every llmbus worker on `client`'s server about itself: `$SRV.PING.llmbus` (replies
/// gathered for up to `wait`, or until `wait / 4` passes without a new one), then each
/// responder's `$SRV.INFO` and `$SRV.STATS`. An empty list means no worker answered.
pub async fn check(
    client: &Client,
    prefix: &str,
    wait: Duration,
) -> Result<Vec<WorkerStatus>, String> {
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| format!("subscribing to a reply inbox: {e}"))?;
    client
        .publish_with_reply(format!("$SRV.PING.{SERVICE_NAME}"), inbox, Bytes::new())
        .await
        .map_err(|e| format!("sending $SRV.PING.{SERVICE_NAME}: {e}"))?;
    client
        .flush()
        .await
        .map_err(|e| format!("flushing to NATS: {e}"))?;
    let deadline = tokio::time::Instant::now() + wait;
    let quiet = wait / 4;
    let mut ids: Vec<(String, String)> = Vec::new();
    loop {
        let until = if ids.is_empty() {
            deadline
        } else {
            (tokio::time::Instant::now() + quiet).min(deadline)
        };
        let Ok(Some(msg)) = tokio::time::timeout_at(until, replies.next()).await else {
            break;
        };
        if msg.status == Some(StatusCode::NO_RESPONDERS) {
            break;
        }
        let Ok(pong) = serde_json::from_slice::<Value>(&msg.payload) else {
            continue;
        };
        if let Some(id) = pong["id"].as_str()
            && !ids.iter().any(|(seen, _)| seen == id)
        {
            let version = pong["version"].as_str().unwrap_or_default().to_string();
            ids.push((id.to_string(), version));
        }
    }
    let completion = Subjects::new(prefix).completion();
    let mut out = Vec::new();
    for (id, version) in ids {
        let info = ask(client, format!("$SRV.INFO.{SERVICE_NAME}.{id}"), wait).await;
        let stats = ask(client, format!("$SRV.STATS.{SERVICE_NAME}.{id}"), wait).await;
        let serves_prefix = info.as_ref().is_some_and(|info| {
            info["metadata"]["subject_prefix"].as_str() == Some(prefix)
                && endpoints(info).any(|e| e["subject"].as_str() == Some(&completion))
        });
        let data = stats.as_ref().and_then(|stats| {
            endpoints(stats)
                .find(|e| e["subject"].as_str() == Some(&completion))
                .map(|e| e["data"].clone())
        });
        let state = data
            .as_ref()
            .and_then(|d| d["state"].as_str())
            .unwrap_or("unknown")
            .to_string();
        let in_flight = data.as_ref().and_then(|d| d["in_flight"].as_u64());
        let at = |pointer: &str| data.as_ref().and_then(|d| d.pointer(pointer));
        let text = |pointer: &str| at(pointer).and_then(Value::as_str).map(str::to_string);
        let config = text("/config");
        let limits = text("/limits/mode");
        let limits_note = text("/limits/note");
        let clock_offset_ms = at("/limits/clock_offset_ms").and_then(Value::as_i64);
        let capacity_lost = at("/capacity_lost").and_then(Value::as_u64);
        out.push(WorkerStatus {
            id,
            version,
            state,
            in_flight,
            serves_prefix,
            config,
            limits,
            limits_note,
            clock_offset_ms,
            capacity_lost,
        });
    }
    Ok(out)
}

fn endpoints(v: &Value) -> impl Iterator<Item = &Value> {
    v["endpoints"].as_array().into_iter().flatten()
}

async fn ask(client: &Client, subject: String, wait: Duration) -> Option<Value> {
    let reply = tokio::time::timeout(wait, client.request(subject, Bytes::new()))
        .await
        .ok()?
        .ok()?;
    serde_json::from_slice(&reply.payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_is_shared_by_clones() {
        let r = Readiness::new();
        let seen = r.clone();
        assert_eq!(seen.state(), State::Starting);
        assert!(!seen.is_ready());
        r.set(State::Serving);
        assert!(seen.is_ready());
        r.set(State::Draining);
        assert_eq!(seen.state().as_str(), "draining");
        assert!(!seen.is_ready());
    }
}
