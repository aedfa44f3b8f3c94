//! Logs and metrics: the `tracing` subscriber (text or JSON) and the Prometheus exporter, with
//! the names of every metric llmbus records in one place.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Jobs answered, by `model_group`, `deployment` and `status`.
pub const REQUESTS: &str = "llmbus_requests_total";
/// Receipt to reply, seconds, by `model_group` and `status`.
pub const REQUEST_SECONDS: &str = "llmbus_request_duration_seconds";
/// One upstream call, seconds, by `deployment`.
pub const UPSTREAM_SECONDS: &str = "llmbus_upstream_duration_seconds";
/// Time to the first content chunk of a stream, seconds, by `model_group`.
pub const TTFT_SECONDS: &str = "llmbus_time_to_first_token_seconds";
/// End-to-end time minus upstream time, seconds: what llmbus itself adds.
pub const OVERHEAD_SECONDS: &str = "llmbus_overhead_seconds";
/// Prompt tokens, by `model_group` and `deployment`.
pub const TOKENS_IN: &str = "llmbus_prompt_tokens_total";
/// Completion tokens, by `model_group` and `deployment`.
pub const TOKENS_OUT: &str = "llmbus_completion_tokens_total";
/// Spend in USD so far (a gauge that only grows), by `model_group` and `deployment`.
pub const COST_USD: &str = "llmbus_spend_usd";
/// Jobs running in this worker.
pub const IN_FLIGHT: &str = "llmbus_jobs_in_flight";
/// Jobs refused because the worker was full.
pub const REJECTED: &str = "llmbus_jobs_rejected_total";
/// Calls in flight on a deployment, by `deployment`.
pub const DEPLOYMENT_IN_FLIGHT: &str = "llmbus_deployment_in_flight";
/// Requests used of the deployment's RPM limit in the last minute, by `deployment`.
pub const DEPLOYMENT_RPM_USED: &str = "llmbus_deployment_rpm_used";
/// Tokens used of the deployment's TPM limit in the last minute, by `deployment`.
pub const DEPLOYMENT_TPM_USED: &str = "llmbus_deployment_tpm_used";
/// Upstream attempts that failed, by `deployment` and `class`.
pub const UPSTREAM_FAILURES: &str = "llmbus_upstream_failures_total";
/// Health of a deployment: 0 healthy, 1 cooling down, 2 half-open; by `deployment`.
pub const DEPLOYMENT_STATE: &str = "llmbus_deployment_state";
/// Cooldowns started, by `deployment`.
pub const COOLDOWNS: &str = "llmbus_cooldowns_total";
/// Fallbacks to another model group, by `model_group` (the one failed over from) and
/// `result` (`success` or `failure`).
pub const FALLBACKS: &str = "llmbus_fallbacks_total";
/// Retries made, by `model_group`.
pub const RETRIES: &str = "llmbus_retries_total";

/// Latency buckets in seconds, from 50 µs (overhead) to 10 minutes (long generations).
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global `tracing` subscriber; `RUST_LOG` sets the filter (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Serves Prometheus metrics on `addr` (`GET /metrics`), with explicit histogram buckets.
pub fn install_metrics(addr: SocketAddr) -> Result<(), String> {
    let mut builder = PrometheusBuilder::new().with_http_listener(addr);
    for name in [
        REQUEST_SECONDS,
        UPSTREAM_SECONDS,
        TTFT_SECONDS,
        OVERHEAD_SECONDS,
    ] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), LATENCY_BUCKETS)
            .map_err(|e| e.to_string())?;
    }
    builder
        .install()
        .map_err(|e| format!("metrics listener on {addr}: {e}"))?;
    describe();
    Ok(())
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS,
        "Jobs answered, by model group, deployment and status"
    );
    describe_histogram!(REQUEST_SECONDS, Unit::Seconds, "Receipt to reply");
    describe_histogram!(UPSTREAM_SECONDS, Unit::Seconds, "One upstream call");
    describe_histogram!(TTFT_SECONDS, Unit::Seconds, "Time to first content chunk");
    describe_histogram!(
        OVERHEAD_SECONDS,
        Unit::Seconds,
        "End-to-end minus upstream time"
    );
    describe_counter!(TOKENS_IN, "Prompt tokens");
    describe_counter!(TOKENS_OUT, "Completion tokens");
    describe_gauge!(COST_USD, Unit::Count, "Spend in US dollars so far");
    describe_gauge!(IN_FLIGHT, "Jobs running in this worker");
    describe_counter!(REJECTED, "Jobs refused because the worker was full");
    describe_gauge!(DEPLOYMENT_IN_FLIGHT, "Calls in flight on a deployment");
    describe_gauge!(
        DEPLOYMENT_RPM_USED,
        "Requests in the deployment's RPM window"
    );
    describe_gauge!(DEPLOYMENT_TPM_USED, "Tokens in the deployment's TPM window");
    describe_counter!(UPSTREAM_FAILURES, "Failed upstream attempts by error class");
    describe_counter!(RETRIES, "Retries made");
    describe_gauge!(DEPLOYMENT_STATE, "0 healthy, 1 cooling down, 2 half-open");
    describe_counter!(COOLDOWNS, "Cooldowns started");
    describe_counter!(FALLBACKS, "Fallbacks to another model group, by result");
}
