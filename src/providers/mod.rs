//! Provider adapters: plain code (not actors) that turns an OpenAI-shaped request into one
//! provider's HTTP request, and that provider's response or stream back into OpenAI shapes.
//!
//! One [`Provider`] value exists per deployment and holds everything the deployment's calls
//! need (base URL, key, headers). Every adapter shares one `reqwest` client pool.

use std::{sync::Arc, time::Duration};

use futures::{future::BoxFuture, stream::BoxStream};

use crate::wire::openai::{ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse};

pub mod error;
pub mod http;
pub mod mock;
pub mod openai_compat;
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
    openai_compat::build(params, http)
}
