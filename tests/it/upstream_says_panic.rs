//! An upstream whose error text names a panic is an upstream failure like any other: a 500
//! whose message holds `(panic)` is a 502 that is retried on the next deployment, not the
//! 500 `internal error` a panic of llmbus's own provider adapter answers. (The job path once
//! told the two apart by matching `"(panic)"` in the message: such an upstream ended the job
//! at once with a 500 and no retry.)

use crate::support::{
    fake_provider::{FakeProvider, Fault},
    gateway::{Gateway, chat},
};
use serde_json::Value;

fn entry(id: &str, api_base: &str) -> String {
    format!(
        "  - model_name: g\n    litellm_params: {{model: openai/m, api_base: \"{api_base}\", api_key: sk-fake-0123456789abcdef}}\n    model_info: {{id: {id}}}\n"
    )
}

#[tokio::test]
async fn an_upstream_500_that_names_a_panic_is_a_502_and_is_retried() {
    let failing = FakeProvider::start().await;
    failing.set_default(Fault::error(
        500,
        "the model server crashed (panic)",
        "server_error",
        Value::Null,
    ));
    let yaml = format!(
        "model_list:\n{}router_settings: {{num_retries: 0}}\n",
        entry("d", &failing.url())
    );
    let gw = Gateway::start(&yaml).await;
    let r = gw.complete(chat("g", "x")).await;
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 502, "{body}");
    let e = r.json()["error"].clone();
    assert_eq!(e["type"], "api_error", "{body}");
    let message = e["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("deployment `d`") && message.contains("crashed (panic)"),
        "{body}"
    );

    // With a second deployment, the job is retried there and answers.
    let serving = FakeProvider::start().await;
    let yaml = format!(
        "model_list:\n{}{}router_settings: {{num_retries: 1, routing_strategy: simple-shuffle}}\n",
        entry("d", &failing.url()),
        entry("e", &serving.url())
    );
    let gw = Gateway::start(&yaml).await;
    for _ in 0..4 {
        let r = gw.complete(chat("g", "x")).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
}
