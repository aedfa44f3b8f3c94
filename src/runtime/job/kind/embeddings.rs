//! The embeddings kind (`llm.embedding`): an OpenAI Embeddings body, answered whole (it never
//! streams).

use futures::future::BoxFuture;

use super::{ChunkStream, Kind, NoChunk, Parsed};
use crate::{
    limits::{Demand, estimate_text_tokens},
    providers::{CallContext, ErrorClass, Provider, ProviderError},
    runtime::job::parse,
    wire::{
        ApiError,
        openai::{EmbeddingRequest, EmbeddingResponse, Usage},
    },
};

/// Embeddings.
pub(crate) struct Embeddings;

impl Kind for Embeddings {
    type Body = EmbeddingRequest;
    type Answer = EmbeddingResponse;
    type Chunk = NoChunk;

    fn parse(payload: &[u8]) -> Result<Parsed<Self::Body>, ApiError> {
        let mut body = parse::embedding(payload)?;
        let fallbacks = parse::take_fallbacks(&mut body.extra);
        let prompt_tokens = body
            .input
            .texts()
            .iter()
            .map(|t| estimate_text_tokens(t))
            .sum();
        Ok(Parsed {
            body,
            stream: false,
            client_wants_usage: false,
            fallbacks,
            demand: Demand::input_only(prompt_tokens),
        })
    }

    fn model(body: &Self::Body) -> &str {
        &body.model
    }

    fn user(body: &Self::Body) -> Option<String> {
        body.user.clone()
    }

    fn call<'a>(
        provider: &'a dyn Provider,
        body: &'a Self::Body,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Self::Answer, ProviderError>> {
        provider.embed(body, ctx)
    }

    fn stream<'a>(
        _: &'a dyn Provider,
        _: &'a Self::Body,
        _: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChunkStream<Self::Chunk>, ProviderError>> {
        // `parse` never asks for a stream.
        Box::pin(async {
            Err(ProviderError::new(
                ErrorClass::BadRequest,
                "embeddings do not stream",
            ))
        })
    }

    fn usage(answer: &mut Self::Answer, prompt_tokens: u64) -> Usage {
        if answer.usage.prompt_tokens == 0 {
            answer.usage = Usage::new(prompt_tokens, 0);
        }
        answer.usage.clone()
    }
}
