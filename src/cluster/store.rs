//! Where llmbus keeps its state in JetStream, and how much of it survives the loss of a NATS
//! node.
//!
//! - [`Replicas`]: how many copies of each bucket and stream llmbus creates
//!   (`llmbus.replicas`). By default 3 when the server is one of a cluster of 3 or more
//!   (counted from the client URLs it advertises), else 1.
//! - [`ensure_bucket`]: a KV bucket opened, or created with those replicas, the one way that
//!   works on nats-server 2.9.
//! - [`Shortfall`]: an existing bucket or stream with fewer replicas than wanted. llmbus never
//!   changes one that exists (an operator may have made it so), but says so, loudly: each
//!   worker's keeper (`worker::keeper`) warns when it first sees one and sets the gauge
//!   `llmbus_store_replicas_missing`, `llmbus health` shows it, and `llmbus check FILE
//!   --store` fails on it.
//! - [`survey`]: every llmbus bucket and stream under a prefix as the server has it now, in one
//!   request, for the worker's keeper (which creates again what was lost while it runs) and for
//!   `llmbus check`.

use std::{collections::BTreeMap, sync::Mutex};

use async_nats::jetstream::{self, kv, stream};
use futures::TryStreamExt;

use super::{ClusterError, bucket_name};
use crate::{telemetry, wire::Subjects};

/// The most replicas JetStream keeps of a stream.
pub const MAX_REPLICAS: usize = 5;

/// How many replicas llmbus creates its buckets and streams with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Replicas {
    /// 3 when the server is one of a cluster of 3 or more, else 1.
    #[default]
    Auto,
    /// This many (1 to [`MAX_REPLICAS`]).
    Exactly(usize),
}

impl Replicas {
    /// `llmbus.replicas`: a number, or unset for [`Replicas::Auto`].
    pub fn from_setting(setting: Option<usize>) -> Self {
        setting.map_or(Replicas::Auto, Replicas::Exactly)
    }

    /// The number for a server that is one of `cluster_size` servers.
    pub fn for_cluster(self, cluster_size: usize) -> usize {
        match self {
            Replicas::Exactly(n) => n.clamp(1, MAX_REPLICAS),
            Replicas::Auto if cluster_size >= 3 => 3,
            Replicas::Auto => 1,
        }
    }

    /// The number for the server `client` is connected to, with the store's buckets and
    /// streams as `found`. A node that is down is not advertised, so with [`Replicas::Auto`] a
    /// store that already keeps 3 replicas wants 3 (at most) however many servers answer now.
    pub fn wanted(self, client: &async_nats::Client, found: &Survey) -> usize {
        let now = self.resolve(client);
        match self {
            Replicas::Auto => now.max(found.values().copied().max().unwrap_or(0).min(3)),
            Replicas::Exactly(_) => now,
        }
    }

    /// The number for the server `client` is connected to now (a client that connects in the
    /// background knows nothing of its server before its first request has been answered).
    pub fn resolve(self, client: &async_nats::Client) -> usize {
        self.for_cluster(cluster_size(&client.server_info()))
    }
}

/// How many servers the server `info` came from has in its cluster: the client URLs it
/// advertises (its own among them), at least 1. A cluster that does not advertise
/// (`no_advertise`) counts as one server: set `llmbus.replicas` there.
pub fn cluster_size(info: &async_nats::ServerInfo) -> usize {
    let mut urls: Vec<&str> = info.connect_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    urls.dedup();
    urls.len().max(1)
}

/// A bucket or stream with fewer replicas than wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// The stream (`KV_LLM_QUOTA`, `LLM_USAGE`).
    pub stream: String,
    /// The replicas it has.
    pub has: usize,
    /// The replicas wanted.
    pub wanted: usize,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} has {} replica{} of the {} wanted",
            self.stream,
            self.has,
            if self.has == 1 { "" } else { "s" },
            self.wanted
        )
    }
}

/// Compares stream `name`'s replicas `has` with `wanted`: sets its gauge, and returns the
/// shortfall when there is one.
pub fn compare(name: &str, has: usize, wanted: usize) -> Option<Shortfall> {
    let missing = wanted.saturating_sub(has.max(1));
    metrics::gauge!(telemetry::STORE_REPLICAS_MISSING, "stream" => name.to_owned())
        .set(missing as f64);
    (missing > 0).then(|| Shortfall {
        stream: name.to_owned(),
        has: has.max(1),
        wanted,
    })
}

impl Shortfall {
    /// What it risks and how to mend it, for people.
    pub fn advice(&self) -> String {
        format!(
            "{self}: losing the NATS node that holds it loses what it keeps; llmbus does not \
             change a stream that exists: raise it with `nats stream edit {} --replicas {}`",
            self.stream, self.wanted
        )
    }
}

/// Logs a shortfall the first time it is seen.
pub fn warn(shortfall: &Shortfall) {
    tracing::warn!(
        stream = %shortfall.stream,
        has = shortfall.has,
        wanted = shortfall.wanted,
        "{}",
        shortfall.advice()
    );
}

/// Opens bucket `config.bucket`, creating it with `replicas` when it does not exist. An
/// existing bucket is used as it is, even when its options differ (an operator may have tuned
/// them; the keeper reports fewer replicas than wanted). Two workers that create it at once
/// both succeed.
///
/// The bucket's stream is created directly rather than with `create_key_value`: that call
/// first reads the account's JetStream info, which async-nats 0.51 cannot parse from
/// nats-server 2.9 (fields added in later servers are required).
pub async fn ensure_bucket(
    js: &jetstream::Context,
    config: kv::Config,
    replicas: Replicas,
) -> Result<kv::Store, ClusterError> {
    let name = config.bucket.clone();
    if let Ok(store) = js.get_key_value(&name).await {
        return Ok(store);
    }
    // After a first request: a client that connects in the background knows its server only
    // once connected.
    let wanted = replicas.resolve(&js.client());
    let created = js.create_stream(bucket_stream(&config, wanted)).await;
    match js.get_key_value(&name).await {
        Ok(store) => Ok(store),
        Err(get) => Err(ClusterError::Bucket {
            bucket: name,
            source: match created {
                Err(create) => create.into(),
                Ok(_) => get.into(),
            },
        }),
    }
}

/// The stream behind a KV bucket, as the KV clients lay it out (`KV_<bucket>`, subjects
/// `$KV.<bucket>.>`, one message per key and revision, rollups allowed, direct gets), with only
/// options that nats-server 2.9 knows, and `replicas` copies.
pub fn bucket_stream(config: &kv::Config, replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("KV_{}", config.bucket),
        description: Some(config.description.clone()),
        subjects: vec![format!("$KV.{}.>", config.bucket)],
        max_messages_per_subject: config.history.max(1),
        max_bytes: -1,
        max_messages: -1,
        max_age: config.max_age,
        max_message_size: -1,
        storage: config.storage,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: replicas.max(1),
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// The KV buckets llmbus keeps under a prefix, by their part of the name (`LLM_QUOTA` ...);
/// the spend bucket is [`Subjects::spend_bucket`].
pub const BUCKETS: [&str; 5] = ["QUOTA", "HEALTH", "WORKERS", "CLOCK", "CONFIG"];

/// The streams of every bucket and stream llmbus creates under `subjects`' prefix:
/// `KV_LLM_QUOTA`, `KV_LLM_HEALTH`, `KV_LLM_WORKERS`, `KV_LLM_CLOCK`, `KV_LLM_CONFIG`,
/// `KV_LLM_SPEND` and `LLM_USAGE` for `llm`.
pub fn names(subjects: &Subjects) -> Vec<String> {
    BUCKETS
        .iter()
        .map(|b| format!("KV_{}", bucket_name(subjects.prefix(), b)))
        .chain([
            format!("KV_{}", subjects.spend_bucket()),
            subjects.usage_stream(),
        ])
        .collect()
}

/// What the server has of some streams now: each name found, with its replicas.
pub type Survey = BTreeMap<String, usize>;

/// The streams among `names` that exist, with their replicas, read in one listing
/// (`$JS.API.STREAM.LIST`, paged by the client).
pub async fn survey(js: &jetstream::Context, names: &[String]) -> Result<Survey, ClusterError> {
    let mut found = Survey::new();
    let mut list = js.streams();
    while let Some(info) = list
        .try_next()
        .await
        .map_err(|e| ClusterError::kv("(stream list)", e))?
    {
        if names.contains(&info.config.name) {
            found.insert(info.config.name.clone(), info.config.num_replicas);
        }
    }
    Ok(found)
}

/// The worker's view of its store: the replicas it creates with, and what its keeper last
/// found. Shared by the keeper, the admin subjects and `$SRV.STATS` (`llmbus health`).
#[derive(Debug, Default)]
pub struct StoreStatus {
    /// The replicas the worker creates buckets and streams with (`llmbus.replicas`).
    pub replicas: Replicas,
    found: Mutex<Found>,
}

#[derive(Debug, Default)]
struct Found {
    wanted: usize,
    short: Vec<Shortfall>,
    recreated: u64,
}

impl StoreStatus {
    /// A status for a worker creating with `replicas`, before anything was checked.
    pub fn new(replicas: Replicas) -> Self {
        Self {
            replicas,
            found: Mutex::default(),
        }
    }

    /// Records a check: `wanted` replicas each, these `short` of them. Returns the shortfalls
    /// that are new since the last check (to log once, not at every check).
    pub fn checked(&self, wanted: usize, short: Vec<Shortfall>) -> Vec<Shortfall> {
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        let new = short
            .iter()
            .filter(|s| !found.short.contains(s))
            .cloned()
            .collect();
        found.wanted = wanted;
        found.short = short;
        new
    }

    /// Counts a bucket or stream created again while the worker ran.
    pub fn recreated(&self) {
        self.found
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recreated += 1;
    }

    /// The shortfalls the last check found.
    pub fn short(&self) -> Vec<Shortfall> {
        let found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        found.short.clone()
    }

    /// What `$SRV.STATS` says: `{"replicas": 3, "short": ["KV_LLM_QUOTA has 1 replica of the
    /// 3 wanted"], "recreated": 0}` (`replicas` is 0 before the first check).
    pub fn data(&self) -> serde_json::Value {
        let found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "replicas": found.wanted,
            "short": found.short.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "recreated": found.recreated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_replicas_on_a_cluster_of_three_or_more_else_one() {
        assert_eq!(Replicas::Auto.for_cluster(1), 1);
        assert_eq!(Replicas::Auto.for_cluster(2), 1);
        assert_eq!(Replicas::Auto.for_cluster(3), 3);
        assert_eq!(Replicas::Auto.for_cluster(7), 3);
        assert_eq!(Replicas::Exactly(2).for_cluster(1), 2);
        assert_eq!(Replicas::Exactly(9).for_cluster(9), MAX_REPLICAS);
        assert_eq!(Replicas::from_setting(None), Replicas::Auto);
        assert_eq!(Replicas::from_setting(Some(3)), Replicas::Exactly(3));
    }

    #[tokio::test]
    async fn a_store_that_keeps_three_replicas_wants_three_while_a_node_is_down() {
        // A client that never connected knows no server: one server, as far as it can tell.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:9")
            .await
            .unwrap();
        let found = Survey::from([("KV_LLM_QUOTA".to_string(), 3), ("LLM_USAGE".into(), 1)]);
        assert_eq!(Replicas::Auto.wanted(&client, &found), 3);
        assert_eq!(Replicas::Auto.wanted(&client, &Survey::new()), 1);
        assert_eq!(Replicas::Exactly(2).wanted(&client, &found), 2);
        let five = Survey::from([("KV_LLM_QUOTA".to_string(), 5)]);
        assert_eq!(Replicas::Auto.wanted(&client, &five), 3);
    }

    #[test]
    fn the_cluster_size_is_the_advertised_urls_counted_once() {
        let mut info = async_nats::ServerInfo::default();
        assert_eq!(cluster_size(&info), 1);
        info.connect_urls = ["127.0.0.1:1", "127.0.0.1:3", "127.0.0.1:2", "127.0.0.1:3"]
            .map(String::from)
            .to_vec();
        assert_eq!(cluster_size(&info), 3);
    }

    #[test]
    fn a_shortfall_says_what_it_has_and_wants() {
        let short = compare("KV_LLM_QUOTA", 1, 3).unwrap();
        assert_eq!(
            short.to_string(),
            "KV_LLM_QUOTA has 1 replica of the 3 wanted"
        );
        assert_eq!(compare("KV_LLM_QUOTA", 3, 3), None);
        assert_eq!(compare("KV_LLM_QUOTA", 5, 3), None);
    }

    #[test]
    fn every_store_name_carries_the_prefix() {
        let names = names(&Subjects::new("acme"));
        assert_eq!(names.len(), 7);
        assert!(names.contains(&"KV_ACME_QUOTA".to_string()), "{names:?}");
        assert!(names.contains(&"KV_ACME_SPEND".to_string()), "{names:?}");
        assert!(names.contains(&"ACME_USAGE".to_string()), "{names:?}");
    }

    #[test]
    fn a_bucket_stream_carries_its_replicas() {
        let config = kv::Config {
            bucket: "LLM_QUOTA".into(),
            ..Default::default()
        };
        assert_eq!(bucket_stream(&config, 3).num_replicas, 3);
        assert_eq!(bucket_stream(&config, 0).num_replicas, 1);
        assert_eq!(bucket_stream(&config, 1).name, "KV_LLM_QUOTA");
    }
}
