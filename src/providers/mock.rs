//! `mock_response` deployments: answer with a fixed text, no network, no key — or, for
//! LiteLLM's special values such as `litellm.RateLimitError`, fail the way that error would.
//!
//! The answer has OpenAI's exact shapes, so everything downstream (usage accounting, cost,
//! streaming to NATS) runs as it would against a real upstream: a `chat.completion` for a
//! non-stream call; for a stream, a role chunk, the text a word at a time, a finish chunk and,
//! when the request asked for it, a usage chunk with empty `choices`.

use futures::{future::BoxFuture, stream};

use super::{CallContext, ChunkStream, ErrorClass, Provider, ProviderError};
use crate::{
    limits::{estimate_prompt_tokens, estimate_text_tokens},
    wire::openai::{
        ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatMessage, Choice,
        ChunkChoice, Delta, Embedding, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, Extra,
        Role, Usage, unix_now,
    },
};

/// Answers every request with the same text. The reply's `model` is the call's upstream model.
#[derive(Debug, Clone)]
pub struct MockProvider {
    text: String,
}

impl MockProvider {
    /// A provider that always answers `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self { text: text.into() }
    }

    fn usage(&self, request: &ChatCompletionRequest) -> Usage {
        Usage::new(
            estimate_prompt_tokens(request),
            estimate_text_tokens(&self.text),
        )
    }
}

/// Splits `text` into word-sized pieces whose concatenation is exactly `text`: each piece is a
/// run of whitespace followed by a run of non-whitespace.
pub fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() && in_word {
            out.push(&text[start..i]);
            start = i;
            in_word = false;
        } else if !c.is_whitespace() {
            in_word = true;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// LiteLLM's `mock_response` values that simulate a failure instead of answering, and one of
/// llmbus's own: `llmbus.panic` makes the adapter panic, to show that a crashing job is
/// answered with a 500 and harms no other job.
fn simulated_failure(text: &str) -> Option<ProviderError> {
    let (class, status, message) = match text {
        "litellm.RateLimitError" => (ErrorClass::RateLimit, 429, "mock rate limit"),
        "litellm.InternalServerError" => (ErrorClass::InternalServer, 500, "mock server error"),
        "litellm.ServiceUnavailableError" => (ErrorClass::InternalServer, 503, "mock overload"),
        "litellm.Timeout" => (ErrorClass::Timeout, 408, "mock timeout"),
        "litellm.AuthenticationError" => (ErrorClass::Authentication, 401, "mock auth failure"),
        "litellm.BadRequestError" => (ErrorClass::BadRequest, 400, "mock bad request"),
        "litellm.ContextWindowExceededError" => (
            ErrorClass::ContextWindowExceeded,
            400,
            "mock context window exceeded",
        ),
        "litellm.ContentPolicyViolationError" => (
            ErrorClass::ContentPolicyViolation,
            400,
            "mock content policy violation",
        ),
        "llmbus.panic" => panic!("mock_response asked for a panic (llmbus.panic)"),
        _ => return None,
    };
    Some(ProviderError::new(class, message).with_status(status))
}

/// A deterministic unit vector for `text`: the same text always embeds the same way, different
/// texts (almost always) differently.
fn mock_vector(text: &str, dims: usize) -> Vec<f64> {
    use std::hash::{Hash, Hasher};
    let mut v: Vec<f64> = (0..dims)
        .map(|i| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (text, i).hash(&mut h);
            (h.finish() % 2000) as f64 / 1000.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

impl Provider for MockProvider {
    fn embed<'a>(
        &'a self,
        request: &'a EmbeddingRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<EmbeddingResponse, ProviderError>> {
        if let Some(e) = simulated_failure(&self.text) {
            return Box::pin(async move { Err(e) });
        }
        let dims = request.dimensions.unwrap_or(8).clamp(1, 4096) as usize;
        let texts: Vec<String> = match &request.input {
            EmbeddingInput::Text(t) => vec![t.clone()],
            EmbeddingInput::Texts(ts) => ts.clone(),
            EmbeddingInput::Tokens(t) => vec![format!("{t:?}")],
            EmbeddingInput::TokenArrays(ts) => ts.iter().map(|t| format!("{t:?}")).collect(),
        };
        let prompt_tokens = texts.iter().map(|t| estimate_text_tokens(t)).sum();
        let response = EmbeddingResponse {
            object: "list".into(),
            data: texts
                .iter()
                .enumerate()
                .map(|(i, t)| Embedding {
                    object: "embedding".into(),
                    index: i as u32,
                    embedding: mock_vector(t, dims).into(),
                })
                .collect(),
            model: ctx.upstream_model.clone(),
            usage: Usage::new(prompt_tokens, 0),
            extra: Extra::new(),
        };
        Box::pin(async move { Ok(response) })
    }

    fn complete<'a>(
        &'a self,
        request: &'a ChatCompletionRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChatCompletionResponse, ProviderError>> {
        if let Some(e) = simulated_failure(&self.text) {
            return Box::pin(async move { Err(e) });
        }
        let response = ChatCompletionResponse::new(
            completion_id(),
            ctx.upstream_model.clone(),
            vec![Choice::new(
                0,
                ChatMessage::text(Role::Assistant, self.text.clone()),
                "stop",
            )],
            Some(self.usage(request)),
        );
        Box::pin(async move { Ok(response) })
    }

    fn stream<'a>(
        &'a self,
        request: &'a ChatCompletionRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> {
        if let Some(e) = simulated_failure(&self.text) {
            return Box::pin(async move { Err(e) });
        }
        let id = completion_id();
        let created = unix_now();
        let chunk = |choices: Vec<ChunkChoice>, usage: Option<Usage>| ChatCompletionChunk {
            id: id.clone(),
            object: "chat.completion.chunk".into(),
            created,
            model: ctx.upstream_model.clone(),
            choices,
            usage,
            system_fingerprint: None,
            extra: Extra::new(),
        };
        let choice = |delta: Delta, finish_reason: Option<&str>| {
            vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish_reason.map(str::to_owned),
                logprobs: None,
                extra: Extra::new(),
            }]
        };
        let text = |t: &str| Delta {
            content: Some(t.to_owned()),
            ..Delta::default()
        };

        let mut chunks = vec![chunk(
            choice(
                Delta {
                    role: Some(Role::Assistant),
                    ..text("")
                },
                None,
            ),
            None,
        )];
        chunks.extend(
            pieces(&self.text)
                .into_iter()
                .map(|p| chunk(choice(text(p), None), None)),
        );
        chunks.push(chunk(choice(Delta::default(), Some("stop")), None));
        if request.include_usage() {
            chunks.push(chunk(Vec::new(), Some(self.usage(request))));
        }
        let stream: ChunkStream = Box::pin(stream::iter(chunks.into_iter().map(Ok)));
        Box::pin(async move { Ok(stream) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Duration;

    fn request(include_usage: bool) -> ChatCompletionRequest {
        let mut body = serde_json::json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hello there"}],
            "stream": true,
        });
        if include_usage {
            body["stream_options"] = serde_json::json!({"include_usage": true});
        }
        serde_json::from_value(body).unwrap()
    }

    fn ctx() -> CallContext {
        CallContext {
            upstream_model: "mock-model".into(),
            timeout: Duration::from_secs(1),
            traceparent: None,
        }
    }

    #[test]
    fn pieces_concatenate_to_the_text() {
        for text in [
            "",
            "one",
            "Hello there,  world!\n",
            "  leading and trailing  ",
            "héllo wörld ✓",
        ] {
            let got = pieces(text);
            assert_eq!(got.concat(), text);
            assert!(got.iter().all(|p| !p.is_empty()));
        }
        assert_eq!(pieces("a b  c"), vec!["a", " b", "  c"]);
    }

    #[tokio::test]
    async fn complete_answers_the_text_with_usage() {
        let mock = MockProvider::new("Hi there");
        let req = request(false);
        let resp = mock.complete(&req, &ctx()).await.unwrap();
        assert!(resp.id.starts_with("chatcmpl-"));
        assert_eq!(resp.object, "chat.completion");
        assert_eq!(resp.model, "mock-model");
        assert_eq!(resp.choices[0].message.text_content(), "Hi there");
        assert_eq!(resp.choices[0].finish_reason.as_deref(), Some("stop"));
        let usage = resp.usage.unwrap();
        assert_eq!(usage.prompt_tokens, estimate_prompt_tokens(&req));
        assert_eq!(usage.completion_tokens, 2);
        assert_eq!(usage.total_tokens, usage.prompt_tokens + 2);
    }

    #[tokio::test]
    async fn stream_is_shaped_like_openai() {
        let text = "The quick brown fox, again.";
        let mock = MockProvider::new(text);
        for include_usage in [false, true] {
            let req = request(include_usage);
            let chunks: Vec<_> = mock
                .stream(&req, &ctx())
                .await
                .unwrap()
                .map(Result::unwrap)
                .collect()
                .await;
            let id = &chunks[0].id;
            assert!(chunks.iter().all(|c| &c.id == id));
            assert_eq!(chunks[0].choices[0].delta.role, Some(Role::Assistant));
            assert_eq!(chunks[0].choices[0].delta.content.as_deref(), Some(""));
            let content: String = chunks
                .iter()
                .flat_map(|c| c.choices.iter())
                .filter_map(|c| c.delta.content.as_deref())
                .collect();
            assert_eq!(content, text);
            let usage_chunks: Vec<_> = chunks.iter().filter(|c| c.usage.is_some()).collect();
            let finish = if include_usage {
                assert_eq!(usage_chunks.len(), 1);
                let last = chunks.last().unwrap();
                assert!(last.choices.is_empty() && last.usage.is_some());
                &chunks[chunks.len() - 2]
            } else {
                assert!(usage_chunks.is_empty());
                chunks.last().unwrap()
            };
            assert_eq!(finish.choices[0].finish_reason.as_deref(), Some("stop"));
            assert_eq!(finish.choices[0].delta, Delta::default());
        }
    }
}
