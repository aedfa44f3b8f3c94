//! Gemini `GenerateContentResponse` → OpenAI `chat.completion`.
//!
//! - Each candidate is a choice (`index` from the candidate). Its text parts join into
//!   `content`; parts marked `thought: true` join into `reasoning_content`; `functionCall`
//!   parts become `tool_calls` with fresh `call_<uuid>` ids and the arguments as a JSON string.
//! - `finishReason`: `STOP` → `stop` (`tool_calls` when the candidate called functions),
//!   `MAX_TOKENS` → `length`, `SAFETY`, `RECITATION`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII`,
//!   `IMAGE_SAFETY`, `IMAGE_PROHIBITED_CONTENT` → `content_filter`, anything else → `stop`.
//! - A prompt Gemini refused (`promptFeedback.blockReason`, no candidates) is a
//!   `ContentPolicyViolation` error, so `content_policy_fallbacks` apply.
//! - `usageMetadata`: `promptTokenCount` → `prompt_tokens` (cached tokens included, as in
//!   OpenAI), `cachedContentTokenCount` → `prompt_tokens_details.cached_tokens`,
//!   `candidatesTokenCount + thoughtsTokenCount` → `completion_tokens`, `thoughtsTokenCount` →
//!   `completion_tokens_details.reasoning_tokens`.

use serde::Deserialize;
use serde_json::Value;

use crate::{
    providers::{ErrorClass, ProviderError},
    wire::openai::{
        ChatCompletionResponse, ChatMessage, Choice, CompletionTokensDetails, Extra, FunctionCall,
        MessageContent, PromptTokensDetails, Role, ToolCall, Usage,
    },
};

/// The parts of a `GenerateContentResponse` llmbus reads (one stream event has the same shape).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentResponse {
    /// The generated candidates.
    #[serde(default)]
    pub candidates: Option<Vec<Candidate>>,
    /// Why the prompt was blocked, when it was.
    #[serde(default)]
    pub prompt_feedback: Option<PromptFeedback>,
    /// Token counts (on the last event of a stream).
    #[serde(default)]
    pub usage_metadata: Option<UsageMetadata>,
    /// Google's id of the response.
    #[serde(default)]
    pub response_id: Option<String>,
}

/// One candidate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// The generated content.
    #[serde(default)]
    pub content: Option<Content>,
    /// Why generation stopped (absent until it has).
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// The candidate's position.
    #[serde(default)]
    pub index: Option<u32>,
}

/// A `Content`: parts of one turn.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Content {
    /// The parts.
    #[serde(default)]
    pub parts: Option<Vec<Part>>,
}

/// One part of a content (the kinds llmbus converts; others are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    /// Text.
    #[serde(default)]
    pub text: Option<String>,
    /// True when the text is the model's thinking.
    #[serde(default)]
    pub thought: Option<bool>,
    /// A function call.
    #[serde(default)]
    pub function_call: Option<FunctionCallPart>,
}

/// A `functionCall` part.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FunctionCallPart {
    /// The function's name.
    #[serde(default)]
    pub name: String,
    /// The arguments, a JSON object.
    #[serde(default)]
    pub args: Option<Value>,
}

/// `promptFeedback`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptFeedback {
    /// `SAFETY`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `OTHER`, ….
    #[serde(default)]
    pub block_reason: Option<String>,
}

/// `usageMetadata`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    /// Prompt tokens, cached ones included.
    #[serde(default)]
    pub prompt_token_count: u64,
    /// Generated tokens, thinking excluded.
    #[serde(default)]
    pub candidates_token_count: u64,
    /// Prompt tokens read from a context cache.
    #[serde(default)]
    pub cached_content_token_count: Option<u64>,
    /// Thinking tokens.
    #[serde(default)]
    pub thoughts_token_count: Option<u64>,
}

/// What one candidate's parts say, gathered.
#[derive(Debug, Default, PartialEq)]
pub struct Gathered {
    /// Visible text.
    pub text: String,
    /// Thinking text.
    pub reasoning: String,
    /// Function calls: name and arguments as a JSON string.
    pub calls: Vec<(String, String)>,
}

impl Gathered {
    /// Gathers a candidate's parts.
    pub fn of(candidate: &Candidate) -> Self {
        let mut out = Gathered::default();
        let parts = candidate
            .content
            .as_ref()
            .and_then(|c| c.parts.as_deref())
            .unwrap_or_default();
        for part in parts {
            if let Some(call) = &part.function_call {
                let args = call
                    .args
                    .clone()
                    .unwrap_or_else(|| Value::Object(Extra::new()));
                out.calls.push((call.name.clone(), args.to_string()));
            } else if let Some(text) = &part.text {
                if part.thought == Some(true) {
                    out.reasoning.push_str(text);
                } else {
                    out.text.push_str(text);
                }
            }
        }
        out
    }
}

/// Parses a response body.
pub fn parse(body: &[u8]) -> Result<GenerateContentResponse, ProviderError> {
    serde_json::from_slice(body).map_err(|e| {
        ProviderError::new(
            ErrorClass::InvalidResponse,
            format!("the upstream's answer is not a Gemini GenerateContentResponse: {e}"),
        )
    })
}

/// A fresh OpenAI tool-call id.
pub fn tool_call_id() -> String {
    format!("call_{}", uuid::Uuid::new_v4().simple())
}

/// The OpenAI `finish_reason` of a Gemini `finishReason`.
pub fn finish_reason(reason: &str, called_functions: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT" => "content_filter",
        _ if called_functions => "tool_calls",
        _ => "stop",
    }
}

/// The OpenAI usage of Gemini's `usageMetadata`.
pub fn usage(meta: &UsageMetadata) -> Usage {
    let thoughts = meta.thoughts_token_count.unwrap_or(0);
    let mut usage = Usage::new(
        meta.prompt_token_count,
        meta.candidates_token_count.saturating_add(thoughts),
    );
    if let Some(cached) = meta.cached_content_token_count {
        usage.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: Some(cached),
            ..PromptTokensDetails::default()
        });
    }
    if let Some(thoughts) = meta.thoughts_token_count {
        usage.completion_tokens_details = Some(CompletionTokensDetails {
            reasoning_tokens: Some(thoughts),
            ..CompletionTokensDetails::default()
        });
    }
    usage
}

/// The error of a response whose prompt Gemini blocked (no candidates, a `blockReason`).
pub fn prompt_blocked(response: &GenerateContentResponse) -> Option<ProviderError> {
    let has_candidates = response.candidates.as_ref().is_some_and(|c| !c.is_empty());
    let reason = response.prompt_feedback.as_ref()?.block_reason.as_deref()?;
    (!has_candidates).then(|| {
        ProviderError::new(
            ErrorClass::ContentPolicyViolation,
            format!("gemini blocked the prompt (blockReason: {reason})"),
        )
        .with_status(400)
    })
}

/// Converts a whole response. `model` is the upstream model, reported as the reply's `model`.
pub fn to_openai(
    response: GenerateContentResponse,
    model: &str,
) -> Result<ChatCompletionResponse, ProviderError> {
    if let Some(err) = prompt_blocked(&response) {
        return Err(err);
    }
    let candidates = response.candidates.unwrap_or_default();
    if candidates.is_empty() {
        return Err(ProviderError::new(
            ErrorClass::InvalidResponse,
            "the upstream answered without any candidate",
        ));
    }
    let choices = candidates
        .iter()
        .enumerate()
        .map(|(i, candidate)| choice(candidate, i))
        .collect();
    Ok(ChatCompletionResponse::new(
        completion_id(response.response_id.as_deref()),
        model.to_owned(),
        choices,
        response.usage_metadata.as_ref().map(usage),
    ))
}

/// `chatcmpl-<Google's response id>`, or a fresh id when there is none.
pub fn completion_id(response_id: Option<&str>) -> String {
    match response_id.filter(|id| !id.is_empty()) {
        Some(id) => format!("chatcmpl-{id}"),
        None => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
    }
}

fn choice(candidate: &Candidate, position: usize) -> Choice {
    let gathered = Gathered::of(candidate);
    let called = !gathered.calls.is_empty();
    let tool_calls: Vec<ToolCall> = gathered
        .calls
        .into_iter()
        .map(|(name, arguments)| ToolCall {
            id: tool_call_id(),
            kind: "function".into(),
            function: FunctionCall { name, arguments },
        })
        .collect();
    let content = if gathered.text.is_empty() && called {
        None
    } else {
        Some(MessageContent::Text(gathered.text))
    };
    let mut message = ChatMessage::text(Role::Assistant, "");
    message.content = content;
    message.tool_calls = called.then_some(tool_calls);
    message.reasoning_content = (!gathered.reasoning.is_empty()).then_some(gathered.reasoning);
    Choice {
        index: candidate
            .index
            .unwrap_or(u32::try_from(position).unwrap_or(u32::MAX)),
        message,
        finish_reason: Some(
            finish_reason(candidate.finish_reason.as_deref().unwrap_or("STOP"), called).into(),
        ),
        logprobs: None,
        extra: Extra::new(),
    }
}
