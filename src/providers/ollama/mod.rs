//! Ollama's native API (`ollama/MODEL` and `ollama_chat/MODEL`).
//!
//! - Chat: `POST {api_base}/api/chat` (default `http://localhost:11434`, else
//!   `OLLAMA_API_BASE`); a stream is NDJSON, one object per line, `done: true` last with
//!   `prompt_eval_count`/`eval_count` (see [`stream`]).
//! - Embeddings: `POST {api_base}/api/embed` with `input: [texts]`.
//! - A key (`api_key`, else `OLLAMA_API_KEY`) is sent as `Authorization: Bearer`, for
//!   servers behind a proxy; a local Ollama needs none.
//!
//! [`convert`] holds the request and response mapping; [`JsonProvider`] makes the
//! calls.
//!
//! [`JsonProvider`]: super::json_api::JsonProvider

use serde_json::{Value, json};

use super::{ProviderError, http, json_api::Api, upstream::Spec};
use crate::wire::openai::{ChatCompletionResponse, ChatMessage, Choice};

pub mod convert;
pub mod stream;

/// Ollama's default address.
pub const DEFAULT_API_BASE: &str = "http://localhost:11434";

/// Ollama's settings and calls: a deployment's adapter is [`JsonProvider::build`] of this
/// row, and its upstream model the name after the prefix.
///
/// [`JsonProvider::build`]: super::json_api::JsonProvider::build
pub static API: Api = Api {
    spec: Spec {
        name: "Ollama",
        prefixes: &["ollama_chat/", "ollama/"],
        base_env: &["OLLAMA_API_BASE"],
        key_env: &["OLLAMA_API_KEY"],
        default_base: DEFAULT_API_BASE,
        path_suffix: "/api/chat",
    },
    chat_path: "api/chat",
    embed_path: "api/embed",
    accept: false,
    keyless: true,
    chat_body: convert::chat_body,
    completion,
    chunks: stream::chunks,
    embed_body: |texts, _, model| json!({ "model": model, "input": texts }),
    dimensions: "dimensions",
    vectors: "/embeddings",
    input_tokens,
    error_from_response: http::error_from_response,
};

/// The chat completion of an `/api/chat` answer (an error body is the error it holds).
fn completion(value: &Value, model: &str) -> Result<ChatCompletionResponse, ProviderError> {
    if http::is_error_body(value) {
        return Err(http::error_from_event(value));
    }
    let message = value
        .get("message")
        .ok_or_else(|| API.spec.invalid("answer", "no `message`"))?;
    let calls = convert::tool_calls(message);
    let text = message
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let finish = convert::finish_reason(value, !calls.is_empty());
    let thinking = message.get("thinking").and_then(Value::as_str);
    let message = ChatMessage::assistant(text.to_owned(), calls, thinking.map(str::to_owned));
    Ok(ChatCompletionResponse::new(
        format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        model.to_owned(),
        vec![Choice::new(0, message, finish)],
        Some(convert::usage(value)),
    ))
}

/// The input tokens of an `/api/embed` answer.
fn input_tokens(value: &Value) -> u64 {
    value
        .get("prompt_eval_count")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}
