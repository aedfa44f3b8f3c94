//! Capacity accounting, pure code: token buckets for RPM and TPM, the in-flight bound, and
//! the token estimate a job reserves before its call. Unit-tested without NATS.

mod estimate;

pub use estimate::{estimate_prompt_tokens, estimate_text_tokens};
