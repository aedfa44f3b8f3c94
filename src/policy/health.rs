//! A deployment's health: the failures of the last minute and the cooldown they lead to.
//!
//! The rules, after LiteLLM's router (`router_utils/cooldown_handlers.py`):
//! - Failures that are the request's fault, not the deployment's — bad request, context window
//!   exceeded, content policy, permission denied — never count.
//! - A deployment cools down when, within the last minute, its failures exceed `allowed_fails`
//!   (default 3; `allowed_fails_policy` sets it per error class and then counts that class's
//!   failures only), or when at least [`RATE_MIN_REQUESTS`] requests were made and more than
//!   half failed.
//! - An authentication or not-found failure means the deployment is misconfigured: it cools
//!   down at once (unless `allowed_fails_policy` names that class).
//! - `Retry-After` on a 429/503: the deployment cools down at once for at least that long —
//!   unless it is its group's only deployment, which LiteLLM never cools down for a rate limit
//!   alone: the job's retry waits out the `Retry-After` instead (within its deadline), since a
//!   cooling lone deployment would fail every job of the group until the cooldown ends.
//! - A cooldown lasts `cooldown_time` (default 5 s; longer when `Retry-After` says so). When it
//!   ends the deployment is half-open: one probe request decides — success makes it healthy
//!   and forgets the old failures, failure starts a new cooldown.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::providers::ErrorClass;

/// The window failures and successes are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The failure-rate rule needs at least this many requests in the window.
pub const RATE_MIN_REQUESTS: usize = 10;
/// LiteLLM's default `allowed_fails`.
pub const DEFAULT_ALLOWED_FAILS: u32 = 3;
/// LiteLLM's default `cooldown_time`.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(5);

/// The thresholds, from `router_settings`.
#[derive(Debug, Clone)]
pub struct HealthPolicy {
    /// Failures allowed in the window before a cooldown.
    pub allowed_fails: u32,
    /// `allowed_fails` per error class.
    pub per_class: HashMap<ErrorClass, u32>,
    /// How long a cooldown lasts.
    pub cooldown: Duration,
    /// The deployment is its group's only one: an upstream's `Retry-After` alone does not cool
    /// it down (the retry waits for it).
    pub lone: bool,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            allowed_fails: DEFAULT_ALLOWED_FAILS,
            per_class: HashMap::new(),
            cooldown: DEFAULT_COOLDOWN,
            lone: false,
        }
    }
}

/// Where a deployment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Takes traffic.
    Healthy,
    /// Takes no traffic until the cooldown ends.
    CoolingDown,
    /// The cooldown ended: the next request is a probe.
    HalfOpen,
    /// The deployment cannot work (see `providers::misconfigured`): it never takes traffic.
    Misconfigured,
}

impl HealthState {
    /// 0, 1, 2, 3: the value of the `llmbus_deployment_state` gauge.
    pub fn code(self) -> u8 {
        match self {
            HealthState::Healthy => 0,
            HealthState::CoolingDown => 1,
            HealthState::HalfOpen => 2,
            HealthState::Misconfigured => 3,
        }
    }
}

/// True when a failure of `class` says something about the deployment (not the request).
pub fn counts_against_deployment(class: ErrorClass) -> bool {
    !matches!(
        class,
        ErrorClass::BadRequest
            | ErrorClass::ContextWindowExceeded
            | ErrorClass::ContentPolicyViolation
            | ErrorClass::PermissionDenied
    )
}

/// One deployment's failure record and cooldown.
#[derive(Debug, Clone)]
pub struct Health {
    policy: HealthPolicy,
    /// Outcomes in the window: (when, the failure's class or `None` for a success).
    outcomes: VecDeque<(Instant, Option<ErrorClass>)>,
    cooling_until: Option<Instant>,
    /// True once a cooldown has ended and no probe has come back yet.
    half_open: bool,
    cooldowns: u64,
}

impl Health {
    /// A healthy deployment under `policy`.
    pub fn new(policy: HealthPolicy) -> Self {
        Self {
            policy,
            outcomes: VecDeque::new(),
            cooling_until: None,
            half_open: false,
            cooldowns: 0,
        }
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> HealthState {
        match self.cooling_until {
            Some(until) if now < until => HealthState::CoolingDown,
            Some(_) => HealthState::HalfOpen,
            None if self.half_open => HealthState::HalfOpen,
            None => HealthState::Healthy,
        }
    }

    /// When the current cooldown ends.
    pub fn cooling_until(&self) -> Option<Instant> {
        self.cooling_until
    }

    /// Cooldowns started so far.
    pub fn cooldowns(&self) -> u64 {
        self.cooldowns
    }

    /// Failures and requests in the window.
    pub fn window_counts(&mut self, now: Instant) -> (usize, usize) {
        self.prune(now);
        let fails = self.outcomes.iter().filter(|(_, c)| c.is_some()).count();
        (fails, self.outcomes.len())
    }

    /// A call succeeded. Ends a half-open state.
    pub fn success(&mut self, now: Instant) {
        self.prune(now);
        if self.state(now) == HealthState::HalfOpen {
            self.outcomes.clear();
            self.cooling_until = None;
            self.half_open = false;
        }
        self.outcomes.push_back((now, None));
    }

    /// A call failed with `class`; `retry_after` is the upstream's `Retry-After`. Returns the
    /// length of the cooldown this failure starts, if it starts one.
    pub fn failure(
        &mut self,
        class: ErrorClass,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Option<Duration> {
        if !counts_against_deployment(class) {
            return None;
        }
        self.prune(now);
        let state = self.state(now);
        self.outcomes.push_back((now, Some(class)));
        if state == HealthState::CoolingDown {
            // A call that was already in flight when the cooldown started: it is counted,
            // but the cooldown in force stands (no second one, no second announcement).
            return None;
        }
        let was_half_open = state == HealthState::HalfOpen;
        let policy_limit = self.policy.per_class.get(&class).copied();
        let fails = match policy_limit {
            Some(_) => self
                .outcomes
                .iter()
                .filter(|(_, c)| *c == Some(class))
                .count(),
            None => self.outcomes.iter().filter(|(_, c)| c.is_some()).count(),
        };
        let allowed = policy_limit.unwrap_or(self.policy.allowed_fails) as usize;
        let misconfigured = policy_limit.is_none()
            && matches!(class, ErrorClass::Authentication | ErrorClass::NotFound);
        let rate_tripped =
            self.outcomes.len() >= RATE_MIN_REQUESTS && fails * 2 > self.outcomes.len();
        let tripped = was_half_open || misconfigured || fails > allowed || rate_tripped;
        let length = match (tripped, retry_after) {
            (true, Some(r)) => self.policy.cooldown.max(r),
            (true, None) => self.policy.cooldown,
            (false, Some(r)) if !r.is_zero() && !self.policy.lone => r,
            _ => return None,
        };
        self.cool_down(length, now);
        Some(length)
    }

    /// Another worker reported a cooldown of this deployment until `until`.
    pub fn cool_down_until(&mut self, until: Instant, now: Instant) {
        if until > now && self.cooling_until.is_none_or(|u| u < until) {
            self.cooling_until = Some(until);
            self.half_open = true;
            self.cooldowns += 1;
        }
    }

    fn cool_down(&mut self, length: Duration, now: Instant) {
        self.cooling_until = Some(now + length);
        self.half_open = true;
        self.cooldowns += 1;
    }

    fn prune(&mut self, now: Instant) {
        while self
            .outcomes
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
        {
            self.outcomes.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn cools_down_after_more_than_allowed_fails_then_half_opens() {
        let mut h = Health::new(HealthPolicy::default());
        let t = Instant::now();
        for i in 0..3 {
            assert_eq!(
                h.failure(ErrorClass::InternalServer, None, t),
                None,
                "fail {i}"
            );
        }
        assert_eq!(h.state(t), HealthState::Healthy);
        assert_eq!(
            h.failure(ErrorClass::InternalServer, None, t),
            Some(secs(5))
        );
        assert_eq!(h.state(t + secs(1)), HealthState::CoolingDown);
        assert_eq!(h.state(t + secs(5)), HealthState::HalfOpen);
        // The probe fails: a new cooldown at once.
        assert_eq!(
            h.failure(ErrorClass::Timeout, None, t + secs(6)),
            Some(secs(5))
        );
        assert_eq!(h.state(t + secs(7)), HealthState::CoolingDown);
        // The next probe succeeds: healthy, old failures forgotten.
        h.success(t + secs(12));
        assert_eq!(h.state(t + secs(12)), HealthState::Healthy);
        assert_eq!(
            h.failure(ErrorClass::InternalServer, None, t + secs(13)),
            None
        );
        assert_eq!(h.cooldowns(), 2);
    }

    #[test]
    fn request_faults_never_count() {
        let mut h = Health::new(HealthPolicy::default());
        let t = Instant::now();
        for _ in 0..20 {
            for c in [
                ErrorClass::BadRequest,
                ErrorClass::ContextWindowExceeded,
                ErrorClass::ContentPolicyViolation,
                ErrorClass::PermissionDenied,
            ] {
                assert_eq!(h.failure(c, None, t), None);
            }
        }
        assert_eq!(h.state(t), HealthState::Healthy);
        assert_eq!(h.window_counts(t), (0, 0));
    }

    #[test]
    fn a_misconfigured_deployment_cools_down_at_once() {
        let mut h = Health::new(HealthPolicy::default());
        let t = Instant::now();
        assert!(h.failure(ErrorClass::Authentication, None, t).is_some());
        let mut h = Health::new(HealthPolicy::default());
        assert!(h.failure(ErrorClass::NotFound, None, t).is_some());
    }

    #[test]
    fn a_lone_deployment_is_not_cooled_down_by_retry_after_alone() {
        let t = Instant::now();
        let mut h = Health::new(HealthPolicy {
            lone: true,
            ..HealthPolicy::default()
        });
        assert_eq!(h.failure(ErrorClass::RateLimit, Some(secs(2)), t), None);
        assert_eq!(h.state(t), HealthState::Healthy);
        // Its failures still count: past allowed_fails it cools down like any other.
        for _ in 0..DEFAULT_ALLOWED_FAILS {
            h.failure(ErrorClass::RateLimit, Some(secs(2)), t);
        }
        assert_eq!(h.state(t), HealthState::CoolingDown);
    }

    #[test]
    fn retry_after_keeps_it_cooled_down_at_least_that_long() {
        let mut h = Health::new(HealthPolicy::default());
        let t = Instant::now();
        assert_eq!(
            h.failure(ErrorClass::RateLimit, Some(secs(2)), t),
            Some(secs(2))
        );
        assert_eq!(h.state(t + secs(1)), HealthState::CoolingDown);
        assert_eq!(h.state(t + secs(2)), HealthState::HalfOpen);
        // Past the threshold, the longer of cooldown_time and Retry-After.
        let mut h = Health::new(HealthPolicy::default());
        for _ in 0..3 {
            h.failure(ErrorClass::InternalServer, None, t);
        }
        assert_eq!(
            h.failure(ErrorClass::RateLimit, Some(secs(30)), t),
            Some(secs(30))
        );
    }

    #[test]
    fn the_failure_rate_rule_trips_with_enough_requests() {
        let policy = HealthPolicy {
            allowed_fails: 100,
            ..HealthPolicy::default()
        };
        let mut h = Health::new(policy);
        let t = Instant::now();
        for _ in 0..4 {
            h.success(t);
        }
        for i in 0..5 {
            assert_eq!(h.failure(ErrorClass::Timeout, None, t), None, "fail {i}");
        }
        // 10 requests, 6 failed: more than half.
        assert!(h.failure(ErrorClass::Timeout, None, t).is_some());
    }

    #[test]
    fn allowed_fails_policy_counts_its_class_only() {
        let policy = HealthPolicy {
            per_class: HashMap::from([(ErrorClass::RateLimit, 1), (ErrorClass::Authentication, 2)]),
            ..HealthPolicy::default()
        };
        let mut h = Health::new(policy);
        let t = Instant::now();
        assert_eq!(h.failure(ErrorClass::RateLimit, None, t), None);
        assert_eq!(h.failure(ErrorClass::InternalServer, None, t), None);
        assert!(
            h.failure(ErrorClass::RateLimit, None, t).is_some(),
            "2 > 1 rate limits"
        );
        let mut h = Health::new(HealthPolicy {
            per_class: HashMap::from([(ErrorClass::Authentication, 2)]),
            ..HealthPolicy::default()
        });
        assert_eq!(
            h.failure(ErrorClass::Authentication, None, t),
            None,
            "policy overrides"
        );
    }

    #[test]
    fn failures_during_a_cooldown_do_not_start_another() {
        let mut h = Health::new(HealthPolicy::default());
        let t = Instant::now();
        assert!(h.failure(ErrorClass::Authentication, None, t).is_some());
        for _ in 0..5 {
            assert_eq!(h.failure(ErrorClass::Timeout, None, t + secs(1)), None);
        }
        assert_eq!(h.cooldowns(), 1);
        assert_eq!(h.cooling_until(), Some(t + secs(5)));
        assert_eq!(h.window_counts(t + secs(1)), (6, 6));
    }

    #[test]
    fn old_failures_leave_the_window() {
        let mut h = Health::new(HealthPolicy::default());
        let t = Instant::now();
        for _ in 0..3 {
            h.failure(ErrorClass::InternalServer, None, t);
        }
        assert_eq!(
            h.failure(ErrorClass::InternalServer, None, t + secs(61)),
            None
        );
        assert_eq!(h.window_counts(t + secs(61)), (1, 1));
    }
}
