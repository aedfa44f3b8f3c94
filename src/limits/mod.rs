//! Capacity accounting, pure code: token buckets for RPM and TPM, the in-flight bound, and
//! the token estimate a job reserves before its call. Unit-tested without NATS; time is always
//! an argument (`std::time::Instant`), never read behind the caller's back.
//!
//! - [`TokenBucket`]: a per-minute allowance with continuous refill that can go into debt.
//! - [`Capacity`]: one deployment's RPM + TPM + parallel limits; grants [`Permit`]s or a [`Wait`].
//! - [`estimate_prompt_tokens`]: what a job reserves against TPM before the upstream answers.

mod bucket;
mod capacity;
mod estimate;

pub use bucket::TokenBucket;
pub use capacity::{Capacity, CapacitySnapshot, Permit, Wait, default_max_parallel};
pub use estimate::{estimate_prompt_tokens, estimate_text_tokens};
