//! Capacity accounting, pure code: sliding windows for RPM and TPM, the in-flight bound, and
//! the token estimate a job reserves before its call. Unit-tested without NATS; time is always
//! an argument (`std::time::Instant`), never read behind the caller's back.
//!
//! - [`SlidingWindow`]: a per-minute allowance that holds in every 60 s window (local limits).
//! - [`Capacity`]: one deployment's RPM + TPM + parallel limits; grants [`Permit`]s or a [`Wait`].
//!   Its RPM and TPM limits are local sliding windows or [`SharedLimit`]s held with the cluster.
//! - [`Demand`]: what a job reserves against TPM before the upstream answers: its prompt
//!   estimate ([`estimate_prompt_tokens`]) plus the most it may generate.
//! - [`Ledger`]: the slices of a cluster-wide limit leased in the last window, as stored in KV,
//!   and the proof that leasing by its rule keeps every sliding window within the limit.
//! - [`LocalShare`]: one worker's share of a cluster-wide limit: the slices it spends on the hot
//!   path and the decisions of the task that leases them ([`crate::cluster::quota`] runs it).

mod capacity;
mod estimate;
pub mod ledger;
pub mod share;
mod window;

pub use capacity::{Capacity, CapacitySnapshot, Permit, SharedLimit, Wait, default_max_parallel};
pub use estimate::{DEFAULT_OUTPUT_TOKENS, Demand, estimate_prompt_tokens, estimate_text_tokens};
pub use ledger::Ledger;
pub use share::{LocalShare, ShareParams, SyncPlan, Taken};
pub use window::SlidingWindow;
