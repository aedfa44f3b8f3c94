//! Bedrock embeddings through InvokeModel: Titan text embeddings (`amazon.titan-embed-*`,
//! `{"inputText", "dimensions"}` → `{"embedding", "inputTextTokenCount"}`, one call per input)
//! and Cohere embeddings (`cohere.embed-*`, `{"texts", "input_type"}` → `{"embeddings"}`, one
//! call, the token count from `X-Amzn-Bedrock-Input-Token-Count`).

use serde_json::{Value, json};

use super::Bedrock;
use crate::{
    providers::{CallContext, ErrorClass, ProviderError, http, json_api::embedding_list},
    wire::openai::{EmbeddingInput, EmbeddingRequest, EmbeddingResponse},
};

impl Bedrock {
    async fn invoke(
        &self,
        model: &str,
        body: Value,
        ctx: &CallContext,
    ) -> Result<(Value, Option<u64>), ProviderError> {
        let response = self
            .post(
                self.url(model, "invoke"),
                body.to_string().into_bytes(),
                "application/json",
                ctx,
            )
            .await?;
        let tokens = response
            .headers()
            .get("x-amzn-bedrock-input-token-count")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let bytes = response.bytes().await.map_err(http::error_from_reqwest)?;
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            ProviderError::new(
                ErrorClass::InvalidResponse,
                format!("the InvokeModel response is not JSON: {e}"),
            )
        })?;
        Ok((value, tokens))
    }

    pub(super) async fn embed_inner(
        &self,
        request: &EmbeddingRequest,
        ctx: &CallContext,
    ) -> Result<EmbeddingResponse, ProviderError> {
        let model = ctx.upstream_model.as_str();
        let texts = match &request.input {
            EmbeddingInput::Text(t) => vec![t.as_str()],
            EmbeddingInput::Texts(ts) => ts.iter().map(String::as_str).collect(),
            _ => {
                return Err(ProviderError::new(
                    ErrorClass::BadRequest,
                    "bedrock embeddings take text, not token arrays",
                )
                .with_status(400));
            }
        };
        let mut vectors = Vec::with_capacity(texts.len());
        let mut prompt_tokens = 0;
        if model.starts_with("amazon.titan-embed") {
            for text in texts {
                let mut body = json!({ "inputText": text });
                if let Some(d) = request.dimensions {
                    body["dimensions"] = d.into();
                }
                let (value, _) = self.invoke(model, body, ctx).await?;
                prompt_tokens += value
                    .get("inputTextTokenCount")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                vectors.push(value.get("embedding").cloned().ok_or_else(|| {
                    ProviderError::new(ErrorClass::InvalidResponse, "no `embedding` in the answer")
                })?);
            }
        } else if model.starts_with("cohere.embed") {
            let input_type = request
                .extra
                .get("input_type")
                .cloned()
                .unwrap_or_else(|| "search_document".into());
            let body = json!({ "texts": texts, "input_type": input_type });
            let (value, tokens) = self.invoke(model, body, ctx).await?;
            prompt_tokens = tokens.unwrap_or(0);
            let list = value
                .get("embeddings")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    ProviderError::new(ErrorClass::InvalidResponse, "no `embeddings` in the answer")
                })?;
            vectors.extend(list.iter().cloned());
        } else {
            return Err(ProviderError::new(
                ErrorClass::BadRequest,
                format!("llmbus embeds with Bedrock's Titan and Cohere models, not `{model}`"),
            )
            .with_status(400));
        }
        Ok(embedding_list(vectors, model, prompt_tokens))
    }
}
