//! NATS headers: the names llmbus reads on requests and writes on replies, their JSON view for
//! the schemas ([`RequestHeaders`], [`ReplyHeaders`]), and the checked, typed request headers
//! ([`RequestHeaders::from_nats`] → [`ParsedRequestHeaders`]).
//!
//! Routing data travels in headers, never inside the OpenAI body.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::wire::ApiError;

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

/// Request: asks the worker that takes the job to say so at once. Before anything else it
/// publishes an empty message with `Llm-Ack: <its $SRV service id>` to the reply subject, and
/// again each worker the job is handed to. The HTTP front asks for it, to learn which worker
/// holds a job and send the job again when that worker dies before answering. Other
/// requesters leave it out: to them the ack's empty body would read as a stream's sentinel.
pub const ACK: &str = "Llm-Ack";

/// Request: how many times draining workers relayed the job, or workers handed it over.
pub const RELAYED: &str = "Llm-Relayed";

/// Relays after which a draining worker runs a job itself.
pub const MAX_RELAYS: u32 = 8;

/// How many times a job with these headers was relayed or handed over already.
pub fn relays_of(headers: Option<&async_nats::HeaderMap>) -> u32 {
    headers
        .and_then(|h| h.get(RELAYED))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0)
}

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
/// Reply (`llm.deployments`): present when the workers serve different configs: each config
/// fingerprint with its number of workers (`3f2a…×2, 9c1d…×1`).
pub const CONFIGS: &str = "Llm-Configs";
/// Reply: milliseconds the job spent in upstream calls (all attempts), so a front can report
/// the gateway's own overhead (total minus upstream).
pub const UPSTREAM_MS: &str = "Llm-Upstream-Ms";
/// Reply (429 and 503 errors): whole seconds until the model may serve again (the first of
/// its deployments' cooldowns ends), as HTTP's `Retry-After` says it.
pub const RETRY_AFTER: &str = "Retry-After";

/// The reply headers a job writes on every answer and chunk, as ready-made names: inserting
/// one skips the name's validation and its copy, which a `&str` name costs on every insert.
pub mod name {
    use async_nats::header::HeaderName;

    /// [`super::STATUS`].
    pub const STATUS: HeaderName = HeaderName::from_static(super::STATUS);
    /// [`super::SEQ`].
    pub const SEQ: HeaderName = HeaderName::from_static(super::SEQ);
    /// [`super::MODEL_GROUP`].
    pub const MODEL_GROUP: HeaderName = HeaderName::from_static(super::MODEL_GROUP);
    /// [`super::DEPLOYMENT`].
    pub const DEPLOYMENT: HeaderName = HeaderName::from_static(super::DEPLOYMENT);
    /// [`super::ATTEMPTS`].
    pub const ATTEMPTS: HeaderName = HeaderName::from_static(super::ATTEMPTS);
    /// [`super::COST_USD`].
    pub const COST_USD: HeaderName = HeaderName::from_static(super::COST_USD);
    /// [`super::JOB_ID`].
    pub const JOB_ID: HeaderName = HeaderName::from_static(super::JOB_ID);
    /// [`super::UPSTREAM_MS`].
    pub const UPSTREAM_MS: HeaderName = HeaderName::from_static(super::UPSTREAM_MS);
    /// [`super::RETRY_AFTER`].
    pub const RETRY_AFTER: HeaderName = HeaderName::from_static(super::RETRY_AFTER);
}

/// The headers a requester may set on `llm.completion` and `llm.embedding`, as a JSON object of
/// header name → value. NATS headers may repeat a name; this view keeps one value per name.
/// Every header is optional, and other headers (`Nats-Msg-Id`, ...) pass through.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RequestHeaders {
    /// `Bearer <virtual key>`. Required when the gateway has virtual keys; a malformed value
    /// is a 401.
    #[serde(
        rename = "Authorization",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    #[schemars(regex(pattern = r"^[Bb][Ee][Aa][Rr][Ee][Rr] +[^ ]+ *$"))]
    pub authorization: Option<String>,
    /// The job's deadline in milliseconds from receipt, a positive integer; anything else is a
    /// 400 naming this header. Without it the configured timeout applies.
    #[serde(
        rename = "Llm-Timeout-Ms",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    #[schemars(regex(pattern = r"^ *[1-9][0-9]* *$"))]
    pub timeout_ms: Option<String>,
    /// Comma-separated routing tags, matched against the deployments' `tags` (LiteLLM's tag
    /// routing).
    #[serde(rename = "Llm-Tags", default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub tags: Option<String>,
    /// Comma-separated model groups to try, in order, when the requested one fails.
    #[serde(
        rename = "Llm-Fallbacks",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub fallbacks: Option<String>,
    /// W3C trace context `00-<trace id>-<parent id>-<flags>`; an invalid value is ignored, as
    /// the W3C recommendation says, and a new trace is started.
    #[serde(
        rename = "traceparent",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    #[schemars(regex(pattern = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"))]
    pub traceparent: Option<String>,
    /// Any other header, passed along untouched.
    #[serde(flatten)]
    pub other: BTreeMap<String, String>,
}

/// The headers llmbus sets on its replies, as a JSON object of header name → value.
///
/// A non-streaming reply carries `Llm-Status` and the routing headers. In a stream, each chunk
/// carries `Llm-Seq`; the empty-payload sentinel that ends it carries `Llm-Status` and the
/// routing headers. An error reply (body `{"error": ...}`) carries `Llm-Status` with the error
/// status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReplyHeaders {
    /// The HTTP-style status of the job: `200`, or the error's status (`400`, `401`, `404`,
    /// `413`, `429`, `500`, `502`, `503`, `504`, ...).
    #[serde(
        rename = "Llm-Status",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    #[schemars(regex(pattern = r"^[1-5][0-9]{2}$"))]
    pub status: Option<String>,
    /// Stream chunks only: 1, 2, 3, ... A gap means a chunk was lost (slow consumer).
    #[serde(rename = "Llm-Seq", default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    #[schemars(regex(pattern = r"^[1-9][0-9]*$"))]
    pub seq: Option<String>,
    /// The model group that served the job.
    #[serde(
        rename = "Llm-Model-Group",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub model_group: Option<String>,
    /// The deployment that served the job.
    #[serde(
        rename = "Llm-Deployment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub deployment: Option<String>,
    /// How many upstream attempts the job took (retries and fallbacks included).
    #[serde(
        rename = "Llm-Attempts",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    #[schemars(regex(pattern = r"^[1-9][0-9]*$"))]
    pub attempts: Option<String>,
    /// The job's cost in US dollars, a decimal number.
    #[serde(
        rename = "Llm-Cost-Usd",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"))]
    pub cost_usd: Option<String>,
    /// `hit` or `miss` when a response cache was consulted.
    #[serde(rename = "Llm-Cache", default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    #[schemars(regex(pattern = r"^(hit|miss)$"))]
    pub cache: Option<String>,
    /// The job id that the worker's logs carry.
    #[serde(
        rename = "Llm-Job-Id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub job_id: Option<String>,
    /// Milliseconds the job spent in upstream calls (all attempts), with three decimals.
    #[serde(
        rename = "Llm-Upstream-Ms",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?$"))]
    pub upstream_ms: Option<String>,
    /// On `llm.deployments` replies, when the workers serve different configs: each config
    /// fingerprint with how many workers serve it.
    #[serde(
        rename = "Llm-Configs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub configs: Option<String>,
    /// On a 429 or 503 error: whole seconds after which the model may serve again (when every
    /// deployment of the group is cooling down, the first one's end; else the upstream's own
    /// `Retry-After`).
    #[serde(
        rename = "Retry-After",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    #[schemars(regex(pattern = r"^[0-9]+$"))]
    pub retry_after: Option<String>,
    /// Requests the deployment that served the job allows per minute (its `rpm`);
    /// only when it has one.
    #[serde(
        rename = "x-ratelimit-limit-requests",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    #[schemars(regex(pattern = r"^[0-9]+$"))]
    pub ratelimit_limit_requests: Option<String>,
    /// Requests left of that limit in the trailing minute.
    #[serde(
        rename = "x-ratelimit-remaining-requests",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    #[schemars(regex(pattern = r"^[0-9]+$"))]
    pub ratelimit_remaining_requests: Option<String>,
    /// Time until that request limit is whole again (`17ms`, `1.5s`, `6m0s`).
    #[serde(
        rename = "x-ratelimit-reset-requests",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    #[schemars(regex(pattern = r"^([0-9]+m)?[0-9]+(\.[0-9]+)?(ms|s)$"))]
    pub ratelimit_reset_requests: Option<String>,
    /// Tokens the deployment that served the job allows per minute (its `tpm`);
    /// only when it has one.
    #[serde(
        rename = "x-ratelimit-limit-tokens",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    #[schemars(regex(pattern = r"^[0-9]+$"))]
    pub ratelimit_limit_tokens: Option<String>,
    /// Tokens left of that limit in the trailing minute.
    #[serde(
        rename = "x-ratelimit-remaining-tokens",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    #[schemars(regex(pattern = r"^[0-9]+$"))]
    pub ratelimit_remaining_tokens: Option<String>,
    /// Time until that token limit is whole again (`17ms`, `1.5s`, `6m0s`).
    #[serde(
        rename = "x-ratelimit-reset-tokens",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    #[schemars(regex(pattern = r"^([0-9]+m)?[0-9]+(\.[0-9]+)?(ms|s)$"))]
    pub ratelimit_reset_tokens: Option<String>,
    /// Any other header.
    #[serde(flatten)]
    pub other: BTreeMap<String, String>,
}

/// The request headers, checked and typed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ParsedRequestHeaders {
    /// From `Llm-Timeout-Ms`.
    pub timeout: Option<Duration>,
    /// From `Llm-Tags`, trimmed, empty items dropped.
    pub tags: Vec<String>,
    /// From `Llm-Fallbacks`, trimmed, empty items dropped.
    pub fallbacks: Vec<String>,
    /// The key of `Authorization: Bearer <key>`. `Debug` never prints it.
    pub api_key: Option<String>,
    /// A valid W3C `traceparent`, or `None` when absent or invalid.
    pub traceparent: Option<String>,
}

impl std::fmt::Debug for ParsedRequestHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedRequestHeaders")
            .field("timeout", &self.timeout)
            .field("tags", &self.tags)
            .field("fallbacks", &self.fallbacks)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("traceparent", &self.traceparent)
            .finish()
    }
}

impl RequestHeaders {
    /// Reads the request headers of a NATS message. Header names match case-insensitively
    /// (nats.go canonicalizes `traceparent` to `Traceparent`); repeated `Llm-Tags` and
    /// `Llm-Fallbacks` headers add up.
    ///
    /// Errors: a malformed or repeated `Authorization` is a 401 (whose message never repeats
    /// the value); an `Llm-Timeout-Ms` that is not a positive integer is a 400 naming it.
    pub fn from_nats(
        headers: Option<&async_nats::HeaderMap>,
    ) -> Result<ParsedRequestHeaders, ApiError> {
        let mut parsed = ParsedRequestHeaders::default();
        let Some(headers) = headers else {
            return Ok(parsed);
        };
        let values = |name: &str| values(headers, name);
        parsed.api_key = api_key(Some(headers))?;
        if let Some(raw) = values(TIMEOUT_MS).last() {
            parsed.timeout = Some(parse_timeout(raw)?);
        }
        parsed.tags = split_list(&values(TAGS));
        parsed.fallbacks = split_list(&values(FALLBACKS));
        parsed.traceparent = values(TRACEPARENT)
            .first()
            .map(|v| v.trim())
            .filter(|v| is_valid_traceparent(v))
            .map(str::to_string);
        Ok(parsed)
    }
}

/// Every value of header `name`, whatever the case of its name.
fn values<'h>(headers: &'h async_nats::HeaderMap, name: &str) -> Vec<&'h str> {
    headers
        .iter()
        .filter(|(key, _)| AsRef::<str>::as_ref(*key).eq_ignore_ascii_case(name))
        .flat_map(|(_, values)| values.iter().map(|v| v.as_str()))
        .collect()
}

/// The key of the request's `Authorization: Bearer <key>` header (name and scheme
/// case-insensitive), or `None` without one. A malformed or repeated header is a 401 whose
/// message never repeats the value.
pub fn api_key(headers: Option<&async_nats::HeaderMap>) -> Result<Option<String>, ApiError> {
    let Some(headers) = headers else {
        return Ok(None);
    };
    match values(headers, AUTHORIZATION).as_slice() {
        [] => Ok(None),
        [one] => parse_bearer(one).map(Some),
        _ => Err(ApiError::unauthorized(
            "Send one `Authorization: Bearer <key>` header, not several.",
        )
        .with_code("invalid_api_key")),
    }
}

/// The key in `Bearer <key>` (scheme case-insensitive, RFC 6750).
fn parse_bearer(value: &str) -> Result<String, ApiError> {
    let malformed = || {
        ApiError::unauthorized("The Authorization header is malformed; it must be `Bearer <key>`.")
            .with_code("invalid_api_key")
    };
    let (scheme, key) = value.trim().split_once(' ').ok_or_else(malformed)?;
    let key = key.trim_start();
    if !scheme.eq_ignore_ascii_case("bearer")
        || key.is_empty()
        || key.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(malformed());
    }
    Ok(key.to_string())
}

/// A positive number of milliseconds.
fn parse_timeout(value: &str) -> Result<Duration, ApiError> {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(ms) if ms > 0 && value.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Duration::from_millis(ms))
        }
        _ => Err(ApiError::bad_request(format!(
            "The `{TIMEOUT_MS}` header must be a positive integer number of milliseconds."
        ))
        .with_param(TIMEOUT_MS)),
    }
}

/// Comma-separated items of every value, trimmed, empty ones dropped.
fn split_list(values: &[&str]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// W3C Trace Context, version 00: `00-<32 hex>-<16 hex>-<2 hex>`, lower-case hex, trace id and
/// parent id not all zeros.
pub fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    matches!(parts.as_slice(), [version, trace, parent, flags]
        if *version == "00"
            && hex(trace, 32) && nonzero(trace)
            && hex(parent, 16) && nonzero(parent)
            && hex(flags, 2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::HeaderMap;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, *v);
        }
        h
    }

    #[test]
    fn no_headers_is_all_defaults() {
        assert_eq!(RequestHeaders::from_nats(None).unwrap(), Default::default());
        let empty = HeaderMap::new();
        assert_eq!(
            RequestHeaders::from_nats(Some(&empty)).unwrap(),
            Default::default()
        );
    }

    #[test]
    fn every_header_is_read_and_typed() {
        let h = map(&[
            ("Authorization", "Bearer sk-llmbus-123"),
            ("Llm-Timeout-Ms", "2500"),
            ("Llm-Tags", "eu, fast,,"),
            ("Llm-Tags", "cheap"),
            ("Llm-Fallbacks", "gpt-4o-mini , claude-haiku"),
            ("traceparent", TP),
        ]);
        let p = RequestHeaders::from_nats(Some(&h)).unwrap();
        assert_eq!(p.api_key.as_deref(), Some("sk-llmbus-123"));
        assert_eq!(p.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(p.tags, ["eu", "fast", "cheap"]);
        assert_eq!(p.fallbacks, ["gpt-4o-mini", "claude-haiku"]);
        assert_eq!(p.traceparent.as_deref(), Some(TP));
        assert!(!format!("{p:?}").contains("sk-llmbus-123"));
    }

    #[test]
    fn header_names_match_whatever_their_case() {
        let h = map(&[
            ("Traceparent", TP),
            ("llm-timeout-ms", "7"),
            ("AUTHORIZATION", "bearer k"),
        ]);
        let p = RequestHeaders::from_nats(Some(&h)).unwrap();
        assert_eq!(p.traceparent.as_deref(), Some(TP));
        assert_eq!(p.timeout, Some(Duration::from_millis(7)));
        assert_eq!(p.api_key.as_deref(), Some("k"));
    }

    #[test]
    fn a_malformed_authorization_is_a_401_that_does_not_echo_it() {
        for bad in [
            "sk-secret-1",
            "Basic sk-secret-1",
            "Bearer",
            "Bearer  ",
            "Bearer sk-secret-1 x",
        ] {
            let h = map(&[("Authorization", bad)]);
            let e = RequestHeaders::from_nats(Some(&h)).unwrap_err();
            assert_eq!(e.status, 401, "{bad}");
            assert_eq!(e.kind, "authentication_error");
            assert!(!e.message.contains("sk-secret-1"), "{}", e.message);
        }
        let h = map(&[("Authorization", "Bearer a"), ("Authorization", "Bearer b")]);
        assert_eq!(RequestHeaders::from_nats(Some(&h)).unwrap_err().status, 401);
    }

    #[test]
    fn a_bad_timeout_is_a_400_naming_the_header() {
        for bad in [
            "0",
            "-5",
            "1.5",
            "soon",
            "",
            "+10",
            "99999999999999999999999",
        ] {
            let h = map(&[("Llm-Timeout-Ms", bad)]);
            let e = RequestHeaders::from_nats(Some(&h)).unwrap_err();
            assert_eq!(e.status, 400, "{bad:?}");
            assert!(e.message.contains("Llm-Timeout-Ms"));
            assert_eq!(e.param.as_deref(), Some("Llm-Timeout-Ms"));
        }
        let h = map(&[("Llm-Timeout-Ms", " 30000 ")]);
        let p = RequestHeaders::from_nats(Some(&h)).unwrap();
        assert_eq!(p.timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn an_invalid_traceparent_is_ignored() {
        for bad in [
            "garbage",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            let h = map(&[("traceparent", bad)]);
            let p = RequestHeaders::from_nats(Some(&h)).unwrap();
            assert_eq!(p.traceparent, None, "{bad}");
        }
    }

    #[test]
    fn the_json_view_uses_the_header_names() {
        let v = serde_json::to_value(RequestHeaders {
            timeout_ms: Some("100".into()),
            traceparent: Some(TP.into()),
            other: [("Nats-Msg-Id".to_string(), "x".to_string())].into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"Llm-Timeout-Ms": "100", "traceparent": TP, "Nats-Msg-Id": "x"})
        );
        let r: ReplyHeaders =
            serde_json::from_value(serde_json::json!({"Llm-Status": "200", "Llm-Seq": "3"}))
                .unwrap();
        assert_eq!(
            (r.status.as_deref(), r.seq.as_deref()),
            (Some("200"), Some("3"))
        );
    }
}
