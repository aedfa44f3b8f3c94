//! llmbus: an LLM gateway on a NATS bus. (Crate docs: TODO, written with the actors.)

pub mod actors;
pub mod config;
pub mod limits;
pub mod pricing;
pub mod providers;
pub mod telemetry;
pub mod wire;
