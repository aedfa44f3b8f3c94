//! Providers whose calls are JSON posts under the deployment's base URL with a bearer key
//! (Cohere, Ollama): such a provider is one [`Api`] row of paths and conversions, and
//! [`JsonProvider`] is its whole adapter, on the settings [`super::upstream`] reads.
//! [`embedding_list`] is the OpenAI embeddings list that it and Bedrock answer with.

use std::{fmt, sync::Arc};

use futures::{StreamExt, future::BoxFuture, stream::BoxStream};
use reqwest::{Url, header::HeaderMap};
use serde_json::{Value, json};

use super::{
    CallContext, ChunkStream, ErrorClass, Provider, ProviderError, http,
    upstream::{Spec, Upstream, no_key},
};
use crate::{
    config::{ConfigError, LitellmParams},
    wire::openai::{
        ChatCompletionRequest, ChatCompletionResponse, Embedding, EmbeddingInput, EmbeddingRequest,
        EmbeddingResponse, Extra, Usage,
    },
};

/// The body of a streamed answer, as [`Api::chunks`] reads it.
pub type ByteStream = BoxStream<'static, Result<bytes::Bytes, ProviderError>>;

/// A provider whose calls are JSON posts under the deployment's base URL: what its adapter,
/// [`JsonProvider`], needs to know of it besides the deployment's settings.
pub struct Api {
    /// How a deployment's settings are read.
    pub spec: Spec,
    /// The chat path under the base URL (`v2/chat`).
    pub chat_path: &'static str,
    /// The embeddings path under the base URL (`v2/embed`).
    pub embed_path: &'static str,
    /// Whether calls send `Accept` (`application/json`, `text/event-stream` for a stream).
    pub accept: bool,
    /// Whether the provider works without a key (no warning when a deployment has none).
    pub keyless: bool,
    /// The chat body of a request: (request, upstream model, stream, drop_params).
    pub chat_body: fn(&ChatCompletionRequest, &str, bool, bool) -> Result<Value, ProviderError>,
    /// The completion of a chat answer, for the upstream model.
    pub completion: fn(&Value, &str) -> Result<ChatCompletionResponse, ProviderError>,
    /// The chunks of a streamed answer: (body, upstream model, include_usage, key to scrub).
    pub chunks: fn(ByteStream, &str, bool, Option<String>) -> ChunkStream,
    /// The embeddings body but for the dimensions: (the texts as a JSON array, request,
    /// upstream model).
    pub embed_body: fn(Value, &EmbeddingRequest, &str) -> Value,
    /// The body field that carries the request's `dimensions`.
    pub dimensions: &'static str,
    /// Where an embeddings answer holds the vectors (a JSON pointer).
    pub vectors: &'static str,
    /// The input tokens of an embeddings answer.
    pub input_tokens: fn(&Value) -> u64,
    /// The error of a non-2xx answer.
    pub error_from_response: fn(u16, &HeaderMap, &[u8]) -> ProviderError,
}

/// The adapter of one deployment of an [`Api`] provider.
pub struct JsonProvider {
    api: &'static Api,
    upstream: Upstream,
    /// `{base}/{chat_path}`, joined once at start-up.
    chat_url: Url,
    /// `{base}/{embed_path}`.
    embed_url: Url,
}

impl fmt::Debug for JsonProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.upstream.debug_as(self.api.spec.name, f)
    }
}

impl JsonProvider {
    /// Builds the adapter of the deployment `params` of `api`; returns it with the upstream
    /// model. `http` is the shared client pool.
    pub fn build(
        api: &'static Api,
        params: &LitellmParams,
        http: &reqwest::Client,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Arc<dyn Provider>, String), ConfigError> {
        let (upstream, model) = Upstream::resolve(&api.spec, params, http, env)?;
        let provider = JsonProvider {
            api,
            chat_url: upstream.url(api.chat_path),
            embed_url: upstream.url(api.embed_path),
            upstream,
        };
        Ok((Arc::new(provider), model))
    }

    fn key(&self) -> Option<&str> {
        self.upstream.key()
    }

    /// Posts `body` as JSON to `url`; `accept` is sent when the provider takes it.
    async fn post(
        &self,
        url: &Url,
        body: &Value,
        accept: &str,
        ctx: &CallContext,
    ) -> Result<reqwest::Response, ProviderError> {
        let accept = self.api.accept.then_some(accept);
        let to_error = self.api.error_from_response;
        self.upstream
            .post(url.clone(), body, accept, ctx, to_error)
            .await
    }

    /// Converts and posts a chat request, for an answer or (`stream`) an event stream.
    async fn post_chat(
        &self,
        request: &ChatCompletionRequest,
        ctx: &CallContext,
        stream: bool,
    ) -> Result<reqwest::Response, ProviderError> {
        let drop_params = self.upstream.drop_params();
        let body = (self.api.chat_body)(request, &ctx.upstream_model, stream, drop_params)?;
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        self.post(&self.chat_url, &body, accept, ctx).await
    }

    /// The JSON document of an answer; the error for one that is not JSON names `what`.
    async fn json(&self, response: reqwest::Response, what: &str) -> Result<Value, ProviderError> {
        let bytes = response.bytes().await.map_err(http::error_from_reqwest)?;
        serde_json::from_slice(&bytes).map_err(|e| self.api.spec.invalid(what, e))
    }

    async fn open_stream(
        &self,
        request: &ChatCompletionRequest,
        ctx: &CallContext,
    ) -> Result<ChunkStream, ProviderError> {
        let open = self.post_chat(request, ctx, true);
        let response = http::within(ctx, "response headers", self.key(), open).await?;
        let bytes = response
            .bytes_stream()
            .map(|r| r.map_err(http::error_from_reqwest))
            .boxed();
        let key = self.key().map(str::to_owned);
        let usage = request.include_usage();
        Ok((self.api.chunks)(bytes, &ctx.upstream_model, usage, key))
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
                let name = self.api.spec.name.to_ascii_lowercase();
                return Err(ProviderError::new(
                    ErrorClass::BadRequest,
                    format!("{name} embeds text, not token arrays"),
                )
                .with_status(400));
            }
        };
        let mut body = (self.api.embed_body)(texts, request, &ctx.upstream_model);
        if let Some(d) = request.dimensions {
            body[self.api.dimensions] = d.into();
        }
        let response = self
            .post(&self.embed_url, &body, "application/json", ctx)
            .await?;
        let mut value = self.json(response, "embeddings").await?;
        let tokens = (self.api.input_tokens)(&value);
        // Moved out of the answer, not copied: embeddings are the bulk of it.
        match value.pointer_mut(self.api.vectors).map(Value::take) {
            Some(Value::Array(vectors)) => Ok(embedding_list(vectors, &ctx.upstream_model, tokens)),
            _ => {
                let field = self.api.vectors.trim_start_matches('/').replace('/', ".");
                Err(self.api.spec.invalid("embeddings", format!("no `{field}`")))
            }
        }
    }
}

impl Provider for JsonProvider {
    fn missing_credentials(&self) -> Option<String> {
        if self.api.keyless || self.upstream.has_credentials() {
            return None;
        }
        no_key(self.api.spec.key_env)
    }

    fn complete<'a>(
        &'a self,
        request: &'a ChatCompletionRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChatCompletionResponse, ProviderError>> {
        let call = async move {
            let response = self.post_chat(request, ctx, false).await?;
            let value = self.json(response, "answer").await?;
            (self.api.completion)(&value, &ctx.upstream_model)
        };
        Box::pin(http::within(ctx, "answer", self.key(), call))
    }

    fn stream<'a>(
        &'a self,
        request: &'a ChatCompletionRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> {
        Box::pin(self.open_stream(request, ctx))
    }

    fn embed<'a>(
        &'a self,
        request: &'a EmbeddingRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<EmbeddingResponse, ProviderError>> {
        Box::pin(http::within(
            ctx,
            "embeddings",
            self.key(),
            self.embed_inner(request, ctx),
        ))
    }
}

/// The OpenAI embeddings list of `vectors`, numbered in order.
pub fn embedding_list(
    vectors: impl IntoIterator<Item = Value>,
    model: &str,
    prompt_tokens: u64,
) -> EmbeddingResponse {
    EmbeddingResponse {
        object: "list".into(),
        data: vectors
            .into_iter()
            .enumerate()
            .map(|(i, embedding)| Embedding {
                object: "embedding".into(),
                index: u32::try_from(i).unwrap_or(u32::MAX),
                embedding,
            })
            .collect(),
        model: model.to_owned(),
        usage: Usage::new(prompt_tokens, 0),
        extra: Extra::new(),
    }
}
