//! Anthropic Messages (`anthropic/`): the adapter that speaks `POST {api_base}/v1/messages`.
//!
//! This module owns the deployment's settings (base URL, key, headers) and the HTTP call;
//! the wire conversion lives in submodules:
//!
//! - [`messages`]: OpenAI messages → Anthropic `system` and `messages`.
//! - [`request`]: the request parameters, `drop_params`, thinking, tools.
//! - [`response`]: a Messages answer → `chat.completion`; `finish_reason` and usage mapping.
//! - [`stream`]: Anthropic's SSE events → `chat.completion.chunk`s.
//! - [`error`]: Anthropic's error bodies and stream error events → [`ProviderError`].
//!
//! Anthropic has no embeddings API, so the trait's default `embed` (a 400) stays.

use std::{fmt, sync::Arc};

use futures::future::BoxFuture;
use reqwest::{
    Url,
    header::{self, HeaderMap, HeaderName, HeaderValue},
};

use super::{CallContext, ChunkStream, ErrorClass, Provider, ProviderError, http, upstream};
use crate::{
    config::{ConfigError, LitellmParams, Secret},
    wire::openai::{ChatCompletionRequest, ChatCompletionResponse},
};

pub mod error;
pub mod messages;
pub mod request;
pub mod response;
pub mod stream;

/// Anthropic's API root, used when neither `api_base` nor the environment names one.
pub const DEFAULT_API_BASE: &str = "https://api.anthropic.com";
/// The `anthropic-version` header every call sends.
pub const API_VERSION: &str = "2023-06-01";
/// Environment variables that may hold the base URL, first set one wins (LiteLLM's names).
pub const API_BASE_ENV: &[&str] = &["ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"];
/// The environment variable that holds the key when the deployment gives none.
pub const API_KEY_ENV: &str = "ANTHROPIC_API_KEY";

/// A 400 `BadRequest`: the request asks for something Anthropic cannot do.
pub(crate) fn bad_request(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorClass::BadRequest, message).with_status(400)
}

/// Builds the adapter of one deployment and returns it with the upstream model name
/// (`claude-sonnet-4-5` for `anthropic/claude-sonnet-4-5`).
pub fn build(
    params: &LitellmParams,
    http: &reqwest::Client,
) -> Result<(Arc<dyn Provider>, String), ConfigError> {
    build_with_env(params, http, |name| std::env::var(name).ok())
}

/// [`build`] with the environment given as a function (tests use it).
pub fn build_with_env(
    params: &LitellmParams,
    http: &reqwest::Client,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Arc<dyn Provider>, String), ConfigError> {
    let model = &params.model;
    let upstream_model = model
        .strip_prefix("anthropic/")
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ConfigError::Invalid(format!("model `{model}` names no model after `anthropic/`"))
        })?;
    let env = upstream::non_blank(env);
    let base = upstream::api_base(params, &env, API_BASE_ENV)
        .unwrap_or_else(|| DEFAULT_API_BASE.to_owned());
    let endpoint = endpoint(&base).ok_or_else(|| upstream::not_http(model))?;
    let key = upstream::api_key_or_env_ref(&params.api_key, &env, &[API_KEY_ENV]);
    let provider = Anthropic {
        http: http.clone(),
        endpoint,
        headers: headers(params, key.as_ref())?,
        key,
        drop_params: params.drop_params.unwrap_or(false),
    };
    Ok((Arc::new(provider), upstream_model.to_owned()))
}

/// `{base}/v1/messages`, as LiteLLM builds it: a base that already ends in `/v1/messages`
/// is used as is, one ending in `/v1` gets `/messages`.
fn endpoint(base: &str) -> Option<Url> {
    let base = base.trim().trim_end_matches('/');
    let full = if base.ends_with("/v1/messages") {
        base.to_owned()
    } else if base.ends_with("/v1") {
        format!("{base}/messages")
    } else {
        format!("{base}/v1/messages")
    };
    upstream::http_base(&full)
}

/// `x-api-key`, `anthropic-version`, `content-type`, then the deployment's `extra_headers`
/// (so they may override, or add `anthropic-beta`).
fn headers(params: &LitellmParams, key: Option<&Secret>) -> Result<HeaderMap, ConfigError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        HeaderName::from_static("anthropic-version"),
        HeaderValue::from_static(API_VERSION),
    );
    if let Some(key) = key {
        let value = upstream::secret_header(key.expose(), &params.model)?;
        headers.insert(HeaderName::from_static("x-api-key"), value);
    }
    upstream::insert_extra_headers(&mut headers, params)?;
    Ok(headers)
}

/// The adapter of one Anthropic deployment.
pub struct Anthropic {
    http: reqwest::Client,
    /// The full `/v1/messages` URL.
    endpoint: Url,
    headers: HeaderMap,
    /// Kept only to scrub it from error messages.
    key: Option<Secret>,
    drop_params: bool,
}

impl fmt::Debug for Anthropic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Anthropic")
            .field("endpoint", &self.endpoint.as_str())
            .field("key", &self.key.as_ref().map(|_| "***"))
            .field("drop_params", &self.drop_params)
            .finish()
    }
}

impl Anthropic {
    fn key(&self) -> Option<&str> {
        self.key.as_ref().map(Secret::expose)
    }

    /// Converts and posts the request; any non-2xx answer is an error.
    async fn send(
        &self,
        converted: &request::Converted,
        ctx: &CallContext,
        stream: bool,
    ) -> Result<reqwest::Response, ProviderError> {
        let body = serde_json::to_vec(&converted.body).map_err(|e| {
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
        let response = self
            .http
            .post(self.endpoint.clone())
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(http::error_from_reqwest)?;
        http::successful(response, error::from_response).await
    }

    fn convert(
        &self,
        request: &ChatCompletionRequest,
        ctx: &CallContext,
        stream: bool,
    ) -> Result<request::Converted, ProviderError> {
        let options = request::Options {
            drop_params: self.drop_params,
            stream,
        };
        request::convert(request, &ctx.upstream_model, options)
    }

    async fn complete_inner(
        &self,
        request: &ChatCompletionRequest,
        ctx: &CallContext,
    ) -> Result<ChatCompletionResponse, ProviderError> {
        let converted = self.convert(request, ctx, false)?;
        let response = self.send(&converted, ctx, false).await?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(http::error_from_reqwest)?;
        response::convert(&body, converted.json_mode).map_err(|e| match e.status {
            None => e.with_status(status),
            Some(_) => e,
        })
    }

    async fn open_stream(
        &self,
        request: &ChatCompletionRequest,
        ctx: &CallContext,
    ) -> Result<ChunkStream, ProviderError> {
        let converted = self.convert(request, ctx, true)?;
        let response = self.send(&converted, ctx, true).await?;
        let is_json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if is_json {
            let body = response.bytes().await.map_err(http::error_from_reqwest)?;
            return Err(match serde_json::from_slice(&body) {
                Ok(v) if http::is_error_body(&v) => error::from_event(&v),
                _ => ProviderError::new(
                    ErrorClass::InvalidResponse,
                    "the upstream answered a stream request with JSON instead of an event stream",
                ),
            });
        }
        let converter = stream::StreamConverter::new(request.include_usage(), converted.json_mode);
        Ok(stream::chunks(response, converter, self.key.clone()))
    }
}

impl Provider for Anthropic {
    fn missing_credentials(&self) -> Option<String> {
        let in_headers = ["x-api-key", "authorization"]
            .iter()
            .any(|h| self.headers.contains_key(*h));
        if self.key.is_some() || in_headers {
            return None;
        }
        upstream::no_key(&[API_KEY_ENV])
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
            http::within(
                ctx,
                "response headers",
                self.key(),
                self.open_stream(request, ctx),
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(p: &LitellmParams, env: &[(&str, &str)]) -> Result<(String, String), ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        build_with_env(p, &reqwest::Client::new(), move |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .map(|(provider, model)| (format!("{provider:?}"), model))
    }

    fn params(model: &str) -> LitellmParams {
        LitellmParams {
            model: model.into(),
            ..LitellmParams::default()
        }
    }

    #[test]
    fn defaults_env_and_api_base_forms() {
        let (debug, model) = built(&params("anthropic/claude-sonnet-4-5"), &[]).unwrap();
        assert_eq!(model, "claude-sonnet-4-5");
        assert!(
            debug.contains("https://api.anthropic.com/v1/messages"),
            "{debug}"
        );
        assert!(debug.contains("key: None"));

        let env = [
            ("ANTHROPIC_API_KEY", "sk-ant-env"),
            ("ANTHROPIC_API_BASE", "http://h:1"),
        ];
        let (debug, _) = built(&params("anthropic/claude-haiku-4-5"), &env).unwrap();
        assert!(debug.contains("http://h:1/v1/messages"), "{debug}");
        assert!(!debug.contains("sk-ant-env"), "the key never prints");
        assert!(debug.contains("key: Some(\"***\")"));

        for base in [
            "http://h:2",
            "http://h:2/",
            "http://h:2/v1",
            "http://h:2/v1/messages",
        ] {
            let mut p = params("anthropic/claude-sonnet-4-5");
            p.api_base = Some(base.into());
            let (debug, _) = built(&p, &[]).unwrap();
            assert!(
                debug.contains("\"http://h:2/v1/messages\""),
                "{base}: {debug}"
            );
        }
    }

    #[test]
    fn bad_settings_are_config_errors() {
        assert!(built(&params("anthropic/"), &[]).is_err());
        let mut p = params("anthropic/claude-sonnet-4-5");
        p.api_base = Some("ftp://nope".into());
        assert!(built(&p, &[]).is_err());
        let mut p = params("anthropic/claude-sonnet-4-5");
        p.api_key = Some(Secret::new("sk-\nsecret"));
        let err = built(&p, &[]).unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
        let mut p = params("anthropic/claude-sonnet-4-5");
        p.extra_headers.insert("bad header".into(), "x".into());
        assert!(built(&p, &[]).is_err());
    }
}
