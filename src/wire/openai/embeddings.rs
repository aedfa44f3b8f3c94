//! OpenAI Embeddings shapes: the request body published to `llm.embedding` and its reply.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Extra, Usage};

/// An OpenAI embeddings request, as published to `llm.embedding`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmbeddingRequest {
    /// A model group name from the configuration (or an alias of one).
    pub model: String,
    /// What to embed: a string, a list of strings, or token arrays.
    pub input: EmbeddingInput,
    /// `float` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<String>,
    /// The number of dimensions, for models that can shorten their embeddings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// An end-user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Every other field, passed through to OpenAI-compatible upstreams as it came.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The `input` of an embeddings request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One token array.
    Tokens(Vec<u32>),
    /// Several token arrays.
    TokenArrays(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// The texts to embed (token arrays have none).
    pub fn texts(&self) -> Vec<&str> {
        match self {
            EmbeddingInput::Text(t) => vec![t.as_str()],
            EmbeddingInput::Texts(ts) => ts.iter().map(String::as_str).collect(),
            EmbeddingInput::Tokens(_) | EmbeddingInput::TokenArrays(_) => Vec::new(),
        }
    }

    /// How many embeddings the request asks for.
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::Text(_) | EmbeddingInput::Tokens(_) => 1,
            EmbeddingInput::Texts(ts) => ts.len(),
            EmbeddingInput::TokenArrays(ts) => ts.len(),
        }
    }

    /// True when nothing is to be embedded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The reply to an embeddings request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EmbeddingResponse {
    /// Always `list`.
    pub object: String,
    /// One embedding per input, in input order.
    pub data: Vec<Embedding>,
    /// The upstream model that answered.
    pub model: String,
    /// Token counts (`completion_tokens` is 0).
    #[serde(default)]
    pub usage: Usage,
    /// Other fields, passed through.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Embedding {
    /// Always `embedding`.
    pub object: String,
    /// Which input it embeds.
    pub index: u32,
    /// The vector (a list of floats, or a base64 string with `encoding_format: base64`).
    pub embedding: Value,
}
