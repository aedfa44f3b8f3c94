//! Prices from LiteLLM's own price file: `tests/fixtures/prices/litellm_excerpt.json` holds
//! real rows of `model_prices_and_context_window_backup.json` as the `litellm` wheel ships it.
//! Costs are checked against values computed by hand from those rows; a worker with
//! `llmbus.price_table` prices with them (reply header, usage event) and takes the context
//! window from them for its pre-call checks; a model no table knows costs 0, is counted in
//! `llmbus_unpriced_requests_total` and warned about once.

use crate::support;

use std::{path::PathBuf, time::Duration};

use crate::support::{
    fake_provider::{FakeProvider, Fault},
    gateway::Gateway,
    worker_process::{WorkerOptions, WorkerProcess},
};
use llmbus::{
    pricing::{PriceTable, cost, cost_or_unpriced},
    wire::{
        headers,
        openai::{CompletionTokensDetails, PromptTokensDetails, Usage},
    },
};
use serde_json::json;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prices/litellm_excerpt.json")
}

fn table() -> PriceTable {
    PriceTable::load(&fixture()).expect("the LiteLLM excerpt loads")
}

fn usage(prompt: u64, cached: u64, written: u64, completion: u64, reasoning: u64) -> Usage {
    let mut u = Usage::new(prompt, completion);
    u.prompt_tokens_details = Some(PromptTokensDetails {
        cached_tokens: Some(cached),
        ..Default::default()
    });
    u.completion_tokens_details = Some(CompletionTokensDetails {
        reasoning_tokens: Some(reasoning),
        ..Default::default()
    });
    if written > 0 {
        u.extra
            .insert("cache_creation_input_tokens".into(), json!(written));
    }
    u
}

fn assert_cost(t: &PriceTable, model: &str, u: &Usage, expected: f64) {
    let p = t
        .lookup(model)
        .unwrap_or_else(|| panic!("{model} has a price"));
    let c = cost(&p, u);
    assert!(
        (c - expected).abs() < 1e-12,
        "{model}: {c} instead of {expected}"
    );
}

#[test]
fn costs_match_the_litellm_file_by_hand() {
    let t = table();
    assert!(t.from_file() >= 30, "{}", t.from_file());
    // claude-sonnet-4-5-20250929: $3/M in, $0.30/M cache read, $3.75/M cache write, $15/M out.
    // 1,000 plain + 2,000 read + 4,000 written, 100 out:
    // 0.003 + 0.0006 + 0.015 + 0.0015 = 0.0201.
    assert_cost(
        &t,
        "anthropic/claude-sonnet-4-5-20250929",
        &usage(7_000, 2_000, 4_000, 100, 0),
        0.0201,
    );
    // Bedrock cross-region us.anthropic.claude-sonnet-4-5-20250929-v1:0: $3.30/M in,
    // $0.33/M read, $4.125/M write, $16.50/M out. 4,000 plain + 4,000 read + 2,000 written,
    // 500 out: 0.0132 + 0.00132 + 0.00825 + 0.00825 = 0.03102.
    assert_cost(
        &t,
        "bedrock/us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        &usage(10_000, 4_000, 2_000, 500, 0),
        0.03102,
    );
    // Bedrock anthropic.claude-3-5-sonnet-20240620-v1:0 (cache prices on a Bedrock row):
    // 1,000 plain + 1,000 read, 1,000 out: 0.003 + 0.0003 + 0.015 = 0.0183.
    assert_cost(
        &t,
        "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
        &usage(2_000, 1_000, 0, 1_000, 0),
        0.0183,
    );
    // gemini/gemini-2.5-flash: $0.30/M in, $0.03/M read, $2.50/M out and reasoning.
    // 800 plain + 200 read, 1,000 text + 2,000 reasoning:
    // 0.00024 + 0.000006 + 0.0025 + 0.005 = 0.007746.
    assert_cost(
        &t,
        "gemini/gemini-2.5-flash",
        &usage(1_000, 200, 0, 3_000, 2_000),
        0.007746,
    );
    // Reasoning priced apart: dashscope/qwen-plus-2025-04-28, $0.40/M in, $1.20/M out,
    // $4/M reasoning. 1,000 in, 1,000 text + 2,000 reasoning: 0.0004 + 0.0012 + 0.008 = 0.0096.
    assert_cost(
        &t,
        "dashscope/qwen-plus-2025-04-28",
        &usage(1_000, 0, 0, 3_000, 2_000),
        0.0096,
    );
    // o3: $2/M in, $0.50/M read, $8/M out (reasoning as output). 2,000 plain + 8,000 read,
    // 1,000 out of which 600 reasoning: 0.004 + 0.004 + 0.008 = 0.016.
    assert_cost(&t, "openai/o3", &usage(10_000, 8_000, 0, 1_000, 600), 0.016);
    // replicate/openai/o4-mini has output_cost_per_reasoning_token = output: $1/M in, $4/M out.
    // 100 in, 2,000 out (1,500 reasoning): 0.0001 + 0.002 + 0.006 = 0.0081.
    assert_cost(
        &t,
        "replicate/openai/o4-mini",
        &usage(100, 0, 0, 2_000, 1_500),
        0.0081,
    );
    // text-embedding-3-small: $0.02/M in. 1,000 in = 0.00002.
    assert_cost(
        &t,
        "openai/text-embedding-3-small",
        &usage(1_000, 0, 0, 0, 0),
        0.00002,
    );
    // Amazon Nova Pro: $0.80/M in, $0.20/M read, $3.20/M out. 1,000 in, 1,000 out = 0.004.
    assert_cost(
        &t,
        "bedrock/amazon.nova-pro-v1:0",
        &usage(1_000, 0, 0, 1_000, 0),
        0.004,
    );
    // Ollama's row: free.
    assert_cost(&t, "ollama/llama3", &usage(1_000, 0, 0, 1_000, 0), 0.0);
}

#[test]
fn the_file_gives_the_context_window_and_extends_the_built_in_table() {
    let t = table();
    assert_eq!(
        t.max_input_tokens("anthropic/claude-sonnet-4-5"),
        Some(200_000)
    );
    assert_eq!(
        t.max_output_tokens("anthropic/claude-sonnet-4-5"),
        Some(64_000)
    );
    // vertex_ai/gemini-2.5-pro finds the Vertex row (named without the prefix).
    assert_eq!(
        t.max_input_tokens("vertex_ai/gemini-2.5-pro"),
        Some(1_048_576)
    );
    assert_eq!(
        t.max_output_tokens("vertex_ai/gemini-2.5-pro"),
        Some(65_535)
    );
    assert_eq!(
        t.max_input_tokens("meta.llama3-70b-instruct-v1:0"),
        Some(8_192)
    );
    // Case-insensitive, as LiteLLM's mixed-case keys need.
    assert!(
        t.lookup("together_ai/meta-llama/llama-3.3-70b-instruct-turbo")
            .is_some()
    );
    // Not in the built-in table, priced by the file.
    assert!(
        PriceTable::builtin()
            .lookup("amazon.nova-pro-v1:0")
            .is_none()
    );
    assert!(t.lookup("amazon.nova-pro-v1:0").is_some());
    // The built-in rows the file lacks are still there.
    assert!(t.lookup("deepseek-reasoner").is_some());
    // Unknown stays unknown, and costs 0 through the unpriced path.
    assert_eq!(t.lookup("acme/secret-model-9"), None);
    assert_eq!(
        cost_or_unpriced(
            None,
            "acme/secret-model-9",
            &Usage::new(1_000, 1_000),
            Duration::ZERO
        ),
        0.0
    );
}

#[test]
fn a_bad_price_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let e = PriceTable::load(&missing).unwrap_err().to_string();
    assert!(
        e.contains("llmbus.price_table") && e.contains("nope.json"),
        "{e}"
    );
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "[1, 2, 3]").unwrap();
    let e = PriceTable::load(&bad).unwrap_err().to_string();
    assert!(e.contains("model_prices_and_context_window.json"), "{e}");
}

/// A fake's answer with this usage.
fn answer(prompt: u64, completion: u64, reasoning: u64) -> Fault {
    Fault::Status {
        status: 200,
        body: json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion,
                      "completion_tokens_details": {"reasoning_tokens": reasoning}}
        })
        .to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_prices_with_the_file_and_checks_its_context_window() {
    let fake = FakeProvider::start().await;
    let yaml = format!(
        r#"
model_list:
  - model_name: qwen
    litellm_params: {{model: openai/qwen-plus, api_base: {url}, api_key: sk-test}}
    model_info: {{base_model: dashscope/qwen-plus-2025-04-28}}
  - model_name: small
    litellm_params: {{model: openai/llama3-70b, api_base: {url}, api_key: sk-test}}
    model_info: {{base_model: meta.llama3-70b-instruct-v1:0}}
router_settings:
  enable_pre_call_checks: true
llmbus:
  price_table: {path}
"#,
        url = fake.url(),
        path = fixture().display()
    );
    let gw = Gateway::start(&yaml).await;
    fake.push(answer(1_000, 3_000, 2_000));
    let r = gw
        .complete(json!({"model": "qwen", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    let c: f64 = r.header(headers::COST_USD).unwrap().parse().unwrap();
    assert!((c - 0.0096).abs() < 1e-12, "{c}");

    // meta.llama3-70b-instruct-v1:0 takes 8,192 prompt tokens: a 40,000-character prompt
    // (about 10,000 tokens) is refused before any upstream call.
    let before = fake.request_count();
    let big = "word ".repeat(8_000);
    let r = gw
        .complete(json!({"model": "small", "messages": [{"role": "user", "content": big}]}))
        .await;
    assert_eq!(r.status, 400, "{}", r.json());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context"),
        "{}",
        r.json()
    );
    assert_eq!(fake.request_count(), before, "no upstream call");
    let r = gw
        .complete(json!({"model": "small", "messages": [{"role": "user", "content": "short"}]}))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_a_price_costs_nothing_is_counted_and_warned_about_once() {
    let fake = FakeProvider::start().await;
    let nats = support::nats_server::NatsServer::start();
    let yaml = format!(
        "model_list:\n  - model_name: mystery\n    litellm_params: {{model: openai/acme-mystery-1, \
         api_base: {}, api_key: sk-test}}\n",
        fake.url()
    );
    let w = WorkerProcess::start(
        "w1",
        &nats.url(),
        &yaml,
        WorkerOptions {
            metrics: true,
            ..Default::default()
        },
    )
    .await;
    let client = llmbus::client::LlmClient::new(nats.client().await, "llm");
    for _ in 0..3 {
        let r = client
            .complete(
                async_nats::HeaderMap::new(),
                json!({"model": "mystery", "messages": [{"role": "user", "content": "x"}]})
                    .to_string()
                    .into(),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header(headers::COST_USD), Some("0"));
    }
    let url = format!("http://{}/metrics", w.metrics_addr().unwrap());
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(
        text.contains(r#"llmbus_unpriced_requests_total{model="openai/acme-mystery-1"} 3"#),
        "{text}"
    );
    let warnings = w
        .log()
        .matches("no price for model openai/acme-mystery-1")
        .count();
    assert_eq!(warnings, 1, "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_missing_price_file_does_not_start() {
    let nats = support::nats_server::NatsServer::start();
    let yaml = "model_list:\n  - model_name: demo\n    litellm_params: {model: mock/demo, \
                mock_response: hi}\nllmbus:\n  price_table: /nonexistent/prices.json\n";
    let config = llmbus::config::Config::from_yaml(yaml, "test.yaml")
        .expect("the config itself is fine")
        .config;
    let e = llmbus::Worker::start(&config, nats.client().await)
        .await
        .err()
        .expect("no worker without its price table")
        .to_string();
    assert!(
        e.contains("llmbus.price_table") && e.contains("/nonexistent/prices.json"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_prices_in_litellm_params_count_and_model_info_wins() {
    // LiteLLM's custom pricing documentation puts the prices in `litellm_params`; llmbus used
    // to take them there without a word and price the calls at 0.
    let fake = FakeProvider::start().await;
    let yaml = format!(
        r#"
model_list:
  - model_name: params
    litellm_params: {{model: openai/acme-custom-1, api_base: {url}, api_key: sk-test,
                      input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}}
  - model_name: both
    litellm_params: {{model: openai/acme-custom-2, api_base: {url}, api_key: sk-test,
                      input_cost_per_token: 9, output_cost_per_token: 9}}
    model_info: {{input_cost_per_token: 0.000003, output_cost_per_token: 0.000004}}
  - model_name: mixed
    litellm_params: {{model: openai/gpt-4o-mini, api_base: {url}, api_key: sk-test,
                      output_cost_per_token: 0.00001}}
    model_info: {{input_cost_per_token: 0.000002}}
  - model_name: seconds
    litellm_params: {{model: openai/acme-sagemaker-1, api_base: {url}, api_key: sk-test,
                      input_cost_per_second: 0.5}}
"#,
        url = fake.url()
    );
    let loaded = llmbus::config::Config::from_yaml(&yaml, "test.yaml").unwrap();
    assert!(
        loaded.unsupported.is_empty(),
        "the keys are taken: {:?}",
        loaded.unsupported
    );
    let gw = Gateway::start(&yaml).await;
    let cost_of = |model: &'static str| {
        let gw = &gw;
        let fake = &fake;
        async move {
            fake.push(answer(1_000, 500, 0));
            let r = gw
                .complete(json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
                .await;
            assert_eq!(r.status, 200, "{model}: {}", r.json());
            let cost: f64 = r.header(headers::COST_USD).unwrap().parse().unwrap();
            let upstream_ms: f64 = r.header(headers::UPSTREAM_MS).unwrap().parse().unwrap();
            (cost, upstream_ms)
        }
    };
    // 1,000 in x $1/M + 500 out x $2/M = $0.002.
    let (c, _) = cost_of("params").await;
    assert!((c - 0.002).abs() < 1e-12, "params: {c}");
    // model_info wins: 1,000 x $3/M + 500 x $4/M = $0.005.
    let (c, _) = cost_of("both").await;
    assert!((c - 0.005).abs() < 1e-12, "both: {c}");
    // Field by field: input from model_info, output from litellm_params:
    // 1,000 x $2/M + 500 x $10/M = $0.007.
    let (c, _) = cost_of("mixed").await;
    assert!((c - 0.007).abs() < 1e-12, "mixed: {c}");
    // By time: $0.50 per second of the upstream call, which the reply headers report.
    let (c, ms) = cost_of("seconds").await;
    assert!(c > 0.0, "seconds: {c}");
    assert!(
        (c - 0.5 * ms / 1000.0).abs() < 1e-6,
        "seconds: {c} for {ms} ms"
    );
}
