//! OpenAI request → Cohere v2 `/v2/chat` body, and Cohere's answer → OpenAI shapes.
//!
//! - Messages keep their roles (`developer` → `system`); user content parts (`text`,
//!   `image_url`) pass as they are; assistant `tool_calls` pass as they are (Cohere takes
//!   OpenAI's shape) and empty assistant content is left out; `tool` messages keep
//!   `tool_call_id`.
//! - `max_completion_tokens`/`max_tokens` → `max_tokens`, `stop` → `stop_sequences`,
//!   `top_p` → `p`; `temperature`, `seed`, `frequency_penalty`, `presence_penalty` as they are.
//! - `tools` pass as they are; `tool_choice` `required`/`none` → `REQUIRED`/`NONE`, `auto` is
//!   the default (left out); a named tool is refused (Cohere cannot force one tool).
//! - `response_format` `json_object` → `{type: json_object}`, `json_schema` →
//!   `{type: json_object, json_schema: <schema>}`.
//! - Fields llmbus does not know (Cohere's own: `k`, `documents`, `safety_mode`, ...) pass as
//!   they are.

use serde_json::{Map, Value, json};

use crate::providers::params;
use crate::{
    providers::{ErrorClass, ProviderError},
    wire::openai::{ChatCompletionRequest, ChatMessage, MessageContent, Role, Usage},
};

/// OpenAI parameters Cohere v2 cannot honour.
const UNSUPPORTED: &[&str] = &[
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "modalities",
    "audio",
    "prediction",
    "service_tier",
    "store",
    "reasoning_effort",
    "web_search_options",
];

/// Request fields that are neither sent nor refused.
const IGNORED: &[&str] = &["metadata", "user", "stream", "stream_options"];

/// The `/v2/chat` body for `request`, sent to `model`.
pub fn chat_body(
    request: &ChatCompletionRequest,
    model: &str,
    stream: bool,
    drop_params: bool,
) -> Result<Value, ProviderError> {
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert(
        "messages".into(),
        Value::Array(messages(&request.messages)?),
    );
    body.insert("stream".into(), stream.into());
    // `seed`, `frequency_penalty`, `presence_penalty` and Cohere's own fields.
    for (key, value) in
        params::pass_on("cohere", &request.extra, IGNORED, UNSUPPORTED, drop_params)?
    {
        body.insert(key.into(), value.clone());
    }
    params::check_n("cohere", request.n, drop_params)?;
    if let Some(max) = request.max_completion_tokens.or(request.max_tokens) {
        body.insert("max_tokens".into(), max.into());
    }
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), t.into());
    }
    if let Some(p) = request.top_p {
        body.insert("p".into(), p.into());
    }
    if let Some(stop) = &request.stop {
        body.insert("stop_sequences".into(), json!(stop.to_vec()));
    }
    if let Some(format) = &request.response_format {
        match format.get("type").and_then(Value::as_str) {
            Some("json_object") => {
                body.insert("response_format".into(), json!({"type": "json_object"}));
            }
            Some("json_schema") => match format.pointer("/json_schema/schema") {
                Some(schema) => {
                    body.insert(
                        "response_format".into(),
                        json!({"type": "json_object", "json_schema": schema}),
                    );
                }
                None => {
                    return Err(params::bad_request(
                        "`response_format.json_schema` has no `schema`",
                    ));
                }
            },
            _ => {}
        }
    }
    if let Some(tools) = request.tools.as_ref().filter(|t| !t.is_empty()) {
        body.insert("tools".into(), json!(tools));
        match &request.tool_choice {
            None => {}
            Some(Value::String(s)) if s == "auto" => {}
            Some(Value::String(s)) if s == "required" => {
                body.insert("tool_choice".into(), "REQUIRED".into());
            }
            Some(Value::String(s)) if s == "none" => {
                body.insert("tool_choice".into(), "NONE".into());
            }
            Some(_) if drop_params => {}
            Some(_) => return Err(params::unsupported("cohere", "tool_choice")),
        }
    }
    Ok(Value::Object(body))
}

fn messages(input: &[ChatMessage]) -> Result<Vec<Value>, ProviderError> {
    input
        .iter()
        .map(|message| {
            let mut m = Map::new();
            let role = match message.role {
                Role::System | Role::Developer => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
                Role::Function => {
                    return Err(params::bad_request(
                        "cohere does not take `function` messages; use `tool` messages",
                    ));
                }
            };
            m.insert("role".into(), role.into());
            let content = match (&message.content, message.role) {
                (Some(MessageContent::Parts(parts)), Role::User) => Some(json!(parts)),
                _ => Some(Value::String(message.text_content())),
            };
            let calls = message.tool_calls.as_ref().filter(|c| !c.is_empty());
            let empty = content.as_ref().is_some_and(|c| c.as_str() == Some(""));
            if !(empty && calls.is_some())
                && let Some(content) = content
            {
                m.insert("content".into(), content);
            }
            if let Some(calls) = calls {
                m.insert("tool_calls".into(), json!(calls));
            }
            if let Some(id) = &message.tool_call_id {
                m.insert("tool_call_id".into(), id.clone().into());
            }
            Ok(Value::Object(m))
        })
        .collect()
}

/// OpenAI's `finish_reason` for Cohere's, or the error a failed generation is.
pub fn finish_reason(reason: &str) -> Result<&'static str, ProviderError> {
    match reason {
        "COMPLETE" | "STOP_SEQUENCE" => Ok("stop"),
        "MAX_TOKENS" => Ok("length"),
        "TOOL_CALL" => Ok("tool_calls"),
        "TIMEOUT" => Err(ProviderError::new(
            ErrorClass::Timeout,
            "cohere ended the generation with finish_reason TIMEOUT",
        )),
        "ERROR" => Err(ProviderError::new(
            ErrorClass::InternalServer,
            "cohere ended the generation with finish_reason ERROR",
        )),
        _ => Ok("stop"),
    }
}

/// Usage from Cohere's `usage`: the model's `tokens` when present, else `billed_units`.
pub fn usage(usage: &Value) -> Usage {
    let counts = usage
        .get("tokens")
        .filter(|t| t.is_object())
        .or_else(|| usage.get("billed_units"))
        .unwrap_or(&Value::Null);
    let n = |k: &str| counts.get(k).and_then(Value::as_f64).unwrap_or(0.0) as u64;
    let mut out = Usage::new(n("input_tokens"), n("output_tokens"));
    if let Some(billed) = usage.get("billed_units") {
        out.extra.insert("billed_units".into(), billed.clone());
    }
    out
}
