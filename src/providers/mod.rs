//! Provider adapters: plain code (not actors) that turns an OpenAI-shaped request into one
//! provider's HTTP request, and that provider's response or stream back into OpenAI shapes.
//!
//! One [`Provider`] value exists per deployment and holds everything the deployment's calls
//! need (base URL, key, headers). Every adapter shares one `reqwest` client pool. [`prepare`]
//! builds a deployment's provider, or, when the deployment cannot work, a
//! [`misconfigured::Misconfigured`] one that fails every call with the reason.
//!
//! [`upstream`] reads a deployment's connection settings (`api_base`, key, `extra_headers`)
//! by the same rules for every adapter; [`json_api`] is the one adapter of the providers whose
//! calls are plain JSON posts with a bearer key (Cohere, Ollama: one table row each, as the
//! OpenAI-compatible family in [`openai_compat`]).

use std::{sync::Arc, time::Duration};

use futures::{future::BoxFuture, stream::BoxStream};

use crate::wire::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, EmbeddingRequest,
    EmbeddingResponse,
};

pub mod anthropic;
pub mod bedrock;
pub mod cohere;
pub mod error;
pub mod gemini;
pub mod http;
pub mod json_api;
pub mod misconfigured;
pub mod mock;
pub mod ollama;
pub mod openai_compat;
pub mod params;
pub mod sse;
pub mod upstream;

pub use error::{ErrorClass, ProviderError};

/// A stream of OpenAI chunks from one upstream call.
pub type ChunkStream = BoxStream<'static, Result<ChatCompletionChunk, ProviderError>>;

/// What one upstream call needs besides the request body.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The model name the provider knows (`gpt-4o` for `openai/gpt-4o`).
    pub upstream_model: String,
    /// How long the call may take, at most (the rest of the job's deadline, or the
    /// deployment's `timeout` when that is shorter).
    pub timeout: Duration,
    /// The W3C trace context to send upstream, when the job had one.
    pub traceparent: Option<String>,
}

/// One deployment's way of talking to its provider.
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// A non-streaming completion.
    fn complete<'a>(
        &'a self,
        request: &'a ChatCompletionRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChatCompletionResponse, ProviderError>>;

    /// A streaming completion. The future resolves once the upstream has accepted the call
    /// (status and headers); the stream then yields OpenAI chunks, a usage chunk last when the
    /// request asked for one.
    fn stream<'a>(
        &'a self,
        request: &'a ChatCompletionRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>>;

    /// Why this deployment's calls would go upstream without credentials (no key in the
    /// config and none in the environment), naming what to set; `None` when it has them or
    /// its provider needs none. Read once at start-up, for a warning.
    fn missing_credentials(&self) -> Option<String> {
        None
    }

    /// Embeddings. Providers without an embeddings API keep this default: a 400 saying so.
    fn embed<'a>(
        &'a self,
        request: &'a EmbeddingRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<EmbeddingResponse, ProviderError>> {
        let _ = (request, ctx);
        Box::pin(async {
            Err(ProviderError::new(
                ErrorClass::BadRequest,
                "this deployment's provider has no embeddings API in llmbus",
            )
            .with_status(400))
        })
    }
}

/// The providers with a wire format of their own (the rest are in
/// [`openai_compat::PROVIDERS`]).
pub const NATIVE: &[&str] = &[
    "anthropic",
    "gemini",
    "vertex_ai",
    "bedrock",
    "cohere",
    "cohere_chat",
    "ollama",
    "ollama_chat",
];

/// Every provider prefix llmbus knows: the OpenAI-compatible ones, then the native ones.
pub fn prefixes() -> Vec<&'static str> {
    openai_compat::PROVIDERS
        .iter()
        .map(|p| p.prefix)
        .chain(NATIVE.iter().copied())
        .collect()
}

/// The error for a model whose provider prefix llmbus does not know: it lists every provider
/// and suggests the closest one.
pub fn unknown_provider(prefix: &str, model: &str) -> crate::config::ConfigError {
    let all = prefixes();
    let hint = crate::config::suggest::closest(prefix, &all)
        .map_or(String::new(), |p| format!(" (did you mean `{p}`?)"));
    crate::config::ConfigError::Invalid(format!(
        "model `{model}`: unknown provider `{prefix}`{hint}; llmbus has {}, and `mock_response` \
         deployments need no provider",
        all.join(", ")
    ))
}

/// One deployment, ready or not: what [`prepare`] makes of a `model_list` entry.
#[derive(Debug)]
pub struct Prepared {
    /// How to call it; a [`misconfigured::Misconfigured`] provider when it cannot work.
    pub provider: Arc<dyn Provider>,
    /// The model name the provider knows (with `*` for a wildcard deployment).
    pub upstream_model: String,
    /// Why it cannot work (`None` when it can); it is kept but takes no traffic.
    pub misconfigured: Option<String>,
    /// Why its calls would carry no credentials, when they would (a warning, not fatal).
    pub missing_credentials: Option<String>,
}

impl Prepared {
    /// Logs what is wrong with deployment `id`, one warning line at most.
    pub fn warn(&self, id: &str, location: Option<&str>) {
        let at = location.map_or(String::new(), |l| format!("{l}: "));
        if let Some(reason) = &self.misconfigured {
            tracing::warn!(deployment = %id, "{at}deployment `{id}` is misconfigured and takes no traffic: {reason}");
        } else if let Some(reason) = &self.missing_credentials {
            tracing::warn!(deployment = %id, "{at}deployment `{id}` has {reason}; its calls go upstream without credentials");
        }
    }
}

/// Builds the deployment of `entry` from `params` (its `litellm_params`, with the settings
/// that apply to every deployment merged in). A deployment that cannot work — marked by the
/// loader ([`crate::config::ModelEntry::misconfigured`]) or refused by its provider (unknown
/// provider, no `api_base` where the provider has no default, no AWS region, ...) — gets a
/// [`misconfigured::Misconfigured`] provider and the reason, instead of stopping the worker.
pub fn prepare(
    entry: &crate::config::ModelEntry,
    params: &crate::config::LitellmParams,
    http: &reqwest::Client,
) -> Prepared {
    prepare_with_env(entry, params, http, &|name| std::env::var(name).ok())
}

/// [`prepare`] with `env` in place of the process environment.
pub fn prepare_with_env(
    entry: &crate::config::ModelEntry,
    params: &crate::config::LitellmParams,
    http: &reqwest::Client,
    env: &dyn Fn(&str) -> Option<String>,
) -> Prepared {
    let built = match &entry.misconfigured {
        Some(reason) => Err(reason.clone()),
        None => build_with_env(params, http, env).map_err(|e| e.to_string()),
    };
    match built {
        Ok((provider, upstream_model)) => Prepared {
            missing_credentials: provider.missing_credentials(),
            provider,
            upstream_model,
            misconfigured: None,
        },
        Err(reason) => Prepared {
            provider: Arc::new(misconfigured::Misconfigured::new(reason.clone())),
            upstream_model: params.model.clone(),
            misconfigured: Some(reason),
            missing_credentials: None,
        },
    }
}

/// Builds the provider of one deployment from its `litellm_params`.
///
/// `http` is the shared client pool.
pub fn build(
    params: &crate::config::LitellmParams,
    http: &reqwest::Client,
) -> Result<(Arc<dyn Provider>, String), crate::config::ConfigError> {
    build_with_env(params, http, &|name| std::env::var(name).ok())
}

/// [`build`] with `env` in place of the process environment.
pub fn build_with_env(
    params: &crate::config::LitellmParams,
    http: &reqwest::Client,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Arc<dyn Provider>, String), crate::config::ConfigError> {
    if let Some(text) = &params.mock_response {
        return Ok((
            Arc::new(mock::MockProvider::new(text.clone())),
            params.model.clone(),
        ));
    }
    // Native wire formats first; everything else is the OpenAI-compatible family.
    match crate::config::provider_prefix(&params.model) {
        Some("anthropic") => anthropic::build_with_env(params, http, env),
        Some("gemini") => gemini::build_with_env(params, http, env),
        Some("vertex_ai") => gemini::build_vertex_with_env(params, http, env),
        Some("bedrock") => bedrock::build_with_env(params, http, env),
        Some("cohere_chat") | Some("cohere") => {
            json_api::JsonProvider::build(&cohere::API, params, http, env)
        }
        Some("ollama") | Some("ollama_chat") => {
            json_api::JsonProvider::build(&ollama::API, params, http, env)
        }
        _ => openai_compat::build_with_env(params, http, env),
    }
}
