//! The answer target: each provider's parser of a non-streaming answer, and of an error
//! answer (status, headers, body).
//!
//! Input: the first byte picks the parser. For answers the rest is the body. For errors, two
//! bytes give the status, then `name: value` header lines up to a zero byte, then the body.

use std::{
    str::FromStr,
    time::{Instant, SystemTime},
};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::reserialises;
use crate::{
    providers::{ProviderError, anthropic, bedrock, cohere, gemini, http, ollama},
    wire::openai::{ChatCompletionResponse, EmbeddingRequest, EmbeddingResponse, Usage},
};

/// Every parser of a non-streaming answer: an error or an answer that re-serialises, whose
/// usage adds up; every error parser: an error whose `Retry-After` can be waited for.
pub fn responses(data: &[u8]) {
    let Some((pick, body)) = data.split_first() else {
        return;
    };
    let model = "fuzz-model";
    let value = || serde_json::from_slice::<Value>(body).ok();
    let completion = match pick % 12 {
        0 => serde_json::from_slice::<ChatCompletionResponse>(body).map_err(|_| None),
        1 => {
            if let Ok(answer) = serde_json::from_slice::<EmbeddingResponse>(body) {
                reserialises(&answer, "an embeddings answer");
            }
            return;
        }
        2 | 3 => anthropic::response::convert(body, pick % 12 == 3).map_err(Some),
        4 => gemini::response::parse(body)
            .and_then(|parsed| gemini::response::to_openai(parsed, model))
            .map_err(Some),
        5 => match value() {
            Some(v) => bedrock::response::completion(&v, model).map_err(Some),
            None => return,
        },
        6 => match value() {
            Some(v) => (cohere::API.completion)(&v, model).map_err(Some),
            None => return,
        },
        7 => match value() {
            Some(v) => (ollama::API.completion)(&v, model).map_err(Some),
            None => return,
        },
        8 => {
            if let Some(v) = value() {
                embeddings(&v, model);
            }
            return;
        }
        _ => return errors(pick % 12 - 9, body),
    };
    match completion {
        Ok(answer) => {
            reserialises(&answer, "an answer");
            if pick % 12 != 0
                && let Some(usage) = &answer.usage
            {
                adds_up(usage);
            }
        }
        Err(Some(e)) => retry_after_is_usable(&e),
        Err(None) => {}
    }
}

/// Gemini's embeddings answers (AI Studio's batch, Vertex AI's predict).
fn embeddings(body: &Value, model: &str) {
    let request: EmbeddingRequest =
        serde_json::from_value(serde_json::json!({"model": model, "input": ["a", "bb"]}))
            .expect("a valid embeddings request");
    for answer in [
        gemini::embed::from_batch(body, &request, model, &["a", "bb"]),
        gemini::embed::from_predict(body, &request, model, 2),
    ]
    .into_iter()
    .flatten()
    {
        reserialises(&answer, "an embeddings answer");
        adds_up(&answer.usage);
    }
}

/// A converted usage's total is the sum of its parts (at most `u64::MAX`).
fn adds_up(usage: &Usage) {
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens.saturating_add(usage.completion_tokens),
        "the usage does not add up: {usage:?}"
    );
}

/// The error parsers; `which` picks one of three families.
fn errors(which: u8, data: &[u8]) {
    let [hi, lo, rest @ ..] = data else {
        return;
    };
    let status = u16::from_be_bytes([*hi, *lo]) % 1000;
    let (head, body) = match rest.iter().position(|b| *b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in String::from_utf8_lossy(head).lines() {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) = (
                HeaderName::from_str(name.trim()),
                HeaderValue::from_str(value.trim()),
            )
        {
            headers.append(name, value);
        }
    }
    let errors: Vec<ProviderError> = match which {
        0 => vec![
            http::error_from_response(status, &headers, body),
            cohere::error_from_response(status, &headers, body),
        ],
        1 => vec![
            anthropic::error::from_response(status, &headers, body),
            gemini::error::from_response(status, &headers, body),
        ],
        _ => {
            let name = String::from_utf8_lossy(head);
            vec![
                bedrock::error::from_response(status, &headers, body),
                bedrock::error::from_exception(&name, body),
            ]
        }
    };
    for e in &errors {
        retry_after_is_usable(e);
    }
}

/// A `Retry-After` is a wait the router can start a cooldown or a back-off with.
fn retry_after_is_usable(e: &ProviderError) {
    if let Some(wait) = e.retry_after {
        assert!(
            Instant::now().checked_add(wait).is_some()
                && SystemTime::now().checked_add(wait).is_some(),
            "a Retry-After of {wait:?} cannot be waited for"
        );
    }
}
