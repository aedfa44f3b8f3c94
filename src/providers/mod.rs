//! Provider adapters: plain code (not actors) that turns an OpenAI-shaped request into one
//! provider's HTTP request, and that provider's response or stream back into OpenAI shapes.
//!
//! One [`Provider`] value exists per deployment and holds everything the deployment's calls
//! need (base URL, key, headers). Every adapter shares one `reqwest` client pool.

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
pub mod mock;
pub mod ollama;
pub mod openai_compat;
pub mod params;
pub mod sse;

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

/// The provider prefix of a `litellm_params.model` (`anthropic` for `anthropic/claude-…`),
/// or `None` for a bare model name (which means OpenAI).
pub fn prefix(model: &str) -> Option<&str> {
    model.split_once('/').map(|(p, _)| p)
}

/// Builds the provider of one deployment from its `litellm_params`.
///
/// `http` is the shared client pool.
pub fn build(
    params: &crate::config::LitellmParams,
    http: &reqwest::Client,
) -> Result<(Arc<dyn Provider>, String), crate::config::ConfigError> {
    if let Some(text) = &params.mock_response {
        return Ok((
            Arc::new(mock::MockProvider::new(text.clone())),
            params.model.clone(),
        ));
    }
    // Native wire formats first; everything else is the OpenAI-compatible family.
    match prefix(&params.model) {
        Some("anthropic") => anthropic::build(params, http),
        Some("gemini") => gemini::build(params, http),
        Some("vertex_ai") => gemini::build_vertex(params, http),
        Some("bedrock") => bedrock::build(params, http),
        Some("cohere_chat") | Some("cohere") => cohere::build(params, http),
        Some("ollama") | Some("ollama_chat") => ollama::build(params, http),
        _ => openai_compat::build(params, http),
    }
}
