//! Retries and fallbacks: how many retries an error class gets, how long to wait before one,
//! and which fallback list a failure leads to.
//!
//! As in LiteLLM's router: `num_retries` (default 2) applies to the retryable classes (rate
//! limit, timeout, connection, 5xx, broken upstream body); `retry_policy` sets retries per class
//! (and may give retries to classes that otherwise get none, such as authentication). A retry
//! goes at once to another healthy deployment when there is one; otherwise, when only healthy
//! ones that already failed the job are left, it waits — `Retry-After` when the upstream sent
//! it, else exponential back-off from 0.5 s to 8 s with jitter, never less than `retry_after` —
//! and never past the job's deadline. A group none of whose deployments is healthy (all cooling
//! down) is never waited for: the job falls back at once.
//!
//! After the retries, a context-window error goes to `context_window_fallbacks`, a
//! content-policy error to `content_policy_fallbacks` (when the group has any), everything else
//! to `fallbacks`, else `default_fallbacks`; at most `max_fallbacks` (default 5) groups.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use crate::providers::ErrorClass;

/// LiteLLM's default `num_retries` for the router.
pub const DEFAULT_NUM_RETRIES: u32 = 2;
/// LiteLLM's default `max_fallbacks`.
pub const DEFAULT_MAX_FALLBACKS: usize = 5;
const INITIAL_DELAY: f64 = 0.5;
const MAX_DELAY: f64 = 8.0;

/// Retries per error class.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries for retryable classes without a policy entry.
    pub num_retries: u32,
    /// `retry_policy` entries.
    pub per_class: HashMap<ErrorClass, u32>,
    /// `router_settings.retry_after`: the least wait before a retry that has to wait.
    pub min_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            num_retries: DEFAULT_NUM_RETRIES,
            per_class: HashMap::new(),
            min_wait: Duration::ZERO,
        }
    }
}

/// True for the classes another attempt may fix without the request changing.
pub fn is_retryable(class: ErrorClass) -> bool {
    matches!(
        class,
        ErrorClass::RateLimit
            | ErrorClass::Timeout
            | ErrorClass::Connection
            | ErrorClass::InternalServer
            | ErrorClass::InvalidResponse
    )
}

impl RetryPolicy {
    /// Retries allowed for failures of `class` within one model group.
    pub fn retries_for(&self, class: ErrorClass) -> u32 {
        match self.per_class.get(&class) {
            Some(n) => *n,
            None if is_retryable(class) => self.num_retries,
            None => 0,
        }
    }

    /// The wait before retry number `retry` (1, 2, ...) on a deployment that already failed:
    /// `Retry-After` when given, else exponential back-off with jitter (`jitter` in 0..1).
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let wait = match retry_after {
            Some(r) => r,
            None => {
                let exp =
                    (INITIAL_DELAY * 2f64.powi(retry.saturating_sub(1) as i32)).min(MAX_DELAY);
                Duration::from_secs_f64(exp * (1.0 - 0.25 * jitter.clamp(0.0, 1.0)))
            }
        };
        wait.max(self.min_wait)
    }
}

/// Which fallback list a failure leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackKind {
    /// `fallbacks` / `default_fallbacks`.
    Generic,
    /// `context_window_fallbacks`.
    ContextWindow,
    /// `content_policy_fallbacks`.
    ContentPolicy,
}

impl FallbackKind {
    /// The kind for a failure of `class`.
    pub fn of(class: ErrorClass) -> Self {
        match class {
            ErrorClass::ContextWindowExceeded => FallbackKind::ContextWindow,
            ErrorClass::ContentPolicyViolation => FallbackKind::ContentPolicy,
            _ => FallbackKind::Generic,
        }
    }
}

/// The fallback lists of `router_settings`.
#[derive(Debug, Clone, Default)]
pub struct Fallbacks {
    /// `fallbacks`.
    pub generic: BTreeMap<String, Vec<String>>,
    /// `context_window_fallbacks`.
    pub context_window: BTreeMap<String, Vec<String>>,
    /// `content_policy_fallbacks`.
    pub content_policy: BTreeMap<String, Vec<String>>,
    /// `default_fallbacks`.
    pub default: Vec<String>,
    /// `max_fallbacks`.
    pub max: usize,
}

impl Fallbacks {
    /// Merges LiteLLM's list-of-maps form (`[{"a": ["b"]}, {"c": ["d"]}]`) into one map.
    pub fn merge(entries: &[BTreeMap<String, Vec<String>>]) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for entry in entries {
            for (group, list) in entry {
                out.entry(group.clone())
                    .or_default()
                    .extend(list.iter().cloned());
            }
        }
        out
    }

    /// The groups to try after `group` failed with a failure of `kind`.
    pub fn for_group(&self, group: &str, kind: FallbackKind) -> Vec<String> {
        let specific = match kind {
            FallbackKind::ContextWindow => self.context_window.get(group),
            FallbackKind::ContentPolicy => self.content_policy.get(group),
            FallbackKind::Generic => None,
        };
        let list = specific
            .or_else(|| self.generic.get(group))
            .cloned()
            .unwrap_or_else(|| self.default.clone());
        list.into_iter().filter(|g| g != group).collect()
    }

    /// The most fallback groups one job tries.
    pub fn max(&self) -> usize {
        if self.max == 0 {
            DEFAULT_MAX_FALLBACKS
        } else {
            self.max
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_num_retries_and_the_policy() {
        let mut p = RetryPolicy::default();
        assert_eq!(p.retries_for(ErrorClass::InternalServer), 2);
        assert_eq!(p.retries_for(ErrorClass::Authentication), 0);
        assert_eq!(p.retries_for(ErrorClass::BadRequest), 0);
        p.per_class.insert(ErrorClass::RateLimit, 5);
        p.per_class.insert(ErrorClass::Authentication, 1);
        assert_eq!(p.retries_for(ErrorClass::RateLimit), 5);
        assert_eq!(p.retries_for(ErrorClass::Authentication), 1);
    }

    #[test]
    fn backoff_is_exponential_capped_and_honours_retry_after() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1, None, 0.0), Duration::from_millis(500));
        assert_eq!(p.backoff(2, None, 0.0), Duration::from_secs(1));
        assert_eq!(p.backoff(10, None, 0.0), Duration::from_secs(8));
        assert_eq!(p.backoff(1, None, 1.0), Duration::from_millis(375));
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(3)), 0.5),
            Duration::from_secs(3)
        );
        let p = RetryPolicy {
            min_wait: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff(1, None, 0.0), Duration::from_secs(2));
    }

    #[test]
    fn fallbacks_pick_the_list_for_the_failure() {
        let f = Fallbacks {
            generic: Fallbacks::merge(&[BTreeMap::from([("a".into(), vec!["b".into()])])]),
            context_window: BTreeMap::from([("a".into(), vec!["a-long".into()])]),
            content_policy: BTreeMap::new(),
            default: vec!["d".into()],
            max: 0,
        };
        assert_eq!(f.for_group("a", FallbackKind::Generic), ["b"]);
        assert_eq!(f.for_group("a", FallbackKind::ContextWindow), ["a-long"]);
        assert_eq!(f.for_group("a", FallbackKind::ContentPolicy), ["b"]);
        assert_eq!(f.for_group("x", FallbackKind::Generic), ["d"]);
        assert_eq!(
            f.for_group("d", FallbackKind::Generic),
            Vec::<String>::new()
        );
        assert_eq!(f.max(), 5);
    }
}
