//! Cohere's v2 API (`cohere_chat/MODEL`, also `cohere/MODEL`).
//!
//! - Chat: `POST {api_base}/v2/chat` (default `https://api.cohere.com`, else
//!   `COHERE_API_BASE`) with `Authorization: Bearer` from `api_key`, else `COHERE_API_KEY`
//!   (or `CO_API_KEY`, the SDK's name); streams are SSE (see [`stream`]).
//! - Embeddings: `POST {api_base}/v2/embed` with `embedding_types: ["float"]` and
//!   `input_type` (the request's, else `search_document`, LiteLLM's default).
//! - Errors are `{"message": ...}` with the HTTP status; "too many tokens" is a context
//!   window error, 498 (invalid token) an authentication error.
//!
//! [`convert`] holds the request and response mapping; [`JsonProvider`] makes the
//! calls.
//!
//! [`JsonProvider`]: super::json_api::JsonProvider

use serde_json::{Value, json};

use super::{ErrorClass, ProviderError, http, json_api::Api, upstream::Spec};
use crate::wire::openai::{
    ChatCompletionResponse, ChatMessage, Choice, EmbeddingRequest, ToolCall,
};

pub mod convert;
pub mod stream;

/// Cohere's documented base URL.
pub const DEFAULT_API_BASE: &str = "https://api.cohere.com";

/// Cohere's settings and calls: a deployment's adapter is [`JsonProvider::build`] of this
/// row, and its upstream model the name after the prefix.
///
/// [`JsonProvider::build`]: super::json_api::JsonProvider::build
pub static API: Api = Api {
    spec: Spec {
        name: "Cohere",
        prefixes: &["cohere_chat/", "cohere/"],
        base_env: &["COHERE_API_BASE"],
        key_env: &["COHERE_API_KEY", "CO_API_KEY"],
        default_base: DEFAULT_API_BASE,
        path_suffix: "/v2/chat",
    },
    chat_path: "v2/chat",
    embed_path: "v2/embed",
    accept: true,
    keyless: false,
    chat_body: convert::chat_body,
    completion,
    chunks: stream::chunks,
    embed_body,
    dimensions: "output_dimension",
    vectors: "/embeddings/float",
    input_tokens,
    error_from_response,
};

/// The error of a non-2xx Cohere answer.
pub fn error_from_response(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> ProviderError {
    let mut err = http::error_from_response(status, headers, body);
    if status == 498 {
        err.class = ErrorClass::Authentication;
    }
    if err.class == ErrorClass::BadRequest
        && err.message.to_ascii_lowercase().contains("too many tokens")
    {
        err.class = ErrorClass::ContextWindowExceeded;
    }
    err
}

/// The `/v2/embed` body for `texts`.
fn embed_body(texts: Value, request: &EmbeddingRequest, model: &str) -> Value {
    let input_type = request
        .extra
        .get("input_type")
        .cloned()
        .unwrap_or_else(|| "search_document".into());
    json!({
        "model": model,
        "texts": texts,
        "input_type": input_type,
        "embedding_types": ["float"],
    })
}

/// The billed input tokens of a `/v2/embed` answer.
fn input_tokens(value: &Value) -> u64 {
    value
        .pointer("/meta/billed_units/input_tokens")
        .and_then(Value::as_f64)
        .unwrap_or(0.0) as u64
}

/// The chat completion of a Cohere v2 `/v2/chat` answer.
pub fn completion(value: &Value, model: &str) -> Result<ChatCompletionResponse, ProviderError> {
    let message = value
        .get("message")
        .ok_or_else(|| API.spec.invalid("answer", "no `message`"))?;
    let reason = value
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("COMPLETE");
    let finish = convert::finish_reason(reason)?;
    let blocks = message
        .get("content")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let join = |kind: &str| -> String {
        blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some(kind))
            .filter_map(|b| b.get(kind).and_then(Value::as_str))
            .collect()
    };
    let text = join("text");
    let thinking = join("thinking");
    let calls: Vec<ToolCall> = match message.get("tool_calls") {
        Some(Value::Array(calls)) => calls
            .iter()
            .map(|c| serde_json::from_value(c.clone()))
            .collect::<Result<_, _>>()
            .map_err(|e| API.spec.invalid("tool call", e))?,
        _ => Vec::new(),
    };
    let id = value
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()));
    let message = ChatMessage::assistant(text, calls, Some(thinking));
    Ok(ChatCompletionResponse::new(
        id,
        model.to_owned(),
        vec![Choice::new(0, message, finish)],
        value.get("usage").map(convert::usage),
    ))
}
