//! Discovery: the NATS services framework (`$SRV.PING|INFO|STATS`) and `llm.models`.

use crate::support::gateway::{Gateway, PATIENCE, chat};
use async_nats::HeaderMap;
use bytes::Bytes;
use serde_json::Value;

const CONFIG: &str = r#"
model_list:
  - model_name: demo
    litellm_params: {model: openai/demo-a, mock_response: "hello"}
  - model_name: demo
    litellm_params: {model: openai/demo-b, mock_response: "hello"}
  - model_name: small
    litellm_params: {model: openai/small, mock_response: "hi"}
router_settings:
  model_group_alias:
    fast: small
    secret-alias: {model: small, hidden: true}
"#;

async fn ask(gw: &Gateway, subject: &str) -> Value {
    let reply = gw
        .client
        .request(
            subject.to_string(),
            HeaderMap::new(),
            Bytes::new(),
            PATIENCE,
        )
        .await
        .expect("reply");
    serde_json::from_slice(&reply.body).expect("JSON reply")
}

#[tokio::test]
async fn srv_ping_info_and_stats_answer_for_llmbus() {
    let gw = Gateway::start(CONFIG).await;
    let ping = ask(&gw, "$SRV.PING.llmbus").await;
    assert_eq!(ping["name"], "llmbus");
    assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));

    let info = ask(&gw, "$SRV.INFO.llmbus").await;
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    for s in ["llm.completion", "llm.models", "llm.deployments"] {
        assert!(subjects.contains(&s), "{s} missing from {subjects:?}");
    }
    assert_eq!(info["metadata"]["queue_group"], "llmbus");

    // One job, then STATS counts it on the completion endpoint.
    let reply = gw.complete(chat("demo", "hi")).await;
    assert_eq!(reply.status, 200);
    let stats = ask(&gw, "$SRV.STATS.llmbus").await;
    let completion = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["subject"] == "llm.completion")
        .expect("completion endpoint stats");
    assert_eq!(completion["num_requests"], 1);
}

#[tokio::test]
async fn models_lists_groups_and_visible_aliases_in_the_openai_shape() {
    let gw = Gateway::start(CONFIG).await;
    let list = ask(&gw, "llm.models").await;
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            assert_eq!(m["owned_by"], "llmbus");
            assert!(m["created"].as_u64().unwrap() > 1_700_000_000);
            m["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ids, ["demo", "small", "fast"]);
}

#[tokio::test]
async fn an_alias_routes_to_its_group() {
    let gw = Gateway::start(CONFIG).await;
    let reply = gw.complete(chat("fast", "hi")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("Llm-Model-Group"), Some("small"));
    let reply = gw.complete(chat("secret-alias", "hi")).await;
    assert_eq!(reply.status, 200, "a hidden alias still routes");
}

#[tokio::test]
async fn deployments_reports_state_without_secrets() {
    let gw = Gateway::start(
        r#"
model_list:
  - model_name: keyed
    litellm_params: {model: openai/x, api_key: sk-very-secret-123, mock_response: hi, rpm: 60}
"#,
    )
    .await;
    assert_eq!(gw.complete(chat("keyed", "hi")).await.status, 200);
    let reply = gw
        .client
        .request(
            "llm.deployments".into(),
            HeaderMap::new(),
            Bytes::new(),
            PATIENCE,
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&reply.body);
    assert!(!text.contains("sk-very-secret-123"), "{text}");
    let v: Value = serde_json::from_slice(&reply.body).unwrap();
    let keyed = &v.as_array().unwrap()[0];
    // The id names the upstream (`<group>-<8 hex digits>`), never its key.
    let id = keyed["id"].as_str().unwrap();
    let hash = id.strip_prefix("keyed-").expect("<group>-<hash>");
    assert!(
        hash.len() == 8 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(keyed["model_group"], "keyed");
    assert_eq!(keyed["capacity"]["rpm_limit"], 60);
    // Requests in the window; a limit shared with the cluster counts the slice this worker
    // leased for them (a few requests' worth), never more than the limit.
    let used = keyed["capacity"]["rpm_used"].as_u64().unwrap();
    assert!((1..=60).contains(&used), "{used}");
    assert_eq!(keyed["successes"], 1);
}
