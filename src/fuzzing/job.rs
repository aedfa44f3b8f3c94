//! The job targets: a job's body as a worker reads it (and what every provider makes of a
//! parsed body), and a job's NATS headers.

use std::{str::FromStr, time::Instant};

use serde_json::Value;

use super::reserialises;
use crate::{
    limits,
    providers::{anthropic, bedrock, cohere, gemini, ollama},
    runtime::job::parse,
    wire::{
        ApiError,
        headers::{self, RequestHeaders},
        openai::ChatCompletionRequest,
    },
};

/// A job's body. Input: the first byte's low bit picks the endpoint (`llm.embedding` when
/// set), its second bit `drop_params` for the provider conversions; the rest is the body.
///
/// An error is a 400 with a short message; a parsed body has its model and its messages (or
/// input), re-serialises, parses back as a valid body, and goes through every provider's
/// request conversion without a panic.
pub fn job_body(data: &[u8]) {
    let Some((flags, body)) = data.split_first() else {
        return;
    };
    let drop_params = flags & 2 == 2;
    if flags & 1 == 1 {
        match parse::embedding(body) {
            Ok(mut request) => {
                assert!(!request.model.trim().is_empty() && !request.input.is_empty());
                parse::take_fallbacks(&mut request.extra);
                let json = reserialises(&request, "an embeddings body");
                let text = serde_json::to_vec(&json).expect("JSON serialises");
                parse::embedding(&text).expect("a re-serialised body is valid");
                for text in request.input.texts() {
                    limits::estimate_text_tokens(text);
                }
                let _ = gemini::embed::texts(&request, drop_params);
            }
            Err(e) => refused(&e),
        }
        return;
    }
    match parse::chat(body) {
        Ok(mut request) => {
            assert!(!request.model.trim().is_empty() && !request.messages.is_empty());
            request.is_stream();
            request.include_usage();
            parse::take_fallbacks(&mut request.extra);
            let json = reserialises(&request, "a chat body");
            let text = serde_json::to_vec(&json).expect("JSON serialises");
            parse::chat(&text).expect("a re-serialised body is valid");
            limits::estimate_prompt_tokens(&request);
            convert_for_providers(&request, drop_params);
        }
        Err(e) => refused(&e),
    }
}

/// A body the worker refuses: a 400 whose message stays short.
fn refused(e: &ApiError) {
    assert_eq!(e.status, 400, "{e:?}");
    assert!(e.message.len() <= 600, "a {} byte message", e.message.len());
}

/// What each provider adapter makes of a parsed body: a request or an error, never a panic.
fn convert_for_providers(request: &ChatCompletionRequest, drop_params: bool) {
    let model = "fuzz-model";
    let options = anthropic::request::Options {
        drop_params,
        stream: request.is_stream(),
    };
    let results: [Result<Value, _>; 5] = [
        anthropic::request::convert(request, model, options).map(|c| c.body),
        gemini::request::to_gemini(request, model, drop_params),
        bedrock::request::converse_body(request, drop_params),
        cohere::convert::chat_body(request, model, request.is_stream(), drop_params),
        ollama::convert::chat_body(request, model, request.is_stream(), drop_params),
    ];
    for result in results {
        match result {
            Ok(body) => {
                serde_json::to_vec(&body).expect("a provider body serialises");
            }
            Err(e) => assert!(e.message.len() <= 4096, "a long error: {e}"),
        }
    }
}

/// Every message reading the headers may fail with: none repeats what the caller sent.
const FIXED_MESSAGES: [&str; 3] = [
    "Send one `Authorization: Bearer <key>` header, not several.",
    "The Authorization header is malformed; it must be `Bearer <key>`.",
    "The `Llm-Timeout-Ms` header must be a positive integer number of milliseconds.",
];

/// A job's NATS headers. Input: lines of `name:value` (lines that are no valid NATS header
/// are skipped, as the NATS client would never deliver them).
///
/// Reading them fails only with a 400 or a 401 that never repeats a header's value (a key);
/// a timeout is one a deadline can be set with; tags and fallbacks are trimmed and not empty;
/// a traceparent is valid.
pub fn job_headers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut map = async_nats::HeaderMap::new();
    for line in text.split('\n') {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            async_nats::header::HeaderName::from_str(name),
            async_nats::header::HeaderValue::from_str(value),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    let key = headers::api_key(Some(&map));
    match RequestHeaders::from_nats(Some(&map)) {
        Ok(parsed) => {
            assert_eq!(parsed.api_key, key.expect("from_nats read the key"));
            if let Some(timeout) = parsed.timeout {
                assert!(!timeout.is_zero());
                assert!(
                    Instant::now().checked_add(timeout).is_some(),
                    "a timeout of {timeout:?} is no deadline"
                );
            }
            for item in parsed.tags.iter().chain(&parsed.fallbacks) {
                assert!(!item.is_empty() && item.trim() == item && !item.contains(','));
            }
            if let Some(tp) = &parsed.traceparent {
                assert!(headers::is_valid_traceparent(tp));
            }
            if let Some(key) = parsed.api_key.as_ref().filter(|k| k.len() >= 8) {
                assert!(
                    !format!("{parsed:?}").contains(key.as_str()),
                    "Debug shows the key"
                );
            }
        }
        Err(e) => {
            assert!(matches!(e.status, 400 | 401), "{e:?}");
            // No header value (a key among them) comes back: the message is one of the fixed
            // texts. (A first version checked for long words of the values in the message, and
            // the fuzzer promptly wrote the message's own words into a header.)
            assert!(FIXED_MESSAGES.contains(&e.message.as_str()), "{e:?}");
        }
    }
}
