//! The worker's keeper of its store ([`crate::cluster::store`]). Every [`EVERY`] it lists
//! llmbus's buckets and streams on the NATS server, in one request, and:
//!
//! - **creates again what was lost** while the worker runs: a bucket or stream the worker uses
//!   that is missing (a NATS node holding a one-replica bucket died, or a server came back
//!   without its disk) is created anew with the configured replicas. Each one is logged as a warning
//!   and counted in `llmbus_store_recreated_total`. The parts that use it carry on by
//!   themselves once it is back: their writes are retried and their watches restart, and the
//!   quota ledger gets every worker's leased slices back with its next write
//!   ([`crate::cluster::quota`]). What the lost store held is gone: cooldowns, the config's
//!   history, the spend aggregates (rebuilt from the usage stream when that survived);
//! - **compares replicas**: a bucket or stream with fewer than wanted is logged when first
//!   seen, set in the gauge `llmbus_store_replicas_missing` and shown by `llmbus health`.
//!
//! The config bucket is created again only when the keeper saw it before (an installation
//! that never pushed a config gets none), and the spend bucket only when this worker runs the
//! spend aggregator.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use async_nats::jetstream::kv;
use tokio::task::JoinHandle;

use crate::{
    cluster::{
        ClusterError, Replicas, bucket_name, clock, config_store, ensure_bucket, health, jetstream,
        members, quota,
        store::{self, StoreStatus},
    },
    telemetry,
    usage::{spend, stream},
    wire::Subjects,
};

/// How often the keeper looks.
pub const EVERY: Duration = Duration::from_secs(10);

/// One bucket or stream the keeper looks after.
#[derive(Debug)]
enum Kept {
    /// A KV bucket, created as its part creates it.
    Bucket(Box<kv::Config>),
    /// The usage stream.
    Usage(stream::Keep),
}

impl Kept {
    fn stream(&self, subjects: &Subjects) -> String {
        match self {
            Kept::Bucket(config) => format!("KV_{}", config.bucket),
            Kept::Usage(_) => subjects.usage_stream(),
        }
    }
}

/// Every bucket and stream of llmbus under `subjects`' prefix, as the parts create them.
fn everything(subjects: &Subjects, usage: stream::Keep) -> Vec<Kept> {
    let prefix = subjects.prefix();
    vec![
        Kept::Bucket(Box::new(quota::bucket(prefix))),
        Kept::Bucket(Box::new(health::bucket(prefix))),
        Kept::Bucket(Box::new(members::bucket(
            prefix,
            members::MembersOptions::default().max_age,
        ))),
        Kept::Bucket(Box::new(clock::bucket(prefix))),
        Kept::Bucket(Box::new(config_store::bucket(prefix))),
        Kept::Bucket(Box::new(spend::bucket_config(&subjects.spend_bucket()))),
        Kept::Usage(usage),
    ]
}

/// The keeper's task; stopped when dropped.
pub(super) struct Keeper {
    task: JoinHandle<()>,
}

impl Keeper {
    /// Starts looking after the store of `subjects`' prefix on `client`, reporting into
    /// `status`; the usage stream is made with `usage`, the spend bucket kept when
    /// `aggregate`.
    pub(super) fn start(
        client: async_nats::Client,
        subjects: Subjects,
        usage: stream::Keep,
        aggregate: bool,
        status: Arc<StoreStatus>,
    ) -> Self {
        let task = tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let look = Look {
                    client: &client,
                    subjects: &subjects,
                    usage,
                    aggregate,
                    status: &status,
                };
                if let Err(e) = look.check(&mut seen).await {
                    tracing::debug!(error = %e, "checking the store");
                }
            }
        });
        Self { task }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one look needs.
struct Look<'a> {
    client: &'a async_nats::Client,
    subjects: &'a Subjects,
    usage: stream::Keep,
    aggregate: bool,
    status: &'a StoreStatus,
}

impl Look<'_> {
    /// True when this worker creates `name` again once it is missing, having `seen` it or not.
    fn keeps(&self, name: &str, seen: bool) -> bool {
        if name == format!("KV_{}", bucket_name(self.subjects.prefix(), "CONFIG")) {
            seen
        } else if name == format!("KV_{}", self.subjects.spend_bucket()) {
            self.aggregate
        } else {
            true
        }
    }

    /// One look: creates again what is missing, records the replicas.
    async fn check(&self, seen: &mut BTreeSet<String>) -> Result<(), ClusterError> {
        let (subjects, status) = (self.subjects, self.status);
        let js = jetstream(self.client.clone(), Duration::from_secs(5));
        let kept = everything(subjects, self.usage);
        let names: Vec<String> = kept.iter().map(|k| k.stream(subjects)).collect();
        let found = store::survey(&js, &names).await?;
        let wanted = status.replicas.wanted(self.client, &found);
        let mut short = Vec::new();
        for (part, name) in kept.iter().zip(&names) {
            if let Some(&has) = found.get(name) {
                seen.insert(name.clone());
                short.extend(store::compare(name, has, wanted));
            } else if self.keeps(name, seen.contains(name))
                && recreate(&js, subjects, part, Replicas::Exactly(wanted)).await
            {
                tracing::warn!(
                    stream = %name,
                    replicas = wanted,
                    "{name} was missing (its NATS store was lost): created it again with \
                     {wanted} replica(s); what it held is gone"
                );
                metrics::counter!(telemetry::STORE_RECREATED, "stream" => name.clone())
                    .increment(1);
                status.recreated();
                seen.insert(name.clone());
            }
        }
        for s in status.checked(wanted, short) {
            store::warn(&s);
        }
        Ok(())
    }
}

/// Creates `part` again; true when it exists now.
async fn recreate(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    part: &Kept,
    replicas: Replicas,
) -> bool {
    let made = match part {
        Kept::Bucket(config) => ensure_bucket(js, (**config).clone(), replicas)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Kept::Usage(keep) => stream::ensure(js, subjects, keep.retention, replicas)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = &made {
        tracing::warn!(error = %e, "creating a lost part of the store again failed; retrying");
    }
    made.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keeper_looks_after_every_bucket_and_stream_llmbus_makes() {
        let subjects = Subjects::new("acme");
        let usage = stream::Keep {
            retention: Duration::from_secs(60),
            replicas: store::Replicas::Auto,
        };
        let kept: Vec<String> = everything(&subjects, usage)
            .iter()
            .map(|k| k.stream(&subjects))
            .collect();
        assert_eq!(kept, store::names(&subjects));
    }
}
