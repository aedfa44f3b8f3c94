//! OpenAI messages → Anthropic `system` and `messages`.
//!
//! This module owns the conversation part of a Messages request: system and developer
//! messages become the top-level `system`, the other turns become `user` / `assistant`
//! messages of content blocks (text, image, document, `tool_use`, `tool_result`, `thinking`),
//! and consecutive turns of one role are merged, as Anthropic requires alternating roles.
//! A turn that is one plain text block is sent as a string, as in Anthropic's examples.

use serde_json::{Map, Value, json};

use super::bad_request;
use crate::providers::ProviderError;
use crate::wire::openai::{ChatMessage, ContentPart, MessageContent, Role};

/// The `system` and `messages` of a Messages request.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// The top-level `system` (a string, or text blocks when there are several system
    /// messages or cache-control marks); `None` when the request had no system message.
    pub system: Option<Value>,
    /// The alternating `user` / `assistant` messages.
    pub messages: Vec<Value>,
}

/// Converts an OpenAI conversation. Fails (400) on what Anthropic cannot take: `function`
/// messages, `tool` messages without `tool_call_id`, tool-call arguments that are not a JSON
/// object, images that are neither `data:` nor http(s) URLs, audio parts.
pub fn convert(messages: &[ChatMessage]) -> Result<Conversation, ProviderError> {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in messages {
        let (role, blocks) = match message.role {
            Role::System | Role::Developer => {
                system.extend(text_blocks(message));
                continue;
            }
            Role::User => ("user", user_blocks(message)?),
            Role::Assistant => ("assistant", assistant_blocks(message)?),
            Role::Tool => ("user", vec![tool_result(message)?]),
            Role::Function => {
                return Err(bad_request(
                    "`function` messages are not supported by Anthropic; use `tool` messages",
                ));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    trim_final_assistant(&mut turns);
    let messages = turns
        .into_iter()
        .map(|(role, blocks)| json!({"role": role, "content": collapse(blocks)}))
        .collect();
    let system = (!system.is_empty()).then(|| collapse(system));
    Ok(Conversation { system, messages })
}

/// A text block, with the part's or message's `cache_control` when it has one.
fn text_block(text: &str, cache_control: Option<&Value>) -> Value {
    let mut block = json!({"type": "text", "text": text});
    if let Some(cc) = cache_control {
        block["cache_control"] = cc.clone();
    }
    block
}

/// The non-empty text blocks of a system message (Anthropic refuses empty text blocks).
fn text_blocks(message: &ChatMessage) -> Vec<Value> {
    let mut blocks: Vec<Value> = match &message.content {
        None => Vec::new(),
        Some(MessageContent::Text(t)) => vec![text_block(t, None)],
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .filter_map(|p| {
                p.text
                    .as_deref()
                    .map(|t| text_block(t, p.extra.get("cache_control")))
            })
            .collect(),
    };
    blocks.retain(|b| b["text"].as_str().is_some_and(|t| !t.is_empty()));
    apply_message_cache_control(message, &mut blocks);
    blocks
}

/// LiteLLM's convention: `cache_control` on a message marks its last block.
fn apply_message_cache_control(message: &ChatMessage, blocks: &mut [Value]) {
    if let (Some(cc), Some(last)) = (message.extra.get("cache_control"), blocks.last_mut()) {
        last["cache_control"] = cc.clone();
    }
}

fn user_blocks(message: &ChatMessage) -> Result<Vec<Value>, ProviderError> {
    let mut blocks = content_blocks(message.content.as_ref())?;
    apply_message_cache_control(message, &mut blocks);
    Ok(blocks)
}

/// The blocks of a message's content: text, images, documents; other part types pass
/// through as they came (they may already be Anthropic blocks).
fn content_blocks(content: Option<&MessageContent>) -> Result<Vec<Value>, ProviderError> {
    let mut blocks = Vec::new();
    match content {
        None => {}
        Some(MessageContent::Text(t)) => blocks.push(text_block(t, None)),
        Some(MessageContent::Parts(parts)) => {
            for part in parts {
                blocks.push(part_block(part)?);
            }
        }
    }
    blocks.retain(|b| b["type"] != "text" || b["text"].as_str().is_some_and(|t| !t.is_empty()));
    Ok(blocks)
}

fn part_block(part: &ContentPart) -> Result<Value, ProviderError> {
    let cache_control = part.extra.get("cache_control");
    let mut block = match part.kind.as_str() {
        "text" => {
            return Ok(text_block(
                part.text.as_deref().unwrap_or(""),
                cache_control,
            ));
        }
        "image_url" => {
            let url = part
                .image_url
                .as_ref()
                .map(|i| i.url.as_str())
                .ok_or_else(|| bad_request("an `image_url` part has no `image_url.url`"))?;
            image_block(url)?
        }
        "file" => file_block(part.extra.get("file"))?,
        "input_audio" => return Err(bad_request("Anthropic does not accept audio input")),
        _ => serde_json::to_value(part).unwrap_or(Value::Null),
    };
    if let Some(cc) = cache_control {
        block["cache_control"] = cc.clone();
    }
    Ok(block)
}

/// `data:<type>;base64,<data>` → a base64 source; `https://…` → a URL source.
fn image_block(url: &str) -> Result<Value, ProviderError> {
    if let Some((media_type, data)) = parse_data_url(url) {
        return Ok(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(bad_request(
        "an image must be an http(s) URL or a `data:<media type>;base64,` URL",
    ))
}

/// An OpenAI `file` part: `file_data` (a base64 data URL; PDFs become documents, images
/// images) or `file_id` (Anthropic's Files API).
fn file_block(file: Option<&Value>) -> Result<Value, ProviderError> {
    let file = file.ok_or_else(|| bad_request("a `file` part has no `file` object"))?;
    if let Some(url) = file.get("file_data").and_then(Value::as_str) {
        let (media_type, data) = parse_data_url(url)
            .ok_or_else(|| bad_request("`file.file_data` must be a `data:…;base64,` URL"))?;
        let kind = if media_type.starts_with("image/") {
            "image"
        } else {
            "document"
        };
        return Ok(json!({
            "type": kind,
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }));
    }
    if let Some(id) = file.get("file_id").and_then(Value::as_str) {
        return Ok(json!({"type": "document", "source": {"type": "file", "file_id": id}}));
    }
    Err(bad_request("a `file` part needs `file_data` or `file_id`"))
}

/// Splits `data:image/png;base64,AAAA` into (`image/png`, `AAAA`).
fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    (!media_type.is_empty()).then_some((media_type, data))
}

/// Thinking blocks sent back (LiteLLM's `thinking_blocks`), then text, then `tool_use`.
fn assistant_blocks(message: &ChatMessage) -> Result<Vec<Value>, ProviderError> {
    let mut blocks: Vec<Value> = message
        .extra
        .get("thinking_blocks")
        .and_then(Value::as_array)
        .map(|b| b.iter().filter(|b| b.is_object()).cloned().collect())
        .unwrap_or_default();
    let mut text = content_blocks(message.content.as_ref())?;
    apply_message_cache_control(message, &mut text);
    blocks.extend(text);
    for call in message.tool_calls.iter().flatten() {
        let arguments = call.function.arguments.trim();
        let input: Value = if arguments.is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_str(arguments).map_err(|_| {
                bad_request(format!(
                    "the arguments of tool call `{}` are not JSON",
                    call.id
                ))
            })?
        };
        if !input.is_object() {
            return Err(bad_request(format!(
                "the arguments of tool call `{}` must be a JSON object for Anthropic",
                call.id
            )));
        }
        blocks.push(json!({
            "type": "tool_use",
            "id": call.id,
            "name": call.function.name,
            "input": input,
        }));
    }
    Ok(blocks)
}

/// A `tool` message → a `tool_result` block of a user turn.
fn tool_result(message: &ChatMessage) -> Result<Value, ProviderError> {
    let id = message
        .tool_call_id
        .as_deref()
        .ok_or_else(|| bad_request("a `tool` message needs `tool_call_id`"))?;
    let mut block = json!({"type": "tool_result", "tool_use_id": id});
    match &message.content {
        None => {}
        Some(MessageContent::Text(t)) => block["content"] = json!(t),
        Some(MessageContent::Parts(_)) => {
            block["content"] = Value::Array(content_blocks(message.content.as_ref())?);
        }
    }
    if let Some(cc) = message.extra.get("cache_control") {
        block["cache_control"] = cc.clone();
    }
    Ok(block)
}

/// Anthropic refuses a final assistant turn (a prefill) that ends in whitespace; a text
/// block left empty by the trim goes, and so does a turn left empty.
fn trim_final_assistant(turns: &mut Vec<(&'static str, Vec<Value>)>) {
    let Some((role, blocks)) = turns.last_mut() else {
        return;
    };
    if *role != "assistant" {
        return;
    }
    if let Some(last) = blocks.last_mut()
        && last["type"] == "text"
        && let Some(text) = last["text"].as_str()
    {
        let trimmed = text.trim_end().to_owned();
        if trimmed.is_empty() {
            blocks.pop();
        } else {
            last["text"] = json!(trimmed);
        }
    }
    if blocks.is_empty() {
        turns.pop();
    }
}

/// One plain text block → its string; anything else (several system messages included, so
/// each may carry its own cache control) stays a list of blocks.
fn collapse(blocks: Vec<Value>) -> Value {
    match blocks.as_slice() {
        [only] if is_plain_text(only) => only["text"].clone(),
        _ => Value::Array(blocks),
    }
}

fn is_plain_text(block: &Value) -> bool {
    block["type"] == "text" && block.as_object().is_some_and(|o| o.len() == 2)
}
