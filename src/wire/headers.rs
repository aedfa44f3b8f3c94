//! NATS header names that llmbus reads on requests and writes on replies.
//!
//! Routing data travels in headers, never inside the OpenAI body.

/// Request: `Bearer <virtual key>`.
pub const AUTHORIZATION: &str = "Authorization";
/// Request: the job's deadline in milliseconds from receipt.
pub const TIMEOUT_MS: &str = "Llm-Timeout-Ms";
/// Request: comma-separated routing tags.
pub const TAGS: &str = "Llm-Tags";
/// Request: comma-separated fallback model groups.
pub const FALLBACKS: &str = "Llm-Fallbacks";
/// Request: W3C trace context, propagated to logs and upstream calls.
pub const TRACEPARENT: &str = "traceparent";

/// Reply: the HTTP-style status of the job (`200`, `400`, `429`, ...).
pub const STATUS: &str = "Llm-Status";
/// Reply (stream chunks): 1, 2, 3, ... so a client can tell that it lost one.
pub const SEQ: &str = "Llm-Seq";
/// Reply: the model group that served the job.
pub const MODEL_GROUP: &str = "Llm-Model-Group";
/// Reply: the deployment that served the job.
pub const DEPLOYMENT: &str = "Llm-Deployment";
/// Reply: how many upstream attempts the job took.
pub const ATTEMPTS: &str = "Llm-Attempts";
/// Reply: the job's cost in US dollars.
pub const COST_USD: &str = "Llm-Cost-Usd";
/// Reply: `hit` or `miss` when a cache was consulted.
pub const CACHE: &str = "Llm-Cache";
/// Reply: the job id that the worker's logs carry.
pub const JOB_ID: &str = "Llm-Job-Id";
