//! Logs and metrics, the parts every layer uses: the names of every metric llmbus records, in
//! one place (the Grafana dashboard in `deploy/` charts each, `tests/it/deploy.rs` checks it),
//! their help text and histogram buckets, and the `tracing` subscriber ([`init_logging`]:
//! text or JSON lines). The worker's operations HTTP server (`/metrics`, `/healthz`,
//! `/readyz`) installs the Prometheus recorder with these: `worker::ops`.

mod logs;

pub use logs::{LogFormat, init_logging, init_logging_filter};

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
/// Health of a deployment: 0 healthy, 1 cooling down, 2 half-open, 3 misconfigured; by
/// `deployment`.
pub const DEPLOYMENT_STATE: &str = "llmbus_deployment_state";
/// Cooldowns started, by `deployment`.
pub const COOLDOWNS: &str = "llmbus_cooldowns_total";
/// Fallbacks to another model group, by `model_group` (the one failed over from) and
/// `result` (`success` or `failure`).
pub const FALLBACKS: &str = "llmbus_fallbacks_total";
/// Retries made, by `model_group`.
pub const RETRIES: &str = "llmbus_retries_total";
/// Counter: answers (`what`: reply, chunk, error) that could not be published and were
/// replaced by a small error.
pub const UNPUBLISHED: &str = "llmbus_answers_unpublished_total";
/// Counter: jobs for a model group this worker does not serve, handed to a worker that does.
pub const HANDED_OVER: &str = "llmbus_jobs_handed_over_total";
/// Counter: workers listed as serving a model that did not answer the probe before a hand-over
/// (they stopped; the membership drops them within a few heartbeats).
pub const HANDOVER_UNREACHABLE: &str = "llmbus_handover_unreachable_total";
/// Counter: jobs refused because they had no reply subject (nowhere to answer).
pub const UNANSWERABLE: &str = "llmbus_jobs_unanswerable_total";
/// Requests to a model no price table knows (they cost 0), by `model`.
pub const UNPRICED_REQUESTS: &str = "llmbus_unpriced_requests_total";
/// Usage events dropped because the publisher's buffer was full.
pub const USAGE_DROPPED: &str = "llmbus_usage_events_dropped_total";
/// Usage events published on `llm.usage.<model_group>` (stored in `LLM_USAGE` when it
/// exists: acknowledged by JetStream).
pub const USAGE_PUBLISHED: &str = "llmbus_usage_events_published_total";
/// Counter: usage events that were not stored on a try (no stream, JetStream down, no ack in
/// time) and are retried.
pub const USAGE_RETRIES: &str = "llmbus_usage_publish_retries_total";
/// Gauge: bytes of usage events recorded and not yet stored.
pub const USAGE_BUFFERED_BYTES: &str = "llmbus_usage_buffered_bytes";
/// Counter: cancels (`llm.cancel`) refused because they carried neither the job's key nor the
/// master key.
pub const CANCELS_REFUSED: &str = "llmbus_cancels_refused_total";
/// Counter: cooldowns other workers announced (gossip or health board) that were ignored, by
/// `reason` (`unknown_worker`: not a current member; `malformed`).
pub const COOLDOWNS_IGNORED: &str = "llmbus_cooldown_announcements_ignored_total";
/// Counter: cooldowns other workers announced that were longer than this worker lets one
/// impose, and were cut to that length.
pub const COOLDOWNS_CLAMPED: &str = "llmbus_cooldown_announcements_clamped_total";
/// Counter: requests on the admin subjects (`llm.admin.>`), by `action` and `status`.
pub const ADMIN_REQUESTS: &str = "llmbus_admin_requests_total";
/// 1 while the worker's `rpm`/`tpm` limits hold for the cluster, 0 while they are its own.
pub const LIMITS_SHARED: &str = "llmbus_limits_shared";
/// The worker's clock offset from the NATS server (server minus worker), seconds.
pub const CLOCK_OFFSET: &str = "llmbus_clock_offset_seconds";
/// Replicas a bucket or stream of llmbus lacks (wanted minus held; 0 when it has them), by
/// `stream`.
pub const STORE_REPLICAS_MISSING: &str = "llmbus_store_replicas_missing";
/// Counter: buckets and streams of llmbus found missing while the worker ran and created
/// again, by `stream`.
pub const STORE_RECREATED: &str = "llmbus_store_recreated_total";
/// Counter: calls a deployment counted in flight while the worker ran no job, found by the
/// worker's idle self-check (a bug: capacity lost), by `deployment`.
pub const CAPACITY_LOST: &str = "llmbus_capacity_lost_total";
/// Counter: HTTP front jobs whose worker died before answering, by `outcome` (`resent`: sent
/// again; `gave_up`: no resend or time left, a 503; `mid_stream`: the stream had begun, a 502).
pub const HTTP_JOBS_RESENT: &str = "llmbus_http_jobs_resent_total";

/// Gauge: connections open on the HTTP front.
pub const HTTP_CONNECTIONS: &str = "llmbus_http_connections";
/// Counter: HTTP connections refused (503) because `llmbus.http_max_connections` were open.
pub const HTTP_REFUSED: &str = "llmbus_http_connections_refused_total";
/// Counter: HTTP connections or requests cut by a timeout, by `reason` (`idle_timeout`,
/// `header_timeout`, `body_timeout`, `write_stall`).
pub const HTTP_CONNECTIONS_CUT: &str = "llmbus_http_connections_cut_total";
/// Counter: jobs cancelled because their HTTP client read too slowly and the stream buffer
/// (`llmbus.http_stream_buffer`) filled.
pub const HTTP_STREAMS_CUT: &str = "llmbus_http_streams_cut_total";
/// Counter: jobs the in-worker HTTP front handed to the job path in process (groups this
/// worker serves), without a NATS round trip.
pub const JOBS_IN_PROCESS: &str = "llmbus_http_jobs_in_process_total";

/// Latency buckets in seconds, from 50 µs (overhead) to 10 minutes (long generations).
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The histograms, which take [`LATENCY_BUCKETS`].
pub(crate) const HISTOGRAMS: [&str; 4] = [
    REQUEST_SECONDS,
    UPSTREAM_SECONDS,
    TTFT_SECONDS,
    OVERHEAD_SECONDS,
];

/// Describes every metric to the installed recorder (help text and unit).
pub(crate) fn describe() {
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
    describe_gauge!(
        DEPLOYMENT_STATE,
        "0 healthy, 1 cooling down, 2 half-open, 3 misconfigured"
    );
    describe_counter!(COOLDOWNS, "Cooldowns started");
    describe_counter!(FALLBACKS, "Fallbacks to another model group, by result");
    describe_counter!(
        UNPRICED_REQUESTS,
        "Requests to a model without a price (counted as costing 0), by model"
    );
    describe_gauge!(
        LIMITS_SHARED,
        "1 while rpm/tpm limits hold for the cluster, 0 while this worker keeps them alone"
    );
    describe_gauge!(
        STORE_REPLICAS_MISSING,
        "replicas a bucket or stream of llmbus lacks (wanted minus held), by stream"
    );
    describe_counter!(
        STORE_RECREATED,
        "buckets and streams of llmbus found missing while the worker ran and created again"
    );
    describe_gauge!(
        CLOCK_OFFSET,
        Unit::Seconds,
        "The NATS server's clock minus this worker's"
    );
    describe_counter!(
        USAGE_DROPPED,
        "Usage events dropped because the publisher's buffer was full"
    );
    describe_counter!(
        USAGE_PUBLISHED,
        "Usage events published (stored in the usage stream when it exists)"
    );
    describe_counter!(
        USAGE_RETRIES,
        "Usage events not stored on a try (no stream, JetStream down, no ack in time), retried"
    );
    describe_gauge!(
        USAGE_BUFFERED_BYTES,
        Unit::Bytes,
        "Bytes of usage events recorded and not yet stored"
    );
    describe_counter!(
        HANDOVER_UNREACHABLE,
        "Workers listed as serving a model that did not answer before a hand-over"
    );
    describe_counter!(
        CAPACITY_LOST,
        "Calls counted in flight on a deployment while no job ran (lost capacity: a bug)"
    );
    describe_counter!(
        CANCELS_REFUSED,
        "Cancels refused: neither the job's key nor the master key"
    );
    describe_counter!(
        COOLDOWNS_IGNORED,
        "Cooldown announcements ignored, by reason (unknown_worker, malformed)"
    );
    describe_counter!(
        COOLDOWNS_CLAMPED,
        "Cooldown announcements cut to the longest a remote worker may impose"
    );
    describe_counter!(
        ADMIN_REQUESTS,
        "Requests on the admin subjects, by action and status"
    );
    describe_counter!(
        HTTP_JOBS_RESENT,
        "HTTP front jobs whose worker died before answering, by outcome (resent, gave_up, mid_stream)"
    );
    describe_gauge!(HTTP_CONNECTIONS, "Connections open on the HTTP front");
    describe_counter!(
        HTTP_REFUSED,
        "HTTP connections refused with a 503 at llmbus.http_max_connections"
    );
    describe_counter!(
        HTTP_CONNECTIONS_CUT,
        "HTTP connections or requests cut by a timeout, by reason"
    );
    describe_counter!(
        HTTP_STREAMS_CUT,
        "Jobs cancelled because their HTTP client stopped reading (stream buffer full)"
    );
    describe_counter!(
        JOBS_IN_PROCESS,
        "Jobs the in-worker HTTP front ran in process, without a NATS round trip"
    );
}
