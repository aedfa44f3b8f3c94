//! Configuration: a LiteLLM `config.yaml` loaded as it is, plus llmbus's own `llmbus:` section.
//!
//! This module owns the config's shape (the structs below). [`Config::load`] reads a file,
//! resolves `os.environ/NAME` references, accepts YAML 1.1 integers such as `20_000`, reports
//! keys llmbus does not support (by name, once, not fatal; a typo of a known key with a "did
//! you mean") and stops on bad YAML, a wrong type, a missing required key, a value llmbus
//! cannot run with, or a security setting llmbus does not enforce, naming the key's path and
//! line. A deployment that cannot work (an unset variable, no `model`) does not stop the load:
//! it is kept and marked [`ModelEntry::misconfigured`]. [`Config::quickstart`] is the built-in
//! config for running without a file.
//!
//! - `load`: the entry points and [`ConfigError`].
//! - `num`: YAML 1.1 integers.
//! - `env`: `os.environ/NAME` references.
//! - `security`: the security settings llmbus refuses ([`Unenforced`]).
//! - `check`: checks made after parsing.
//! - `entries`: per-deployment problems that mark a deployment misconfigured.
//! - `suggest`: "did you mean" for typos.
//! - `locate`: key paths and finding a key's line in the text.
//! - `quickstart`: the built-in config.
//! - `strategy`: [`Strategy`], the `routing_strategy` names llmbus knows.
//! - `secret`: [`Secret`], a value that never prints.
//! - `detached`: [`Config::from_yaml_detached`], the check of a config away from its workers
//!   (`llmbus config push`: every `os.environ/` variable counts as set; literal secrets named).
//! - `fingerprint`: [`fingerprint`], a short stable hash of a config's text.
//! - `deployment_id`: [`deployment_ids`], each deployment's id (`model_info.id`, else derived
//!   from what the deployment is, the same on every worker).

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde::Deserialize;

mod check;
mod deployment_id;
mod detached;
mod entries;
mod env;
mod fingerprint;
mod load;
mod locate;
mod num;
mod quickstart;
mod secret;
mod security;
mod strategy;
pub(crate) mod suggest;

pub use deployment_id::{deployment_ids, derived_id};
pub use detached::Detached;
pub use fingerprint::fingerprint;
pub use load::{ConfigError, Loaded};
pub use quickstart::QUICKSTART_YAML;
pub use secret::Secret;
pub use security::Unenforced;
pub use strategy::Strategy;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Config {
    /// Deployments, grouped into model groups by `model_name`.
    #[serde(default)]
    pub model_list: Vec<ModelEntry>,
    /// How the router picks, retries and falls back.
    #[serde(default)]
    pub router_settings: RouterSettings,
    /// LiteLLM's global settings (the few llmbus honours).
    #[serde(default)]
    pub litellm_settings: LitellmSettings,
    /// LiteLLM Proxy's settings (the few llmbus honours).
    #[serde(default)]
    pub general_settings: GeneralSettings,
    /// llmbus's own settings.
    #[serde(default)]
    pub llmbus: LlmbusSettings,
}

/// One deployment: a model group name and how to reach one upstream model.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelEntry {
    /// The model group: what a request's `model` names. A name with `*` is a pattern
    /// ([`crate::policy::wildcard`]): `*`, `anthropic/*`.
    pub model_name: String,
    /// How to call the upstream. When it is missing the deployment is misconfigured.
    #[serde(default)]
    pub litellm_params: LitellmParams,
    /// Facts about the model (id, prices, context window).
    #[serde(default)]
    pub model_info: ModelInfo,
    /// Requests per minute; LiteLLM allows it beside `litellm_params` too.
    #[serde(default, deserialize_with = "num::opt_int")]
    pub rpm: Option<u64>,
    /// Tokens per minute; LiteLLM allows it beside `litellm_params` too.
    #[serde(default, deserialize_with = "num::opt_int")]
    pub tpm: Option<u64>,
    /// Where the entry is written, `file, line N` (of its `litellm_params.model`), for
    /// messages; set by the loader.
    #[serde(skip)]
    pub location: Option<String>,
    /// Why the deployment cannot work, when the loader found a reason (an environment
    /// variable that is not set, no `model`, ...). It is kept but takes no traffic.
    #[serde(skip)]
    pub misconfigured: Option<String>,
}

impl ModelEntry {
    /// Requests per minute, from `litellm_params` or beside it.
    pub fn rpm(&self) -> Option<u64> {
        self.litellm_params.rpm.or(self.rpm)
    }

    /// Tokens per minute, from `litellm_params` or beside it.
    pub fn tpm(&self) -> Option<u64> {
        self.litellm_params.tpm.or(self.tpm)
    }

    /// Marks the deployment misconfigured, adding `reason` to any reason it already has.
    pub fn misconfigure(&mut self, reason: impl Into<String>) {
        let reason = reason.into();
        self.misconfigured = Some(match self.misconfigured.take() {
            Some(old) => format!("{old}; {reason}"),
            None => reason,
        });
    }
}

/// `litellm_params` of a deployment.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LitellmParams {
    /// `provider/model`, for example `openai/gpt-4o` or `groq/llama-3.1-8b-instant`; a name
    /// without a provider prefix means OpenAI. `*` takes the text a wildcard `model_name`
    /// matched (`openai/*`). When it is missing the deployment is misconfigured.
    #[serde(default)]
    pub model: String,
    /// The provider's base URL; each provider has a documented default.
    #[serde(default)]
    pub api_base: Option<String>,
    /// The key, literal or `os.environ/NAME`; each provider has a default variable.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Azure's `api-version`.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Requests per minute.
    #[serde(default, deserialize_with = "num::opt_int")]
    pub rpm: Option<u64>,
    /// Tokens per minute.
    #[serde(default, deserialize_with = "num::opt_int")]
    pub tpm: Option<u64>,
    /// Calls in flight at once; defaults from rpm/tpm as LiteLLM does.
    #[serde(default, deserialize_with = "num::opt_int")]
    pub max_parallel_requests: Option<u32>,
    /// Seconds one call may take.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Seconds a stream may stay silent between chunks.
    #[serde(default)]
    pub stream_timeout: Option<f64>,
    /// Share of traffic under `simple-shuffle`.
    #[serde(default)]
    pub weight: Option<f64>,
    /// Answer with this text instead of calling anything (no key needed).
    #[serde(default)]
    pub mock_response: Option<String>,
    /// Extra HTTP headers sent upstream.
    #[serde(default)]
    pub extra_headers: BTreeMap<String, String>,
    /// Routing tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// OpenAI organization header.
    #[serde(default)]
    pub organization: Option<String>,
    /// Drop request parameters the provider does not take instead of refusing the request
    /// (LiteLLM's `drop_params`); `litellm_settings.drop_params` sets it for every deployment.
    #[serde(default)]
    pub drop_params: Option<bool>,
    /// Vertex AI: the Google Cloud project.
    #[serde(default)]
    pub vertex_project: Option<String>,
    /// Vertex AI: the region (`us-central1`, ...).
    #[serde(default)]
    pub vertex_location: Option<String>,
    /// Vertex AI: a service-account key, as a JSON document or the path of a file holding one.
    #[serde(default)]
    pub vertex_credentials: Option<Secret>,
    /// Bedrock: the AWS region.
    #[serde(default)]
    pub aws_region_name: Option<String>,
    /// Bedrock: the AWS access key id.
    #[serde(default)]
    pub aws_access_key_id: Option<Secret>,
    /// Bedrock: the AWS secret access key.
    #[serde(default)]
    pub aws_secret_access_key: Option<Secret>,
    /// Bedrock: an AWS session token (temporary credentials).
    #[serde(default)]
    pub aws_session_token: Option<Secret>,
    /// USD per prompt token, overriding the price tables (LiteLLM's custom pricing);
    /// `model_info.input_cost_per_token` wins when both are set.
    #[serde(default)]
    pub input_cost_per_token: Option<f64>,
    /// USD per completion token, overriding the price tables; `model_info` wins.
    #[serde(default)]
    pub output_cost_per_token: Option<f64>,
    /// USD per second of the upstream call, for the input side (endpoints billed by time,
    /// such as SageMaker); `model_info` wins.
    #[serde(default)]
    pub input_cost_per_second: Option<f64>,
    /// USD per second of the upstream call, for the output side; `model_info` wins.
    #[serde(default)]
    pub output_cost_per_second: Option<f64>,
}

/// `model_info` of a deployment.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelInfo {
    /// The deployment's id; llmbus derives one from the upstream when absent
    /// ([`deployment_ids`]).
    #[serde(default)]
    pub id: Option<String>,
    /// USD per prompt token, overriding the built-in price table.
    #[serde(default)]
    pub input_cost_per_token: Option<f64>,
    /// USD per completion token, overriding the built-in price table.
    #[serde(default)]
    pub output_cost_per_token: Option<f64>,
    /// USD per second of the upstream call, for the input side.
    #[serde(default)]
    pub input_cost_per_second: Option<f64>,
    /// USD per second of the upstream call, for the output side.
    #[serde(default)]
    pub output_cost_per_second: Option<f64>,
    /// The context window, for pre-call checks.
    #[serde(default, deserialize_with = "num::opt_int")]
    pub max_input_tokens: Option<u64>,
    /// The most tokens the model generates.
    #[serde(default, deserialize_with = "num::opt_int")]
    pub max_output_tokens: Option<u64>,
    /// The model whose prices apply (Azure deployments with custom names).
    #[serde(default)]
    pub base_model: Option<String>,
    /// `chat`, `embedding`, ...
    #[serde(default)]
    pub mode: Option<String>,
}

/// `router_settings`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RouterSettings {
    /// `simple-shuffle` (the default).
    #[serde(default)]
    pub routing_strategy: Option<String>,
    /// Retries after the first attempt (default 2).
    #[serde(default, deserialize_with = "num::opt_int")]
    pub num_retries: Option<u32>,
    /// Seconds a job may take when it sets no deadline of its own.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Other names for model groups: `alias: group` or `alias: {model: group, hidden: bool}`.
    #[serde(default)]
    pub model_group_alias: BTreeMap<String, AliasTarget>,
    /// `[{"group": ["fallback-group", ...]}, ...]`.
    #[serde(default)]
    pub fallbacks: Vec<BTreeMap<String, Vec<String>>>,
    /// Like `fallbacks`, for requests too long for the group's context window.
    #[serde(default)]
    pub context_window_fallbacks: Vec<BTreeMap<String, Vec<String>>>,
    /// Like `fallbacks`, for requests a provider refused on content policy.
    #[serde(default)]
    pub content_policy_fallbacks: Vec<BTreeMap<String, Vec<String>>>,
    /// Groups to fall back to when a group has no `fallbacks` entry of its own.
    #[serde(default)]
    pub default_fallbacks: Vec<String>,
    /// The most fallback groups one request tries (LiteLLM's default is 5).
    #[serde(default, deserialize_with = "num::opt_int")]
    pub max_fallbacks: Option<u32>,
    /// Retries per kind of failure, overriding `num_retries`.
    #[serde(default)]
    pub retry_policy: RetryPolicy,
    /// Failures a deployment may have in a minute before it cools down (LiteLLM's default is 3).
    #[serde(default, deserialize_with = "num::opt_int")]
    pub allowed_fails: Option<u32>,
    /// `allowed_fails` per kind of failure.
    #[serde(default)]
    pub allowed_fails_policy: AllowedFailsPolicy,
    /// Seconds a deployment stays out of rotation after too many failures (LiteLLM's default is 5).
    #[serde(default)]
    pub cooldown_time: Option<f64>,
    /// Never cool deployments down.
    #[serde(default)]
    pub disable_cooldowns: bool,
    /// Settings of the routing strategy.
    #[serde(default)]
    pub routing_strategy_args: RoutingStrategyArgs,
    /// Leave out deployments whose `model_info.max_input_tokens` the prompt exceeds.
    #[serde(default)]
    pub enable_pre_call_checks: bool,
    /// Route by the request's `Llm-Tags` and the deployments' `tags`.
    #[serde(default)]
    pub enable_tag_filtering: bool,
    /// The least seconds to wait before a retry that has to wait.
    #[serde(default)]
    pub retry_after: Option<f64>,
    /// Seconds a stream may stay silent between chunks, for deployments that set none.
    #[serde(default)]
    pub stream_timeout: Option<f64>,
}

/// `router_settings.routing_strategy_args`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RoutingStrategyArgs {
    /// `latency-based-routing`: deployments within this share of the lowest latency (0.1 =
    /// 10 %) share the load.
    #[serde(default)]
    pub lowest_latency_buffer: Option<f64>,
    /// LiteLLM's window for latency samples, in seconds (llmbus keeps a moving average).
    #[serde(default)]
    pub ttl: Option<f64>,
}

/// `router_settings.retry_policy`: retries per kind of failure, in LiteLLM's key names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RetryPolicy {
    /// `BadRequestErrorRetries` (400).
    #[serde(default, deserialize_with = "num::opt_int")]
    pub bad_request_error_retries: Option<u32>,
    /// `AuthenticationErrorRetries` (401).
    #[serde(default, deserialize_with = "num::opt_int")]
    pub authentication_error_retries: Option<u32>,
    /// `TimeoutErrorRetries` (408 and timeouts).
    #[serde(default, deserialize_with = "num::opt_int")]
    pub timeout_error_retries: Option<u32>,
    /// `RateLimitErrorRetries` (429).
    #[serde(default, deserialize_with = "num::opt_int")]
    pub rate_limit_error_retries: Option<u32>,
    /// `ContentPolicyViolationErrorRetries`.
    #[serde(default, deserialize_with = "num::opt_int")]
    pub content_policy_violation_error_retries: Option<u32>,
    /// `InternalServerErrorRetries` (5xx).
    #[serde(default, deserialize_with = "num::opt_int")]
    pub internal_server_error_retries: Option<u32>,
}

/// `router_settings.allowed_fails_policy`: `allowed_fails` per kind of failure.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AllowedFailsPolicy {
    /// `BadRequestErrorAllowedFails` (400).
    #[serde(default, deserialize_with = "num::opt_int")]
    pub bad_request_error_allowed_fails: Option<u32>,
    /// `AuthenticationErrorAllowedFails` (401).
    #[serde(default, deserialize_with = "num::opt_int")]
    pub authentication_error_allowed_fails: Option<u32>,
    /// `TimeoutErrorAllowedFails` (408 and timeouts).
    #[serde(default, deserialize_with = "num::opt_int")]
    pub timeout_error_allowed_fails: Option<u32>,
    /// `RateLimitErrorAllowedFails` (429).
    #[serde(default, deserialize_with = "num::opt_int")]
    pub rate_limit_error_allowed_fails: Option<u32>,
    /// `ContentPolicyViolationErrorAllowedFails`.
    #[serde(default, deserialize_with = "num::opt_int")]
    pub content_policy_violation_error_allowed_fails: Option<u32>,
    /// `InternalServerErrorAllowedFails` (5xx).
    #[serde(default, deserialize_with = "num::opt_int")]
    pub internal_server_error_allowed_fails: Option<u32>,
}

/// The target of a `model_group_alias` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AliasTarget {
    /// `alias: group`.
    Group(String),
    /// `alias: {model: group, hidden: true}`.
    Detailed {
        /// The model group.
        model: String,
        /// Left out of `llm.models`.
        #[serde(default)]
        hidden: bool,
    },
}

impl AliasTarget {
    /// The model group the alias names.
    pub fn group(&self) -> &str {
        match self {
            AliasTarget::Group(g) => g,
            AliasTarget::Detailed { model, .. } => model,
        }
    }

    /// True when the alias is left out of `llm.models`.
    pub fn hidden(&self) -> bool {
        matches!(self, AliasTarget::Detailed { hidden: true, .. })
    }
}

/// `litellm_settings`: the keys llmbus honours.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LitellmSettings {
    /// Retries, when `router_settings.num_retries` is unset.
    #[serde(default, deserialize_with = "num::opt_int")]
    pub num_retries: Option<u32>,
    /// Seconds, when `router_settings.timeout` is unset.
    #[serde(default)]
    pub request_timeout: Option<f64>,
    /// Drop parameters a provider does not take instead of refusing the request.
    #[serde(default)]
    pub drop_params: bool,
}

/// `general_settings`: the keys llmbus honours. Security settings it does not enforce stop the
/// load (see `security`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GeneralSettings {
    /// With it, every job must carry `Authorization: Bearer <master key>` ([`crate::auth`]).
    /// An `os.environ/NAME` reference to a variable that is not set, or an empty key, stops
    /// the load.
    #[serde(default)]
    pub master_key: Option<Secret>,
    /// Refuse jobs that choose their own routing tags (an `Llm-Tags` header) with a 400, as
    /// LiteLLM refuses client-side `metadata.tags` ([`crate::auth`]).
    #[serde(default)]
    pub reject_clientside_metadata_tags: bool,
}

/// The `llmbus:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LlmbusSettings {
    /// NATS server URL(s), comma-separated. Default `nats://127.0.0.1:4222`.
    pub nats_url: Option<String>,
    /// NATS user name (with `nats_password`).
    pub nats_user: Option<String>,
    /// NATS password.
    pub nats_password: Option<Secret>,
    /// NATS token.
    pub nats_token: Option<Secret>,
    /// NATS nkey seed.
    pub nats_nkey: Option<Secret>,
    /// A `.creds` file (JWT and nkey seed).
    pub nats_creds_file: Option<String>,
    /// CA certificate (PEM) to trust for the NATS TLS connection.
    pub nats_tls_ca: Option<String>,
    /// Client certificate (PEM) for mutual TLS.
    pub nats_tls_cert: Option<String>,
    /// Client key (PEM) for mutual TLS.
    pub nats_tls_key: Option<String>,
    /// Insist on TLS.
    pub nats_require_tls: bool,
    /// The prefix of this connection's reply subjects (inboxes), `_INBOX` by default. With the
    /// shipped NATS config each application has its own (`_INBOX_app1`), the only inboxes its
    /// user may read. Else the `NATS_INBOX_PREFIX` environment variable.
    pub nats_inbox_prefix: Option<String>,
    /// First token of every subject. Default `llm`.
    pub subject_prefix: String,
    /// The queue group the workers share. Default `llmbus`.
    pub queue_group: String,
    /// Where Prometheus scrapes metrics. Default `127.0.0.1:9464`; `null` turns it off.
    pub metrics_listen: Option<SocketAddr>,
    /// Jobs one worker runs at once; past it, a 503. Default 1024.
    #[serde(deserialize_with = "num::int")]
    pub max_in_flight: usize,
    /// Seconds a stopping worker lets its jobs in flight finish. Default 30.
    pub shutdown_grace_secs: f64,
    /// Where the worker serves the OpenAI-compatible HTTP front. Default none (off); `llmbus
    /// up` serves `127.0.0.1:4000` (or the next free port) unless this is set.
    pub http_listen: Option<SocketAddr>,
    /// Seconds between SSE keep-alive comments until a stream's first token. Default 15.
    pub http_keepalive_secs: f64,
    /// Seconds from the first byte of an HTTP request to the end of its headers; past it the
    /// connection is closed. Default 10.
    pub http_header_timeout_secs: f64,
    /// Seconds from the end of an HTTP request's headers to the end of its body; past it a
    /// 408 and the connection is closed. Default 60.
    pub http_body_timeout_secs: f64,
    /// Seconds an HTTP connection may sit with no request in flight (or a reply its client
    /// does not read) before it is closed. Default 60.
    pub http_idle_timeout_secs: f64,
    /// HTTP connections open at once; past it a new one is answered 503 and closed. Default
    /// 4096 (keep it under the open-file limit, `ulimit -n`).
    #[serde(deserialize_with = "num::int")]
    pub http_max_connections: usize,
    /// Messages of one job the HTTP front holds for a client reading too slowly; past it the
    /// job is cancelled. Default 1024.
    #[serde(deserialize_with = "num::int")]
    pub http_stream_buffer: usize,
    /// A price file in LiteLLM's `model_prices_and_context_window.json` format whose rows
    /// override and extend the built-in prices. Default: none (built-in prices only).
    pub price_table: Option<String>,
    /// Days the `LLM_USAGE` stream keeps usage events. Default 30.
    pub usage_retention_days: f64,
    /// Usage events held between the jobs and the `LLM_USAGE` stream (recorded, not yet
    /// stored) before new ones are dropped. Default 100000.
    #[serde(deserialize_with = "num::int")]
    pub usage_buffer: usize,
    /// Bytes of usage events held between the jobs and the `LLM_USAGE` stream before new ones
    /// are dropped (each event counted at about the size of its JSON). Default 33554432 (32
    /// MiB).
    #[serde(deserialize_with = "num::int")]
    pub usage_buffer_bytes: usize,
    /// Run the spend aggregator (`llmbus spend`'s data) in this worker. Default true.
    pub spend_aggregator: bool,
    /// Replicas of every bucket and stream llmbus creates (1 to 5). Default: 3 when the NATS
    /// server is one of a cluster of 3 or more, else 1. Existing ones are not changed.
    pub replicas: Option<usize>,
}

impl Default for LlmbusSettings {
    fn default() -> Self {
        Self {
            nats_url: None,
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_nkey: None,
            nats_creds_file: None,
            nats_tls_ca: None,
            nats_tls_cert: None,
            nats_tls_key: None,
            nats_require_tls: false,
            nats_inbox_prefix: None,
            subject_prefix: "llm".into(),
            queue_group: "llmbus".into(),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            max_in_flight: 1024,
            shutdown_grace_secs: 30.0,
            http_listen: None,
            http_keepalive_secs: 15.0,
            http_header_timeout_secs: 10.0,
            http_body_timeout_secs: 60.0,
            http_idle_timeout_secs: 60.0,
            http_max_connections: 4096,
            http_stream_buffer: 1024,
            price_table: None,
            usage_retention_days: DEFAULT_USAGE_RETENTION_DAYS,
            usage_buffer: DEFAULT_USAGE_BUFFER,
            usage_buffer_bytes: DEFAULT_USAGE_BUFFER_BYTES,
            spend_aggregator: true,
            replicas: None,
        }
    }
}

/// The provider prefix of a `litellm_params.model` (`anthropic` for `anthropic/claude-…`),
/// or `None` for a bare model name (which means OpenAI).
pub fn provider_prefix(model: &str) -> Option<&str> {
    model.split_once('/').map(|(p, _)| p)
}

/// Default NATS URL when neither flag, environment nor file names one.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Days the usage stream keeps events by default (`llmbus.usage_retention_days`).
pub const DEFAULT_USAGE_RETENTION_DAYS: f64 = 30.0;

/// Usage events the worker's buffer holds by default before it drops (`llmbus.usage_buffer`).
pub const DEFAULT_USAGE_BUFFER: usize = 100_000;

/// Bytes of usage events the buffer holds by default before it drops
/// (`llmbus.usage_buffer_bytes`): 32 MiB, some 50,000 typical events.
pub const DEFAULT_USAGE_BUFFER_BYTES: usize = 32 << 20;

impl Config {
    /// Retries after the first attempt: `router_settings.num_retries`, else
    /// `litellm_settings.num_retries`, else 2.
    pub fn num_retries(&self) -> u32 {
        self.router_settings
            .num_retries
            .or(self.litellm_settings.num_retries)
            .unwrap_or(2)
    }

    /// A job's deadline when it sets none: `router_settings.timeout`, else
    /// `litellm_settings.request_timeout`, else 600 s.
    pub fn default_timeout(&self) -> Duration {
        let secs = self
            .router_settings
            .timeout
            .or(self.litellm_settings.request_timeout)
            .unwrap_or(600.0);
        Duration::try_from_secs_f64(secs.max(0.001)).unwrap_or(Duration::from_secs(600))
    }

    /// A short fingerprint of what this config makes a worker do (12 hex digits): two workers
    /// with the same fingerprint serve the same thing. Secrets take no part in it (they print
    /// as `***`), so workers holding different keys for the same config agree.
    pub fn fingerprint(&self) -> String {
        let mut view = self.clone();
        // Where each entry sat in its file says nothing about what it does.
        for entry in &mut view.model_list {
            entry.location = None;
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, format!("{view:?}").as_bytes());
        digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}
