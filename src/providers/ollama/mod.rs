//! Ollama's native API (`ollama/MODEL` and `ollama_chat/MODEL`).
//!
//! - Chat: `POST {api_base}/api/chat` (default `http://localhost:11434`, else
//!   `OLLAMA_API_BASE`); a stream is NDJSON, one object per line, `done: true` last with
//!   `prompt_eval_count`/`eval_count` (see [`stream`]).
//! - Embeddings: `POST {api_base}/api/embed` with `input: [texts]`.
//! - A key (`api_key`, else `OLLAMA_API_KEY`) is sent as `Authorization: Bearer`, for
//!   servers behind a proxy; a local Ollama needs none.
//!
//! [`convert`] holds the request and response mapping.

use std::{fmt, sync::Arc};

use futures::{StreamExt, future::BoxFuture};
use reqwest::Url;
use serde_json::{Value, json};

use super::{CallContext, ChunkStream, ErrorClass, Provider, ProviderError, http};
use crate::{
    config::{ConfigError, LitellmParams, Secret},
    wire::openai::{
        ChatCompletionRequest, ChatCompletionResponse, ChatMessage, Choice, Embedding,
        EmbeddingInput, EmbeddingRequest, EmbeddingResponse, Extra, MessageContent, Role, Usage,
        unix_now,
    },
};

pub mod convert;
pub mod stream;

/// Ollama's default address.
pub const DEFAULT_API_BASE: &str = "http://localhost:11434";

/// Builds the provider of one deployment; the upstream model is the name after the prefix.
pub fn build(
    params: &LitellmParams,
    http: &reqwest::Client,
) -> Result<(Arc<dyn Provider>, String), ConfigError> {
    build_with_env(params, http, |name| std::env::var(name).ok())
}

/// [`build`] with the environment given as a function (for tests).
pub fn build_with_env(
    params: &LitellmParams,
    http: &reqwest::Client,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Arc<dyn Provider>, String), ConfigError> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let model = params.model.trim();
    let name = model
        .strip_prefix("ollama_chat/")
        .or_else(|| model.strip_prefix("ollama/"))
        .unwrap_or(model);
    if name.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "model `{model}` names no Ollama model"
        )));
    }
    let base = params
        .api_base
        .clone()
        .or_else(|| env("OLLAMA_API_BASE"))
        .unwrap_or_else(|| DEFAULT_API_BASE.to_owned());
    let base = base.trim();
    let base = base.strip_suffix("/api/chat").unwrap_or(base);
    let base = Url::parse(base)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base())
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "model `{model}`: `api_base` must be an http(s) URL"
            ))
        })?;
    let key = params
        .api_key
        .clone()
        .or_else(|| env("OLLAMA_API_KEY").map(Secret::new))
        .filter(|k| !k.expose().is_empty());
    let provider = Ollama {
        http: http.clone(),
        base,
        key,
        extra_headers: params.extra_headers.clone().into_iter().collect(),
        drop_params: params.drop_params.unwrap_or(false),
    };
    Ok((Arc::new(provider), name.to_owned()))
}

/// The adapter of one Ollama deployment.
pub struct Ollama {
    http: reqwest::Client,
    base: Url,
    key: Option<Secret>,
    extra_headers: Vec<(String, String)>,
    drop_params: bool,
}

impl fmt::Debug for Ollama {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ollama")
            .field("base", &self.base.as_str())
            .field("key", &self.key.as_ref().map(|_| "***"))
            .finish()
    }
}

fn invalid(what: &str, e: impl fmt::Display) -> ProviderError {
    ProviderError::new(
        ErrorClass::InvalidResponse,
        format!("Ollama's {what} is not what its API documents: {e}"),
    )
}

impl Ollama {
    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}/{path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    fn key(&self) -> Option<&str> {
        self.key.as_ref().map(Secret::expose)
    }

    async fn post(
        &self,
        path: &str,
        body: &Value,
        ctx: &CallContext,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut builder = self.http.post(self.url(path)).json(body);
        if let Some(key) = self.key() {
            builder = builder.bearer_auth(key);
        }
        for (name, value) in &self.extra_headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some(tp) = &ctx.traceparent {
            builder = builder.header("traceparent", tp.as_str());
        }
        let response = builder.send().await.map_err(http::error_from_reqwest)?;
        http::successful(response, http::error_from_response).await
    }

    async fn complete_inner(
        &self,
        request: &ChatCompletionRequest,
        ctx: &CallContext,
    ) -> Result<ChatCompletionResponse, ProviderError> {
        let body = convert::chat_body(request, &ctx.upstream_model, false, self.drop_params)?;
        let response = self.post("api/chat", &body, ctx).await?;
        let bytes = response.bytes().await.map_err(http::error_from_reqwest)?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| invalid("answer", e))?;
        if http::is_error_body(&value) {
            return Err(http::error_from_event(&value));
        }
        let message = value
            .get("message")
            .ok_or_else(|| invalid("answer", "no `message`"))?;
        let calls = convert::tool_calls(message);
        let text = message
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let finish = convert::finish_reason(&value, !calls.is_empty());
        Ok(ChatCompletionResponse {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            object: "chat.completion".into(),
            created: unix_now(),
            model: ctx.upstream_model.clone(),
            choices: vec![Choice {
                index: 0,
                message: ChatMessage {
                    role: Role::Assistant,
                    content: (!text.is_empty() || calls.is_empty())
                        .then(|| MessageContent::Text(text.to_owned())),
                    name: None,
                    tool_calls: (!calls.is_empty()).then_some(calls),
                    tool_call_id: None,
                    reasoning_content: message
                        .get("thinking")
                        .and_then(Value::as_str)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned),
                    extra: Extra::new(),
                },
                finish_reason: Some(finish.to_owned()),
                logprobs: None,
                extra: Extra::new(),
            }],
            usage: Some(convert::usage(&value)),
            system_fingerprint: None,
            extra: Extra::new(),
        })
    }

    async fn embed_inner(
        &self,
        request: &EmbeddingRequest,
        ctx: &CallContext,
    ) -> Result<EmbeddingResponse, ProviderError> {
        let input = match &request.input {
            EmbeddingInput::Text(t) => json!([t]),
            EmbeddingInput::Texts(ts) => json!(ts),
            _ => {
                return Err(ProviderError::new(
                    ErrorClass::BadRequest,
                    "ollama embeds text, not token arrays",
                )
                .with_status(400));
            }
        };
        let mut body = json!({ "model": ctx.upstream_model, "input": input });
        if let Some(d) = request.dimensions {
            body["dimensions"] = d.into();
        }
        let response = self.post("api/embed", &body, ctx).await?;
        let bytes = response.bytes().await.map_err(http::error_from_reqwest)?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| invalid("embeddings", e))?;
        let vectors = value
            .get("embeddings")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("embeddings", "no `embeddings`"))?;
        Ok(EmbeddingResponse {
            object: "list".into(),
            data: vectors
                .iter()
                .enumerate()
                .map(|(i, v)| Embedding {
                    object: "embedding".into(),
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    embedding: v.clone(),
                })
                .collect(),
            model: ctx.upstream_model.clone(),
            usage: Usage::new(
                value
                    .get("prompt_eval_count")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                0,
            ),
            extra: Extra::new(),
        })
    }
}

impl Provider for Ollama {
    fn complete<'a>(
        &'a self,
        request: &'a ChatCompletionRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChatCompletionResponse, ProviderError>> {
        Box::pin(async move {
            http::within(ctx, "answer", self.key(), self.complete_inner(request, ctx)).await
        })
    }

    fn stream<'a>(
        &'a self,
        request: &'a ChatCompletionRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> {
        Box::pin(async move {
            let open = async {
                let body =
                    convert::chat_body(request, &ctx.upstream_model, true, self.drop_params)?;
                self.post("api/chat", &body, ctx).await
            };
            let response = http::within(ctx, "response headers", self.key(), open).await?;
            let bytes = response
                .bytes_stream()
                .map(|r| r.map_err(http::error_from_reqwest));
            Ok(stream::chunks(
                bytes,
                &ctx.upstream_model,
                request.include_usage(),
                self.key().map(str::to_owned),
            ))
        })
    }

    fn embed<'a>(
        &'a self,
        request: &'a EmbeddingRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<EmbeddingResponse, ProviderError>> {
        Box::pin(async move {
            http::within(
                ctx,
                "embeddings",
                self.key(),
                self.embed_inner(request, ctx),
            )
            .await
        })
    }
}
