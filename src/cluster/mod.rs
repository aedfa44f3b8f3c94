//! Cluster state over NATS JetStream KV: what makes several workers one gateway, with nothing
//! but the NATS server.
//!
//! - [`members`]: who is alive, which model groups each worker serves and with which config
//!   (bucket `LLM_WORKERS`; heartbeats, a watched local view).
//! - [`quota`]: deployment limits (`rpm`, `tpm`) that hold across all workers, exactly on a
//!   sliding window (bucket `LLM_QUOTA`; slices leased by compare-and-set, spent locally). The
//!   pure rules are [`crate::limits::Ledger`] and [`crate::limits::LocalShare`].
//! - [`health`]: cooldowns that a worker starting late learns at once (bucket `LLM_HEALTH`).
//! - [`lease`]: one holder at a time for a duty any worker can do (the spend aggregator's
//!   lease in `LLM_SPEND`), by compare-and-set and revisions seen on the local clock.
//! - [`config_store`]: the cluster's config file, pushed once for every worker, with its
//!   history (bucket `LLM_CONFIG`; `llmbus config push|show|history|rollback`, `llmbus serve`
//!   without `--config`).
//! - [`clock`]: the server's time as a worker sees it (bucket `LLM_CLOCK`), which every time
//!   written into or judged from the buckets above uses, so workers' clocks need not agree.
//! - [`sharing`]: whether a worker's limits hold for the cluster now, or for it alone and why.
//! - [`store`]: how many replicas every bucket and stream gets (`llmbus.replicas`), and what
//!   the server has of them now.
//!
//! Every bucket is created idempotently at start-up ([`ensure_bucket`]) with options that
//! nats-server 2.9 understands: no per-key TTL (buckets age out with a bucket-wide `max_age`),
//! no multiple filter subjects, no `*_strict` or consumer-update calls. The bucket names carry
//! the subject prefix upper-cased (`llm` → `LLM_QUOTA`), so two llmbus installations with
//! different prefixes on one server do not share state.

pub mod clock;
pub mod config_store;
pub mod health;
pub mod lease;
pub mod members;
pub mod quota;
pub mod sharing;
pub mod store;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;

pub use store::{Replicas, ensure_bucket};

pub use crate::wire::subjects::bucket_name;

/// Why cluster state could not be reached: the one error of the cluster modules (the config
/// store adds its own, [`config_store::PushError`]). Each variant names the bucket or key and
/// carries what NATS said as its source.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A KV bucket could neither be found nor created.
    #[error("JetStream KV bucket {bucket}: {source}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// What the server said.
        source: async_nats::Error,
    },
    /// The server has no JetStream, so no bucket can exist.
    #[error(
        "JetStream KV bucket {bucket}: JetStream is not enabled on this NATS server, and the \
         cluster's config lives in a JetStream KV bucket: start nats-server with -js (or \
         `jetstream: enabled` in its config)"
    )]
    NoJetStream {
        /// The bucket.
        bucket: String,
    },
    /// A read or write failed.
    #[error("JetStream KV {bucket}: {source}")]
    Kv {
        /// The bucket.
        bucket: String,
        /// What failed.
        source: async_nats::Error,
    },
    /// A lease key could not be read.
    #[error("reading the lease {key}: {source}")]
    LeaseRead {
        /// The lease key.
        key: String,
        /// What failed.
        source: async_nats::Error,
    },
    /// A lease key could not be written.
    #[error("writing the lease {key}: {source}")]
    LeaseWrite {
        /// The lease key.
        key: String,
        /// What failed.
        source: async_nats::Error,
    },
}

impl ClusterError {
    /// A read or write of `bucket` that failed because of `source`.
    pub(crate) fn kv(bucket: &str, source: impl Into<async_nats::Error>) -> Self {
        ClusterError::Kv {
            bucket: bucket.to_owned(),
            source: source.into(),
        }
    }
}

/// A name as one KV key token: ASCII letters, digits, `-` and `_` stay; every other byte is
/// written `=XX` (hex). Different names give different keys, and the result never contains
/// `.`, so it can be joined with `.` into a longer key.
pub fn key_token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("=00");
    }
    out
}

/// Milliseconds since the Unix epoch on this machine's clock (for what only people read; shared
/// state takes its times from a [`clock::Clock`]).
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A JetStream context whose requests give up after `timeout` (the default is 5 s; the cluster
/// modules prefer to learn about an outage sooner).
pub fn jetstream(client: async_nats::Client, timeout: Duration) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(timeout)
        .build(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_carry_the_prefix() {
        assert_eq!(bucket_name("llm", "QUOTA"), "LLM_QUOTA");
        assert_eq!(bucket_name("acme.llm", "HEALTH"), "ACME_LLM_HEALTH");
    }

    #[test]
    fn key_tokens_are_valid_and_distinct() {
        assert_eq!(key_token("gpt-4o_eu"), "gpt-4o_eu");
        assert_eq!(key_token("azure/gpt-4o.1"), "azure=2Fgpt-4o=2E1");
        assert_eq!(key_token("a b"), "a=20b");
        assert_eq!(key_token("é"), "=C3=A9");
        assert_eq!(key_token(""), "=00");
        assert_ne!(key_token("a=2E"), key_token("a."));
        for name in ["x.y", "x*y", "x>y", " ", "=", "ü/ß"] {
            let k = key_token(name);
            assert!(
                k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=".contains(c)),
                "{k}"
            );
        }
    }
}
