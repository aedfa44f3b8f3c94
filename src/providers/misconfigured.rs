//! The provider of a deployment that cannot work (an unknown provider, no `api_base` where the
//! provider has no default, no AWS region, an environment variable that is not set, ...).
//!
//! The worker keeps such a deployment, so that one broken entry does not stop the gateway: it
//! shows in `llm.deployments` as `misconfigured` with the reason, and the router never sends
//! it a job while its group has another deployment. A group with nothing else answers
//! [`group_error`]. Should a call reach this provider anyway, it fails the same way, with a
//! 500. The reasons name keys and environment variables, never a value.

use futures::future::BoxFuture;

use super::{CallContext, ChunkStream, ErrorClass, Provider, ProviderError};
use crate::wire::{
    ApiError,
    openai::{ChatCompletionRequest, ChatCompletionResponse, EmbeddingRequest, EmbeddingResponse},
};

/// A provider whose every call fails with the deployment's reason.
#[derive(Debug, Clone)]
pub struct Misconfigured {
    reason: String,
}

impl Misconfigured {
    /// A provider that refuses every call because of `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// Why the deployment cannot work.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    fn error(&self) -> ProviderError {
        ProviderError::new(
            ErrorClass::InternalServer,
            format!("this deployment is misconfigured: {}", self.reason),
        )
        .with_status(500)
    }
}

impl Provider for Misconfigured {
    fn complete<'a>(
        &'a self,
        _request: &'a ChatCompletionRequest,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChatCompletionResponse, ProviderError>> {
        let e = self.error();
        Box::pin(async move { Err(e) })
    }

    fn stream<'a>(
        &'a self,
        _request: &'a ChatCompletionRequest,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> {
        let e = self.error();
        Box::pin(async move { Err(e) })
    }

    fn embed<'a>(
        &'a self,
        _request: &'a EmbeddingRequest,
        _ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<EmbeddingResponse, ProviderError>> {
        let e = self.error();
        Box::pin(async move { Err(e) })
    }
}

/// The answer for a model group none of whose deployments can work: a 500 (the gateway's
/// configuration is at fault, retrying will not help) naming each deployment and its reason.
/// `misconfigured` holds `(deployment id, reason)` pairs.
pub fn group_error(group: &str, misconfigured: &[(&str, &str)]) -> ApiError {
    let each: Vec<String> = misconfigured
        .iter()
        .map(|(id, reason)| format!("deployment `{id}` is misconfigured: {reason}"))
        .collect();
    ApiError::internal(format!(
        "model group `{group}` has no deployment that can serve: {}",
        each.join("; ")
    ))
    .with_code("deployment_misconfigured")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::openai::ChatCompletionRequest;
    use std::time::Duration;

    #[tokio::test]
    async fn every_call_fails_with_the_reason() {
        let p = Misconfigured::new("environment variable `X` is not set");
        let request: ChatCompletionRequest =
            serde_json::from_value(serde_json::json!({"model": "m", "messages": []})).unwrap();
        let ctx = CallContext {
            upstream_model: "m".into(),
            timeout: Duration::from_secs(1),
            traceparent: None,
        };
        let e = p.complete(&request, &ctx).await.unwrap_err();
        assert_eq!(e.status, Some(500));
        assert!(
            e.message
                .contains("misconfigured: environment variable `X`")
        );
        assert!(p.stream(&request, &ctx).await.is_err());
        assert_eq!(p.reason(), "environment variable `X` is not set");
    }

    #[test]
    fn the_group_error_names_every_deployment() {
        let e = group_error(
            "claude",
            &[("claude-1", "no region"), ("claude-2", "no key")],
        );
        assert_eq!(e.status, 500);
        assert_eq!(e.code.as_deref(), Some("deployment_misconfigured"));
        assert!(e.message.contains("`claude-1` is misconfigured: no region"));
        assert!(e.message.contains("`claude-2` is misconfigured: no key"));
    }
}
