//! Test support shared by the integration tests: a private `nats-server` per test and a fake
//! LLM provider that speaks the real wire formats over loopback HTTP.
#![allow(dead_code)]

pub mod fake_provider;
pub mod nats_server;
