//! OpenAI's rate-limit headers, set from the limits of the deployment that served a job (as
//! LiteLLM's proxy does, BerriAI/litellm#5957): `x-ratelimit-limit-requests`,
//! `x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` and the same three for
//! tokens. Only a deployment with an `rpm` (requests) or `tpm` (tokens) limit has them.
//!
//! The same names and values travel as NATS reply headers and as HTTP response headers. The
//! limits are per minute, refilled continuously; `reset` is the time until the whole limit is
//! free again, in OpenAI's format (`17ms`, `1.5s`, `6m0s`).

use std::time::Duration;

use async_nats::HeaderMap;

/// Requests allowed per minute (the deployment's `rpm`).
pub const LIMIT_REQUESTS: &str = "x-ratelimit-limit-requests";
/// Requests left in the current minute.
pub const REMAINING_REQUESTS: &str = "x-ratelimit-remaining-requests";
/// Time until the request limit is whole again.
pub const RESET_REQUESTS: &str = "x-ratelimit-reset-requests";
/// Tokens allowed per minute (the deployment's `tpm`).
pub const LIMIT_TOKENS: &str = "x-ratelimit-limit-tokens";
/// Tokens left in the current minute.
pub const REMAINING_TOKENS: &str = "x-ratelimit-remaining-tokens";
/// Time until the token limit is whole again.
pub const RESET_TOKENS: &str = "x-ratelimit-reset-tokens";

/// Every rate-limit header name.
pub const ALL: [&str; 6] = [
    LIMIT_REQUESTS,
    REMAINING_REQUESTS,
    RESET_REQUESTS,
    LIMIT_TOKENS,
    REMAINING_TOKENS,
    RESET_TOKENS,
];

/// One per-minute limit and how much of it the trailing minute used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Allowed per minute.
    pub limit: u64,
    /// Used in the trailing minute (may exceed the limit after a call that used more tokens
    /// than it reserved).
    pub used: u64,
}

impl Window {
    /// What is left now.
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    /// Until the whole limit is free again: the used part refills at `limit` per minute.
    pub fn reset(&self) -> Duration {
        if self.limit == 0 {
            return Duration::from_secs(60);
        }
        Duration::from_secs_f64(self.used as f64 / self.limit as f64 * 60.0)
    }
}

/// Sets the headers of `requests` (rpm) and `tokens` (tpm) on `h`; nothing for a limit that is
/// `None`.
pub fn put(h: &mut HeaderMap, requests: Option<Window>, tokens: Option<Window>) {
    for (w, [limit, remaining, reset]) in [
        (
            requests,
            [LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS],
        ),
        (tokens, [LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS]),
    ] {
        if let Some(w) = w {
            h.insert(limit, w.limit.to_string());
            h.insert(remaining, w.remaining().to_string());
            h.insert(reset, format_reset(w.reset()));
        }
    }
}

/// A duration as OpenAI writes its resets: `0s`, `17ms`, `1.5s`, `6m0s`, `1m30.5s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = |ms: u128| {
        let s = format!("{}.{:03}", ms / 1000, ms % 1000);
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    if ms < 60_000 {
        return format!("{}s", secs(ms));
    }
    format!("{}m{}s", ms / 60_000, secs(ms % 60_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_read_like_openai_s() {
        assert_eq!(format_reset(Duration::ZERO), "0s");
        assert_eq!(format_reset(Duration::from_millis(17)), "17ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(1)), "1s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
        assert_eq!(format_reset(Duration::from_millis(90_500)), "1m30.5s");
    }

    #[test]
    fn a_window_tells_what_is_left_and_when_it_is_whole() {
        let w = Window { limit: 60, used: 1 };
        assert_eq!((w.remaining(), w.reset()), (59, Duration::from_secs(1)));
        let over = Window {
            limit: 100,
            used: 150,
        };
        assert_eq!(over.remaining(), 0);
        let mut h = HeaderMap::new();
        put(&mut h, Some(w), None);
        assert_eq!(h.get(LIMIT_REQUESTS).unwrap().as_str(), "60");
        assert_eq!(h.get(REMAINING_REQUESTS).unwrap().as_str(), "59");
        assert_eq!(h.get(RESET_REQUESTS).unwrap().as_str(), "1s");
        assert!(h.get(LIMIT_TOKENS).is_none());
    }
}
