//! The chat completion kind (`llm.completion`): an OpenAI Chat Completions body, answered
//! whole or as a stream of `chat.completion.chunk`s.

use futures::future::BoxFuture;

use super::{ChunkStream, Kind, Parsed};
use crate::{
    limits::Demand,
    providers::{CallContext, Provider, ProviderError},
    runtime::job::parse,
    wire::{
        ApiError,
        openai::{
            ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, StreamOptions,
            Usage,
        },
    },
};

/// A chat completion.
pub(crate) struct Chat;

impl Kind for Chat {
    type Body = ChatCompletionRequest;
    type Answer = ChatCompletionResponse;
    type Chunk = ChatCompletionChunk;

    fn parse(payload: &[u8]) -> Result<Parsed<Self::Body>, ApiError> {
        let mut body = parse::chat(payload)?;
        let stream = body.is_stream();
        let client_wants_usage = body.include_usage();
        if stream && !client_wants_usage {
            // Ask for usage anyway so the cost is right; the client does not see it.
            let opts = body.stream_options.get_or_insert_with(|| StreamOptions {
                include_usage: None,
                extra: Default::default(),
            });
            opts.include_usage = Some(true);
        }
        let fallbacks = parse::take_fallbacks(&mut body.extra);
        let demand = Demand::of_chat(&body);
        Ok(Parsed {
            body,
            stream,
            client_wants_usage,
            fallbacks,
            demand,
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
        provider.complete(body, ctx)
    }

    fn stream<'a>(
        provider: &'a dyn Provider,
        body: &'a Self::Body,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChunkStream<Self::Chunk>, ProviderError>> {
        provider.stream(body, ctx)
    }

    fn usage(answer: &mut Self::Answer, prompt_tokens: u64) -> Usage {
        let usage = answer.usage.clone().unwrap_or_else(|| {
            let text: usize = answer
                .choices
                .iter()
                .map(|c| c.message.text_content().len())
                .sum();
            Usage::new(prompt_tokens, (text as u64).div_ceil(4))
        });
        if answer.usage.is_none() {
            answer.usage = Some(usage.clone());
        }
        usage
    }
}

impl super::Chunk for ChatCompletionChunk {
    fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }

    fn text_len(&self) -> usize {
        self.choices
            .iter()
            .map(|c| c.delta.content.as_deref().map_or(0, str::len))
            .sum()
    }

    fn has_content(&self) -> bool {
        ChatCompletionChunk::has_content(self)
    }

    fn without_usage(mut self) -> Option<Self> {
        if self.choices.is_empty() && self.usage.is_some() {
            return None;
        }
        self.usage = None;
        Some(self)
    }
}
