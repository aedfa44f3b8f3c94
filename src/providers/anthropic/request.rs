//! OpenAI Chat Completions request → Anthropic Messages request body.
//!
//! This module owns the request parameters: `max_tokens` (with LiteLLM's default), `stop`,
//! sampling, tools and `tool_choice`, `user`, extended thinking (`thinking` passed through,
//! `reasoning_effort` mapped to a budget), `response_format` (LiteLLM's forced JSON tool), and
//! `drop_params` for the OpenAI parameters Anthropic has no equivalent of. The conversation
//! itself is [`super::messages`]. Fields llmbus does not know pass through unchanged, so
//! Anthropic-only parameters (`top_k`, `service_tier`, …) reach the upstream.

use serde_json::{Map, Value, json};

use super::{bad_request, messages};
use crate::providers::ProviderError;
use crate::wire::openai::{ChatCompletionRequest, Stop, Tool};

/// `max_tokens` when the request sets none: LiteLLM's `DEFAULT_ANTHROPIC_CHAT_MAX_TOKENS`.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// LiteLLM's `reasoning_effort` budgets (low, medium, high); `minimal` gets Anthropic's
/// smallest allowed budget.
pub const THINKING_BUDGETS: [(&str, u32); 4] = [
    ("minimal", 1024),
    ("low", 1024),
    ("medium", 2048),
    ("high", 4096),
];

/// The tool a `response_format` becomes (LiteLLM's `RESPONSE_FORMAT_TOOL_NAME`); its
/// `input` comes back as the message content.
pub const JSON_TOOL_NAME: &str = "json_tool_call";

/// How to convert.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Drop unsupported parameters instead of failing (LiteLLM's `drop_params`).
    pub drop_params: bool,
    /// Ask for an SSE stream.
    pub stream: bool,
}

/// A converted request.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The JSON body for `POST /v1/messages`.
    pub body: Value,
    /// True when `response_format` became the JSON tool, whose input is the answer's content.
    pub json_mode: bool,
}

/// Whether a parameter's value asks for something (`logprobs: false` asks for nothing).
type Asks = fn(&Value) -> bool;

/// OpenAI parameters Anthropic has no equivalent of, with the test that says whether a value
/// asks for something (`n: 1` or `logprobs: false` ask for nothing and are simply left out).
const UNSUPPORTED: &[(&str, Asks)] = &[
    ("logit_bias", not_null),
    ("presence_penalty", not_null),
    ("frequency_penalty", not_null),
    ("logprobs", is_true),
    ("top_logprobs", not_null),
    ("seed", not_null),
    ("functions", not_null),
    ("function_call", not_null),
    ("audio", not_null),
    ("modalities", not_null),
    ("prediction", not_null),
    ("web_search_options", not_null),
    ("prompt_cache_key", not_null),
    ("safety_identifier", not_null),
    ("verbosity", not_null),
    ("store", is_true),
];

/// Request fields consumed here or meant for the gateway, never forwarded as they are.
const CONSUMED: &[&str] = &[
    "thinking",
    "reasoning_effort",
    "parallel_tool_calls",
    "metadata",
];

fn not_null(v: &Value) -> bool {
    !v.is_null()
}

fn is_true(v: &Value) -> bool {
    v.as_bool() == Some(true)
}

/// Converts `request` for `model`. Fails with a 400 `BadRequest` on an unsupported parameter
/// (unless `drop_params`) and on anything the conversation cannot express.
pub fn convert(
    request: &ChatCompletionRequest,
    model: &str,
    options: Options,
) -> Result<Converted, ProviderError> {
    let mut extra = request.extra.clone();
    check_unsupported(request, &mut extra, options.drop_params)?;
    let conversation = messages::convert(&request.messages)?;

    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), Value::Array(conversation.messages));
    if let Some(system) = conversation.system {
        body.insert("system".into(), system);
    }

    let thinking = thinking(&extra)?;
    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or_else(|| default_max_tokens(thinking.as_ref()));
    body.insert("max_tokens".into(), json!(max_tokens));
    if let Some(thinking) = &thinking {
        body.insert("thinking".into(), thinking.clone());
    }
    if let Some(stop) = stop_sequences(request.stop.as_ref(), options.drop_params) {
        body.insert("stop_sequences".into(), json!(stop));
    }
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(user_id) = user_id(request, &extra) {
        body.insert("metadata".into(), json!({"user_id": user_id}));
    }

    let mut tools = match &request.tools {
        Some(tools) => tools.iter().map(tool).collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let mut tool_choice = tool_choice(
        request.tool_choice.as_ref(),
        extra.get("parallel_tool_calls"),
    )?;
    let json_tool = json_tool(request.response_format.as_ref())?;
    let json_mode = json_tool.is_some();
    if let Some(json_tool) = json_tool {
        tools.push(json_tool);
        // A forced tool and extended thinking do not go together at Anthropic.
        if thinking.is_none() {
            tool_choice = Some(json!({"type": "tool", "name": JSON_TOOL_NAME}));
        }
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = tool_choice {
            body.insert("tool_choice".into(), choice);
        }
    } else if let Some(choice) = tool_choice.filter(|c| c["type"] == "none") {
        body.insert("tool_choice".into(), choice);
    }
    if options.stream {
        body.insert("stream".into(), json!(true));
    }
    for (key, value) in extra {
        if !CONSUMED.contains(&key.as_str()) {
            body.entry(key).or_insert(value);
        }
    }
    Ok(Converted {
        body: Value::Object(body),
        json_mode,
    })
}

/// Drops (or refuses) the parameters Anthropic cannot take; removes them from `extra`.
fn check_unsupported(
    request: &ChatCompletionRequest,
    extra: &mut Map<String, Value>,
    drop_params: bool,
) -> Result<(), ProviderError> {
    let mut found: Vec<&str> = Vec::new();
    if request.n.is_some_and(|n| n > 1) {
        found.push("n");
    }
    for (name, asks) in UNSUPPORTED {
        if let Some(value) = extra.remove(*name)
            && asks(&value)
        {
            found.push(name);
        }
    }
    match found.first() {
        Some(name) if !drop_params => Err(bad_request(format!(
            "anthropic does not support the parameter `{name}`; set `drop_params: true` to drop it"
        ))),
        _ => Ok(()),
    }
}

/// `thinking` as given, else the budget of `reasoning_effort` (`none` means no thinking).
fn thinking(extra: &Map<String, Value>) -> Result<Option<Value>, ProviderError> {
    if let Some(thinking) = extra.get("thinking").filter(|t| !t.is_null()) {
        return Ok(Some(thinking.clone()));
    }
    let Some(effort) = extra.get("reasoning_effort").filter(|e| !e.is_null()) else {
        return Ok(None);
    };
    let effort = effort.as_str().unwrap_or_default();
    if effort == "none" {
        return Ok(None);
    }
    THINKING_BUDGETS
        .iter()
        .find(|(name, _)| *name == effort)
        .map(|(_, budget)| Some(json!({"type": "enabled", "budget_tokens": budget})))
        .ok_or_else(|| {
            bad_request(format!(
                "`reasoning_effort` must be none, minimal, low, medium or high, not `{effort}`"
            ))
        })
}

/// LiteLLM: with a thinking budget, the default leaves [`DEFAULT_MAX_TOKENS`] for the
/// answer on top of the budget (Anthropic requires `budget_tokens < max_tokens`).
fn default_max_tokens(thinking: Option<&Value>) -> u32 {
    let budget = thinking
        .filter(|t| t["type"] == "enabled")
        .and_then(|t| t["budget_tokens"].as_u64())
        .and_then(|b| u32::try_from(b).ok());
    match budget {
        Some(budget) => budget.saturating_add(DEFAULT_MAX_TOKENS),
        None => DEFAULT_MAX_TOKENS,
    }
}

/// `stop` as a list; whitespace-only sequences (which Anthropic refuses) are left out when
/// `drop_params` is on, as LiteLLM does.
fn stop_sequences(stop: Option<&Stop>, drop_params: bool) -> Option<Vec<String>> {
    let list = match stop? {
        Stop::One(s) => vec![s.clone()],
        Stop::Many(v) => v.clone(),
    };
    let list: Vec<String> = list
        .into_iter()
        .filter(|s| !(drop_params && s.trim().is_empty()))
        .collect();
    (!list.is_empty()).then_some(list)
}

/// `user` (else LiteLLM's `metadata.user_id`), unless it looks like an email address, which
/// Anthropic refuses (LiteLLM leaves those out too).
fn user_id(request: &ChatCompletionRequest, extra: &Map<String, Value>) -> Option<String> {
    let id = request.user.clone().or_else(|| {
        extra
            .get("metadata")?
            .get("user_id")?
            .as_str()
            .map(str::to_owned)
    })?;
    let looks_like_email = id
        .split_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
    (!id.is_empty() && !looks_like_email).then_some(id)
}

/// An OpenAI function tool → `{name, description, input_schema}`.
fn tool(tool: &Tool) -> Result<Value, ProviderError> {
    if tool.kind != "function" {
        return Err(bad_request(format!(
            "tools of type `{}` are not supported by Anthropic in llmbus",
            tool.kind
        )));
    }
    let f = &tool.function;
    let schema = f
        .parameters
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    let mut out = json!({"name": f.name, "input_schema": schema});
    if let Some(description) = &f.description {
        out["description"] = json!(description);
    }
    // LiteLLM's way to mark a prompt-caching breakpoint on a tool definition.
    if let Some(cache_control) = tool.extra.get("cache_control") {
        out["cache_control"] = cache_control.clone();
    }
    Ok(out)
}

/// `auto` / `required` (→ `any`) / `none` / a named function (→ `tool`), with
/// `parallel_tool_calls` as the inverse `disable_parallel_tool_use`.
fn tool_choice(
    choice: Option<&Value>,
    parallel: Option<&Value>,
) -> Result<Option<Value>, ProviderError> {
    let mut out = match choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "required" => Some(json!({"type": "any"})),
            "none" => Some(json!({"type": "none"})),
            other => return Err(bad_request(format!("unknown `tool_choice` `{other}`"))),
        },
        Some(object) => {
            let name = object
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_request("`tool_choice` must name a function"))?;
            Some(json!({"type": "tool", "name": name}))
        }
    };
    if let Some(parallel) = parallel.and_then(Value::as_bool) {
        match &mut out {
            Some(c) if c["type"] == "none" => {}
            Some(c) => c["disable_parallel_tool_use"] = json!(!parallel),
            None => out = Some(json!({"type": "auto", "disable_parallel_tool_use": !parallel})),
        }
    }
    Ok(out)
}

/// `response_format` `json_object` / `json_schema` → LiteLLM's JSON tool; `text` → nothing.
fn json_tool(format: Option<&Value>) -> Result<Option<Value>, ProviderError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let schema = match format["type"].as_str() {
        Some("text") => return Ok(None),
        Some("json_object") => {
            json!({"type": "object", "additionalProperties": true, "properties": {}})
        }
        Some("json_schema") => format
            .pointer("/json_schema/schema")
            .cloned()
            .ok_or_else(|| bad_request("`response_format.json_schema.schema` is missing"))?,
        _ => return Err(bad_request("unknown `response_format` type")),
    };
    Ok(Some(
        json!({"name": JSON_TOOL_NAME, "input_schema": schema}),
    ))
}
