//! The integration tests, one crate: each former `tests/<name>.rs` is a module here, so
//! `cargo test` builds and links one test binary instead of one per file.
//!
//! **Adding tests:** put them in `tests/it/<name>.rs` (start it with a `//!` doc, reach the
//! shared helpers as `crate::support`) and add `mod <name>;` below, in order. Run one module
//! with `cargo test --test it <name>::` (a filter matches any part of a test's path:
//! `config::` runs `cluster_config::` too; add `-- --exact` for one test by its full path).
//!
//! The tests of every module run concurrently in this one process. A test that changes
//! process-global state — installs a metrics recorder or a global allocator, calls
//! `std::env::set_var` or `set_current_dir`, measures the process's own memory, or needs the
//! CPU to itself — gets a file of its own beside this folder instead (`tests/metrics.rs`: the
//! Prometheus recorder; `tests/memory.rs`: a counting allocator). `cargo test` runs 8 at a
//! time whatever the cores (`.cargo/config.toml`), so a test waits for events with a generous
//! patience rather than assuming the CPU is free.

#[path = "../support/mod.rs"]
mod support;

mod anthropic;
mod bedrock;
mod capacity;
mod capacity_returns;
mod chaos;
mod cli;
mod cluster;
mod cluster_config;
mod cluster_lifecycle;
mod cluster_quota;
mod cluster_state;
mod cluster_workers;
mod cohere;
mod completion;
mod config;
mod config_gateway;
mod config_problems;
mod deploy;
mod discovery;
mod docs;
mod embeddings;
mod errors;
mod examples;
mod failover;
mod faults;
mod flavours;
mod fuzz_regressions;
mod gemini;
mod graceful;
mod hostile;
mod http;
mod http_doors;
mod http_inprocess;
mod http_processes;
mod layering;
mod litellm_configs;
mod nats_auth;
mod nats_cluster;
mod nats_restart;
mod node_loss;
mod ollama;
mod prices;
mod providers;
mod python;
mod routing;
mod schemas;
mod store;
mod up;
mod upstream_says_panic;
mod usage;
mod usage_cli;
