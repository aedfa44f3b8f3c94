//! What a worker shares with the others through JetStream KV ([`crate::cluster`]): the
//! cluster-wide limits, the cooldown board and its membership. Each part is `None` when the
//! server has no JetStream (limits then hold per worker, cooldowns travel by core NATS gossip
//! only), with a warning.

use crate::{
    cluster::{
        health::HealthBoard,
        members::{MemberInfo, Members},
        quota::ClusterQuota,
    },
    config::Config,
};

/// What a worker shares with the others through JetStream KV ([`crate::cluster`]): each part
/// is `None` when the server has no JetStream (then limits hold per worker, and cooldowns travel
/// by core NATS gossip only), with a warning.
pub(super) struct Cluster {
    pub(super) quota: Option<ClusterQuota>,
    pub(super) board: Option<HealthBoard>,
    pub(super) members: Option<Members>,
}

impl Cluster {
    pub(super) async fn join(
        client: &async_nats::Client,
        config: &Config,
        worker_id: &str,
    ) -> Self {
        let prefix = &config.llmbus.subject_prefix;
        let warn = |what: &str, e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "{what}: JetStream KV is not available; this worker keeps it to itself");
        };
        let quota = ClusterQuota::open(client.clone(), prefix, worker_id)
            .await
            .map_err(|e| warn("rpm/tpm limits shared with the cluster", &e))
            .ok();
        let board = HealthBoard::open(client.clone(), prefix, worker_id)
            .await
            .map_err(|e| warn("cooldowns for workers that start later", &e))
            .ok();
        let me = MemberInfo::new(
            worker_id,
            super::build::served_names(config),
            config.fingerprint(),
        );
        let members = Members::start(client.clone(), prefix, me)
            .await
            .map_err(|e| {
                warn(
                    "membership (relaying jobs to the workers that serve them)",
                    &e,
                )
            })
            .ok();
        Self {
            quota,
            board,
            members,
        }
    }
}
