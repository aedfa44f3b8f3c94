//! The JSON Schemas of the wire protocol, generated from the Rust types (draft 2020-12).
//!
//! `schemas/*.json` are these values pretty-printed; `tests/it/schemas.rs` proves the checked-in
//! files equal what the types generate and validates real payloads against them.

use schemars::{JsonSchema, schema_for};
use serde_json::Value;

use super::error::ErrorBody;
use super::headers::{ReplyHeaders, RequestHeaders};
use super::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, EmbeddingRequest,
    EmbeddingResponse, ModelList,
};

/// The base of every schema's `$id`.
pub const SCHEMA_ID_BASE: &str = "urn:llmbus:schema:";

/// Every schema as (file name under `schemas/`, schema).
pub fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        entry::<ChatCompletionRequest>(
            "chat-completion-request.json",
            "Chat completion request",
            "The payload published to `llm.completion`: an OpenAI Chat Completions request body.",
        ),
        entry::<ChatCompletionResponse>(
            "chat-completion-response.json",
            "Chat completion response",
            "The reply to a non-streaming `llm.completion` request (Llm-Status 200).",
        ),
        entry::<ChatCompletionChunk>(
            "chat-completion-chunk.json",
            "Chat completion chunk",
            "One message of a streamed `llm.completion` reply, with an `Llm-Seq` header.",
        ),
        entry::<EmbeddingRequest>(
            "embedding-request.json",
            "Embedding request",
            "The payload published to `llm.embedding`: an OpenAI embeddings request body.",
        ),
        entry::<EmbeddingResponse>(
            "embedding-response.json",
            "Embedding response",
            "The reply to an `llm.embedding` request (Llm-Status 200).",
        ),
        entry::<ErrorBody>(
            "error.json",
            "Error",
            "The body of every error reply, with the status in the `Llm-Status` header.",
        ),
        entry::<ModelList>(
            "model-list.json",
            "Model list",
            "The reply of `llm.models`: the model groups in OpenAI's `/v1/models` shape.",
        ),
        entry::<RequestHeaders>(
            "request-headers.json",
            "Request headers",
            "The NATS headers a requester may set, as an object of header name to value.",
        ),
        entry::<ReplyHeaders>(
            "reply-headers.json",
            "Reply headers",
            "The NATS headers llmbus sets on replies, as an object of header name to value.",
        ),
        entry::<super::usage::UsageEvent>(
            "usage-event.json",
            "Usage event",
            "One finished job's usage and outcome, published on `llm.usage.<model_group>` and \
             kept by the `LLM_USAGE` JetStream stream.",
        ),
    ]
}

/// The schema of `T` with an `$id`, a title and a description.
fn entry<T: JsonSchema>(
    file: &'static str,
    title: &str,
    description: &str,
) -> (&'static str, Value) {
    let mut schema = schema_for!(T).to_value();
    if let Value::Object(map) = &mut schema {
        let id = format!("{SCHEMA_ID_BASE}{}", file.trim_end_matches(".json"));
        map.insert("$id".into(), Value::String(id));
        map.insert("title".into(), Value::String(title.into()));
        map.insert("description".into(), Value::String(description.into()));
    }
    (file, schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_has_an_id_a_title_and_the_2020_12_dialect() {
        let all = schemas();
        assert_eq!(all.len(), 10);
        for (file, schema) in all {
            assert!(file.ends_with(".json"));
            assert!(schema["$id"].as_str().unwrap().starts_with(SCHEMA_ID_BASE));
            assert!(schema["title"].is_string());
            assert_eq!(
                schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
                "{file}"
            );
        }
    }
}
