//! The fuzz targets' inputs, replayed by plain `cargo test`: every seed of the corpus
//! (`fuzz/corpus/<target>/`) and every input a fuzzer found a crash with
//! (`tests/fuzz_regressions/<target>/`) goes through the same entry point as the fuzz target
//! (`llmbus::fuzzing::<target>`), which panics when one of the parser's invariants breaks.
//! The named tests below pin each crash found so far, with what it was.

use std::path::Path;

use llmbus::fuzzing;

/// Runs `check` over every file of the target's seed corpus and crash inputs; fails naming
/// every file whose input breaks an invariant.
fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failed = Vec::new();
    let mut seen = 0;
    for dir in [
        root.join("fuzz/corpus").join(target),
        root.join("tests/fuzz_regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).expect("a corpus file reads");
            seen += 1;
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(seen > 0, "no input for target `{target}`");
    assert!(
        failed.is_empty(),
        "inputs that break `{target}`: {failed:#?}"
    );
}

#[test]
fn job_body_corpus() {
    replay("job_body", fuzzing::job_body);
}

#[test]
fn job_headers_corpus() {
    replay("job_headers", fuzzing::job_headers);
}

#[test]
fn sse_corpus() {
    replay("sse", fuzzing::sse);
}

#[test]
fn openai_stream_corpus() {
    replay("openai_stream", fuzzing::openai_stream);
}

#[test]
fn anthropic_stream_corpus() {
    replay("anthropic_stream", fuzzing::anthropic_stream);
}

#[test]
fn gemini_stream_corpus() {
    replay("gemini_stream", fuzzing::gemini_stream);
}

#[test]
fn cohere_stream_corpus() {
    replay("cohere_stream", fuzzing::cohere_stream);
}

#[test]
fn ollama_stream_corpus() {
    replay("ollama_stream", fuzzing::ollama_stream);
}

#[test]
fn bedrock_stream_corpus() {
    replay("bedrock_stream", fuzzing::bedrock_stream);
}

#[test]
fn responses_corpus() {
    replay("responses", fuzzing::responses);
}

#[test]
fn config_corpus() {
    replay("config", fuzzing::config);
}

// --- The crashes found, one test each (the inputs are also in tests/fuzz_regressions/). -----

/// The bytes of a `responses` input for an error answer: parser family `pick` (9: the generic
/// and Cohere's, 10: Anthropic's and Gemini's, 11: Bedrock's), status, headers, body.
fn error_answer(pick: u8, status: u16, headers: &str, body: &str) -> Vec<u8> {
    let mut data = vec![pick];
    data.extend(status.to_be_bytes());
    data.extend(headers.as_bytes());
    data.push(0);
    data.extend(body.as_bytes());
    data
}

/// `Retry-After: 1e20` panicked in `Duration::from_secs_f64` (a job answered 500 instead of
/// the upstream's 429); `1e19` and `retry-after-ms: 1e30` gave waits no `Instant` can hold, so
/// the deployment's cooldown panicked. Now every wait is capped at a day.
#[test]
fn retry_after_too_long_for_the_clocks_is_capped() {
    for header in [
        "retry-after: 1e20",
        "retry-after: 1e19",
        "Retry-After: 18446744073709551616",
        "retry-after-ms: 1e30",
    ] {
        fuzzing::responses(&error_answer(9, 429, header, "{}"));
        let mut headers = reqwest::header::HeaderMap::new();
        let (name, value) = header.split_once(": ").unwrap();
        headers.insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        assert_eq!(
            llmbus::providers::http::retry_after(&headers),
            Some(llmbus::providers::http::MAX_RETRY_AFTER),
            "{header}"
        );
    }
    assert_eq!(
        llmbus::providers::http::retry_after(&reqwest::header::HeaderMap::new()),
        None
    );
}

/// Gemini's `RetryInfo.retryDelay` of `1e20s` panicked the same way.
#[test]
fn gemini_retry_delay_too_long_is_capped() {
    let body = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1e20s"}]}}"#;
    fuzzing::responses(&error_answer(10, 429, "", body));
    let e = llmbus::providers::gemini::error::from_response(
        429,
        &reqwest::header::HeaderMap::new(),
        body.as_bytes(),
    );
    assert_eq!(
        e.retry_after,
        Some(llmbus::providers::http::MAX_RETRY_AFTER)
    );
}

/// Token counts near `u64::MAX` from an upstream overflowed the usage sums (a panic with
/// overflow checks, a wrapped total in a release build). They saturate now.
#[test]
fn huge_token_counts_saturate() {
    let body = r#"{"id":"m","type":"message","role":"assistant","model":"c","content":[{"type":"text","text":"x"}],"stop_reason":"end_turn","usage":{"input_tokens":18446744073709551615,"cache_read_input_tokens":1,"output_tokens":1}}"#;
    let mut data = vec![2];
    data.extend(body.as_bytes());
    fuzzing::responses(&data);
    let answer = llmbus::providers::anthropic::response::convert(body.as_bytes(), false).unwrap();
    let usage = answer.usage.unwrap();
    assert_eq!(usage.prompt_tokens, u64::MAX);
    assert_eq!(usage.total_tokens, u64::MAX);
}

/// `timeout: 1e20` passed the config check and then panicked building the worker's
/// deployments; `cooldown_time: 1e20` and `retry_after: .inf` panicked building its policies.
/// A config now refuses seconds past a year, naming the key.
#[test]
fn config_seconds_past_a_year_are_refused() {
    for (yaml, key) in [
        (
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/gpt-4o\n      api_key: k\n      timeout: 1e20\n",
            "timeout",
        ),
        ("router_settings:\n  cooldown_time: 1e20\n", "cooldown_time"),
        ("router_settings:\n  retry_after: .inf\n", "retry_after"),
        (
            "router_settings:\n  stream_timeout: 4e7\n",
            "stream_timeout",
        ),
    ] {
        fuzzing::config(yaml.as_bytes());
        let e = llmbus::config::Config::from_yaml(yaml, "c.yaml").unwrap_err();
        assert!(e.to_string().contains(key), "{e}");
    }
    let ok = "router_settings:\n  cooldown_time: 0\n  retry_after: 2.5\n  timeout: 31536000\n";
    llmbus::config::Config::from_yaml(ok, "c.yaml").unwrap();
}

/// Found by the `bedrock_stream` target (its crash input is kept): when one read of the body
/// held whole frames and then a broken one, the frame decoder reported the error first and the
/// converter stopped there, so the frames before it (the role chunk, text deltas) were lost;
/// the same bytes read in smaller pieces gave those chunks, then the error. Now the frames come
/// first, whatever the reads.
#[test]
fn bedrock_frames_before_a_broken_frame_are_kept() {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    use futures::StreamExt;

    let start = Message::new(bytes::Bytes::from_static(br#"{"role":"assistant"}"#))
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("event".into()),
        ))
        .add_header(Header::new(
            ":event-type",
            HeaderValue::String("messageStart".into()),
        ));
    let mut body = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&start, &mut body).unwrap();
    // A prelude whose CRC does not match: a broken frame.
    body.extend([0, 0, 0, 32, 0, 0, 0, 0, 1, 2, 3, 4]);
    body.extend([0; 20]);
    let info = llmbus::providers::bedrock::stream::StreamInfo {
        model: "m".into(),
        include_usage: false,
    };
    let once = futures::stream::iter([Ok(bytes::Bytes::from(body))]);
    let items: Vec<_> = futures::executor::block_on(
        llmbus::providers::bedrock::stream::chunks(once, info, Vec::new()).collect(),
    );
    assert_eq!(items.len(), 2, "{items:?}");
    let first = items[0].as_ref().expect("the role chunk comes first");
    assert_eq!(
        first.choices[0].delta.role,
        Some(llmbus::wire::openai::Role::Assistant)
    );
    let err = items[1].as_ref().unwrap_err();
    assert!(err.message.contains("frame is broken"), "{err}");
}

/// Found by the `job_body` target (its crash input is kept): without serde_json's
/// `float_roundtrip`, `7.777777777777777e+52` in a body parsed to the next float down, so the
/// worker forwarded another number than the client sent. Test builds always had the feature
/// (jsonschema, a dev-dependency, turns it on), so this passes here either way; it failed in
/// the fuzz build, which has no dev-dependencies, as the shipped binary has none.
#[test]
fn numbers_in_a_body_are_forwarded_as_sent() {
    let body =
        br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"x":7.777777777777777e+52}"#;
    let request = llmbus::runtime::job::parse::chat(body).unwrap();
    let forwarded = serde_json::to_string(&request).unwrap();
    assert!(forwarded.contains("7.777777777777777e+52"), "{forwarded}");
}
