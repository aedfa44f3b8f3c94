//! Bedrock Converse response → OpenAI chat completion: `output.message.content` blocks become
//! the content (text joined), `tool_calls` (`toolUse`, input re-encoded as a JSON string) and
//! `reasoning_content` (`reasoningContent.reasoningText`); `stopReason` becomes
//! `finish_reason`; `usage` becomes OpenAI usage.

use serde_json::Value;

use crate::{
    providers::{ErrorClass, ProviderError},
    wire::openai::{
        ChatCompletionResponse, ChatMessage, Choice, FunctionCall, PromptTokensDetails, ToolCall,
        Usage,
    },
};

/// OpenAI's `finish_reason` for a Converse `stopReason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        // end_turn, stop_sequence and anything newer.
        _ => "stop",
    }
}

/// OpenAI usage from a Converse `usage` object. Cache reads and writes are counted in
/// `prompt_tokens` (Converse's `inputTokens` leaves them out, OpenAI's `prompt_tokens` does
/// not); cache reads are also `prompt_tokens_details.cached_tokens`, and cache writes are kept
/// as `cache_creation_input_tokens`, as LiteLLM reports them.
pub fn usage(usage: &Value) -> Usage {
    let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (read, write) = (n("cacheReadInputTokens"), n("cacheWriteInputTokens"));
    let prompt = n("inputTokens").saturating_add(read).saturating_add(write);
    let mut out = Usage::new(prompt, n("outputTokens"));
    if read > 0 || usage.get("cacheReadInputTokens").is_some() {
        out.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: Some(read),
            ..PromptTokensDetails::default()
        });
    }
    if write > 0 {
        out.extra
            .insert("cache_creation_input_tokens".into(), write.into());
    }
    out
}

/// A new OpenAI-style completion id.
pub fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

/// The chat completion of a Converse response body.
pub fn completion(body: &Value, model: &str) -> Result<ChatCompletionResponse, ProviderError> {
    let invalid = |what: &str| {
        ProviderError::new(
            ErrorClass::InvalidResponse,
            format!("the Converse response has no {what}"),
        )
    };
    let content = body
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("output.message.content"))?;
    let stop_reason = body
        .get("stopReason")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("stopReason"))?;

    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for block in content {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(r) = block
            .pointer("/reasoningContent/reasoningText/text")
            .and_then(Value::as_str)
        {
            reasoning.push_str(r);
        }
        if let Some(tool) = block.get("toolUse") {
            let field = |k: &str| tool.get(k).and_then(Value::as_str).unwrap_or_default();
            calls.push(ToolCall {
                id: field("toolUseId").to_owned(),
                kind: "function".into(),
                function: FunctionCall {
                    name: field("name").to_owned(),
                    arguments: tool
                        .get("input")
                        .map(Value::to_string)
                        .unwrap_or_else(|| "{}".into()),
                },
            });
        }
    }
    let message = ChatMessage::assistant(text, calls, Some(reasoning));
    Ok(ChatCompletionResponse::new(
        completion_id(),
        model.to_owned(),
        vec![Choice::new(0, message, finish_reason(stop_reason))],
        body.get("usage").map(usage),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stop_reasons_map() {
        assert_eq!(finish_reason("end_turn"), "stop");
        assert_eq!(finish_reason("stop_sequence"), "stop");
        assert_eq!(finish_reason("max_tokens"), "length");
        assert_eq!(finish_reason("tool_use"), "tool_calls");
        assert_eq!(finish_reason("guardrail_intervened"), "content_filter");
        assert_eq!(finish_reason("content_filtered"), "content_filter");
    }

    #[test]
    fn cached_tokens_count_in_the_prompt() {
        let u = usage(
            &json!({"inputTokens": 10, "outputTokens": 5, "totalTokens": 115,
            "cacheReadInputTokens": 60, "cacheWriteInputTokens": 40}),
        );
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (110, 5, 115)
        );
        assert_eq!(u.cached_tokens(), 60);
        assert_eq!(u.extra["cache_creation_input_tokens"], 40);
    }

    #[test]
    fn a_body_without_output_is_invalid() {
        let err = completion(&json!({"stopReason": "end_turn"}), "m").unwrap_err();
        assert_eq!(err.class, ErrorClass::InvalidResponse);
    }
}
