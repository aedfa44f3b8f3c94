//! Embeddings over NATS: `llm.embedding` takes the OpenAI embeddings body and answers with
//! the OpenAI embeddings list, through the same routing, retries and errors as completions.

use crate::support::{
    fake_provider::{FakeProvider, Fault},
    gateway::{Gateway, PATIENCE},
};
use bytes::Bytes;
use llmbus::client::Reply;
use serde_json::{Value, json};

fn config(fake: &FakeProvider) -> String {
    format!(
        r#"
model_list:
  - model_name: embed-small
    litellm_params: {{model: openai/text-embedding-3-small, api_base: "{url}", api_key: sk-emb}}
  - model_name: azure-embed
    litellm_params:
      model: azure/my-embedder
      api_base: "{base}"
      api_key: az-key
      api_version: "2024-10-21"
  - model_name: mock-embed
    litellm_params: {{model: openai/mock-embed, mock_response: "unused"}}
"#,
        url = fake.url(),
        base = fake.base()
    )
}

async fn embed(gw: &Gateway, body: Value) -> Reply {
    gw.client
        .embed(Default::default(), Bytes::from(body.to_string()), PATIENCE)
        .await
        .expect("a reply")
}

#[tokio::test]
async fn embeddings_reach_the_upstream_and_come_back_in_order() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config(&fake)).await;
    let r = embed(
        &gw,
        json!({"model": "embed-small", "input": ["a", "bbb"], "dimensions": 4, "custom": 1}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["embedding"], json!([0.0, 1.0, 1.0, 0.0]));
    assert_eq!(v["data"][1]["embedding"], json!([1.0, 3.0, 1.0, 0.0]));
    assert_eq!(v["usage"]["prompt_tokens"], 2);
    let seen = fake.last_request().unwrap();
    assert_eq!(seen.path, "/v1/embeddings");
    assert_eq!(seen.model(), Some("text-embedding-3-small"));
    assert_eq!(seen.body["custom"], 1, "unknown fields pass through");
    assert_eq!(r.header("Llm-Model-Group"), Some("embed-small"));
    assert!(r.header("Llm-Cost-Usd").unwrap().parse::<f64>().unwrap() > 0.0);
}

#[tokio::test]
async fn azure_and_mock_embeddings() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config(&fake)).await;
    let r = embed(&gw, json!({"model": "azure-embed", "input": "hello"})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = fake.last_request().unwrap();
    assert_eq!(seen.path, "/openai/deployments/my-embedder/embeddings");
    assert_eq!(seen.header("api-key"), Some("az-key"));

    let a = embed(
        &gw,
        json!({"model": "mock-embed", "input": ["x", "y", "x"]}),
    )
    .await;
    assert_eq!(a.status, 200);
    let data = a.json()["data"].clone();
    assert_eq!(data.as_array().unwrap().len(), 3);
    assert_eq!(data[0]["embedding"], data[2]["embedding"], "deterministic");
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
}

#[tokio::test]
async fn embedding_errors_are_openai_errors() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config(&fake)).await;
    let r = embed(&gw, json!({"model": "embed-small"})).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("input")
    );
    let r = embed(&gw, json!({"model": "embed-small", "input": []})).await;
    assert_eq!(r.status, 400);
    let r = embed(&gw, json!({"model": "nope", "input": "x"})).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    // Upstream failures are retried like completions.
    fake.push(Fault::status(503));
    let r = embed(&gw, json!({"model": "embed-small", "input": "x"})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Llm-Attempts"), Some("2"));
}
