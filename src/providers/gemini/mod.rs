//! Google Gemini: AI Studio (`gemini/MODEL`) and Vertex AI (`vertex_ai/MODEL`), both in
//! Gemini's own wire format, converted to and from OpenAI's.
//!
//! | | AI Studio (`gemini/`) | Vertex AI (`vertex_ai/`) |
//! | --- | --- | --- |
//! | URL | `{api_base}/v1beta/models/{model}:{method}`, default base `https://generativelanguage.googleapis.com` | `https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:{method}` (`aiplatform.googleapis.com` for `global`; `api_base` replaces the host) |
//! | auth | `x-goog-api-key: <api_key>` (else `GEMINI_API_KEY`, else `GOOGLE_API_KEY`): a header, so the key is never in a URL | `Authorization: Bearer` from a service-account key ([`vertex_auth`]) |
//! | chat | `generateContent`, `streamGenerateContent?alt=sse` | the same |
//! | embeddings | `batchEmbedContents` | `predict` |
//!
//! The conversions live in [`request`], [`schema`], [`response`], [`stream`], [`embed`] and
//! [`error`]; [`GeminiProvider`] makes the calls. Vertex AI settings: `vertex_project` (else
//! `VERTEXAI_PROJECT`, `GOOGLE_CLOUD_PROJECT`, the key's `project_id`), `vertex_location`
//! (else `VERTEXAI_LOCATION`, else `us-central1`), `vertex_credentials` (else
//! `VERTEXAI_CREDENTIALS`, else the file `GOOGLE_APPLICATION_CREDENTIALS` names). Every
//! setting is read when the deployment is built, not per call.

use std::sync::Arc;

use reqwest::{
    Url,
    header::{self, HeaderMap, HeaderName, HeaderValue},
};

use super::{Provider, ProviderError, upstream};
use crate::config::{ConfigError, LitellmParams, Secret};

pub mod embed;
pub mod error;
mod provider;
pub mod request;
pub mod response;
pub mod schema;
pub mod stream;
pub mod vertex_auth;

pub use provider::{Auth, Endpoint, GeminiProvider};

/// AI Studio's base URL.
pub const AI_STUDIO_BASE: &str = "https://generativelanguage.googleapis.com";
/// The Vertex AI region used when none is configured (LiteLLM's default).
pub const DEFAULT_VERTEX_LOCATION: &str = "us-central1";
/// The environment variables that may hold an AI Studio key, first set one wins.
const API_KEY_ENV: &[&str] = &["GEMINI_API_KEY", "GOOGLE_API_KEY"];

/// Builds a `gemini/` (AI Studio) deployment; returns it with the upstream model name.
pub fn build(
    params: &LitellmParams,
    http: &reqwest::Client,
) -> Result<(Arc<dyn Provider>, String), ConfigError> {
    build_with_env(params, http, |name| std::env::var(name).ok())
}

/// Builds a `vertex_ai/` deployment; returns it with the upstream model name.
pub fn build_vertex(
    params: &LitellmParams,
    http: &reqwest::Client,
) -> Result<(Arc<dyn Provider>, String), ConfigError> {
    build_vertex_with_env(params, http, |name| std::env::var(name).ok())
}

/// [`build`] with the environment given as a function.
pub fn build_with_env(
    params: &LitellmParams,
    http: &reqwest::Client,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Arc<dyn Provider>, String), ConfigError> {
    let provider = gemini_provider(params, http, env)?;
    let model = upstream_model(params)?;
    Ok((Arc::new(provider), model))
}

/// [`build_vertex`] with the environment given as a function.
pub fn build_vertex_with_env(
    params: &LitellmParams,
    http: &reqwest::Client,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Arc<dyn Provider>, String), ConfigError> {
    let provider = vertex_provider(params, http, env)?;
    let model = upstream_model(params)?;
    Ok((Arc::new(provider), model))
}

/// The AI Studio adapter of a deployment (public for tests that call it directly).
pub fn gemini_provider(
    params: &LitellmParams,
    http: &reqwest::Client,
    env: impl Fn(&str) -> Option<String>,
) -> Result<GeminiProvider, ConfigError> {
    let env = upstream::non_blank(env);
    let model = &params.model;
    let base = upstream::api_base(params, &env, &["GEMINI_API_BASE"])
        .unwrap_or_else(|| AI_STUDIO_BASE.to_owned());
    let key = upstream::api_key_or_env_ref(&params.api_key, &env, API_KEY_ENV);
    let mut headers = base_headers(params)?;
    if let Some(key) = &key {
        let value = upstream::secret_header(key.expose(), model)?;
        headers.insert(HeaderName::from_static("x-goog-api-key"), value);
    }
    Ok(GeminiProvider {
        http: http.clone(),
        endpoint: Endpoint::AiStudio {
            base: upstream::parse_base(&base, model)?,
        },
        auth: Auth::ApiKey(key),
        headers,
        drop_params: params.drop_params.unwrap_or(false),
    })
}

/// The Vertex AI adapter of a deployment (public for tests that call it directly).
pub fn vertex_provider(
    params: &LitellmParams,
    http: &reqwest::Client,
    env: impl Fn(&str) -> Option<String>,
) -> Result<GeminiProvider, ConfigError> {
    let env = upstream::non_blank(env);
    let model = &params.model;
    let source = upstream::api_key_or_env_ref(
        &params.vertex_credentials,
        &env,
        &["VERTEXAI_CREDENTIALS", "GOOGLE_APPLICATION_CREDENTIALS"],
    )
    .ok_or_else(|| {
        invalid(
            model,
            "Vertex AI needs a service-account key: set `vertex_credentials` (the key's JSON or \
             a path to it) or GOOGLE_APPLICATION_CREDENTIALS",
        )
    })?;
    let key = vertex_auth::ServiceAccountKey::load(source.expose())
        .map_err(|e| invalid(model, &e.to_string()))?;
    Url::parse(&key.token_uri)
        .map_err(|_| invalid(model, "the service-account key's `token_uri` is not a URL"))?;
    let project = params
        .vertex_project
        .clone()
        .or_else(|| env("VERTEXAI_PROJECT"))
        .or_else(|| env("GOOGLE_CLOUD_PROJECT"))
        .or_else(|| key.project_id.clone())
        .ok_or_else(|| {
            invalid(
                model,
                "Vertex AI needs `vertex_project` (or VERTEXAI_PROJECT)",
            )
        })?;
    let location = params
        .vertex_location
        .clone()
        .or_else(|| env("VERTEXAI_LOCATION"))
        .unwrap_or_else(|| DEFAULT_VERTEX_LOCATION.to_owned());
    let well_formed = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !well_formed(&location) || !well_formed(&project) {
        return Err(invalid(
            model,
            "`vertex_project` and `vertex_location` may hold only letters, digits, `-` and `_`",
        ));
    }
    let base = match &params.api_base {
        Some(base) => base.clone(),
        None if location == "global" => "https://aiplatform.googleapis.com".to_owned(),
        None => format!("https://{location}-aiplatform.googleapis.com"),
    };
    Ok(GeminiProvider {
        http: http.clone(),
        endpoint: Endpoint::Vertex {
            base: upstream::parse_base(&base, model)?,
            project,
            location,
        },
        auth: Auth::ServiceAccount(Arc::new(vertex_auth::TokenSource::new(key, http.clone()))),
        headers: base_headers(params)?,
        drop_params: params.drop_params.unwrap_or(false),
    })
}

/// The model after the provider prefix (`gemini-2.5-flash` for `gemini/gemini-2.5-flash`).
fn upstream_model(params: &LitellmParams) -> Result<String, ConfigError> {
    let name = params
        .model
        .trim()
        .split_once('/')
        .map(|(_, name)| name)
        .unwrap_or_default();
    if name.is_empty() {
        return Err(invalid(&params.model, "names no model after the provider"));
    }
    Ok(name.to_owned())
}

fn invalid(model: &str, message: &str) -> ConfigError {
    ConfigError::Invalid(format!("model `{model}`: {message}"))
}

/// Content type and the deployment's `extra_headers`.
fn base_headers(params: &LitellmParams) -> Result<HeaderMap, ConfigError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    upstream::insert_extra_headers(&mut headers, params)?;
    Ok(headers)
}

/// `err` with every secret replaced by `***`.
pub(crate) fn redact(err: ProviderError, secrets: &[Secret]) -> ProviderError {
    secrets
        .iter()
        .fold(err, |err, secret| err.redact(Some(secret.expose())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(model: &str) -> LitellmParams {
        LitellmParams {
            model: model.into(),
            ..LitellmParams::default()
        }
    }

    #[test]
    fn ai_studio_urls_and_keys() {
        let http = reqwest::Client::new();
        let env = |name: &str| (name == "GOOGLE_API_KEY").then(|| "g-key".to_owned());
        let p = gemini_provider(&params("gemini/gemini-2.5-flash"), &http, env).unwrap();
        assert_eq!(
            p.endpoint()
                .url("gemini-2.5-flash", "streamGenerateContent", true)
                .as_str(),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(p.headers["x-goog-api-key"], "g-key");
        assert!(!format!("{p:?}").contains("g-key"));

        let mut with_base = params("gemini/m");
        with_base.api_base = Some("http://127.0.0.1:9/v1beta/".into());
        let p = gemini_provider(&with_base, &http, |_| None).unwrap();
        assert_eq!(
            p.endpoint().url("m", "generateContent", false).as_str(),
            "http://127.0.0.1:9/v1beta/models/m:generateContent"
        );
        assert!(build_with_env(&params("gemini/"), &http, |_| None).is_err());
    }
}
