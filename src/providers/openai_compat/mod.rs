//! The OpenAI-compatible family: OpenAI itself, Azure OpenAI and every provider that speaks
//! OpenAI's Chat Completions wire format (Groq, Together, Fireworks, DeepSeek, Mistral, xAI,
//! OpenRouter, Perplexity, vLLM, LM Studio).
//!
//! [`PROVIDERS`] (in `table`) is the table of LiteLLM model prefixes with their default base
//! URL and the environment variables LiteLLM reads; supporting one more such provider is one
//! more row.
//! [`OpenAiCompatible`] is the adapter: it posts the client's request (with `model` replaced
//! by the upstream model, every other field untouched) and reads the answer or the SSE stream.

mod table;

use std::{fmt, sync::Arc};

use futures::{StreamExt, future::BoxFuture};
use reqwest::{
    Url,
    header::{self, HeaderMap, HeaderName, HeaderValue},
};
use serde_json::Value;

use super::{
    CallContext, ChunkStream, ErrorClass, Provider, ProviderError, http,
    sse::{self, SseEvent},
    upstream,
};
pub use table::{AZURE_DEFAULT_API_VERSION, Flavor, PROVIDERS, ProviderSpec, lookup, split_model};

use crate::{
    config::{ConfigError, LitellmParams, Secret},
    wire::openai::{
        ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, EmbeddingRequest,
        EmbeddingResponse,
    },
};

/// Builds the adapter of one deployment and returns it with the upstream model name.
/// Environment variables (key, base URL, Azure version) are read now, not per call.
pub fn build(
    params: &LitellmParams,
    http: &reqwest::Client,
) -> Result<(Arc<dyn Provider>, String), ConfigError> {
    build_with_env(params, http, |name| std::env::var(name).ok())
}

/// [`build`] with the environment given as a function (tests use it instead of the process
/// environment).
pub fn build_with_env(
    params: &LitellmParams,
    http: &reqwest::Client,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Arc<dyn Provider>, String), ConfigError> {
    let (spec, upstream_model) = split_model(&params.model)?;
    let env = upstream::non_blank(env);
    let model = &params.model;

    let base = upstream::api_base(params, &env, spec.api_base_env)
        .or_else(|| spec.default_api_base.map(str::to_owned))
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "model `{model}`: provider `{}` needs `api_base` (or {})",
                spec.prefix,
                spec.api_base_env.join(" or ")
            ))
        })?;
    let base = upstream::parse_base(&base, model)?;
    let key = upstream::api_key_or_env_ref(&params.api_key, &env, spec.api_key_env);

    let api_version = match spec.flavor {
        Flavor::OpenAi => None,
        Flavor::Azure => Some(
            params
                .api_version
                .clone()
                .or_else(|| env("AZURE_API_VERSION"))
                .unwrap_or_else(|| AZURE_DEFAULT_API_VERSION.to_owned()),
        ),
    };

    let headers = base_headers(spec, params, key.as_ref())?;
    let (endpoint, embeddings) = match spec.flavor {
        Flavor::OpenAi => (
            upstream::join(&base, &["chat", "completions"]),
            upstream::join(&base, &["embeddings"]),
        ),
        Flavor::Azure => (base.clone(), base),
    };
    let provider = OpenAiCompatible {
        provider: spec.prefix,
        flavor: spec.flavor,
        http: http.clone(),
        endpoint,
        embeddings,
        api_version,
        headers,
        key,
    };
    Ok((Arc::new(provider), upstream_model.to_owned()))
}

/// The headers every call of the deployment sends: content type, key, organization, and the
/// deployment's `extra_headers` last (so they may override).
fn base_headers(
    spec: &ProviderSpec,
    params: &LitellmParams,
    key: Option<&Secret>,
) -> Result<HeaderMap, ConfigError> {
    let model = &params.model;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(key) = key {
        let (name, value) = match spec.flavor {
            Flavor::OpenAi => (header::AUTHORIZATION, format!("Bearer {}", key.expose())),
            Flavor::Azure => (HeaderName::from_static("api-key"), key.expose().to_owned()),
        };
        headers.insert(name, upstream::secret_header(&value, model)?);
    }
    if let Some(org) = &params.organization {
        let value = HeaderValue::from_str(org).map_err(|_| {
            ConfigError::Invalid(format!(
                "model `{model}`: `organization` is not a header value"
            ))
        })?;
        headers.insert(HeaderName::from_static("openai-organization"), value);
    }
    upstream::insert_extra_headers(&mut headers, params)?;
    Ok(headers)
}

/// The adapter of one OpenAI-compatible deployment.
pub struct OpenAiCompatible {
    provider: &'static str,
    flavor: Flavor,
    http: reqwest::Client,
    /// The full chat-completions URL (OpenAI flavor) or the resource base URL (Azure).
    endpoint: Url,
    /// The full embeddings URL (OpenAI flavor) or the resource base URL (Azure).
    embeddings: Url,
    /// Azure's `api-version`.
    api_version: Option<String>,
    headers: HeaderMap,
    /// Kept only to scrub it from error messages.
    key: Option<Secret>,
}

impl fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiCompatible")
            .field("provider", &self.provider)
            .field("endpoint", &self.endpoint.as_str())
            .field("api_version", &self.api_version)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .finish()
    }
}

impl OpenAiCompatible {
    fn url(&self, upstream_model: &str) -> Url {
        match self.flavor {
            Flavor::OpenAi => self.endpoint.clone(),
            Flavor::Azure => self.azure_url(upstream_model, &["chat", "completions"]),
        }
    }

    fn embeddings_url(&self, upstream_model: &str) -> Url {
        match self.flavor {
            Flavor::OpenAi => self.embeddings.clone(),
            Flavor::Azure => self.azure_url(upstream_model, &["embeddings"]),
        }
    }

    /// `{base}/openai/deployments/{deployment}/{operation}?api-version=…`.
    fn azure_url(&self, deployment: &str, operation: &[&str]) -> Url {
        let mut path = vec!["openai", "deployments", deployment];
        path.extend_from_slice(operation);
        let mut url = upstream::join(&self.endpoint, &path);
        if let Some(version) = &self.api_version {
            url.query_pairs_mut().append_pair("api-version", version);
        }
        url
    }

    fn key(&self) -> Option<&str> {
        self.key.as_ref().map(Secret::expose)
    }

    /// Posts the request. For a non-stream call, `stream` and `stream_options` are dropped
    /// (OpenAI refuses `stream_options` without `stream`); for a stream, `stream` is set.
    async fn send(
        &self,
        request: &ChatCompletionRequest,
        ctx: &CallContext,
        stream: bool,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut body = request.clone();
        body.model.clone_from(&ctx.upstream_model);
        if stream {
            body.stream = Some(true);
        } else {
            body.stream = None;
            body.stream_options = None;
        }
        self.post(self.url(&ctx.upstream_model), &body, ctx, stream)
            .await
    }

    /// Posts `body` as JSON to `url` with the deployment's headers and the trace context.
    async fn post(
        &self,
        url: Url,
        body: &impl serde::Serialize,
        ctx: &CallContext,
        stream: bool,
    ) -> Result<reqwest::Response, ProviderError> {
        let body = serde_json::to_vec(body).map_err(|e| {
            ProviderError::new(
                ErrorClass::BadRequest,
                format!("the request cannot be serialized: {e}"),
            )
        })?;
        let mut headers = self.headers.clone();
        if let Some(tp) = ctx.traceparent.as_deref()
            && let Ok(value) = HeaderValue::from_str(tp)
        {
            headers.insert(HeaderName::from_static("traceparent"), value);
        }
        if stream {
            headers.insert(
                header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
        }
        self.http
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(http::error_from_reqwest)
    }

    async fn complete_inner(
        &self,
        request: &ChatCompletionRequest,
        ctx: &CallContext,
    ) -> Result<ChatCompletionResponse, ProviderError> {
        let response = self.send(request, ctx, false).await?;
        let status = response.status().as_u16();
        let response = http::successful(response, http::error_from_response).await?;
        let body = response.bytes().await.map_err(http::error_from_reqwest)?;
        match serde_json::from_slice::<ChatCompletionResponse>(&body) {
            Ok(completion) => Ok(completion),
            Err(e) => Err(match serde_json::from_slice::<Value>(&body) {
                Ok(v) if http::is_error_body(&v) => http::error_from_event(&v),
                _ => ProviderError::new(
                    ErrorClass::InvalidResponse,
                    format!("the upstream's answer is not a chat completion: {e}"),
                )
                .with_status(status),
            }),
        }
    }

    async fn embed_inner(
        &self,
        request: &EmbeddingRequest,
        ctx: &CallContext,
    ) -> Result<EmbeddingResponse, ProviderError> {
        let mut body = request.clone();
        body.model.clone_from(&ctx.upstream_model);
        let response = self
            .post(self.embeddings_url(&ctx.upstream_model), &body, ctx, false)
            .await?;
        let status = response.status().as_u16();
        let response = http::successful(response, http::error_from_response).await?;
        let body = response.bytes().await.map_err(http::error_from_reqwest)?;
        serde_json::from_slice::<EmbeddingResponse>(&body).map_err(|e| {
            ProviderError::new(
                ErrorClass::InvalidResponse,
                format!("the upstream's answer is not an embeddings list: {e}"),
            )
            .with_status(status)
        })
    }

    /// Sends a stream request and waits for a 2xx event stream (anything else is an error).
    async fn open_stream(
        &self,
        request: &ChatCompletionRequest,
        ctx: &CallContext,
    ) -> Result<reqwest::Response, ProviderError> {
        let response = self.send(request, ctx, true).await?;
        let response = http::successful(response, http::error_from_response).await?;
        let is_json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if is_json {
            // Some servers answer a stream request with a JSON error (or a whole completion).
            let status = response.status().as_u16();
            let body = response.bytes().await.map_err(http::error_from_reqwest)?;
            return Err(match serde_json::from_slice::<Value>(&body) {
                Ok(v) if http::is_error_body(&v) => http::error_from_event(&v),
                _ => ProviderError::new(
                    ErrorClass::InvalidResponse,
                    "the upstream answered a stream request with JSON instead of an event stream",
                )
                .with_status(status),
            });
        }
        Ok(response)
    }
}

impl Provider for OpenAiCompatible {
    fn missing_credentials(&self) -> Option<String> {
        let keyless = matches!(self.provider, "hosted_vllm" | "lm_studio");
        let in_headers = ["authorization", "api-key"]
            .iter()
            .any(|h| self.headers.contains_key(*h));
        if keyless || self.key.is_some() || in_headers {
            return None;
        }
        upstream::no_key(lookup(self.provider).map_or(&[][..], |s| s.api_key_env))
    }

    fn complete<'a>(
        &'a self,
        request: &'a ChatCompletionRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChatCompletionResponse, ProviderError>> {
        Box::pin(async move {
            http::within(
                ctx,
                "complete answer",
                self.key(),
                self.complete_inner(request, ctx),
            )
            .await
        })
    }

    fn stream<'a>(
        &'a self,
        request: &'a ChatCompletionRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> {
        Box::pin(async move {
            let response = http::within(
                ctx,
                "response headers",
                self.key(),
                self.open_stream(request, ctx),
            )
            .await?;
            Ok(chunks(response, self.key.clone()))
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

/// Turns an SSE response into OpenAI chunks. The stream ends after `data: [DONE]`; a stream
/// that ends without it, an unparsable payload or an error event yields one error item and
/// ends there.
pub(crate) fn chunks(response: reqwest::Response, key: Option<Secret>) -> ChunkStream {
    let bytes = response
        .bytes_stream()
        .map(|r| r.map_err(http::error_from_reqwest));
    struct State {
        events: futures::stream::BoxStream<'static, Result<SseEvent, ProviderError>>,
        finished: bool,
        key: Option<Secret>,
    }
    let state = State {
        events: sse::events(bytes),
        finished: false,
        key,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        let item = loop {
            match st.events.next().await {
                Some(Ok(event)) => match chunk_of(&event) {
                    Step::Skip => continue,
                    Step::Done => return None,
                    Step::Chunk(chunk) => break Ok(*chunk),
                    Step::Error(err) => break Err(err),
                },
                Some(Err(err)) => break Err(err),
                None => {
                    break Err(ProviderError::new(
                        ErrorClass::InvalidResponse,
                        "the upstream's stream ended before `data: [DONE]`",
                    ));
                }
            }
        };
        if item.is_err() {
            st.finished = true;
        }
        let item = item.map_err(|e| e.redact(st.key.as_ref().map(Secret::expose)));
        Some((item, st))
    })
    .boxed()
}

/// What one SSE event means in an OpenAI stream.
enum Step {
    Skip,
    Done,
    Chunk(Box<ChatCompletionChunk>),
    Error(ProviderError),
}

fn chunk_of(event: &SseEvent) -> Step {
    let data = event.data.trim();
    if data.is_empty() {
        return Step::Skip;
    }
    if data == "[DONE]" {
        return Step::Done;
    }
    if event.event.as_deref() == Some("error") {
        return Step::Error(match serde_json::from_str::<Value>(data) {
            Ok(v) => http::error_from_event(&v),
            Err(_) => {
                ProviderError::new(ErrorClass::InternalServer, http::excerpt(data.as_bytes()))
            }
        });
    }
    match serde_json::from_str::<ChatCompletionChunk>(data) {
        Ok(chunk) => Step::Chunk(Box::new(chunk)),
        Err(e) => match serde_json::from_str::<Value>(data) {
            Ok(v) if http::is_error_body(&v) => Step::Error(http::error_from_event(&v)),
            _ => Step::Error(unparsable(&e)),
        },
    }
}

fn unparsable(e: &serde_json::Error) -> ProviderError {
    ProviderError::new(
        ErrorClass::InvalidResponse,
        format!("the upstream sent a stream event that is not a chat completion chunk: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn params(model: &str) -> LitellmParams {
        LitellmParams {
            model: model.into(),
            ..LitellmParams::default()
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn built(p: &LitellmParams, env: &[(&str, &str)]) -> Result<(String, String), ConfigError> {
        let http = reqwest::Client::new();
        build_with_env(p, &http, env_of(env))
            .map(|(provider, model)| (format!("{provider:?}"), model))
    }

    #[test]
    fn build_uses_defaults_and_env_at_build_time() {
        let (debug, model) = built(&params("groq/llama-3.1-8b-instant"), &[]).unwrap();
        assert_eq!(model, "llama-3.1-8b-instant");
        assert!(debug.contains("https://api.groq.com/openai/v1/chat/completions"));
        assert!(debug.contains("key: None"));

        let (debug, _) = built(&params("gpt-4o"), &[("OPENAI_API_KEY", "sk-env")]).unwrap();
        assert!(debug.contains("https://api.openai.com/v1/chat/completions"));
        assert!(!debug.contains("sk-env"), "the key never prints");
        assert!(debug.contains("key: Some(\"***\")"));

        let mut p = params("openai/gpt-4o");
        p.api_base = Some("http://127.0.0.1:9/v1/".into());
        let (debug, _) = built(&p, &[]).unwrap();
        assert!(debug.contains("http://127.0.0.1:9/v1/chat/completions"));
    }

    #[test]
    fn build_requires_a_base_where_there_is_no_default() {
        let err = built(&params("hosted_vllm/llama"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_base"), "{err}");
        assert!(
            built(
                &params("hosted_vllm/llama"),
                &[("HOSTED_VLLM_API_BASE", "http://h:8000/v1")]
            )
            .is_ok()
        );
        let err = built(&params("azure/dep"), &[]).unwrap_err().to_string();
        assert!(err.contains("AZURE_API_BASE"), "{err}");
        let mut p = params("openai/gpt-4o");
        p.api_base = Some("not a url".into());
        assert!(built(&p, &[]).is_err());
    }

    #[test]
    fn azure_reads_version_from_env_or_default() {
        let env = [("AZURE_API_BASE", "https://r.openai.azure.com")];
        let (debug, model) = built(&params("azure/dep"), &env).unwrap();
        assert_eq!(model, "dep");
        assert!(debug.contains(AZURE_DEFAULT_API_VERSION));
        let env = [
            ("AZURE_API_BASE", "https://r.openai.azure.com"),
            ("AZURE_API_VERSION", "2025-01-01-preview"),
        ];
        let (debug, _) = built(&params("azure/dep"), &env).unwrap();
        assert!(debug.contains("2025-01-01-preview"));
    }

    #[test]
    fn bad_headers_are_config_errors() {
        let mut p = params("gpt-4o");
        p.extra_headers.insert("bad header".into(), "x".into());
        assert!(built(&p, &[]).is_err());
        let mut p = params("gpt-4o");
        p.api_key = Some(Secret::new("sk-\nsecret"));
        let err = built(&p, &[]).unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn usage_chunk_with_null_choices_parses() {
        let event = SseEvent {
            event: None,
            data: r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":null,"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#.into(),
        };
        match chunk_of(&event) {
            Step::Chunk(chunk) => assert_eq!(chunk.usage.unwrap().total_tokens, 3),
            _ => panic!("expected a chunk"),
        }
    }
}
