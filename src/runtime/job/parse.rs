//! Reading a job's body: JSON into the OpenAI request types, with the checks a gateway owes
//! its callers (`model`, `messages` / `input` present and non-empty) and errors that echo at
//! most a short prefix of what the caller sent.

use crate::wire::{
    ApiError,
    error::clip_message,
    openai::{ChatCompletionRequest, EmbeddingRequest, Extra},
};

/// Parses and checks the body: JSON, the field types, `model` and `messages`.
pub fn chat(payload: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty: publish an OpenAI chat completion request as JSON",
        ));
    }
    let body: ChatCompletionRequest = serde_json::from_slice(payload)
        .map_err(|e| ApiError::bad_request(clip_message(format!("invalid request body: {e}"))))?;
    if body.model.trim().is_empty() {
        return Err(ApiError::bad_request("`model` must not be empty").with_param("model"));
    }
    if body.messages.is_empty() {
        return Err(
            ApiError::bad_request("`messages` must hold at least one message")
                .with_param("messages"),
        );
    }
    Ok(body)
}

/// Parses and checks an embeddings body: JSON, the field types, `model` and `input`.
pub fn embedding(payload: &[u8]) -> Result<EmbeddingRequest, ApiError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty: publish an OpenAI embeddings request as JSON",
        ));
    }
    let body: EmbeddingRequest = serde_json::from_slice(payload)
        .map_err(|e| ApiError::bad_request(clip_message(format!("invalid request body: {e}"))))?;
    if body.model.trim().is_empty() {
        return Err(ApiError::bad_request("`model` must not be empty").with_param("model"));
    }
    if body.input.is_empty() {
        return Err(ApiError::bad_request("`input` must not be empty").with_param("input"));
    }
    Ok(body)
}

/// Removes LiteLLM's client-side `fallbacks` from a body's extra fields (it must not reach
/// the upstream) and returns the groups it names: `["a", "b"]` or `[{"group": ["a", "b"]}]`.
pub fn take_fallbacks(extra: &mut Extra) -> Vec<String> {
    let Some(value) = extra.remove("fallbacks") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in value.as_array().into_iter().flatten() {
        match item {
            serde_json::Value::String(g) => out.push(g.clone()),
            serde_json::Value::Object(map) => {
                for list in map.values() {
                    out.extend(
                        list.as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|g| g.as_str().map(str::to_string)),
                    );
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_inputs_are_not_echoed() {
        let role = "x".repeat(100_000);
        let body = format!(r#"{{"model":"m","messages":[{{"role":"{role}","content":"hi"}}]}}"#);
        let e = chat(body.as_bytes()).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.len() < 600, "{} bytes", e.message.len());
        assert!(e.message.contains("bytes"), "{e}");
    }

    #[test]
    fn bodies_are_checked() {
        assert_eq!(chat(b"  ").unwrap_err().status, 400);
        let e = chat(b"{not json").unwrap_err();
        assert!(e.message.starts_with("invalid request body"), "{e}");
        let e = chat(br#"{"messages":[]}"#).unwrap_err();
        assert!(e.message.contains("missing field `model`"), "{e}");
        let e = chat(br#"{"model":"m","messages":[]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e =
            chat(br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":"x"}"#)
                .unwrap_err();
        assert!(
            e.message.contains("max_tokens") || e.message.contains("invalid type"),
            "{e}"
        );
        assert!(chat(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).is_ok());
    }
}
