//! Config features seen from a client over NATS: wildcard model groups (the upstream gets the
//! requested model name), misconfigured deployments (kept, shown, never routed to while the
//! group has another, a clear 500 when it has none), on a private nats-server with the fake
//! OpenAI provider.

use crate::support::{
    fake_provider::FakeProvider,
    gateway::{Gateway, PATIENCE, chat, content, streamed_text},
};
use async_nats::HeaderMap;
use bytes::Bytes;
use serde_json::{Value, json};

/// A variable no test environment sets.
const UNSET: &str = "LLMBUS_TEST_VARIABLE_NEVER_SET_7C1B";

async fn ask(gw: &Gateway, subject: String) -> Value {
    gw.client
        .request(subject, HeaderMap::new(), Bytes::new(), PATIENCE)
        .await
        .expect("a reply")
        .json()
}

#[tokio::test]
async fn wildcard_groups_send_the_requested_model_upstream() {
    let any = FakeProvider::start().await;
    let scoped = FakeProvider::start().await;
    let yaml = format!(
        r#"
model_list:
  - model_name: "*"
    litellm_params: {{model: "openai/*", api_base: "{any}", api_key: k}}
  - model_name: "fake/*"
    litellm_params: {{model: "openai/*", api_base: "{scoped}", api_key: k}}
  - model_name: gpt-4o
    litellm_params: {{model: openai/exact-gpt-4o, api_base: "{any}", api_key: k}}
  - model_name: "pinned/*"
    litellm_params: {{model: openai/always-this-one, api_base: "{any}", api_key: k}}
"#,
        any = any.url(),
        scoped = scoped.url()
    );
    let gw = Gateway::start(&yaml).await;

    // `*` + `openai/*`: the request's model goes upstream as it is.
    let r = gw.complete(chat("gpt-4o-mini", "hi")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("Llm-Model-Group"), Some("*"));
    assert_eq!(any.last_request().unwrap().model(), Some("gpt-4o-mini"));
    assert_eq!(content(&r), "echo: hi");
    // Priced as the model it resolved to (`openai/gpt-4o-mini` is in the price table).
    let cost: f64 = r.header("Llm-Cost-Usd").unwrap().parse().unwrap();
    assert!(cost > 0.0, "{cost}");

    // The more specific pattern wins: `fake/claude-x` calls upstream model `claude-x`.
    let r = gw.complete(chat("fake/claude-x", "hello")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("Llm-Model-Group"), Some("fake/*"));
    assert_eq!(scoped.last_request().unwrap().model(), Some("claude-x"));
    assert_eq!(scoped.request_count(), 1);

    // An exact group name wins over every pattern.
    let r = gw.complete(chat("gpt-4o", "x")).await;
    assert_eq!(r.header("Llm-Model-Group"), Some("gpt-4o"));
    assert_eq!(any.last_request().unwrap().model(), Some("exact-gpt-4o"));

    // A deployment model without `*` is used as it is.
    let r = gw.complete(chat("pinned/whatever", "x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(any.last_request().unwrap().model(), Some("always-this-one"));

    // Streams resolve the same way.
    let mut body = chat("fake/streamed-model", "one two three");
    body["stream"] = json!(true);
    let (chunks, end) = gw.stream(HeaderMap::new(), body).await;
    assert_eq!(end.status, 200);
    assert_eq!(streamed_text(&chunks), "echo: one two three");
    let last = scoped.last_request().unwrap();
    assert!(last.is_stream());
    assert_eq!(last.model(), Some("streamed-model"));

    // `llm.models` lists the patterns as model groups.
    let models = ask(&gw, gw.client.subjects().models()).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["*", "fake/*", "gpt-4o", "pinned/*"]);
}

#[tokio::test]
async fn a_misconfigured_deployment_is_kept_shown_and_never_routed_to() {
    let fake = FakeProvider::start().await;
    let yaml = format!(
        r#"
model_list:
  - model_name: mixed
    litellm_params: {{model: nosuch/x, api_key: sk-secret-never-shown}}
    model_info: {{id: broken-provider}}
  - model_name: mixed
    litellm_params: {{model: openai/m, api_base: "{url}", api_key: k}}
    model_info: {{id: good}}
  - model_name: mixed
    litellm_params: {{model: openai/m, api_base: "{url}", api_key: os.environ/{UNSET}}}
    model_info: {{id: broken-env}}
  - model_name: broken-only
    litellm_params: {{model: bedrock/anthropic.claude, aws_region_name: os.environ/{UNSET}, api_key: sk-secret-never-shown}}
    model_info: {{id: no-region}}
"#,
        url = fake.url()
    );
    let gw = Gateway::start(&yaml).await;

    // The healthy deployment takes every job of its group.
    for _ in 0..12 {
        let r = gw.complete(chat("mixed", "hi")).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("Llm-Deployment"), Some("good"));
    }
    assert_eq!(fake.request_count(), 12);

    // A group with nothing else answers a clear 500, naming the reason but no secret.
    let r = gw.complete(chat("broken-only", "hi")).await;
    assert_eq!(r.status, 500);
    let body = String::from_utf8_lossy(&r.body).to_string();
    let error = &r.json()["error"];
    assert_eq!(error["code"], "deployment_misconfigured", "{body}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("deployment `no-region` is misconfigured"),
        "{message}"
    );
    assert!(message.contains(UNSET), "{message}");
    assert!(!body.contains("sk-secret"), "{body}");

    // llm.deployments shows each one's state and reason.
    let all = ask(&gw, gw.client.subjects().deployments()).await;
    let by_id = |id: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {all}"))
            .clone()
    };
    assert_eq!(by_id("good")["state"], "healthy");
    assert!(by_id("good").get("misconfigured").is_none());
    for id in ["broken-provider", "broken-env", "no-region"] {
        let d = by_id(id);
        assert_eq!(d["state"], "misconfigured", "{d}");
        let reason = d["misconfigured"].as_str().unwrap();
        assert!(!reason.contains("sk-secret"), "{reason}");
    }
    let reason = by_id("broken-provider")["misconfigured"].to_string();
    assert!(reason.contains("unknown provider `nosuch`"), "{reason}");
    assert!(
        reason.contains("anthropic"),
        "native providers are listed: {reason}"
    );
    let reason = by_id("broken-env")["misconfigured"].to_string();
    assert!(
        reason.contains(UNSET) && reason.contains("api_key"),
        "{reason}"
    );
    assert!(!all.to_string().contains("sk-secret"));
}

#[tokio::test]
async fn a_wildcard_request_falls_back_like_any_other() {
    // The wildcard group's only deployment is misconfigured; the fallback group serves.
    let fake = FakeProvider::start().await;
    let yaml = format!(
        r#"
model_list:
  - model_name: "*"
    litellm_params: {{model: "openai/*", api_base: "{url}", api_key: os.environ/{UNSET}}}
  - model_name: backup
    litellm_params: {{model: openai/backup-model, api_base: "{url}", api_key: k}}
router_settings:
  fallbacks: [{{"*": ["backup"]}}]
"#,
        url = fake.url()
    );
    let gw = Gateway::start(&yaml).await;
    let r = gw.complete(chat("anything-at-all", "hi")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("Llm-Model-Group"), Some("backup"));
    assert_eq!(fake.last_request().unwrap().model(), Some("backup-model"));
}
