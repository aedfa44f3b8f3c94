//! The NATS contract: subject names, header names, the OpenAI-shaped bodies that travel on
//! them, and the OpenAI error body. Everything a client of llmbus sees on the wire is defined
//! here, and the JSON Schemas in `schemas/` are generated from these types.

pub mod error;
pub mod headers;
pub mod openai;
pub mod ratelimit;
pub mod schema;
pub mod service;
pub mod subjects;
pub mod usage;

pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use schema::schemas;
pub use subjects::Subjects;
