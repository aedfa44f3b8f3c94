//! AWS Bedrock through the Converse API (`bedrock/MODEL_ID`, also `bedrock/converse/MODEL_ID`).
//!
//! - Chat: `POST {endpoint}/model/{modelId}/converse`, streams from `/converse-stream`
//!   (binary event-stream frames, see [`stream`]). The endpoint is
//!   `https://bedrock-runtime.{region}.amazonaws.com` unless `api_base` names another.
//! - Region: `aws_region_name`, else `AWS_REGION_NAME`, `AWS_REGION`, `AWS_DEFAULT_REGION`.
//! - Credentials: `aws_access_key_id`/`aws_secret_access_key`/`aws_session_token`, else the
//!   `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` variables, signed with
//!   SigV4 (service `bedrock`, see [`sign`]); or a Bedrock API key (`api_key`, else
//!   `AWS_BEARER_TOKEN_BEDROCK`) sent as a bearer token. Missing credentials are not a
//!   configuration error: each call fails with an authentication error instead.
//! - Embeddings: InvokeModel for Titan text embeddings (`amazon.titan-embed-*`, one call per
//!   input) and Cohere embeddings (`cohere.embed-*`, one call).
//!
//! [`request`] converts the request, [`response`] the answer, [`error`] the errors.

use std::{fmt, sync::Arc, time::SystemTime};

use futures::{StreamExt, future::BoxFuture};
use reqwest::Url;
use serde_json::Value;

use super::{CallContext, ChunkStream, ErrorClass, Provider, ProviderError, http, upstream};
use crate::{
    config::{ConfigError, LitellmParams, Secret},
    wire::openai::{
        ChatCompletionRequest, ChatCompletionResponse, EmbeddingRequest, EmbeddingResponse,
    },
};

mod embed;
pub mod error;
pub mod request;
pub mod response;
pub mod sign;
pub mod stream;

use sign::{AwsAuth, AwsKeys};

/// Builds the provider of one deployment; the upstream model is the Bedrock model id.
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
    let env = upstream::non_blank(env);
    let model = params.model.trim();
    let id = model.strip_prefix("bedrock/").unwrap_or(model);
    let id = id.strip_prefix("converse/").unwrap_or(id);
    if id.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "model `{model}` names no Bedrock model id"
        )));
    }
    if id.starts_with("invoke/") {
        return Err(ConfigError::Invalid(format!(
            "model `{model}`: llmbus calls Bedrock through the Converse API only; drop `invoke/`"
        )));
    }
    let region = params
        .aws_region_name
        .clone()
        .or_else(|| env("AWS_REGION_NAME"))
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "model `{model}`: Bedrock needs `aws_region_name` (or AWS_REGION)"
            ))
        })?;
    let base = params
        .api_base
        .clone()
        .unwrap_or_else(|| format!("https://bedrock-runtime.{region}.amazonaws.com"));
    let base = upstream::http_base(&base).ok_or_else(|| upstream::not_http(model))?;
    let secret = |s: &Option<Secret>, var: &str| upstream::api_key(s, &env, &[var]);
    let auth = match (
        secret(&params.aws_access_key_id, "AWS_ACCESS_KEY_ID"),
        secret(&params.aws_secret_access_key, "AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(access_key_id), Some(secret_access_key)) => AwsAuth::Keys(AwsKeys {
            access_key_id,
            secret_access_key,
            session_token: secret(&params.aws_session_token, "AWS_SESSION_TOKEN"),
        }),
        _ => match secret(&params.api_key, "AWS_BEARER_TOKEN_BEDROCK") {
            Some(token) => AwsAuth::Bearer(token),
            None => AwsAuth::Missing,
        },
    };
    let provider = Bedrock {
        http: http.clone(),
        base,
        region,
        auth,
        extra_headers: params
            .extra_headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        drop_params: params.drop_params.unwrap_or(false),
    };
    Ok((Arc::new(provider), id.to_owned()))
}

/// The adapter of one Bedrock deployment.
pub struct Bedrock {
    http: reqwest::Client,
    base: Url,
    region: String,
    auth: AwsAuth,
    extra_headers: Vec<(String, String)>,
    drop_params: bool,
}

impl fmt::Debug for Bedrock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bedrock")
            .field("base", &self.base.as_str())
            .field("region", &self.region)
            .field("auth", &self.auth)
            .finish()
    }
}

/// Percent-encodes a URI label as the AWS SDKs do: everything but unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`), so `anthropic.claude-v2:1` becomes `anthropic.claude-v2%3A1`.
pub fn encode_label(label: &str) -> String {
    let mut out = String::with_capacity(label.len());
    for byte in label.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Bedrock {
    /// `{base}/model/{modelId}/{action}`.
    pub fn url(&self, model_id: &str, action: &str) -> Url {
        let mut url = self.base.clone();
        let path = format!(
            "{}/model/{}/{action}",
            url.path().trim_end_matches('/'),
            encode_label(model_id)
        );
        url.set_path(&path);
        url
    }

    fn redact(&self, err: ProviderError) -> ProviderError {
        self.auth
            .secrets()
            .into_iter()
            .fold(err, |e, s| e.redact(Some(s)))
    }

    /// Signs and posts `body` to `url`.
    async fn post(
        &self,
        url: Url,
        body: Vec<u8>,
        accept: &str,
        ctx: &CallContext,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut headers: Vec<(String, String)> = vec![
            ("content-type".into(), "application/json".into()),
            ("accept".into(), accept.into()),
        ];
        headers.extend(self.extra_headers.iter().cloned());
        let signed: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let auth = self.auth.headers(
            "POST",
            url.as_str(),
            &signed,
            &body,
            &self.region,
            SystemTime::now(),
        )?;
        let mut builder = self.http.post(url).body(body);
        for (name, value) in headers.iter().chain(auth.iter()) {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some(tp) = &ctx.traceparent {
            builder = builder.header("traceparent", tp.as_str());
        }
        let response = builder.send().await.map_err(http::error_from_reqwest)?;
        http::successful(response, error::from_response).await
    }

    async fn complete_inner(
        &self,
        request: &ChatCompletionRequest,
        ctx: &CallContext,
    ) -> Result<ChatCompletionResponse, ProviderError> {
        let body = request::converse_body(request, self.drop_params)?;
        let url = self.url(&ctx.upstream_model, "converse");
        let response = self
            .post(url, body.to_string().into_bytes(), "application/json", ctx)
            .await?;
        let bytes = response.bytes().await.map_err(http::error_from_reqwest)?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ProviderError::new(
                ErrorClass::InvalidResponse,
                format!("the Converse response is not JSON: {e}"),
            )
        })?;
        response::completion(&value, &ctx.upstream_model)
    }

    async fn open_stream(
        &self,
        request: &ChatCompletionRequest,
        ctx: &CallContext,
    ) -> Result<reqwest::Response, ProviderError> {
        let body = request::converse_body(request, self.drop_params)?;
        let url = self.url(&ctx.upstream_model, "converse-stream");
        self.post(
            url,
            body.to_string().into_bytes(),
            "application/vnd.amazon.eventstream",
            ctx,
        )
        .await
    }
}

impl Provider for Bedrock {
    fn missing_credentials(&self) -> Option<String> {
        matches!(self.auth, AwsAuth::Missing).then(|| {
            "no AWS credentials: set `aws_access_key_id` and `aws_secret_access_key` (or the \
             environment variables AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or a Bedrock \
             API key in `api_key` (or AWS_BEARER_TOKEN_BEDROCK)"
                .to_owned()
        })
    }

    fn complete<'a>(
        &'a self,
        request: &'a ChatCompletionRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChatCompletionResponse, ProviderError>> {
        Box::pin(async move {
            http::within(ctx, "answer", None, self.complete_inner(request, ctx))
                .await
                .map_err(|e| self.redact(e))
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
                None,
                self.open_stream(request, ctx),
            )
            .await
            .map_err(|e| self.redact(e))?;
            let info = stream::StreamInfo {
                model: ctx.upstream_model.clone(),
                include_usage: request.include_usage(),
            };
            let bytes = response
                .bytes_stream()
                .map(|r| r.map_err(http::error_from_reqwest));
            let secrets = self.auth.secrets().into_iter().map(str::to_owned).collect();
            Ok(stream::chunks(bytes, info, secrets))
        })
    }

    fn embed<'a>(
        &'a self,
        request: &'a EmbeddingRequest,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<EmbeddingResponse, ProviderError>> {
        Box::pin(async move {
            http::within(ctx, "embeddings", None, self.embed_inner(request, ctx))
                .await
                .map_err(|e| self.redact(e))
        })
    }
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

    fn built(p: &LitellmParams, env: &[(&str, &str)]) -> Result<(String, String), ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        build_with_env(p, &reqwest::Client::new(), move |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .map(|(p, m)| (format!("{p:?}"), m))
    }

    #[test]
    fn region_and_credentials_come_from_params_or_env() {
        let err = built(&params("bedrock/anthropic.claude-v2"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("aws_region_name"), "{err}");
        let env = [
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "SECRET"),
        ];
        let (debug, model) =
            built(&params("bedrock/converse/anthropic.claude-v2:1"), &env).unwrap();
        assert_eq!(model, "anthropic.claude-v2:1");
        assert!(debug.contains("https://bedrock-runtime.eu-west-1.amazonaws.com/"));
        assert!(
            debug.contains("Keys(***)") && !debug.contains("SECRET"),
            "{debug}"
        );
        let (debug, _) = built(&params("bedrock/m"), &[("AWS_REGION", "us-east-1")]).unwrap();
        assert!(debug.contains("Missing"));
        assert!(built(&params("bedrock/invoke/m"), &env).is_err());
    }

    #[test]
    fn model_ids_are_encoded_in_the_path() {
        assert_eq!(
            encode_label("anthropic.claude-v2:1"),
            "anthropic.claude-v2%3A1"
        );
        assert_eq!(
            encode_label("arn:aws:bedrock:us-east-1:1:inference-profile/x"),
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx"
        );
    }
}
