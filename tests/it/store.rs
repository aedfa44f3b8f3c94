//! The NATS store under a running worker, on one server:
//!
//! - lost while the worker runs (every llmbus bucket and stream deleted, as when a server comes
//!   back without its disk), it is created again by the worker's keeper, and the limits, the
//!   membership and the usage events carry on; `llmbus health` says it happened;
//! - `llmbus check FILE --store` reports the replicas the store has and wants, and refuses a
//!   `llmbus.replicas` the server cannot place.
//!
//! On a real three-node cluster (replicas, shortfalls, a node's loss) see `nats_cluster`.

use std::{process::Command, time::Duration};

use crate::support::{
    gateway::{PATIENCE, chat, start_worker},
    nats_server::NatsServer,
    poll,
};
use async_nats::jetstream;
use futures::TryStreamExt;
use llmbus::{
    client::{LlmClient, health},
    cluster::{key_token, store},
    wire::Subjects,
};

/// One group with an `rpm` limit, so that every request leases from the quota bucket.
const LIMITED: &str = r#"
model_list:
  - model_name: demo
    litellm_params: {model: openai/demo, mock_response: "hello", rpm: 6000}
"#;

/// How long the keeper may take: it looks every 10 s.
const KEEPER: Duration = Duration::from_secs(60);

/// The llmbus streams that exist on `js` now.
async fn existing(js: &jetstream::Context) -> Vec<String> {
    let names = store::names(&Subjects::default());
    let mut found: Vec<String> = js
        .stream_names()
        .try_collect::<Vec<String>>()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    found.sort();
    found
}

async fn ask_ok(client: &LlmClient, n: usize) {
    for i in 0..n {
        let r = client
            .complete(
                Default::default(),
                chat("demo", &i.to_string()).to_string().into(),
                PATIENCE,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
}

#[tokio::test]
async fn a_store_lost_while_the_worker_runs_is_created_again_and_everything_carries_on() {
    let nats = NatsServer::start();
    let worker = start_worker(&nats, LIMITED).await;
    let client = LlmClient::new(nats.client().await, "llm");
    let js = jetstream::new(nats.client().await);
    ask_ok(&client, 5).await;
    worker.flush_usage().await;
    // Everything the worker uses (not the config bucket: nothing was pushed).
    let used: Vec<String> = store::names(&Subjects::default())
        .into_iter()
        .filter(|n| n != "KV_LLM_CONFIG")
        .collect();
    let mut want = used.clone();
    want.sort();
    poll::until(KEEPER, "the worker's buckets and streams exist", || async {
        existing(&js).await == want
    })
    .await;

    // The store is lost: every bucket and stream is gone at once.
    for name in &used {
        js.delete_stream(name).await.unwrap();
    }
    poll::until(KEEPER, "every bucket and stream is back", || async {
        existing(&js).await == want
    })
    .await;

    // The limits lease from the new quota bucket; the usage events go to the new stream.
    ask_ok(&client, 10).await;
    worker.flush_usage().await;
    let mut usage = js.get_stream("LLM_USAGE").await.unwrap();
    let stored = usage.info().await.unwrap().state.messages;
    assert!(stored >= 10, "{stored} usage events stored after the loss");
    let quota = js.get_key_value("LLM_QUOTA").await.unwrap();
    let ledger = quota
        .get(format!("{}.rpm", key_token_of_demo(&client).await))
        .await;
    assert!(
        matches!(ledger, Ok(Some(_))),
        "the quota ledger is written again: {ledger:?}"
    );
    // The worker's heartbeat is in the new membership bucket.
    let members = js.get_key_value("LLM_WORKERS").await.unwrap();
    poll::until(PATIENCE, "the worker's heartbeat is back", || async {
        let keys: Vec<String> = match members.keys().await {
            Ok(keys) => keys.try_collect().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        !keys.is_empty()
    })
    .await;
    // And the worker says what happened.
    let status = health::check(client.nats(), "llm", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(status.len(), 1);
    assert!(
        status[0].store_recreated.unwrap_or(0) >= 1,
        "{:?}",
        status[0]
    );
    assert!(status[0].store_short.is_empty(), "{:?}", status[0]);
    worker.stop().await;
}

/// The quota key token of the only deployment of [`LIMITED`] (its id, from `llm.deployments`).
async fn key_token_of_demo(client: &LlmClient) -> String {
    let all = crate::support::gateway::deployments(client).await;
    let id = all[0]["id"].as_str().expect("a deployment id").to_string();
    key_token(&id)
}

/// `llmbus check <file> --store` against `url` (a list is fine) with `env`: (success,
/// output).
pub fn check_store(config: &str, url: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_llmbus"))
        .arg("check")
        .arg(&file)
        .args(["--store", "--nats-url", url])
        .env_remove("NATS_URL")
        .envs(env.iter().copied())
        .output()
        .expect("run llmbus check");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test]
async fn check_store_reports_the_replicas_and_refuses_more_than_the_server_can_place() {
    let nats = NatsServer::start();
    let worker = start_worker(&nats, LIMITED).await;
    worker.stop().await;
    let (ok, text) = check_store(LIMITED, &nats.url(), &[]);
    assert!(ok, "{text}");
    assert!(text.contains("one of 1 in its cluster"), "{text}");
    assert!(text.contains("want 1 replica(s)"), "{text}");
    assert!(text.contains("the store is OK"), "{text}");
    assert!(text.contains("KV_LLM_CONFIG does not exist yet"), "{text}");

    let three = format!("{LIMITED}llmbus:\n  replicas: 3\n");
    let (ok, text) = check_store(&three, &nats.url(), &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("llmbus.replicas is 3 but the server is one of 1"),
        "{text}"
    );
}
