//! Headers between HTTP and the NATS contract: which HTTP request headers become which NATS job
//! headers ([`to_job`]: keys, deadline, tags, fallbacks, trace context), and which NATS reply
//! headers become which HTTP response headers ([`from_reply`]).
//!
//! Keys are forwarded, never read, checked or logged here: the worker decides (the same path a
//! NATS client takes, so a key means the same over HTTP and over NATS).

use std::time::Duration;

use axum::http::{HeaderMap as HttpHeaders, HeaderName, HeaderValue};

use crate::{
    client::Reply,
    wire::{ApiError, headers, ratelimit},
};

/// LiteLLM's header for the proxy key; wins over `Authorization` when both are sent.
pub const LITELLM_API_KEY: &str = "x-litellm-api-key";
/// Another name for `Llm-Timeout-Ms`.
pub const TIMEOUT_MS: &str = "x-llmbus-timeout-ms";
/// LiteLLM's deadline header, in seconds (a decimal number).
pub const LITELLM_TIMEOUT: &str = "x-litellm-timeout";
/// LiteLLM's routing tags header (comma-separated), sent on as `Llm-Tags`.
pub const LITELLM_TAGS: &str = "x-litellm-tags";

/// Response: the job's cost in US dollars.
pub const COST_USD: &str = "x-llmbus-cost-usd";
/// Response: the deployment that served the job.
pub const DEPLOYMENT: &str = "x-llmbus-deployment";
/// Response: the model group that served the job.
pub const MODEL_GROUP: &str = "x-llmbus-model-group";
/// Response: upstream attempts the job took.
pub const ATTEMPTS: &str = "x-llmbus-attempts";
/// Response: the job id of the worker's logs.
pub const JOB_ID: &str = "x-llmbus-job-id";
/// Response: milliseconds llmbus added: the front's total minus the worker's upstream time.
pub const OVERHEAD_MS: &str = "x-llmbus-overhead-ms";
/// Response (LiteLLM's name): the job's cost.
pub const LITELLM_RESPONSE_COST: &str = "x-litellm-response-cost";
/// Response (LiteLLM's name): the deployment id.
pub const LITELLM_MODEL_ID: &str = "x-litellm-model-id";
/// Response (LiteLLM's name): the model group.
pub const LITELLM_MODEL_GROUP: &str = "x-litellm-model-group";

/// The NATS headers of a job and the deadline the request asked for.
#[derive(Debug, Default)]
pub struct JobHeaders {
    /// The headers to publish the job with.
    pub nats: async_nats::HeaderMap,
    /// The deadline the request set (`Llm-Timeout-Ms` and its other names), when valid.
    pub timeout: Option<Duration>,
}

/// The NATS job headers for an HTTP request.
///
/// - the key: `x-litellm-api-key: <key>` (or `Bearer <key>`), else `Authorization` as sent,
///   becomes `Authorization: Bearer <key>`;
/// - the deadline: `Llm-Timeout-Ms` or `x-llmbus-timeout-ms` (sent on as is: the worker
///   checks it), else LiteLLM's `x-litellm-timeout` in seconds;
/// - `Llm-Tags` and `x-litellm-tags`, `Llm-Fallbacks`, `traceparent`.
///
/// A value that is not visible ASCII is a 400 naming the header (it could not travel in NATS).
pub fn to_job(http: &HttpHeaders) -> Result<JobHeaders, ApiError> {
    let mut out = JobHeaders::default();
    let text = |name: &str| -> Result<Vec<&str>, ApiError> {
        http.get_all(name)
            .iter()
            .map(|v| {
                v.to_str().map_err(|_| {
                    ApiError::bad_request(format!("the `{name}` header must be visible ASCII text"))
                        .with_param(name.to_string())
                })
            })
            .collect()
    };

    let litellm_key = text(LITELLM_API_KEY)?;
    if let Some(key) = litellm_key.first() {
        let key = key.trim();
        let key = strip_bearer(key).unwrap_or(key);
        out.nats
            .insert(headers::AUTHORIZATION, format!("Bearer {key}").as_str());
    } else {
        for value in text("authorization")? {
            out.nats.append(headers::AUTHORIZATION, value);
        }
    }

    let timeout = text(headers::TIMEOUT_MS)?
        .last()
        .copied()
        .or(text(TIMEOUT_MS)?.last().copied());
    if let Some(ms) = timeout {
        out.nats.insert(headers::TIMEOUT_MS, ms);
        out.timeout = ms
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
    } else if let Some(secs) = text(LITELLM_TIMEOUT)?.last() {
        let ms = secs
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
            .map(|s| (s * 1000.0).ceil() as u64)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "the `{LITELLM_TIMEOUT}` header must be a positive number of seconds"
                ))
                .with_param(LITELLM_TIMEOUT)
            })?;
        out.nats
            .insert(headers::TIMEOUT_MS, ms.to_string().as_str());
        out.timeout = Some(Duration::from_millis(ms));
    }

    for name in [headers::TAGS, LITELLM_TAGS] {
        for value in text(name)? {
            out.nats.append(headers::TAGS, value);
        }
    }
    for value in text(headers::FALLBACKS)? {
        out.nats.append(headers::FALLBACKS, value);
    }
    if let Some(tp) = text(headers::TRACEPARENT)?.first() {
        out.nats.insert(headers::TRACEPARENT, *tp);
    }
    Ok(out)
}

/// `<key>` of `Bearer <key>` (scheme case-insensitive).
fn strip_bearer(value: &str) -> Option<&str> {
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim_start())
}

/// The `x-ratelimit-*` headers of a reply (a stream's first chunk carries them).
pub fn rate_limits(reply: &Reply) -> Vec<(HeaderName, HeaderValue)> {
    ratelimit::ALL
        .iter()
        .filter_map(|name| {
            let v = HeaderValue::from_str(reply.header(name)?).ok()?;
            Some((HeaderName::from_static(name), v))
        })
        .collect()
}

/// The HTTP response headers for a reply's NATS headers. `elapsed` is the front's own time for
/// the request; with the worker's `Llm-Upstream-Ms` it gives `x-llmbus-overhead-ms`.
pub fn from_reply(reply: &Reply, elapsed: Duration) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(15);
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            out.push((HeaderName::from_static(name), v));
        }
    };
    if let Some(cost) = reply.header(headers::COST_USD) {
        put(COST_USD, cost);
        put(LITELLM_RESPONSE_COST, cost);
    }
    if let Some(dep) = reply.header(headers::DEPLOYMENT) {
        put(DEPLOYMENT, dep);
        put(LITELLM_MODEL_ID, dep);
    }
    if let Some(group) = reply.header(headers::MODEL_GROUP) {
        put(MODEL_GROUP, group);
        put(LITELLM_MODEL_GROUP, group);
    }
    if let Some(attempts) = reply.header(headers::ATTEMPTS) {
        put(ATTEMPTS, attempts);
    }
    if let Some(id) = reply.header(headers::JOB_ID) {
        put(JOB_ID, id);
    }
    if let Some(wait) = reply.header(headers::RETRY_AFTER) {
        put("retry-after", wait);
    }
    for name in ratelimit::ALL {
        if let Some(v) = reply.header(name) {
            put(name, v);
        }
    }
    if let Some(upstream) = reply
        .header(headers::UPSTREAM_MS)
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
    {
        let overhead = (elapsed.as_secs_f64() * 1000.0 - upstream).max(0.0);
        put(OVERHEAD_MS, &format!("{overhead:.3}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(pairs: &[(&'static str, &str)]) -> HttpHeaders {
        let mut h = HttpHeaders::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn nats(h: &JobHeaders, name: &str) -> Vec<String> {
        h.nats
            .get_all(name)
            .map(|v| v.as_str().to_string())
            .collect()
    }

    #[test]
    fn keys_travel_as_bearer_and_litellm_s_header_wins() {
        let h = to_job(&http(&[("authorization", "Bearer sk-a")])).unwrap();
        assert_eq!(nats(&h, "Authorization"), ["Bearer sk-a"]);
        let h = to_job(&http(&[
            ("authorization", "Bearer sk-a"),
            ("x-litellm-api-key", "sk-b"),
        ]))
        .unwrap();
        assert_eq!(nats(&h, "Authorization"), ["Bearer sk-b"]);
        let h = to_job(&http(&[("x-litellm-api-key", "bearer sk-c")])).unwrap();
        assert_eq!(nats(&h, "Authorization"), ["Bearer sk-c"]);
        // A malformed one goes on as sent: the worker answers 401.
        let h = to_job(&http(&[("authorization", "Basic abc")])).unwrap();
        assert_eq!(nats(&h, "Authorization"), ["Basic abc"]);
        let h = to_job(&http(&[])).unwrap();
        assert!(nats(&h, "Authorization").is_empty());
    }

    #[test]
    fn deadlines_have_three_names() {
        let h = to_job(&http(&[("llm-timeout-ms", "2500")])).unwrap();
        assert_eq!(nats(&h, "Llm-Timeout-Ms"), ["2500"]);
        assert_eq!(h.timeout, Some(Duration::from_millis(2500)));
        let h = to_job(&http(&[("x-llmbus-timeout-ms", "700")])).unwrap();
        assert_eq!(nats(&h, "Llm-Timeout-Ms"), ["700"]);
        let h = to_job(&http(&[("x-litellm-timeout", "1.5")])).unwrap();
        assert_eq!(nats(&h, "Llm-Timeout-Ms"), ["1500"]);
        assert_eq!(h.timeout, Some(Duration::from_millis(1500)));
        // Sent on as is: the worker answers the 400 naming Llm-Timeout-Ms.
        let h = to_job(&http(&[("llm-timeout-ms", "soon")])).unwrap();
        assert_eq!(nats(&h, "Llm-Timeout-Ms"), ["soon"]);
        assert_eq!(h.timeout, None);
        let e = to_job(&http(&[("x-litellm-timeout", "-1")])).unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.param.as_deref(), Some("x-litellm-timeout"));
    }

    #[test]
    fn routing_headers_and_trace_context_go_on() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let h = to_job(&http(&[
            ("llm-tags", "eu"),
            ("x-litellm-tags", "fast,cheap"),
            ("llm-fallbacks", "b, c"),
            ("traceparent", tp),
            ("x-unrelated", "dropped"),
        ]))
        .unwrap();
        assert_eq!(nats(&h, "Llm-Tags"), ["eu", "fast,cheap"]);
        assert_eq!(nats(&h, "Llm-Fallbacks"), ["b, c"]);
        assert_eq!(nats(&h, "traceparent"), [tp]);
        assert!(nats(&h, "x-unrelated").is_empty());
    }

    #[test]
    fn a_value_that_cannot_travel_is_a_400() {
        let mut h = HttpHeaders::new();
        h.insert("llm-tags", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        let e = to_job(&h).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.to_lowercase().contains("llm-tags"), "{e}");
    }

    #[test]
    fn reply_headers_get_llmbus_and_litellm_names() {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Llm-Status", "200");
        h.insert("Llm-Cost-Usd", "0.00012");
        h.insert("Llm-Deployment", "gpt-4o-1");
        h.insert("Llm-Model-Group", "gpt-4o");
        h.insert("Llm-Attempts", "2");
        h.insert("Llm-Job-Id", "job-1");
        h.insert("Llm-Upstream-Ms", "40");
        let reply = Reply {
            status: 200,
            headers: h,
            body: bytes::Bytes::new(),
        };
        let out: std::collections::HashMap<String, String> =
            from_reply(&reply, Duration::from_millis(42))
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                .collect();
        assert_eq!(out["x-llmbus-cost-usd"], "0.00012");
        assert_eq!(out["x-litellm-response-cost"], "0.00012");
        assert_eq!(out["x-llmbus-deployment"], "gpt-4o-1");
        assert_eq!(out["x-litellm-model-id"], "gpt-4o-1");
        assert_eq!(out["x-litellm-model-group"], "gpt-4o");
        assert_eq!(out["x-llmbus-attempts"], "2");
        assert_eq!(out["x-llmbus-job-id"], "job-1");
        assert_eq!(out["x-llmbus-overhead-ms"], "2.000");
        // Without the worker's upstream time there is no overhead to tell.
        let reply = Reply {
            status: 200,
            headers: async_nats::HeaderMap::new(),
            body: bytes::Bytes::new(),
        };
        assert!(from_reply(&reply, Duration::from_millis(5)).is_empty());
    }
}
