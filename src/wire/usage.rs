//! The usage event: one per finished job, success or failure, published on
//! `llm.usage.<model_group>` and kept by the `LLM_USAGE` stream. Its JSON Schema is
//! `schemas/usage-event.json`; every field is always present (`null` when unknown), so a
//! consumer in any language reads it without guessing.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ApiError;

/// One finished job's usage and outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageEvent {
    /// The job id (`Llm-Job-Id` of the reply).
    pub job_id: String,
    /// When the job finished: Unix time in milliseconds (UTC).
    pub timestamp_ms: u64,
    /// The model group that served the job; for a job that failed before one was chosen, the
    /// model the request named.
    pub model_group: String,
    /// The deployment of the last attempt; `null` when no deployment was tried.
    #[serde(default)]
    pub deployment: Option<String>,
    /// The provider of that deployment (`openai`, `anthropic`, `bedrock`, `mock`, ...).
    #[serde(default)]
    pub provider: Option<String>,
    /// The upstream model (`litellm_params.model`), which the price was looked up by.
    #[serde(default)]
    pub model: Option<String>,
    /// The caller's key as an id that is safe to store (an alias or hash, never the secret).
    #[serde(default)]
    pub key: Option<String>,
    /// The end user: the request's OpenAI `user` field.
    #[serde(default)]
    pub user: Option<String>,
    /// The caller's team.
    #[serde(default)]
    pub team: Option<String>,
    /// The request's tags (`Llm-Tags`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Prompt tokens, cached ones included.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Prompt tokens read from the provider's cache.
    #[serde(default)]
    pub cached_tokens: u64,
    /// Prompt tokens written to the provider's cache (Anthropic, Bedrock).
    #[serde(default)]
    pub cache_creation_tokens: u64,
    /// Completion tokens, reasoning included.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Completion tokens spent on reasoning.
    #[serde(default)]
    pub reasoning_tokens: u64,
    /// Cost in US dollars; 0 for a failure or a model without a price.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub cost_usd: f64,
    /// Receipt to final answer, milliseconds.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub latency_ms: f64,
    /// Receipt to the first content chunk of a stream, milliseconds; `null` for a job that did
    /// not stream or streamed nothing.
    #[serde(default)]
    pub ttft_ms: Option<f64>,
    /// The answer's status (`Llm-Status`): 200 for success.
    #[schemars(range(min = 100, max = 599))]
    pub status: u16,
    /// For a failure, what kind: the error's `code` when it names one (`model_not_found`,
    /// `deadline_exceeded`), else its OpenAI `type` (`rate_limit_error`); `null` on success.
    #[serde(default)]
    pub error_class: Option<String>,
    /// True when the answer came from llmbus's response cache (no upstream call).
    #[serde(default)]
    pub cache_hit: bool,
    /// True for a streamed answer.
    #[serde(default)]
    pub stream: bool,
    /// Upstream attempts made (retries and fallbacks included).
    #[serde(default)]
    pub attempts: u32,
    /// The caller's W3C `traceparent`, when the request had one.
    #[serde(default)]
    pub traceparent: Option<String>,
}

impl UsageEvent {
    /// True for a successful job (status 2xx).
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The UTC day of [`UsageEvent::timestamp_ms`], `YYYY-MM-DD`.
    pub fn day(&self) -> String {
        day_of(self.timestamp_ms)
    }

    /// The error class of a failed job's answer: its `code` when that names something (not
    /// just the status again), else its OpenAI `type`.
    pub fn error_class_of(e: &ApiError) -> String {
        match &e.code {
            Some(code) if !code.is_empty() && !code.bytes().all(|b| b.is_ascii_digit()) => {
                code.clone()
            }
            _ => e.kind.to_string(),
        }
    }

    /// One line for a person: time, status, group, deployment, tokens, cost, latency.
    pub fn line(&self) -> String {
        let mut out = format!(
            "{}  {}  {}",
            rfc3339_ms(self.timestamp_ms),
            self.status,
            self.model_group
        );
        if let Some(d) = &self.deployment {
            out.push_str(&format!(" ({d})"));
        }
        out.push_str(&format!(
            "  {} in / {} out tokens",
            self.prompt_tokens, self.completion_tokens
        ));
        if self.cached_tokens > 0 {
            out.push_str(&format!(", {} cached", self.cached_tokens));
        }
        if self.reasoning_tokens > 0 {
            out.push_str(&format!(", {} reasoning", self.reasoning_tokens));
        }
        out.push_str(&format!(
            "  ${}  {:.0} ms",
            usd(self.cost_usd),
            self.latency_ms
        ));
        if let Some(t) = self.ttft_ms {
            out.push_str(&format!(" (first token {t:.0} ms)"));
        }
        if let Some(c) = &self.error_class {
            out.push_str(&format!("  error: {c}"));
        }
        if let Some(k) = self.key.as_ref().or(self.user.as_ref()) {
            out.push_str(&format!("  by {k}"));
        }
        if let Some(t) = &self.team {
            out.push_str(&format!("  team {t}"));
        }
        out.push_str(&format!("  job {}", self.job_id));
        out
    }
}

/// US dollars for a person: up to 8 decimals without trailing zeros, at least 2
/// (`0.0000022`, `0.50`, `12.3456789`).
pub fn usd(v: f64) -> String {
    let mut s = format!("{v:.8}");
    while s.ends_with('0') && s.len() - s.find('.').unwrap_or(s.len()) > 3 {
        s.pop();
    }
    s
}

/// Unix time in milliseconds, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The UTC day of a Unix time in milliseconds, `YYYY-MM-DD`.
pub fn day_of(ms: u64) -> String {
    let (y, m, d) = civil_from_days((ms / 86_400_000) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A Unix time in milliseconds as RFC 3339 in UTC with milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    let (y, mo, d) = civil_from_days((ms / 86_400_000) as i64);
    let in_day = ms % 86_400_000;
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date; `None` for an impossible date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> Option<i64> {
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The date of a day number (days since 1970-01-01).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    // Howard Hinnant's civil_from_days.
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_dates_round_trip() {
        assert_eq!(day_of(0), "1970-01-01");
        // 2024-02-29T23:59:59.999Z and the next millisecond.
        let leap = days_from_civil(2024, 2, 29).unwrap();
        let ms = (leap as u64 + 1) * 86_400_000 - 1;
        assert_eq!(day_of(ms), "2024-02-29");
        assert_eq!(day_of(ms + 1), "2024-03-01");
        assert_eq!(rfc3339_ms(ms), "2024-02-29T23:59:59.999Z");
        for z in [-1000, 0, 1, 19_000, 20_000, 60_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), Some(z));
        }
        assert_eq!(days_from_civil(2023, 2, 29), None);
        assert_eq!(days_from_civil(2024, 13, 1), None);
        assert_eq!(days_from_civil(2024, 4, 31), None);
    }

    #[test]
    fn every_field_is_always_serialized() {
        let e = UsageEvent {
            job_id: "j1".into(),
            status: 200,
            ..Default::default()
        };
        let v = serde_json::to_value(&e).unwrap();
        for field in [
            "deployment",
            "key",
            "team",
            "ttft_ms",
            "error_class",
            "traceparent",
        ] {
            assert!(v[field].is_null(), "{field}");
        }
        assert_eq!(serde_json::from_value::<UsageEvent>(v).unwrap(), e);
        // Older or newer producers: missing optional fields and unknown ones are fine.
        let e: UsageEvent = serde_json::from_str(
            r#"{"job_id":"j","timestamp_ms":1,"model_group":"g","status":503,"new_field":1}"#,
        )
        .unwrap();
        assert!(!e.is_success());
    }

    #[test]
    fn error_classes_prefer_a_named_code() {
        let e = ApiError::new(429, "rate_limit_error", "slow down");
        assert_eq!(UsageEvent::error_class_of(&e), "rate_limit_error");
        let e = ApiError::new(404, "invalid_request_error", "no").with_code("model_not_found");
        assert_eq!(UsageEvent::error_class_of(&e), "model_not_found");
    }

    #[test]
    fn a_line_names_the_essentials() {
        let e = UsageEvent {
            job_id: "j9".into(),
            timestamp_ms: 86_400_000,
            model_group: "gpt-4o".into(),
            deployment: Some("openai-1".into()),
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_usd: 0.00123,
            latency_ms: 250.0,
            status: 200,
            team: Some("ml".into()),
            ..Default::default()
        };
        let line = e.line();
        assert!(
            line.starts_with("1970-01-02T00:00:00.000Z  200  gpt-4o (openai-1)"),
            "{line}"
        );
        assert!(line.contains("10 in / 5 out tokens"), "{line}");
        assert!(line.contains("$0.00123  250 ms"), "{line}");
        assert_eq!(usd(0.0000022), "0.0000022");
        assert_eq!(usd(0.5), "0.50");
        assert_eq!(usd(0.0), "0.00");
        assert_eq!(usd(12.345_678_9), "12.3456789");
        assert!(
            line.contains("team ml") && line.ends_with("job j9"),
            "{line}"
        );
    }
}
