//! Cohere's v2 API (`cohere_chat/MODEL`, also `cohere/MODEL`).
//!
//! - Chat: `POST {api_base}/v2/chat` (default `https://api.cohere.com`, else
//!   `COHERE_API_BASE`) with `Authorization: Bearer` from `api_key`, else `COHERE_API_KEY`
//!   (or `CO_API_KEY`, the SDK's name); streams are SSE (see [`stream`]).
//! - Embeddings: `POST {api_base}/v2/embed` with `embedding_types: ["float"]` and
//!   `input_type` (the request's, else `search_document`, LiteLLM's default).
//! - Errors are `{"message": ...}` with the HTTP status; "too many tokens" is a context
//!   window error, 498 (invalid token) an authentication error.
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
        EmbeddingInput, EmbeddingRequest, EmbeddingResponse, Extra, MessageContent, Role, ToolCall,
        Usage, unix_now,
    },
};

pub mod convert;
pub mod stream;

/// Cohere's documented base URL.
pub const DEFAULT_API_BASE: &str = "https://api.cohere.com";

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
        .strip_prefix("cohere_chat/")
        .or_else(|| model.strip_prefix("cohere/"))
        .unwrap_or(model);
    if name.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "model `{model}` names no Cohere model"
        )));
    }
    let base = params
        .api_base
        .clone()
        .or_else(|| env("COHERE_API_BASE"))
        .unwrap_or_else(|| DEFAULT_API_BASE.to_owned());
    let base = base.trim();
    let base = base.strip_suffix("/v2/chat").unwrap_or(base);
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
        .or_else(|| env("COHERE_API_KEY").map(Secret::new))
        .or_else(|| env("CO_API_KEY").map(Secret::new))
        .filter(|k| !k.expose().is_empty());
    let provider = Cohere {
        http: http.clone(),
        base,
        key,
        extra_headers: params.extra_headers.clone().into_iter().collect(),
        drop_params: params.drop_params.unwrap_or(false),
    };
    Ok((Arc::new(provider), name.to_owned()))
}

/// The adapter of one Cohere deployment.
pub struct Cohere {
    http: reqwest::Client,
    base: Url,
    key: Option<Secret>,
    extra_headers: Vec<(String, String)>,
    drop_params: bool,
}

impl fmt::Debug for Cohere {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cohere")
            .field("base", &self.base.as_str())
            .field("key", &self.key.as_ref().map(|_| "***"))
            .finish()
    }
}

fn invalid(what: &str, e: impl fmt::Display) -> ProviderError {
    ProviderError::new(
        ErrorClass::InvalidResponse,
        format!("Cohere's {what} is not what its API documents: {e}"),
    )
}

/// The error of a non-2xx Cohere answer.
pub fn error_from_response(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> ProviderError {
    let mut err = http::error_from_response(status, headers, body);
    if status == 498 {
        err.class = ErrorClass::Authentication;
    }
    if err.class == ErrorClass::BadRequest
        && err.message.to_ascii_lowercase().contains("too many tokens")
    {
        err.class = ErrorClass::ContextWindowExceeded;
    }
    err
}

impl Cohere {
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
        accept: &str,
        ctx: &CallContext,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut builder = self
            .http
            .post(self.url(path))
            .json(body)
            .header("accept", accept);
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
        http::successful(response, error_from_response).await
    }

    async fn complete_inner(
        &self,
        request: &ChatCompletionRequest,
        ctx: &CallContext,
    ) -> Result<ChatCompletionResponse, ProviderError> {
        let body = convert::chat_body(request, &ctx.upstream_model, false, self.drop_params)?;
        let response = self.post("v2/chat", &body, "application/json", ctx).await?;
        let bytes = response.bytes().await.map_err(http::error_from_reqwest)?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| invalid("answer", e))?;
        completion(&value, &ctx.upstream_model)
    }

    async fn embed_inner(
        &self,
        request: &EmbeddingRequest,
        ctx: &CallContext,
    ) -> Result<EmbeddingResponse, ProviderError> {
        let texts = match &request.input {
            EmbeddingInput::Text(t) => json!([t]),
            EmbeddingInput::Texts(ts) => json!(ts),
            _ => {
                return Err(ProviderError::new(
                    ErrorClass::BadRequest,
                    "cohere embeds text, not token arrays",
                )
                .with_status(400));
            }
        };
        let input_type = request
            .extra
            .get("input_type")
            .cloned()
            .unwrap_or_else(|| "search_document".into());
        let mut body = json!({
            "model": ctx.upstream_model,
            "texts": texts,
            "input_type": input_type,
            "embedding_types": ["float"],
        });
        if let Some(d) = request.dimensions {
            body["output_dimension"] = d.into();
        }
        let response = self
            .post("v2/embed", &body, "application/json", ctx)
            .await?;
        let bytes = response.bytes().await.map_err(http::error_from_reqwest)?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| invalid("embeddings", e))?;
        let vectors = value
            .pointer("/embeddings/float")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("embeddings", "no `embeddings.float`"))?;
        let tokens = value
            .pointer("/meta/billed_units/input_tokens")
            .and_then(Value::as_f64)
            .unwrap_or(0.0) as u64;
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
            usage: Usage::new(tokens, 0),
            extra: Extra::new(),
        })
    }
}

/// The chat completion of a Cohere v2 `/v2/chat` answer.
pub fn completion(value: &Value, model: &str) -> Result<ChatCompletionResponse, ProviderError> {
    let message = value
        .get("message")
        .ok_or_else(|| invalid("answer", "no `message`"))?;
    let reason = value
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("COMPLETE");
    let finish = convert::finish_reason(reason)?;
    let blocks = message
        .get("content")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let join = |kind: &str| -> String {
        blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some(kind))
            .filter_map(|b| b.get(kind).and_then(Value::as_str))
            .collect()
    };
    let text = join("text");
    let thinking = join("thinking");
    let calls: Vec<ToolCall> = match message.get("tool_calls") {
        Some(Value::Array(calls)) => calls
            .iter()
            .map(|c| serde_json::from_value(c.clone()))
            .collect::<Result<_, _>>()
            .map_err(|e| invalid("tool call", e))?,
        _ => Vec::new(),
    };
    Ok(ChatCompletionResponse {
        id: value
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())),
        object: "chat.completion".into(),
        created: unix_now(),
        model: model.to_owned(),
        choices: vec![Choice {
            index: 0,
            message: ChatMessage {
                role: Role::Assistant,
                content: (!text.is_empty() || calls.is_empty())
                    .then_some(MessageContent::Text(text)),
                name: None,
                tool_calls: (!calls.is_empty()).then_some(calls),
                tool_call_id: None,
                reasoning_content: (!thinking.is_empty()).then_some(thinking),
                extra: Extra::new(),
            },
            finish_reason: Some(finish.to_owned()),
            logprobs: None,
            extra: Extra::new(),
        }],
        usage: value.get("usage").map(convert::usage),
        system_fingerprint: None,
        extra: Extra::new(),
    })
}

impl Provider for Cohere {
    fn missing_credentials(&self) -> Option<String> {
        let in_headers = self
            .extra_headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"));
        (self.key.is_none() && !in_headers).then(|| {
            "no API key: set `api_key` or the environment variable COHERE_API_KEY (or \
             CO_API_KEY)"
                .to_owned()
        })
    }

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
                self.post("v2/chat", &body, "text/event-stream", ctx).await
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
