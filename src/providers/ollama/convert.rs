//! OpenAI request → Ollama `/api/chat` body, and Ollama's answer → OpenAI shapes.
//!
//! - Messages keep their roles (`developer` → `system`); content parts' text is joined and
//!   images (`data:` URLs) go to `images: [base64]`; assistant `tool_calls` carry
//!   `function.arguments` as a JSON object; `tool` messages name their function
//!   (`tool_name`, found from the assistant call they answer).
//! - `temperature`, `top_p`, `seed`, `stop`, `frequency_penalty`, `presence_penalty` and
//!   `max_completion_tokens`/`max_tokens` (as `num_predict`) go to `options`; so do fields
//!   llmbus does not know (Ollama's own options such as `num_ctx` or `top_k`), as in LiteLLM.
//! - `response_format` `json_object` → `format: "json"`, `json_schema` → `format: <schema>`.
//! - `tools` pass as they are (Ollama takes OpenAI's tool format); `tool_choice: "none"`
//!   leaves the tools out, `auto` is Ollama's only behaviour; other choices are refused.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::providers::params;
use crate::{
    providers::ProviderError,
    wire::openai::{
        ChatCompletionRequest, ChatMessage, FunctionCall, MessageContent, Role, ToolCall, Usage,
    },
};

/// OpenAI parameters Ollama cannot honour.
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
    "web_search_options",
];

/// Request fields that are neither sent nor refused.
const IGNORED: &[&str] = &["metadata", "user", "stream", "stream_options"];

/// Top-level `/api/chat` fields a client may set as they are.
const TOP_LEVEL: &[&str] = &["keep_alive", "think", "format"];

/// The `/api/chat` body for `request`, sent to `model`.
pub fn chat_body(
    request: &ChatCompletionRequest,
    model: &str,
    stream: bool,
    drop_params: bool,
) -> Result<Value, ProviderError> {
    let mut body = Map::new();
    let mut options = Map::new();
    for (key, value) in
        params::pass_on("ollama", &request.extra, IGNORED, UNSUPPORTED, drop_params)?
    {
        if key == "reasoning_effort" {
            body.insert("think".into(), true.into());
        } else if TOP_LEVEL.contains(&key) {
            body.insert(key.into(), value.clone());
        } else {
            // `frequency_penalty`, `presence_penalty`, `seed` and Ollama's own options.
            options.insert(key.into(), value.clone());
        }
    }
    params::check_n("ollama", request.n, drop_params)?;
    if let Some(max) = request.max_completion_tokens.or(request.max_tokens) {
        options.insert("num_predict".into(), max.into());
    }
    if let Some(t) = request.temperature {
        options.insert("temperature".into(), t.into());
    }
    if let Some(p) = request.top_p {
        options.insert("top_p".into(), p.into());
    }
    if let Some(stop) = &request.stop {
        options.insert("stop".into(), json!(stop.to_vec()));
    }
    if let Some(format) = &request.response_format {
        match format.get("type").and_then(Value::as_str) {
            Some("json_object") => {
                body.insert("format".into(), "json".into());
            }
            Some("json_schema") => match format.pointer("/json_schema/schema") {
                Some(schema) => {
                    body.insert("format".into(), schema.clone());
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
    let send_tools = match &request.tool_choice {
        None => true,
        Some(Value::String(s)) if s == "auto" => true,
        Some(Value::String(s)) if s == "none" => false,
        Some(_) if drop_params => true,
        Some(_) => return Err(params::unsupported("ollama", "tool_choice")),
    };
    body.insert("model".into(), model.into());
    body.insert(
        "messages".into(),
        Value::Array(messages(&request.messages)?),
    );
    if send_tools && let Some(tools) = request.tools.as_ref().filter(|t| !t.is_empty()) {
        body.insert("tools".into(), json!(tools));
    }
    body.insert("stream".into(), stream.into());
    if !options.is_empty() {
        body.insert("options".into(), Value::Object(options));
    }
    Ok(Value::Object(body))
}

fn messages(input: &[ChatMessage]) -> Result<Vec<Value>, ProviderError> {
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut out = Vec::with_capacity(input.len());
    for message in input {
        let role = match message.role {
            Role::System | Role::Developer => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Function => {
                return Err(params::bad_request(
                    "ollama does not take `function` messages; use `tool` messages",
                ));
            }
        };
        let mut m = Map::new();
        m.insert("role".into(), role.into());
        m.insert("content".into(), message.text_content().into());
        let images = images(message)?;
        if !images.is_empty() {
            m.insert("images".into(), json!(images));
        }
        if let Some(thinking) = &message.reasoning_content {
            m.insert("thinking".into(), thinking.clone().into());
        }
        if let Some(calls) = message.tool_calls.as_ref().filter(|c| !c.is_empty()) {
            let calls: Vec<Value> = calls
                .iter()
                .map(|call| {
                    names.insert(&call.id, &call.function.name);
                    let args = call.function.arguments.trim();
                    let arguments: Value = if args.is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(args).map_err(|_| {
                            params::bad_request(format!(
                                "the arguments of tool call `{}` are not JSON",
                                call.id
                            ))
                        })?
                    };
                    Ok(json!({"function": {"name": call.function.name, "arguments": arguments}}))
                })
                .collect::<Result<_, ProviderError>>()?;
            m.insert("tool_calls".into(), Value::Array(calls));
        }
        if message.role == Role::Tool
            && let Some(name) = message.tool_call_id.as_deref().and_then(|id| names.get(id))
        {
            m.insert("tool_name".into(), (*name).into());
        }
        out.push(Value::Object(m));
    }
    Ok(out)
}

fn images(message: &ChatMessage) -> Result<Vec<String>, ProviderError> {
    let Some(MessageContent::Parts(parts)) = &message.content else {
        return Ok(Vec::new());
    };
    parts
        .iter()
        .filter_map(|p| p.image_url.as_ref())
        .map(|image| {
            image
                .url
                .strip_prefix("data:")
                .and_then(|rest| rest.split_once(";base64,"))
                .map(|(_, data)| data.to_owned())
                .ok_or_else(|| {
                    params::bad_request(
                        "ollama takes images as `data:` URLs with base64 content, not links",
                    )
                })
        })
        .collect()
}

/// OpenAI tool calls of an Ollama message (`function.arguments` re-encoded as a string; an
/// id made up when Ollama sends none).
pub fn tool_calls(message: &Value) -> Vec<ToolCall> {
    message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .map(|call| {
                    let f = &call["function"];
                    let arguments = match &f["arguments"] {
                        Value::String(s) => s.clone(),
                        Value::Null => "{}".into(),
                        other => other.to_string(),
                    };
                    ToolCall {
                        id: call
                            .get("id")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .unwrap_or_else(|| format!("call_{}", uuid::Uuid::new_v4().simple())),
                        kind: "function".into(),
                        function: FunctionCall {
                            name: f["name"].as_str().unwrap_or_default().to_owned(),
                            arguments,
                        },
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// OpenAI's `finish_reason` of a final Ollama object.
pub fn finish_reason(done: &Value, had_tool_calls: bool) -> &'static str {
    if had_tool_calls {
        return "tool_calls";
    }
    match done.get("done_reason").and_then(Value::as_str) {
        Some("length") => "length",
        _ => "stop",
    }
}

/// Usage from `prompt_eval_count` and `eval_count` (absent counts are 0).
pub fn usage(done: &Value) -> Usage {
    let n = |k: &str| done.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage::new(n("prompt_eval_count"), n("eval_count"))
}
