//! A whole gateway for one test: a private nats-server, a worker started in this process
//! from a YAML config, and a client on its own connection.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use llmbus::{
    Worker,
    client::{LlmClient, Reply},
    config::Config,
};
use serde_json::{Value, json};

use super::nats_server::NatsServer;

/// How long a test waits for any one answer before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A private NATS server, one worker and a client.
pub struct Gateway {
    pub nats: NatsServer,
    pub worker: Option<Worker>,
    pub client: LlmClient,
}

impl Gateway {
    /// Starts a gateway whose worker runs `yaml` (a LiteLLM-style config).
    pub async fn start(yaml: &str) -> Self {
        let nats = NatsServer::start();
        let worker = start_worker(&nats, yaml).await;
        let client = LlmClient::new(nats.client().await, "llm");
        Self {
            nats,
            worker: Some(worker),
            client,
        }
    }

    /// A non-streaming completion with `body`.
    pub async fn complete(&self, body: Value) -> Reply {
        self.complete_with(HeaderMap::new(), body).await
    }

    /// A non-streaming completion with headers.
    pub async fn complete_with(&self, headers: HeaderMap, body: Value) -> Reply {
        self.client
            .complete(headers, Bytes::from(body.to_string()), PATIENCE)
            .await
            .expect("a reply")
    }

    /// A raw payload to `llm.completion`.
    pub async fn complete_raw(&self, payload: &[u8]) -> Reply {
        self.client
            .complete(HeaderMap::new(), Bytes::copy_from_slice(payload), PATIENCE)
            .await
            .expect("a reply")
    }

    /// A streaming completion: every message with a body, then the sentinel.
    pub async fn stream(&self, headers: HeaderMap, body: Value) -> (Vec<Reply>, Reply) {
        self.client
            .stream(headers, Bytes::from(body.to_string()), PATIENCE)
            .await
            .expect("stream started")
            .collect()
            .await
            .expect("stream read to its sentinel")
    }
}

/// Starts a worker for `yaml` on `nats`.
pub async fn start_worker(nats: &NatsServer, yaml: &str) -> Worker {
    let loaded = Config::from_yaml(yaml, "test.yaml").expect("test config loads");
    Worker::start(&loaded.config, nats.client().await)
        .await
        .expect("worker starts")
}

/// A chat request for `model` with one user message.
pub fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// The text of a reply's first choice.
pub fn content(reply: &Reply) -> String {
    reply.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The concatenated delta text of stream chunks.
pub fn streamed_text(chunks: &[Reply]) -> String {
    chunks
        .iter()
        .filter_map(|c| {
            let v = c.json();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// Headers from pairs.
pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, *v);
    }
    h
}

/// Every deployment's status, from `llm.deployments`.
pub async fn deployments(client: &LlmClient) -> Vec<Value> {
    let r = client
        .request(
            client.subjects().deployments(),
            HeaderMap::new(),
            Bytes::new(),
            PATIENCE,
        )
        .await
        .expect("llm.deployments answers");
    assert_eq!(r.status, 200);
    match r.json() {
        Value::Array(all) => all,
        other => panic!("llm.deployments is not an array: {other}"),
    }
}

/// The status of deployment `id` in a `llm.deployments` reply.
pub fn status_of(all: &[Value], id: &str) -> Value {
    all.iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("no deployment `{id}` in {all:?}"))
        .clone()
}
