//! OpenAI embeddings ↔ Gemini's `:batchEmbedContents` (AI Studio) and Vertex AI's `:predict`.
//!
//! - AI Studio: one `batchEmbedContents` call for the whole input list:
//!   `{"requests": [{"model": "models/M", "content": {"parts": [{"text": …}]},
//!   "outputDimensionality": dimensions, "taskType": task_type}]}` → `{"embeddings": [{"values":
//!   [...]}]}`. Google reports no token counts there, so `usage.prompt_tokens` is llmbus's
//!   estimate of the input (the same one the rate limits use).
//! - Vertex AI: `{"instances": [{"content": …, "task_type": …}], "parameters":
//!   {"outputDimensionality": dimensions}}` → `{"predictions": [{"embeddings": {"values": [...],
//!   "statistics": {"token_count": N}}}]}`; the usage is the sum of `token_count`.
//! - `encoding_format: "base64"` gives each vector as base64 of little-endian `f32`s, as
//!   OpenAI does. Token-array inputs are refused: Gemini embeds text.

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Map, Value, json};

use super::request::bad_request;
use crate::{
    providers::{ErrorClass, ProviderError},
    wire::openai::{Embedding, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, Extra, Usage},
};

/// Embedding request fields Gemini takes besides `input` and `dimensions`.
const PASSED: &[&str] = &["task_type", "title"];
/// Gateway-level fields: never sent, never an error.
const GATEWAY_FIELDS: &[&str] = &["metadata", "timeout", "num_retries"];

/// The texts of a request, after checking what Gemini cannot take.
pub fn texts(request: &EmbeddingRequest, drop_params: bool) -> Result<Vec<&str>, ProviderError> {
    if matches!(
        request.input,
        EmbeddingInput::Tokens(_) | EmbeddingInput::TokenArrays(_)
    ) {
        return Err(bad_request(
            "gemini embeds text; token-array inputs are not supported",
        ));
    }
    if request.input.is_empty() {
        return Err(bad_request("`input` is empty"));
    }
    match request.encoding_format.as_deref() {
        None | Some("float") | Some("base64") => {}
        Some(other) if !drop_params => {
            return Err(bad_request(format!("unknown `encoding_format` `{other}`")));
        }
        Some(_) => {}
    }
    if !drop_params
        && let Some(key) = request
            .extra
            .keys()
            .find(|k| !PASSED.contains(&k.as_str()) && !GATEWAY_FIELDS.contains(&k.as_str()))
    {
        return Err(bad_request(format!(
            "gemini does not support the parameter `{key}`; set `drop_params: true` to drop it"
        )));
    }
    Ok(request.input.texts())
}

/// The `batchEmbedContents` body for `texts` with `model`.
pub fn batch_request(request: &EmbeddingRequest, model: &str, texts: &[&str]) -> Value {
    let task_type = request.extra.get("task_type");
    let title = request.extra.get("title");
    let requests: Vec<Value> = texts
        .iter()
        .map(|text| {
            let mut one = Map::new();
            one.insert("model".into(), json!(format!("models/{model}")));
            one.insert("content".into(), json!({"parts": [{"text": text}]}));
            if let Some(d) = request.dimensions {
                one.insert("outputDimensionality".into(), json!(d));
            }
            if let Some(t) = task_type {
                one.insert("taskType".into(), t.clone());
            }
            if let Some(t) = title {
                one.insert("title".into(), t.clone());
            }
            Value::Object(one)
        })
        .collect();
    json!({"requests": requests})
}

/// The Vertex AI `:predict` body for `texts`.
pub fn predict_request(request: &EmbeddingRequest, texts: &[&str]) -> Value {
    let instances: Vec<Value> = texts
        .iter()
        .map(|text| {
            let mut one = Map::new();
            one.insert("content".into(), json!(text));
            for key in PASSED {
                if let Some(v) = request.extra.get(*key) {
                    one.insert((*key).into(), v.clone());
                }
            }
            Value::Object(one)
        })
        .collect();
    let mut body = json!({"instances": instances});
    if let Some(d) = request.dimensions {
        body["parameters"] = json!({"outputDimensionality": d});
    }
    body
}

/// Converts a `batchEmbedContents` answer; `texts` are the inputs (for the usage estimate).
pub fn from_batch(
    body: &Value,
    request: &EmbeddingRequest,
    model: &str,
    texts: &[&str],
) -> Result<EmbeddingResponse, ProviderError> {
    let vectors: Vec<&Value> = body
        .get("embeddings")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|e| e.get("values").unwrap_or(&Value::Null))
                .collect()
        })
        .unwrap_or_default();
    let prompt: u64 = texts
        .iter()
        .map(|t| crate::limits::estimate_text_tokens(t))
        .sum();
    response(&vectors, request, model, texts.len(), prompt)
}

/// Converts a Vertex AI `:predict` answer.
pub fn from_predict(
    body: &Value,
    request: &EmbeddingRequest,
    model: &str,
    expected: usize,
) -> Result<EmbeddingResponse, ProviderError> {
    let predictions = body
        .get("predictions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let vectors: Vec<&Value> = predictions
        .iter()
        .map(|p| p.pointer("/embeddings/values").unwrap_or(&Value::Null))
        .collect();
    let tokens = predictions
        .iter()
        .filter_map(|p| p.pointer("/embeddings/statistics/token_count"))
        .filter_map(|n| n.as_f64())
        .map(|n| n.max(0.0) as u64)
        .sum();
    response(&vectors, request, model, expected, tokens)
}

fn response(
    vectors: &[&Value],
    request: &EmbeddingRequest,
    model: &str,
    expected: usize,
    prompt_tokens: u64,
) -> Result<EmbeddingResponse, ProviderError> {
    if vectors.len() != expected {
        return Err(invalid(format!(
            "the upstream returned {} embeddings for {expected} inputs",
            vectors.len()
        )));
    }
    let base64 = request.encoding_format.as_deref() == Some("base64");
    let mut data = Vec::with_capacity(vectors.len());
    for (i, values) in vectors.iter().enumerate() {
        let floats: Vec<f64> = values
            .as_array()
            .and_then(|list| list.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
            .ok_or_else(|| invalid(format!("embedding {i} is not a list of numbers")))?;
        let embedding = if base64 {
            let bytes: Vec<u8> = floats
                .iter()
                .flat_map(|f| (*f as f32).to_le_bytes())
                .collect();
            json!(STANDARD.encode(bytes))
        } else {
            json!(floats)
        };
        data.push(Embedding {
            object: "embedding".into(),
            index: u32::try_from(i).unwrap_or(u32::MAX),
            embedding,
        });
    }
    Ok(EmbeddingResponse {
        object: "list".into(),
        data,
        model: model.to_owned(),
        usage: Usage::new(prompt_tokens, 0),
        extra: Extra::new(),
    })
}

fn invalid(message: String) -> ProviderError {
    ProviderError::new(ErrorClass::InvalidResponse, message)
}
