//! Chat completions end to end: NATS → worker → OpenAI-compatible upstream (the fake, over
//! real loopback HTTP) → reply or stream chunks.

use crate::support::{
    fake_provider::{FakeProvider, Fault, TOOL_ARGUMENTS},
    gateway::{Gateway, chat, content, headers, streamed_text},
};
use serde_json::{Value, json};

fn config(fake: &FakeProvider) -> String {
    format!(
        r#"
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {url}
      api_key: sk-test-key-0123456789
    model_info: {{id: gpt-4o-mini-1}}
  - model_name: azure-gpt
    litellm_params:
      model: azure/my-gpt4o-deployment
      api_base: {base}
      api_key: azure-key-abcdef
      api_version: "2024-10-21"
"#,
        url = fake.url(),
        base = fake.base()
    )
}

#[tokio::test]
async fn a_completion_reaches_the_upstream_and_comes_back_unchanged() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config(&fake)).await;
    let mut body = chat("gpt-4o-mini", "hello world");
    body["temperature"] = json!(0.2);
    body["logit_bias"] = json!({"50256": -100});
    body["some_future_field"] = json!({"nested": [1, 2, 3]});
    let reply = gw.complete(body).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(content(&reply), "echo: hello world");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let seen = fake.last_request().expect("the upstream was called");
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.model(), Some("gpt-4o-mini"), "provider prefix removed");
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer sk-test-key-0123456789")
    );
    assert_eq!(seen.body["temperature"], json!(0.2));
    assert_eq!(seen.body["logit_bias"], json!({"50256": -100}));
    assert_eq!(seen.body["some_future_field"], json!({"nested": [1, 2, 3]}));

    assert_eq!(reply.header("Llm-Model-Group"), Some("gpt-4o-mini"));
    assert_eq!(reply.header("Llm-Deployment"), Some("gpt-4o-mini-1"));
    assert_eq!(reply.header("Llm-Attempts"), Some("1"));
    let cost: f64 = reply.header("Llm-Cost-Usd").unwrap().parse().unwrap();
    assert!(cost > 0.0, "gpt-4o-mini has a price: {cost}");
    assert!(reply.header("Llm-Job-Id").is_some());
}

#[tokio::test]
async fn azure_deployments_use_the_deployment_url_and_api_key_header() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config(&fake)).await;
    let reply = gw.complete(chat("azure-gpt", "hi azure")).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(content(&reply), "echo: hi azure");
    let seen = fake.last_request().unwrap();
    assert_eq!(
        seen.path,
        "/openai/deployments/my-gpt4o-deployment/chat/completions"
    );
    assert_eq!(seen.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(seen.header("api-key"), Some("azure-key-abcdef"));
    assert_eq!(seen.header("authorization"), None);
}

#[tokio::test]
async fn a_stream_arrives_in_order_with_llm_seq_and_ends_with_a_sentinel() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config(&fake)).await;
    let mut body = chat("gpt-4o-mini", "the quick brown fox");
    body["stream"] = json!(true);
    let (chunks, sentinel) = gw.stream(Default::default(), body).await;
    assert!(chunks.len() >= 4, "role, pieces, finish: {}", chunks.len());
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.header("Llm-Seq"), Some((i + 1).to_string().as_str()));
        let v = c.json();
        assert_eq!(v["object"], "chat.completion.chunk");
        assert!(v.get("usage").is_none(), "no usage unless asked for");
    }
    assert_eq!(streamed_text(&chunks), "echo: the quick brown fox");
    assert_eq!(chunks[0].json()["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().unwrap().json();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(sentinel.body.is_empty());
    assert_eq!(sentinel.status, 200);
    assert_eq!(sentinel.header("Llm-Model-Group"), Some("gpt-4o-mini"));
    assert!(
        sentinel
            .header("Llm-Cost-Usd")
            .unwrap()
            .parse::<f64>()
            .unwrap()
            > 0.0
    );
    // The worker asked for usage anyway, to count the cost.
    let seen = fake.last_request().unwrap();
    assert_eq!(seen.body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn include_usage_adds_the_usage_chunk_last() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config(&fake)).await;
    let mut body = chat("gpt-4o-mini", "count me");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (chunks, sentinel) = gw.stream(Default::default(), body).await;
    assert_eq!(sentinel.status, 200);
    let last = chunks.last().unwrap().json();
    assert_eq!(last["choices"], json!([]));
    let usage = &last["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 0 && c > 0);
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), p + c);
    assert_eq!(streamed_text(&chunks), "echo: count me");
}

#[tokio::test]
async fn streamed_tool_call_arguments_arrive_in_their_pieces() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::ToolCalls);
    let gw = Gateway::start(&config(&fake)).await;
    let mut body = chat("gpt-4o-mini", "weather in Paris?");
    body["stream"] = json!(true);
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let (chunks, sentinel) = gw.stream(Default::default(), body.clone()).await;
    assert_eq!(sentinel.status, 200);
    let mut args = String::new();
    let mut fragments = 0;
    for c in &chunks {
        let v: Value = c.json();
        if let Some(calls) = v["choices"][0]["delta"]["tool_calls"].as_array() {
            for call in calls {
                if let Some(a) = call["function"]["arguments"].as_str() {
                    args.push_str(a);
                    fragments += 1;
                }
            }
        }
    }
    assert_eq!(args, TOOL_ARGUMENTS);
    assert!(
        fragments > 2,
        "fragments kept apart, not collapsed: {fragments}"
    );
    // Non-stream: the whole call.
    body["stream"] = json!(false);
    let reply = gw.complete(body).await;
    let call = &reply.json()["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["arguments"], TOOL_ARGUMENTS);
    assert_eq!(reply.json()["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn the_api_key_never_appears_in_replies() {
    let fake = FakeProvider::start().await;
    fake.require_key("sk-the-right-one");
    let gw = Gateway::start(&config(&fake)).await;
    let reply = gw.complete(chat("gpt-4o-mini", "hi")).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["type"], "authentication_error");
    let text = String::from_utf8_lossy(&reply.body).to_string();
    assert!(!text.contains("sk-test-key-0123456789"), "{text}");

    // An upstream that echoes the key in its error body: llmbus redacts it.
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::error(
        400,
        "bad key sk-test-key-0123456789 for this model",
        "invalid_request_error",
        Value::Null,
    ));
    let gw = Gateway::start(&config(&fake)).await;
    let reply = gw.complete(chat("gpt-4o-mini", "hi")).await;
    assert_eq!(reply.status, 400);
    let text = String::from_utf8_lossy(&reply.body).to_string();
    assert!(!text.contains("sk-test-key-0123456789"), "{text}");
    for (_, v) in reply.headers.iter() {
        for v in v {
            assert!(!v.as_str().contains("sk-test"));
        }
    }
}

#[tokio::test]
async fn traceparent_is_propagated_upstream() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::start(&config(&fake)).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = gw
        .complete_with(
            headers(&[("traceparent", tp)]),
            chat("gpt-4o-mini", "trace me"),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(fake.last_request().unwrap().header("traceparent"), Some(tp));
}

#[tokio::test]
async fn an_azure_content_filter_refusal_is_a_content_policy_error_with_its_fallbacks() {
    let fake = FakeProvider::start().await;
    // Azure's documented body for a prompt its content filter refused.
    fake.push(Fault::Status {
        status: 400,
        body: json!({"error": {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
            "type": null,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
                "hate": {"filtered": true, "severity": "high"}
            }}
        }})
        .to_string(),
    });
    let yaml = format!(
        "{}router_settings:\n  content_policy_fallbacks: [{{azure-gpt: [gpt-4o-mini]}}]\n",
        config(&fake)
    );
    let gw = Gateway::start(&yaml).await;
    let reply = gw.complete(chat("azure-gpt", "something")).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("Llm-Model-Group"), Some("gpt-4o-mini"));
    assert_eq!(
        reply.header("Llm-Attempts"),
        Some("2"),
        "no retry on a content-policy refusal"
    );

    // Without a fallback the client sees the refusal as such.
    fake.push(Fault::error(
        400,
        "The response was filtered",
        "invalid_request_error",
        json!("content_filter"),
    ));
    let gw = Gateway::start(&config(&fake)).await;
    let reply = gw.complete(chat("azure-gpt", "something")).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["code"], "content_policy_violation");
}
