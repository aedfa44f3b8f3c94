//! The client side of `llmbus health`: which llmbus workers answer on a NATS server, and
//! what each says about itself in its `$SRV.INFO` and `$SRV.STATS` ([`crate::wire::service`]).
//! The draining worker asks the same to learn whether it is the last one.
//!
//! A worker whose limits are local (no JetStream, or a clock too far off the server's) still
//! serves, so `llmbus health` still exits 0, but says so on its line and in a warning. So does
//! a worker whose buckets and streams have fewer replicas than wanted, or that found some lost
//! and made them again.

use std::time::Duration;

use async_nats::{Client, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;

use crate::wire::{
    Subjects,
    service::{SERVICE_NAME, State},
};

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
    /// Its buckets and streams with fewer replicas than `llmbus.replicas` wants, as its keeper
    /// last found them (`KV_LLM_QUOTA has 1 replica of the 3 wanted`).
    pub store_short: Vec<String>,
    /// Buckets and streams it found lost and created again since it started, when it said.
    pub store_recreated: Option<u64>,
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
        let store_short = at("/store/short")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        let store_recreated = at("/store/recreated").and_then(Value::as_u64);
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
            store_short,
            store_recreated,
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
