//! The Gemini adapter itself: where each call goes, how it authenticates, and the HTTP round
//! trip around the conversions of the sibling modules.

use std::{fmt, sync::Arc};

use futures::future::BoxFuture;
use reqwest::{
    Url,
    header::{self, HeaderMap, HeaderName, HeaderValue},
};
use serde_json::Value;

use super::{
    API_KEY_ENV, embed, error, redact, request, response, stream, vertex_auth::TokenSource,
};
use crate::{
    config::Secret,
    providers::{CallContext, ChunkStream, ErrorClass, Provider, ProviderError, http, upstream},
    wire::openai::{
        ChatCompletionRequest, ChatCompletionResponse, EmbeddingRequest, EmbeddingResponse,
    },
};

/// Where a deployment's calls go.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// Google AI Studio: `{base}/v1beta/models/{model}:{method}`.
    AiStudio {
        /// The API's base URL.
        base: Url,
    },
    /// Vertex AI: `{base}/v1/projects/{project}/locations/{location}/publishers/google/models/
    /// {model}:{method}`.
    Vertex {
        /// The regional (or global) host, or the deployment's `api_base`.
        base: Url,
        /// The Google Cloud project.
        project: String,
        /// The region, or `global`.
        location: String,
    },
}

impl Endpoint {
    /// The URL of `method` (`generateContent`, `streamGenerateContent`, ...) for `model`;
    /// `sse` adds `alt=sse`.
    pub fn url(&self, model: &str, method: &str, sse: bool) -> Url {
        let action = format!("{model}:{method}");
        let (base, version, mut segments): (&Url, &str, Vec<&str>) = match self {
            Endpoint::AiStudio { base } => (base, "v1beta", vec!["models"]),
            Endpoint::Vertex {
                base,
                project,
                location,
            } => (
                base,
                "v1",
                vec![
                    "projects",
                    project.as_str(),
                    "locations",
                    location.as_str(),
                    "publishers",
                    "google",
                    "models",
                ],
            ),
        };
        segments.push(&action);
        let mut url = base.clone();
        let has_version = base
            .path_segments()
            .and_then(|mut s| s.rfind(|seg| !seg.is_empty()))
            .is_some_and(|last| last.starts_with("v1"));
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            if !has_version {
                path.push(version);
            }
            path.extend(segments);
        }
        if sse {
            url.query_pairs_mut().append_pair("alt", "sse");
        }
        url
    }
}

/// How a deployment's calls authenticate.
pub enum Auth {
    /// AI Studio's `x-goog-api-key` (already in the base headers); kept to scrub it from errors.
    ApiKey(Option<Secret>),
    /// Vertex AI's OAuth access tokens from a service-account key.
    ServiceAccount(Arc<TokenSource>),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::ApiKey(key) => {
                write!(f, "ApiKey({})", if key.is_some() { "***" } else { "none" })
            }
            Auth::ServiceAccount(source) => write!(f, "ServiceAccount({source:?})"),
        }
    }
}

/// One Gemini or Vertex AI deployment.
pub struct GeminiProvider {
    pub(super) http: reqwest::Client,
    pub(super) endpoint: Endpoint,
    pub(super) auth: Auth,
    /// Content type, API key (AI Studio) and the deployment's `extra_headers`.
    pub(super) headers: HeaderMap,
    pub(super) drop_params: bool,
}

impl fmt::Debug for GeminiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeminiProvider")
            .field("endpoint", &self.endpoint)
            .field("auth", &self.auth)
            .field("drop_params", &self.drop_params)
            .finish()
    }
}

impl GeminiProvider {
    /// The deployment's endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The service-account token source, on Vertex AI.
    pub fn token_source(&self) -> Option<&Arc<TokenSource>> {
        match &self.auth {
            Auth::ServiceAccount(source) => Some(source),
            Auth::ApiKey(_) => None,
        }
    }

    /// The headers of one call and the secrets its errors must not show.
    async fn call_headers(
        &self,
        ctx: &CallContext,
        sse: bool,
    ) -> Result<(HeaderMap, Vec<Secret>), ProviderError> {
        let mut headers = self.headers.clone();
        let mut secrets = Vec::new();
        match &self.auth {
            Auth::ApiKey(key) => secrets.extend(key.iter().cloned()),
            Auth::ServiceAccount(source) => {
                let token = source.access_token().await?;
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| {
                        ProviderError::new(
                            ErrorClass::Authentication,
                            "the token endpoint sent an access token that is not a header value",
                        )
                    })?;
                value.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, value);
                secrets.push(token);
            }
        }
        if let Some(tp) = ctx.traceparent.as_deref()
            && let Ok(value) = HeaderValue::from_str(tp)
        {
            headers.insert(HeaderName::from_static("traceparent"), value);
        }
        if sse {
            headers.insert(
                header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
        }
        Ok((headers, secrets))
    }

    /// Posts `body` to `method`; a non-2xx answer is returned as its classified error.
    async fn post(
        &self,
        ctx: &CallContext,
        method: &str,
        body: &Value,
        sse: bool,
    ) -> Result<(reqwest::Response, Vec<Secret>), ProviderError> {
        let (headers, secrets) = self.call_headers(ctx, sse).await?;
        let result = async {
            let body = serde_json::to_vec(body).map_err(|e| {
                request::bad_request(format!("the request cannot be serialized: {e}"))
            })?;
            let response = self
                .http
                .post(self.endpoint.url(&ctx.upstream_model, method, sse))
                .headers(headers)
                .body(body)
                .send()
                .await
                .map_err(http::error_from_reqwest)?;
            let status = response.status().as_u16();
            if response.status().is_success() {
                return Ok(response);
            }
            if status == 401
                && let Auth::ServiceAccount(source) = &self.auth
            {
                source.invalidate().await;
            }
            let headers = response.headers().clone();
            let body = response.bytes().await.unwrap_or_default();
            Err(error::from_response(status, &headers, &body))
        }
        .await;
        match result {
            Ok(response) => Ok((response, secrets)),
            Err(err) => Err(redact(err, &secrets)),
        }
    }

    /// Reads a 2xx JSON body.
    async fn json(response: reqwest::Response, secrets: &[Secret]) -> Result<Value, ProviderError> {
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| redact(http::error_from_reqwest(e), secrets))?;
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            ProviderError::new(
                ErrorClass::InvalidResponse,
                format!("the upstream's answer is not JSON: {e}"),
            )
            .with_status(status)
        })?;
        match error::from_document(&value) {
            Some(err) => Err(redact(err, secrets)),
            None => Ok(value),
        }
    }

    async fn complete_inner(
        &self,
        req: &ChatCompletionRequest,
        ctx: &CallContext,
    ) -> Result<ChatCompletionResponse, ProviderError> {
        let body = request::to_gemini(req, &ctx.upstream_model, self.drop_params)?;
        let (response, secrets) = self.post(ctx, "generateContent", &body, false).await?;
        let value = Self::json(response, &secrets).await?;
        let parsed = serde_json::from_value(value).map_err(|e| {
            ProviderError::new(
                ErrorClass::InvalidResponse,
                format!("the upstream's answer is not a Gemini GenerateContentResponse: {e}"),
            )
        })?;
        response::to_openai(parsed, &ctx.upstream_model)
    }

    async fn open_stream(
        &self,
        req: &ChatCompletionRequest,
        ctx: &CallContext,
    ) -> Result<ChunkStream, ProviderError> {
        let body = request::to_gemini(req, &ctx.upstream_model, self.drop_params)?;
        let (response, secrets) = self.post(ctx, "streamGenerateContent", &body, true).await?;
        let converter = stream::StreamConverter::new(&ctx.upstream_model, req.include_usage());
        Ok(stream::chunks(response, converter, secrets))
    }

    async fn embed_inner(
        &self,
        req: &EmbeddingRequest,
        ctx: &CallContext,
    ) -> Result<EmbeddingResponse, ProviderError> {
        let texts = embed::texts(req, self.drop_params)?;
        let model = &ctx.upstream_model;
        match &self.endpoint {
            Endpoint::AiStudio { .. } => {
                let body = embed::batch_request(req, model, &texts);
                let (response, secrets) =
                    self.post(ctx, "batchEmbedContents", &body, false).await?;
                let value = Self::json(response, &secrets).await?;
                embed::from_batch(&value, req, model, &texts)
            }
            Endpoint::Vertex { .. } => {
                let body = embed::predict_request(req, &texts);
                let (response, secrets) = self.post(ctx, "predict", &body, false).await?;
                let value = Self::json(response, &secrets).await?;
                embed::from_predict(&value, req, model, texts.len())
            }
        }
    }
}

impl Provider for GeminiProvider {
    fn missing_credentials(&self) -> Option<String> {
        // Vertex AI cannot be built without a service-account key.
        let in_headers = self.headers.contains_key("x-goog-api-key");
        if !matches!(self.auth, Auth::ApiKey(None)) || in_headers {
            return None;
        }
        upstream::no_key(API_KEY_ENV)
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
                None,
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
            http::within(
                ctx,
                "response headers",
                None,
                self.open_stream(request, ctx),
            )
            .await
        })
    }

    fn embed<'a>(
        &'a self,
        request: &'a EmbeddingRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<EmbeddingResponse, ProviderError>> {
        Box::pin(async move {
            http::within(ctx, "embeddings", None, self.embed_inner(request, ctx)).await
        })
    }
}
