//! Failover and routing policy, as pure code (no actors, no NATS; time is passed in), so each
//! rule is unit-tested on its own:
//!
//! - [`health`]: when a deployment cools down and comes back (LiteLLM's `allowed_fails`,
//!   `allowed_fails_policy`, failure rate, `cooldown_time`, `Retry-After`), with a half-open
//!   probe after each cooldown;
//! - [`retry`]: how many retries an error class gets (`num_retries`, `retry_policy`), how long
//!   to back off, and which fallback list applies;
//! - [`routing`]: the routing strategies that pick among a group's healthy deployments.

pub mod health;
pub mod retry;
pub mod routing;
