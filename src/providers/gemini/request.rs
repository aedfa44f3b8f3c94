//! OpenAI Chat Completions request → Gemini `GenerateContentRequest` (the body of
//! `:generateContent` and `:streamGenerateContent`, the same for AI Studio and Vertex AI).
//!
//! - `system`/`developer` messages → `systemInstruction` (one text part each); the rest →
//!   `contents` with roles `user`/`model`, consecutive turns of one role merged into one.
//! - Assistant `tool_calls` → `functionCall` parts (arguments parsed back to JSON); `tool`
//!   (and legacy `function`) messages → `functionResponse` parts in a `user` turn, named after
//!   the call they answer, with `response: {"content": <text>}` as LiteLLM sends it.
//! - Images and files: a `data:` URL → `inlineData {mimeType, data}`; an `https:`, `http:` or
//!   `gs:` URL → `fileData {fileUri, mimeType}` with the MIME type guessed from the extension
//!   (left out when unknown). The gateway never downloads anything: Google fetches the URL.
//! - `tools` → one `functionDeclarations` tool (parameters through [`super::schema`]);
//!   `tool_choice` → `toolConfig.functionCallingConfig` (`AUTO`/`ANY`/`NONE`,
//!   `allowedFunctionNames`).
//! - Sampling → `generationConfig`; `response_format` → `responseMimeType`/`responseSchema`;
//!   `reasoning_effort` → `thinkingConfig` with LiteLLM's budgets (or levels for Gemini 3).
//! - Gemini-native extras pass through: `safety_settings`, `cached_content`, `labels`, `top_k`.
//!   Gateway-level fields (`metadata`, `user`, ...) are not sent. Any other parameter is one
//!   Gemini cannot take: dropped with `drop_params`, else a 400 naming it.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::schema;
use crate::{
    providers::{ErrorClass, ProviderError},
    wire::openai::{ChatCompletionRequest, ChatMessage, ContentPart, MessageContent, Role, Stop},
};

/// Request fields that concern the gateway, not the model: never sent, never an error.
const GATEWAY_FIELDS: &[&str] = &[
    "metadata",
    "timeout",
    "num_retries",
    "mock_response",
    "caching",
    "tags",
];

/// Converts `request` into a Gemini request body for `model` (the upstream model name, used
/// only to pick the thinking settings). `drop_params` drops what Gemini cannot take instead of
/// refusing the request.
pub fn to_gemini(
    request: &ChatCompletionRequest,
    model: &str,
    drop_params: bool,
) -> Result<Value, ProviderError> {
    let mut body = Map::new();
    let (system, contents) = convert_messages(&request.messages)?;
    body.insert("contents".into(), Value::Array(contents));
    if let Some(system) = system {
        body.insert("systemInstruction".into(), system);
    }
    if let Some(tools) = &request.tools
        && !tools.is_empty()
    {
        body.insert("tools".into(), function_declarations(tools, drop_params)?);
    }
    if let Some(choice) = &request.tool_choice
        && let Some(config) = tool_config(choice, drop_params)?
    {
        body.insert("toolConfig".into(), config);
    }
    let generation = generation_config(request, model, drop_params)?;
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    for (key, value) in &request.extra {
        match key.as_str() {
            "safety_settings" | "safetySettings" => {
                body.insert("safetySettings".into(), value.clone());
            }
            "cached_content" | "cachedContent" => {
                body.insert("cachedContent".into(), value.clone());
            }
            "labels" => {
                body.insert("labels".into(), value.clone());
            }
            _ => {}
        }
    }
    Ok(Value::Object(body))
}

/// A 400 for a request Gemini cannot take.
pub fn bad_request(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorClass::BadRequest, message).with_status(400)
}

fn unsupported(param: &str) -> ProviderError {
    super::super::params::unsupported("gemini", param)
}

/// One `Content` being built.
struct Turn {
    role: &'static str,
    parts: Vec<Value>,
}

/// The `systemInstruction` (if any) and the `contents`.
fn convert_messages(
    messages: &[ChatMessage],
) -> Result<(Option<Value>, Vec<Value>), ProviderError> {
    let mut system_parts = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (i, message) in messages.iter().enumerate() {
        let (role, parts) = match message.role {
            Role::System | Role::Developer => {
                let text = message.text_content();
                if !text.is_empty() {
                    system_parts.push(json!({"text": text}));
                }
                continue;
            }
            Role::User => ("user", user_parts(message.content.as_ref(), i)?),
            Role::Assistant => ("model", assistant_parts(message, i, &mut call_names)?),
            Role::Tool | Role::Function => ("user", vec![tool_result(message, i, &call_names)?]),
        };
        if parts.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.role == role => last.parts.extend(parts),
            _ => turns.push(Turn { role, parts }),
        }
    }
    let system = (!system_parts.is_empty()).then(|| json!({"parts": system_parts}));
    if turns.is_empty() {
        // Gemini needs at least one turn: a prompt made only of instructions is sent as the
        // user's turn.
        return match system {
            Some(system) => Ok((
                None,
                vec![json!({"role": "user", "parts": system["parts"]})],
            )),
            None => Err(bad_request("the request has no message with content")),
        };
    }
    let contents = turns
        .into_iter()
        .map(|t| json!({"role": t.role, "parts": t.parts}))
        .collect();
    Ok((system, contents))
}

fn user_parts(content: Option<&MessageContent>, i: usize) -> Result<Vec<Value>, ProviderError> {
    match content {
        None => Ok(Vec::new()),
        Some(MessageContent::Text(text)) => Ok(text_part(text).into_iter().collect()),
        Some(MessageContent::Parts(parts)) => {
            let mut out = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                out.extend(content_part(part, i, j)?);
            }
            Ok(out)
        }
    }
}

fn text_part(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"text": text}))
}

fn content_part(part: &ContentPart, i: usize, j: usize) -> Result<Option<Value>, ProviderError> {
    let at = || format!("messages[{i}].content[{j}]");
    match part.kind.as_str() {
        "text" => Ok(part.text.as_deref().and_then(text_part)),
        "image_url" => {
            let image = part
                .image_url
                .as_ref()
                .ok_or_else(|| bad_request(format!("{} has no `image_url`", at())))?;
            media_part(&image.url, None)
                .map(Some)
                .map_err(|e| located(e, &at()))
        }
        "input_audio" => {
            let audio = part.extra.get("input_audio");
            let data = audio.and_then(|a| a.get("data")).and_then(Value::as_str);
            let format = audio.and_then(|a| a.get("format")).and_then(Value::as_str);
            match (data, format) {
                (Some(data), Some(format)) => Ok(Some(json!({
                    "inlineData": {"mimeType": audio_mime(format), "data": data}
                }))),
                _ => Err(bad_request(format!(
                    "{} needs `input_audio.data` and `input_audio.format`",
                    at()
                ))),
            }
        }
        "file" => {
            let file = part.extra.get("file");
            let get = |k: &str| file.and_then(|f| f.get(k)).and_then(Value::as_str);
            let mime = get("format");
            match get("file_data").or_else(|| get("file_id")) {
                Some(source) => media_part(source, mime)
                    .map(Some)
                    .map_err(|e| located(e, &at())),
                None => Err(bad_request(format!(
                    "{} needs `file.file_data` or `file.file_id`",
                    at()
                ))),
            }
        }
        other => Err(bad_request(format!(
            "{}: content parts of type `{other}` are not supported by gemini",
            at()
        ))),
    }
}

fn located(mut err: ProviderError, at: &str) -> ProviderError {
    err.message = format!("{at}: {}", err.message);
    err
}

/// A media reference: `data:` URLs inline, remote URLs by reference.
fn media_part(url: &str, mime: Option<&str>) -> Result<Value, ProviderError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| bad_request("a `data:` URL without data"))?;
        let declared = meta
            .strip_suffix(";base64")
            .ok_or_else(|| bad_request("only base64 `data:` URLs are supported"))?;
        let mime = mime.unwrap_or(declared);
        if mime.is_empty() {
            return Err(bad_request("a `data:` URL without a MIME type"));
        }
        return Ok(json!({"inlineData": {"mimeType": mime, "data": data}}));
    }
    let lower = url.to_ascii_lowercase();
    if ["https://", "http://", "gs://"]
        .iter()
        .any(|s| lower.starts_with(s))
    {
        let mut file = Map::new();
        file.insert("fileUri".into(), json!(url));
        if let Some(mime) = mime
            .map(str::to_owned)
            .or_else(|| mime_from_extension(&lower))
        {
            file.insert("mimeType".into(), json!(mime));
        }
        return Ok(json!({"fileData": file}));
    }
    Err(bad_request(
        "a media URL must be a base64 `data:` URL or an https, http or gs URL",
    ))
}

/// The MIME type of a URL's file extension, for the types Gemini reads.
fn mime_from_extension(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path.rsplit_once('.').map(|(_, e)| e)?;
    let mime = match ext {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "ogg" => "audio/ogg",
        "mp4" => "video/mp4",
        "mov" => "video/mov",
        "mpeg" | "mpg" => "video/mpeg",
        "webm" => "video/webm",
        _ => return None,
    };
    Some(mime.to_owned())
}

fn audio_mime(format: &str) -> String {
    if format.contains('/') {
        format.to_owned()
    } else {
        format!("audio/{format}")
    }
}

fn assistant_parts(
    message: &ChatMessage,
    i: usize,
    call_names: &mut HashMap<String, String>,
) -> Result<Vec<Value>, ProviderError> {
    let mut parts: Vec<Value> = text_part(&message.text_content()).into_iter().collect();
    for (j, call) in message.tool_calls.iter().flatten().enumerate() {
        let arguments = call.function.arguments.trim();
        let args: Value = if arguments.is_empty() {
            json!({})
        } else {
            serde_json::from_str(arguments).map_err(|e| {
                bad_request(format!(
                    "messages[{i}].tool_calls[{j}].function.arguments is not JSON: {e}"
                ))
            })?
        };
        call_names.insert(call.id.clone(), call.function.name.clone());
        parts.push(json!({"functionCall": {"name": call.function.name, "args": args}}));
    }
    Ok(parts)
}

fn tool_result(
    message: &ChatMessage,
    i: usize,
    call_names: &HashMap<String, String>,
) -> Result<Value, ProviderError> {
    let name = message
        .tool_call_id
        .as_ref()
        .and_then(|id| call_names.get(id))
        .or(message.name.as_ref())
        .ok_or_else(|| {
            bad_request(format!(
                "messages[{i}] answers no earlier tool call (unknown `tool_call_id`)"
            ))
        })?;
    Ok(json!({
        "functionResponse": {"name": name, "response": {"content": message.text_content()}}
    }))
}

fn function_declarations(
    tools: &[crate::wire::openai::Tool],
    drop_params: bool,
) -> Result<Value, ProviderError> {
    let mut declarations = Vec::new();
    for tool in tools {
        if tool.kind != "function" {
            if drop_params {
                continue;
            }
            return Err(bad_request(format!(
                "gemini does not support tools of type `{}`",
                tool.kind
            )));
        }
        let mut declaration = Map::new();
        declaration.insert("name".into(), json!(tool.function.name));
        if let Some(description) = &tool.function.description {
            declaration.insert("description".into(), json!(description));
        }
        if let Some(parameters) = &tool.function.parameters {
            let converted = schema::to_gemini(parameters);
            if !schema::is_empty_object(&converted) {
                declaration.insert("parameters".into(), converted);
            }
        }
        declarations.push(Value::Object(declaration));
    }
    Ok(json!([{"functionDeclarations": declarations}]))
}

fn tool_config(choice: &Value, drop_params: bool) -> Result<Option<Value>, ProviderError> {
    let config = match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => json!({"mode": "AUTO"}),
            "none" => json!({"mode": "NONE"}),
            "required" => json!({"mode": "ANY"}),
            _ if drop_params => return Ok(None),
            other => return Err(bad_request(format!("unknown `tool_choice` `{other}`"))),
        },
        Value::Object(_) => match choice.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
            None if drop_params => return Ok(None),
            None => return Err(bad_request("`tool_choice` names no function")),
        },
        Value::Null => return Ok(None),
        _ if drop_params => return Ok(None),
        _ => return Err(bad_request("`tool_choice` must be a string or an object")),
    };
    Ok(Some(json!({"functionCallingConfig": config})))
}

fn generation_config(
    request: &ChatCompletionRequest,
    model: &str,
    drop_params: bool,
) -> Result<Map<String, Value>, ProviderError> {
    let mut config = Map::new();
    let mut set = |key: &str, value: Value| {
        config.insert(key.to_owned(), value);
    };
    if let Some(max) = request.max_completion_tokens.or(request.max_tokens) {
        set("maxOutputTokens", json!(max));
    }
    if let Some(t) = request.temperature {
        set("temperature", json!(t));
    }
    if let Some(p) = request.top_p {
        set("topP", json!(p));
    }
    if let Some(n) = request.n {
        set("candidateCount", json!(n));
    }
    match &request.stop {
        Some(Stop::One(s)) => set("stopSequences", json!([s])),
        Some(Stop::Many(list)) if !list.is_empty() => set("stopSequences", json!(list)),
        _ => {}
    }
    if let Some(format) = &request.response_format {
        response_format(format, &mut set, drop_params)?;
    }
    for (key, value) in &request.extra {
        match key.as_str() {
            "seed" => set("seed", value.clone()),
            "presence_penalty" => set("presencePenalty", value.clone()),
            "frequency_penalty" => set("frequencyPenalty", value.clone()),
            "top_k" => set("topK", value.clone()),
            "reasoning_effort" => {
                let effort = value
                    .as_str()
                    .or_else(|| value.get("effort").and_then(Value::as_str));
                match effort.map(|e| thinking_config(e, model)) {
                    Some(Some(thinking)) => set("thinkingConfig", thinking),
                    _ if drop_params => {}
                    _ => {
                        return Err(bad_request(format!(
                            "unknown `reasoning_effort` {value}; use minimal, low, medium, high, \
                             disable or none"
                        )));
                    }
                }
            }
            // Gemini calls functions in parallel when it wants to; `true` is its behaviour.
            "parallel_tool_calls" if value.as_bool() != Some(false) => {}
            "safety_settings" | "safetySettings" | "cached_content" | "cachedContent"
            | "labels" => {}
            k if GATEWAY_FIELDS.contains(&k) => {}
            _ if drop_params => {}
            other => return Err(unsupported(other)),
        }
    }
    Ok(config)
}

fn response_format(
    format: &Value,
    set: &mut impl FnMut(&str, Value),
    drop_params: bool,
) -> Result<(), ProviderError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => set("responseMimeType", json!("application/json")),
        Some("json_schema") => {
            set("responseMimeType", json!("application/json"));
            if let Some(schema) = format.pointer("/json_schema/schema") {
                set("responseSchema", schema::to_gemini(schema));
            }
        }
        _ if drop_params => {}
        _ => {
            return Err(bad_request(
                "`response_format.type` must be text, json_object or json_schema",
            ));
        }
    }
    Ok(())
}

/// LiteLLM's `reasoning_effort` → `thinkingConfig`: a token budget for Gemini 2.5 (minimal is
/// the model's smallest budget), a `thinkingLevel` for Gemini 3; `disable`/`none` turn
/// thinking off. `None` for an unknown effort.
pub fn thinking_config(effort: &str, model: &str) -> Option<Value> {
    let model = model.to_ascii_lowercase();
    if model.contains("gemini-3") {
        let flash = model.contains("gemini-3-flash") || model.contains("gemini-3.1-flash");
        let pro31 = model.contains("gemini-3.1-pro");
        let (level, include) = match effort {
            "minimal" => (if flash { "minimal" } else { "low" }, true),
            "low" => ("low", true),
            "medium" => (if flash || pro31 { "medium" } else { "high" }, true),
            "high" => ("high", true),
            "disable" | "none" => (if flash { "minimal" } else { "low" }, false),
            _ => return None,
        };
        return Some(json!({"thinkingLevel": level, "includeThoughts": include}));
    }
    let (budget, include) = match effort {
        "minimal" if model.contains("gemini-2.5-flash-lite") => (512, true),
        "minimal" if model.contains("gemini-2.5-pro") => (128, true),
        "minimal" if model.contains("gemini-2.5-flash") => (1, true),
        "minimal" => (128, true),
        "low" => (1024, true),
        "medium" => (2048, true),
        "high" => (4096, true),
        "disable" | "none" => (0, false),
        _ => return None,
    };
    Some(json!({"thinkingBudget": budget, "includeThoughts": include}))
}
