//! The OpenAI-compatible adapter against the fake provider, over real loopback HTTP (no NATS):
//! the request it sends, the answers and streams it reads, and every fault mapped to its
//! error class.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use crate::support::fake_provider::{
    FakeProvider, Fault, TOOL_ARGUMENT_PIECES, TOOL_ARGUMENTS, TOOL_CALL_ID,
};
use futures::StreamExt;
use llmbus::{
    config::{LitellmParams, Secret},
    providers::{
        CallContext, ErrorClass, Provider, ProviderError,
        openai_compat::{self, AZURE_DEFAULT_API_VERSION},
    },
    wire::openai::{ChatCompletionChunk, ChatCompletionRequest, Role},
};
use serde_json::json;

const KEY: &str = "sk-test-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(5);

fn params(model: &str, api_base: &str) -> LitellmParams {
    LitellmParams {
        model: model.into(),
        api_base: Some(api_base.into()),
        api_key: Some(Secret::new(KEY)),
        ..LitellmParams::default()
    }
}

fn build(p: &LitellmParams) -> (Arc<dyn Provider>, CallContext) {
    let (provider, upstream_model) =
        openai_compat::build_with_env(p, &reqwest::Client::new(), |_| None).unwrap();
    let ctx = CallContext {
        upstream_model,
        timeout: WAIT,
        traceparent: None,
    };
    (provider, ctx)
}

fn openai(fake: &FakeProvider) -> (Arc<dyn Provider>, CallContext) {
    build(&params("openai/gpt-4o", &fake.url()))
}

fn request(stream: bool, include_usage: bool) -> ChatCompletionRequest {
    let mut body = json!({
        "model": "my-group",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello  world"},
        ],
    });
    if stream {
        body["stream"] = json!(true);
    }
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    serde_json::from_value(body).unwrap()
}

async fn collect(
    provider: &dyn Provider,
    req: &ChatCompletionRequest,
    ctx: &CallContext,
) -> Vec<Result<ChatCompletionChunk, ProviderError>> {
    provider.stream(req, ctx).await.unwrap().collect().await
}

fn text_of(chunks: &[ChatCompletionChunk]) -> String {
    chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.content.as_deref())
        .collect()
}

#[tokio::test]
async fn completion_round_trip_sends_what_the_client_sent() {
    let fake = FakeProvider::start().await;
    fake.require_key(KEY);
    let mut p = params("openai/gpt-4o", &fake.url());
    p.extra_headers = BTreeMap::from([("x-team".to_string(), "blue".to_string())]);
    p.organization = Some("org-123".into());
    let (provider, mut ctx) = build(&p);
    ctx.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    let mut req = request(false, false);
    req.extra.insert(
        "custom_field".into(),
        json!({"nested": [1, 2, {"x": null}]}),
    );
    req.extra.insert("seed".into(), json!(7));

    let resp = provider.complete(&req, &ctx).await.unwrap();
    assert_eq!(resp.choices[0].message.role, Role::Assistant);
    assert_eq!(resp.choices[0].message.text_content(), "echo: hello  world");
    assert_eq!(resp.model, "gpt-4o");
    let usage = resp.usage.unwrap();
    assert_eq!(usage.completion_tokens, 5);
    assert!(usage.prompt_tokens > 0);

    let seen = fake.wait_for_requests(1, WAIT).await;
    let sent = &seen[0];
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(sent.model(), Some("gpt-4o"));
    assert_eq!(
        sent.body["custom_field"],
        json!({"nested": [1, 2, {"x": null}]})
    );
    assert_eq!(sent.body["seed"], 7);
    assert_eq!(sent.body["messages"][1]["content"], "hello  world");
    assert!(sent.body.get("stream").is_none());
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(sent.header("x-team"), Some("blue"));
    assert_eq!(sent.header("openai-organization"), Some("org-123"));
    assert_eq!(sent.header("traceparent"), ctx.traceparent.as_deref());
    assert_eq!(sent.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn key_comes_from_env_at_build_time_and_none_means_no_header() {
    let fake = FakeProvider::start().await;
    let mut p = params("gpt-4o", &fake.url());
    p.api_key = None;
    let http = reqwest::Client::new();
    let (with_env, model) = openai_compat::build_with_env(&p, &http, |name| {
        (name == "OPENAI_API_KEY").then(|| "sk-from-env".to_string())
    })
    .unwrap();
    assert_eq!(model, "gpt-4o");
    let (without, _) = openai_compat::build_with_env(&p, &http, |_| None).unwrap();
    let ctx = CallContext {
        upstream_model: model,
        timeout: WAIT,
        traceparent: None,
    };
    with_env
        .complete(&request(false, false), &ctx)
        .await
        .unwrap();
    without
        .complete(&request(false, false), &ctx)
        .await
        .unwrap();
    let seen = fake.wait_for_requests(2, WAIT).await;
    assert_eq!(seen[0].header("authorization"), Some("Bearer sk-from-env"));
    assert_eq!(seen[1].header("authorization"), None);
}

#[tokio::test]
async fn wrong_key_is_an_authentication_error() {
    let fake = FakeProvider::start().await;
    fake.require_key("sk-the-right-one");
    let (provider, ctx) = openai(&fake);
    let err = provider
        .complete(&request(false, false), &ctx)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Authentication);
    assert_eq!(err.status, Some(401));
    assert!(err.message.starts_with("Incorrect API key provided"));
    assert!(!err.message.contains(KEY));
}

#[tokio::test]
async fn azure_uses_deployment_url_api_version_and_api_key_header() {
    let fake = FakeProvider::start().await;
    fake.require_key(KEY);
    let (provider, ctx) = build(&params("azure/my-deployment", &fake.base()));
    assert_eq!(ctx.upstream_model, "my-deployment");
    let resp = provider
        .complete(&request(false, false), &ctx)
        .await
        .unwrap();
    assert_eq!(resp.model, "my-deployment");

    let mut p = params("azure/my-deployment", &format!("{}/", fake.base()));
    p.api_version = Some("2025-01-01-preview".into());
    let (provider, ctx) = build(&p);
    let chunks = collect(provider.as_ref(), &request(true, false), &ctx).await;
    assert!(chunks.iter().all(Result::is_ok));

    let seen = fake.wait_for_requests(2, WAIT).await;
    let expected_query = format!("api-version={AZURE_DEFAULT_API_VERSION}");
    assert_eq!(
        seen[0].path,
        "/openai/deployments/my-deployment/chat/completions"
    );
    assert_eq!(seen[0].query.as_deref(), Some(expected_query.as_str()));
    assert_eq!(seen[0].header("api-key"), Some(KEY));
    assert_eq!(seen[0].header("authorization"), None);
    assert_eq!(
        seen[1].path,
        "/openai/deployments/my-deployment/chat/completions"
    );
    assert_eq!(
        seen[1].query.as_deref(),
        Some("api-version=2025-01-01-preview")
    );
}

#[tokio::test]
async fn stream_yields_role_pieces_finish_in_order() {
    let fake = FakeProvider::start().await;
    let (provider, ctx) = openai(&fake);
    let chunks: Vec<_> = collect(provider.as_ref(), &request(true, false), &ctx)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(chunks.len() >= 4);
    assert!(chunks.iter().all(|c| c.id == chunks[0].id));
    assert_eq!(chunks[0].choices[0].delta.role, Some(Role::Assistant));
    assert_eq!(text_of(&chunks), "echo: hello  world");
    let last = chunks.last().unwrap();
    assert_eq!(last.choices[0].finish_reason.as_deref(), Some("stop"));
    assert!(chunks.iter().all(|c| c.usage.is_none()));

    let sent = fake.last_request().unwrap();
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.header("accept"), Some("text/event-stream"));
}

#[tokio::test]
async fn usage_chunk_comes_only_with_include_usage() {
    let fake = FakeProvider::start().await;
    let (provider, ctx) = openai(&fake);
    let chunks: Vec<_> = collect(provider.as_ref(), &request(true, true), &ctx)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let last = chunks.last().unwrap();
    assert!(last.choices.is_empty());
    let usage = last.usage.as_ref().unwrap();
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    assert_eq!(chunks.iter().filter(|c| c.usage.is_some()).count(), 1);
    let sent = fake.last_request().unwrap();
    assert_eq!(sent.body["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn streamed_tool_call_arguments_arrive_in_fragments() {
    let fake = FakeProvider::start().await;
    let (provider, ctx) = openai(&fake);
    fake.push(Fault::ToolCalls);
    let chunks: Vec<_> = collect(provider.as_ref(), &request(true, false), &ctx)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let calls: Vec<_> = chunks
        .iter()
        .flat_map(|c| &c.choices)
        .flat_map(|c| c.delta.tool_calls.iter().flatten())
        .collect();
    assert_eq!(calls[0].id.as_deref(), Some(TOOL_CALL_ID));
    assert_eq!(
        calls[0].function.as_ref().unwrap().name.as_deref(),
        Some("get_weather")
    );
    let fragments: Vec<&str> = calls
        .iter()
        .filter_map(|c| c.function.as_ref()?.arguments.as_deref())
        .filter(|a| !a.is_empty())
        .collect();
    assert_eq!(fragments, TOOL_ARGUMENT_PIECES);
    assert_eq!(fragments.concat(), TOOL_ARGUMENTS);
    let finish = chunks.last().unwrap().choices[0].finish_reason.as_deref();
    assert_eq!(finish, Some("tool_calls"));

    fake.push(Fault::ToolCalls);
    let resp = provider
        .complete(&request(false, false), &ctx)
        .await
        .unwrap();
    let call = &resp.choices[0].message.tool_calls.as_ref().unwrap()[0];
    assert_eq!(call.function.arguments, TOOL_ARGUMENTS);
    assert_eq!(resp.choices[0].message.content, None);
}

#[tokio::test]
async fn slow_stream_keeps_pieces_in_order() {
    let fake = FakeProvider::start().await;
    let (provider, ctx) = openai(&fake);
    let pieces = vec!["one".to_string(), " two".into(), " three".into()];
    fake.push(Fault::StreamChunks {
        pieces: pieces.clone(),
        gap: Duration::from_millis(20),
    });
    let chunks: Vec<_> = collect(provider.as_ref(), &request(true, false), &ctx)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let got: Vec<_> = chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.content.clone())
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(got, pieces);
}

#[tokio::test]
async fn garbage_sse_lines_are_tolerated() {
    let fake = FakeProvider::start().await;
    let (provider, ctx) = openai(&fake);
    fake.push(Fault::GarbageSse);
    let items = collect(provider.as_ref(), &request(true, true), &ctx).await;
    let chunks: Vec<_> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(text_of(&chunks), "echo: hello  world");
    assert!(chunks.last().unwrap().usage.is_some());
}

/// Runs one faulty non-stream call and returns its error.
async fn complete_err(fault: Fault) -> ProviderError {
    let fake = FakeProvider::start().await;
    let (provider, ctx) = openai(&fake);
    fake.push(fault);
    provider
        .complete(&request(false, false), &ctx)
        .await
        .unwrap_err()
}

/// Runs one faulty stream call that fails before its first chunk and returns its error.
async fn stream_err(fault: Fault) -> ProviderError {
    let fake = FakeProvider::start().await;
    let (provider, ctx) = openai(&fake);
    fake.push(fault);
    match provider.stream(&request(true, false), &ctx).await {
        Err(err) => err,
        Ok(_) => panic!("expected the stream call to fail"),
    }
}

#[tokio::test]
async fn statuses_map_to_error_classes() {
    let cases = [
        (400, ErrorClass::BadRequest),
        (401, ErrorClass::Authentication),
        (403, ErrorClass::PermissionDenied),
        (404, ErrorClass::NotFound),
        (500, ErrorClass::InternalServer),
        (502, ErrorClass::InternalServer),
        (503, ErrorClass::InternalServer),
    ];
    for (status, class) in cases {
        for err in [
            complete_err(Fault::status(status)).await,
            stream_err(Fault::status(status)).await,
        ] {
            assert_eq!((err.class, err.status), (class, Some(status)), "{err}");
            assert!(!err.message.is_empty());
            assert_eq!(err.is_retryable(), status >= 500);
        }
    }
    let err = complete_err(Fault::status(500)).await;
    assert_eq!(
        err.message,
        "The server had an error while processing your request. Sorry about that!"
    );
}

#[tokio::test]
async fn rate_limit_carries_retry_after() {
    for err in [
        complete_err(Fault::RateLimited {
            retry_after_secs: 7,
        })
        .await,
        stream_err(Fault::RateLimited {
            retry_after_secs: 7,
        })
        .await,
    ] {
        assert_eq!(err.class, ErrorClass::RateLimit);
        assert_eq!(err.status, Some(429));
        assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
        assert!(err.message.starts_with("Rate limit reached"));
    }
}

#[tokio::test]
async fn context_window_and_content_policy_are_told_apart() {
    let err = complete_err(Fault::ContextLengthExceeded).await;
    assert_eq!(
        (err.class, err.status),
        (ErrorClass::ContextWindowExceeded, Some(400))
    );
    let err = stream_err(Fault::ContextLengthExceeded).await;
    assert_eq!(err.class, ErrorClass::ContextWindowExceeded);
    let err = complete_err(Fault::ContentFiltered).await;
    assert_eq!(err.class, ErrorClass::ContentPolicyViolation);
}

#[tokio::test]
async fn non_json_error_body_gives_an_excerpt() {
    let err = complete_err(Fault::Status {
        status: 502,
        body: "<html><body>502 Bad Gateway</body></html>".into(),
    })
    .await;
    assert_eq!(err.class, ErrorClass::InternalServer);
    assert!(err.message.contains("502 Bad Gateway"), "{}", err.message);
}

#[tokio::test]
async fn malformed_answers_are_invalid_responses() {
    let err = complete_err(Fault::MalformedJson).await;
    assert_eq!(
        (err.class, err.status),
        (ErrorClass::InvalidResponse, Some(200))
    );

    let fake = FakeProvider::start().await;
    let (provider, ctx) = openai(&fake);
    fake.push(Fault::MalformedJson);
    let items = collect(provider.as_ref(), &request(true, false), &ctx).await;
    assert_eq!(
        items.len(),
        2,
        "one chunk, then one error item, then the end"
    );
    assert!(items[0].is_ok());
    assert_eq!(
        items[1].as_ref().unwrap_err().class,
        ErrorClass::InvalidResponse
    );
}

#[tokio::test]
async fn broken_connections_are_errors_not_truncations() {
    let err = complete_err(Fault::BrokenStream { after_chunks: 0 }).await;
    assert_eq!(err.class, ErrorClass::Connection);

    let fake = FakeProvider::start().await;
    let (provider, ctx) = openai(&fake);
    fake.push(Fault::BrokenStream { after_chunks: 2 });
    let items = collect(provider.as_ref(), &request(true, false), &ctx).await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(items[0].is_ok() && items[1].is_ok());
    let err = items[2].as_ref().unwrap_err();
    assert!(
        matches!(
            err.class,
            ErrorClass::Connection | ErrorClass::InvalidResponse
        ),
        "{err}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn error_event_mid_stream_is_an_error_item() {
    let fake = FakeProvider::start().await;
    let (provider, ctx) = openai(&fake);
    fake.push(Fault::MidStreamError { after_chunks: 2 });
    let items = collect(provider.as_ref(), &request(true, false), &ctx).await;
    assert_eq!(items.len(), 3);
    let err = items[2].as_ref().unwrap_err();
    assert_eq!(err.class, ErrorClass::InternalServer);
    assert!(err.message.contains("The server had an error"));
}

#[tokio::test]
async fn never_ending_stream_stays_open_without_items() {
    let fake = FakeProvider::start().await;
    let (provider, ctx) = openai(&fake);
    fake.push(Fault::NeverEnding { after_chunks: 1 });
    let mut stream = provider.stream(&request(true, false), &ctx).await.unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    // The adapter leaves idle gaps to its caller: no item, no end.
    let idle = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
    assert!(idle.is_err(), "expected silence, got {idle:?}");
}

#[tokio::test]
async fn deadlines_become_timeouts() {
    let fake = FakeProvider::start().await;
    let (provider, mut ctx) = openai(&fake);
    ctx.timeout = Duration::from_millis(200);

    fake.push(Fault::Delay(Duration::from_secs(30)));
    let err = provider
        .complete(&request(false, false), &ctx)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Timeout);

    fake.push(Fault::NeverEnding { after_chunks: 0 });
    let err = provider
        .complete(&request(false, false), &ctx)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Timeout);

    fake.push(Fault::Delay(Duration::from_secs(30)));
    let Err(err) = provider.stream(&request(true, false), &ctx).await else {
        panic!("expected a timeout before the headers");
    };
    assert_eq!(err.class, ErrorClass::Timeout);
    assert!(err.is_retryable());
}

#[tokio::test]
async fn connection_refused_is_a_connection_error_without_url() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let base = format!("http://{addr}/v1");
    let (provider, ctx) = build(&params("openai/gpt-4o", &base));
    let err = provider
        .complete(&request(false, false), &ctx)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Connection);
    assert!(!err.message.contains("http://"), "{}", err.message);
    assert!(!err.message.contains(KEY));
    let Err(err) = provider.stream(&request(true, false), &ctx).await else {
        panic!("expected a connection error");
    };
    assert_eq!(err.class, ErrorClass::Connection);
}

#[tokio::test]
async fn an_upstream_echoing_the_key_does_not_leak_it() {
    let message = format!("key {KEY} is revoked");
    let body = json!({"error": {"message": message, "type": "invalid_request_error"}});
    let echo = Fault::Status {
        status: 401,
        body: body.to_string(),
    };
    for err in [complete_err(echo.clone()).await, stream_err(echo).await] {
        assert_eq!(err.class, ErrorClass::Authentication);
        assert!(!err.message.contains(KEY), "{}", err.message);
        assert_eq!(err.message, "key *** is revoked");
    }

    let fake = FakeProvider::start().await;
    let (provider, ctx) = openai(&fake);
    fake.push(Fault::Status {
        status: 500,
        body: format!("upstream proxy saw Authorization: Bearer {KEY}"),
    });
    let err = provider
        .complete(&request(false, false), &ctx)
        .await
        .unwrap_err();
    assert!(!err.message.contains(KEY), "{}", err.message);
}

#[tokio::test]
async fn fake_records_and_counts_requests() {
    let fake = FakeProvider::start().await;
    let (provider, ctx) = openai(&fake);
    assert_eq!(fake.request_count(), 0);
    fake.set_default(Fault::Fixed {
        content: "fixed reply".into(),
    });
    let waiter = fake.wait_for_requests(2, WAIT);
    let calls = async {
        for _ in 0..2 {
            let resp = provider
                .complete(&request(false, false), &ctx)
                .await
                .unwrap();
            assert_eq!(resp.choices[0].message.text_content(), "fixed reply");
        }
    };
    let (seen, ()) = tokio::join!(waiter, calls);
    assert_eq!(seen.len(), 2);
    assert_eq!(fake.request_count(), 2);
}

/// An `https://` upstream is reached over TLS: the client's crypto (rustls with *ring*, the one
/// provider compiled in) is there, so the first bytes on the wire are a TLS ClientHello. The
/// listener answers nothing a TLS client accepts, so the call fails cleanly, with no panic.
#[tokio::test]
async fn an_https_upstream_gets_a_tls_client_hello() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut first = [0u8; 3];
        conn.read_exact(&mut first).await.unwrap();
        first
    });
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the HTTP client builds with its TLS provider");
    let call = client
        .get(format!("https://127.0.0.1:{port}/v1/models"))
        .timeout(Duration::from_secs(30))
        .send();
    let (answer, first) = tokio::join!(call, server);
    // A handshake record (0x16) of TLS 1.x (0x03 0x01 for the ClientHello's record).
    assert_eq!(first.unwrap()[..2], [0x16, 0x03]);
    assert!(answer.is_err());
}
