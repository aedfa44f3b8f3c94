//! Test support shared by the integration tests: a private `nats-server` per test, a fake
//! LLM provider that speaks the real wire formats over loopback HTTP, and a whole gateway
//! (server + worker + client) in one call.
#![allow(dead_code)]

pub mod chaos;
pub mod chaos_nats;
pub mod command;
pub mod fake_anthropic;
pub mod fake_gemini;
pub mod fake_native;
pub mod fake_provider;
pub mod gateway;
pub mod http_front;
pub mod llmbus_process;
pub mod nats_binaries;
pub mod nats_cluster;
pub mod nats_flavour;
pub mod nats_server;
pub mod poll;
pub mod pyenv;
pub mod run;
pub mod shell;
pub mod shipped_nats;
pub mod up;
pub mod worker_process;
