//! Anthropic Messages response → OpenAI `chat.completion`.
//!
//! This module owns the non-stream answer and the pieces the stream shares with it: the
//! `stop_reason` → `finish_reason` table and the usage mapping (cache reads and writes count
//! as prompt tokens, reads are also `cached_tokens`, Anthropic's own fields stay in `extra`).
//! Text blocks become `content`, `tool_use` blocks `tool_calls`, thinking blocks
//! `reasoning_content` plus LiteLLM's `thinking_blocks` (which carry the signatures a client
//! must send back).

use serde_json::{Value, json};

use super::request::JSON_TOOL_NAME;
use crate::providers::{ErrorClass, ProviderError};
use crate::wire::openai::{
    ChatCompletionResponse, ChatMessage, Choice, Extra, FunctionCall, MessageContent,
    PromptTokensDetails, Role, ToolCall, Usage,
};

/// OpenAI's `finish_reason` for an Anthropic `stop_reason`: `end_turn`, `stop_sequence` and
/// `pause_turn` → `stop`, `max_tokens` and `model_context_window_exceeded` → `length`,
/// `tool_use` → `tool_calls`, `refusal` → `content_filter`; anything else passes through.
pub fn finish_reason(stop_reason: &str) -> String {
    match stop_reason {
        "end_turn" | "stop_sequence" | "pause_turn" => "stop",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        other => other,
    }
    .to_owned()
}

/// OpenAI usage from Anthropic's `usage` object: `prompt_tokens = input_tokens +
/// cache_read_input_tokens + cache_creation_input_tokens`, `cached_tokens =
/// cache_read_input_tokens`, `completion_tokens = output_tokens`; the two cache counts and
/// any other field Anthropic sent (`cache_creation`, `server_tool_use`, …) stay in `extra`.
pub fn usage(anthropic: &Value) -> Usage {
    let count = |name: &str| anthropic.get(name).and_then(Value::as_u64).unwrap_or(0);
    let input = count("input_tokens");
    let cache_read = count("cache_read_input_tokens");
    let cache_write = count("cache_creation_input_tokens");
    let prompt = input.saturating_add(cache_read).saturating_add(cache_write);
    let mut usage = Usage::new(prompt, count("output_tokens"));
    usage.prompt_tokens_details = Some(PromptTokensDetails {
        cached_tokens: Some(cache_read),
        ..PromptTokensDetails::default()
    });
    usage
        .extra
        .insert("cache_creation_input_tokens".into(), json!(cache_write));
    usage
        .extra
        .insert("cache_read_input_tokens".into(), json!(cache_read));
    if let Some(fields) = anthropic.as_object() {
        for (key, value) in fields {
            if !matches!(key.as_str(), "input_tokens" | "output_tokens") && !value.is_null() {
                usage.extra.entry(key.clone()).or_insert(value.clone());
            }
        }
    }
    usage
}

/// Converts a 2xx Messages body. With `json_mode`, the JSON tool's input is the content.
pub fn convert(body: &[u8], json_mode: bool) -> Result<ChatCompletionResponse, ProviderError> {
    let message: Value = serde_json::from_slice(body).map_err(|e| invalid(&e.to_string()))?;
    if message["type"] == "error" {
        return Err(super::error::from_event(&message));
    }
    let blocks = message["content"]
        .as_array()
        .ok_or_else(|| invalid("it has no `content` list"))?;
    let parts = Parts::of(blocks, json_mode);
    let mut stop = message["stop_reason"].as_str().map(finish_reason);
    if parts.json_answer && parts.tool_calls.is_empty() {
        stop = Some("stop".into());
    }
    let mut extra = Extra::new();
    if !parts.thinking_blocks.is_empty() {
        extra.insert(
            "thinking_blocks".into(),
            Value::Array(parts.thinking_blocks),
        );
    }
    if !parts.citations.is_empty() {
        extra.insert("citations".into(), Value::Array(parts.citations));
    }
    let content = if parts.text.is_empty() && !parts.tool_calls.is_empty() {
        None
    } else {
        Some(MessageContent::Text(parts.text))
    };
    let choice = Choice {
        index: 0,
        message: ChatMessage {
            role: Role::Assistant,
            content,
            name: None,
            tool_calls: (!parts.tool_calls.is_empty()).then_some(parts.tool_calls),
            tool_call_id: None,
            reasoning_content: parts.reasoning,
            extra,
        },
        finish_reason: stop,
        logprobs: None,
        extra: Extra::new(),
    };
    Ok(ChatCompletionResponse::new(
        message["id"].as_str().unwrap_or_default().to_owned(),
        message["model"].as_str().unwrap_or_default().to_owned(),
        vec![choice],
        Some(usage(&message["usage"])),
    ))
}

fn invalid(why: &str) -> ProviderError {
    ProviderError::new(
        ErrorClass::InvalidResponse,
        format!("the upstream's answer is not an Anthropic message: {why}"),
    )
}

/// What the content blocks add up to.
#[derive(Default)]
struct Parts {
    text: String,
    reasoning: Option<String>,
    thinking_blocks: Vec<Value>,
    tool_calls: Vec<ToolCall>,
    citations: Vec<Value>,
    /// The JSON tool answered (json mode).
    json_answer: bool,
}

impl Parts {
    fn of(blocks: &[Value], json_mode: bool) -> Self {
        let mut parts = Parts::default();
        for block in blocks {
            match block["type"].as_str().unwrap_or_default() {
                "text" => {
                    parts
                        .text
                        .push_str(block["text"].as_str().unwrap_or_default());
                    if let Some(c) = block["citations"].as_array() {
                        parts.citations.extend(c.iter().cloned());
                    }
                }
                "tool_use" => {
                    let name = block["name"].as_str().unwrap_or_default();
                    let arguments = serde_json::to_string(&block["input"]).unwrap_or_default();
                    if json_mode && name == JSON_TOOL_NAME {
                        parts.text.push_str(&arguments);
                        parts.json_answer = true;
                        continue;
                    }
                    parts.tool_calls.push(ToolCall {
                        id: block["id"].as_str().unwrap_or_default().to_owned(),
                        kind: "function".into(),
                        function: FunctionCall {
                            name: name.to_owned(),
                            arguments,
                        },
                    });
                }
                "thinking" => {
                    let thinking = block["thinking"].as_str().unwrap_or_default();
                    parts
                        .reasoning
                        .get_or_insert_with(String::new)
                        .push_str(thinking);
                    parts.thinking_blocks.push(block.clone());
                }
                "redacted_thinking" => parts.thinking_blocks.push(block.clone()),
                // Server tools (web search, code execution) and future block types.
                _ => {}
            }
        }
        parts
    }
}
