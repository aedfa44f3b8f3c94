//! OpenAI Chat Completions request → Bedrock Converse request body.
//!
//! - `system`/`developer` messages → `system: [{text}]`.
//! - `user` content → `text` and `image` blocks (`data:` URLs only: Converse takes image
//!   bytes, base64 in JSON, and llmbus does not fetch URLs on a client's behalf).
//! - `assistant` → `text` and `toolUse {toolUseId, name, input}` blocks (arguments parsed).
//! - `tool` → a `user` message with a `toolResult {toolUseId, content: [{text}]}` block.
//! - Consecutive messages of one role are merged (Converse wants roles to alternate).
//! - `max_completion_tokens`/`max_tokens`, `temperature`, `top_p`, `stop` → `inferenceConfig`.
//! - `tools` → `toolConfig.tools[].toolSpec`; `tool_choice` `auto`/`required`/named →
//!   `auto`/`any`/`tool`.
//! - OpenAI parameters Converse has no place for are refused (or dropped with `drop_params`);
//!   other unknown fields go to `additionalModelRequestFields`, as LiteLLM does.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::providers::params;
use crate::{
    providers::ProviderError,
    wire::openai::{ChatCompletionRequest, ChatMessage, ContentPart, MessageContent, Role, Stop},
};

/// OpenAI parameters Converse cannot honour.
const UNSUPPORTED: &[&str] = &[
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "seed",
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

/// Request fields that are neither sent upstream nor refused.
const IGNORED: &[&str] = &["metadata", "user", "stream", "stream_options"];

/// Top-level Converse fields a client may set as they are.
const PASSTHROUGH: &[&str] = &["guardrailConfig", "performanceConfig"];

/// Image formats Converse takes.
const IMAGE_FORMATS: &[&str] = &["png", "jpeg", "gif", "webp"];

/// The Converse body for `request` (the model goes in the URL, not the body).
pub fn converse_body(
    request: &ChatCompletionRequest,
    drop_params: bool,
) -> Result<Value, ProviderError> {
    let mut body = Map::new();
    let mut additional = Map::new();
    for (key, value) in
        params::pass_on("bedrock", &request.extra, IGNORED, UNSUPPORTED, drop_params)?
    {
        if PASSTHROUGH.contains(&key) {
            body.insert(key.into(), value.clone());
        } else {
            additional.insert(key.into(), value.clone());
        }
    }
    params::check_n("bedrock", request.n, drop_params)?;
    if let Some(format) = &request.response_format
        && format.get("type").and_then(Value::as_str) != Some("text")
        && !drop_params
    {
        return Err(params::unsupported("bedrock", "response_format"));
    }

    let (system, messages) = messages(&request.messages)?;
    body.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    let inference = inference_config(request);
    if !inference.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if let Some(config) = tool_config(request, drop_params)? {
        body.insert("toolConfig".into(), config);
    }
    if !additional.is_empty() {
        body.insert(
            "additionalModelRequestFields".into(),
            Value::Object(additional),
        );
    }
    Ok(Value::Object(body))
}

fn inference_config(request: &ChatCompletionRequest) -> Map<String, Value> {
    let mut config = Map::new();
    if let Some(max) = request.max_completion_tokens.or(request.max_tokens) {
        config.insert("maxTokens".into(), max.into());
    }
    if let Some(t) = request.temperature {
        config.insert("temperature".into(), t.into());
    }
    if let Some(p) = request.top_p {
        config.insert("topP".into(), p.into());
    }
    let stops: Vec<&String> = match &request.stop {
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v.iter().collect(),
        None => Vec::new(),
    };
    let stops: Vec<Value> = stops
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| Value::String(s.clone()))
        .collect();
    if !stops.is_empty() {
        config.insert("stopSequences".into(), Value::Array(stops));
    }
    config
}

fn tool_config(
    request: &ChatCompletionRequest,
    drop_params: bool,
) -> Result<Option<Value>, ProviderError> {
    let Some(tools) = request.tools.as_ref().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let specs: Vec<Value> = tools
        .iter()
        .map(|tool| {
            let f = &tool.function;
            let mut spec = Map::new();
            spec.insert("name".into(), f.name.clone().into());
            if let Some(d) = f.description.as_ref().filter(|d| !d.is_empty()) {
                spec.insert("description".into(), d.clone().into());
            }
            let schema = f
                .parameters
                .clone()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            spec.insert("inputSchema".into(), json!({ "json": schema }));
            json!({ "toolSpec": spec })
        })
        .collect();
    let mut config = json!({ "tools": specs });
    let choice = match &request.tool_choice {
        None => None,
        Some(Value::String(s)) if s == "auto" => Some(json!({"auto": {}})),
        Some(Value::String(s)) if s == "required" => Some(json!({"any": {}})),
        Some(Value::Object(o)) => match o.get("function").and_then(|f| f.get("name")) {
            Some(Value::String(name)) => Some(json!({"tool": {"name": name}})),
            _ => return Err(params::bad_request("`tool_choice` names no function")),
        },
        Some(_) if drop_params => None,
        Some(other) => {
            return Err(params::bad_request(format!(
                "bedrock does not support `tool_choice: {other}`; set `drop_params: true` to \
                 drop it"
            )));
        }
    };
    if let Some(choice) = choice {
        config["toolChoice"] = choice;
    }
    Ok(Some(config))
}

/// The system blocks and the alternating user/assistant messages.
fn messages(input: &[ChatMessage]) -> Result<(Vec<Value>, Vec<Value>), ProviderError> {
    let mut system = Vec::new();
    let mut out: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in input {
        let (role, blocks) = match message.role {
            Role::System | Role::Developer => {
                let text = message.text_content();
                if !text.is_empty() {
                    system.push(json!({ "text": text }));
                }
                continue;
            }
            Role::User => ("user", user_blocks(message)?),
            Role::Assistant => ("assistant", assistant_blocks(message)?),
            Role::Tool => ("user", vec![tool_result(message)?]),
            Role::Function => {
                return Err(params::bad_request(
                    "bedrock does not take `function` messages; use `tool` messages",
                ));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => out.push((role, blocks)),
        }
    }
    let messages = out
        .into_iter()
        .map(|(role, content)| json!({ "role": role, "content": content }))
        .collect();
    Ok((system, messages))
}

fn user_blocks(message: &ChatMessage) -> Result<Vec<Value>, ProviderError> {
    match &message.content {
        None => Ok(Vec::new()),
        Some(MessageContent::Text(t)) => Ok(vec![json!({ "text": t })]),
        Some(MessageContent::Parts(parts)) => parts.iter().map(part_block).collect(),
    }
}

fn part_block(part: &ContentPart) -> Result<Value, ProviderError> {
    match (part.kind.as_str(), &part.text, &part.image_url) {
        ("text", Some(text), _) => Ok(json!({ "text": text })),
        ("image_url", _, Some(image)) => image_block(&image.url),
        (kind, _, _) => Err(params::bad_request(format!(
            "bedrock does not take `{kind}` content parts here"
        ))),
    }
}

/// `data:image/png;base64,...` → an image block. Other URLs are refused.
fn image_block(url: &str) -> Result<Value, ProviderError> {
    let Some((mime, data)) = parse_data_url(url) else {
        return Err(params::bad_request(
            "bedrock takes images as `data:` URLs with base64 content, not links",
        ));
    };
    let format = mime.strip_prefix("image/").unwrap_or("");
    let format = if format == "jpg" { "jpeg" } else { format };
    if !IMAGE_FORMATS.contains(&format) {
        return Err(params::bad_request(format!(
            "bedrock takes png, jpeg, gif and webp images, not `{mime}`"
        )));
    }
    // Converse rejects bad base64 too, but a clear message here saves a round trip.
    if base64::engine::general_purpose::STANDARD
        .decode(data.as_bytes())
        .is_err()
    {
        return Err(params::bad_request(
            "an image's `data:` URL does not hold valid base64",
        ));
    }
    Ok(json!({ "image": { "format": format, "source": { "bytes": data } } }))
}

/// The media type and base64 payload of a `data:<mime>;base64,<data>` URL.
pub fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    Some((mime, data))
}

fn assistant_blocks(message: &ChatMessage) -> Result<Vec<Value>, ProviderError> {
    let mut blocks = Vec::new();
    let text = message.text_content();
    // Converse rejects blank text blocks.
    if !text.trim().is_empty() {
        blocks.push(json!({ "text": text }));
    }
    for call in message.tool_calls.iter().flatten() {
        let args = call.function.arguments.trim();
        let input: Value = if args.is_empty() {
            json!({})
        } else {
            serde_json::from_str(args).map_err(|_| {
                params::bad_request(format!(
                    "the arguments of tool call `{}` are not JSON",
                    call.id
                ))
            })?
        };
        blocks.push(json!({
            "toolUse": { "toolUseId": call.id, "name": call.function.name, "input": input }
        }));
    }
    Ok(blocks)
}

fn tool_result(message: &ChatMessage) -> Result<Value, ProviderError> {
    let id = message
        .tool_call_id
        .as_deref()
        .ok_or_else(|| params::bad_request("a `tool` message has no `tool_call_id`"))?;
    Ok(json!({
        "toolResult": { "toolUseId": id, "content": [{ "text": message.text_content() }] }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> ChatCompletionRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn consecutive_roles_merge_and_tools_become_user_results() {
        let r = req(json!({"model": "m", "messages": [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}},
                {"id": "t2", "type": "function", "function": {"name": "f", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "one"},
            {"role": "tool", "tool_call_id": "t2", "content": "two"}
        ]}));
        let body = converse_body(&r, false).unwrap();
        let m = body["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0]["content"], json!([{"text": "a"}, {"text": "b"}]));
        assert_eq!(m[1]["content"][0]["toolUse"]["input"], json!({"x": 1}));
        assert_eq!(m[1]["content"][1]["toolUse"]["input"], json!({}));
        assert_eq!(m[2]["role"], "user");
        assert_eq!(m[2]["content"][1]["toolResult"]["toolUseId"], "t2");
    }

    #[test]
    fn unsupported_params_refuse_or_drop() {
        let r = req(json!({"model": "m", "messages": [], "logit_bias": {"1": 2}}));
        let err = converse_body(&r, false).unwrap_err();
        assert_eq!(err.class, crate::providers::ErrorClass::BadRequest);
        assert!(err.message.contains("logit_bias"), "{}", err.message);
        let body = converse_body(&r, true).unwrap();
        assert!(body.get("additionalModelRequestFields").is_none());
        let r = req(json!({"model": "m", "messages": [], "tool_choice": "none",
            "tools": [{"type": "function", "function": {"name": "f"}}]}));
        assert!(converse_body(&r, false).is_err());
        assert!(converse_body(&r, true).unwrap()["toolConfig"]["toolChoice"].is_null());
    }

    #[test]
    fn images_must_be_data_urls_of_known_formats() {
        assert!(image_block("https://example.com/a.png").is_err());
        assert!(image_block("data:image/bmp;base64,AAAA").is_err());
        assert!(image_block("data:image/png;base64,!!!").is_err());
        let block = image_block("data:image/jpg;base64,AAAA").unwrap();
        assert_eq!(block["image"]["format"], "jpeg");
        assert_eq!(block["image"]["source"]["bytes"], "AAAA");
    }
}
