//! A three-node NATS cluster (`support::nats_cluster`) on every nats-server flavour: what
//! llmbus's replicated state relies on holds when a node dies. A stream with three replicas
//! keeps every message it acknowledged when its leader is killed, and takes new ones once the
//! other two elect a leader; a KV bucket with three replicas keeps its keys and takes writes
//! the same way, and the killed node catches up when it comes back.

use std::time::{Duration, Instant};

use crate::support::{nats_cluster::NatsCluster, nats_server::flavours, poll};
use async_nats::jetstream::{self, kv, message::PublishMessage, stream};

/// How long the two remaining nodes may take to elect a leader and answer (a busy machine).
const ELECTION: Duration = Duration::from_secs(45);

/// A JetStream context whose requests give up after 2 s: an unanswered request during an
/// election is retried sooner than with the default timeout.
fn impatient(client: &async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client.clone())
}

/// Retries `attempt` until it succeeds, for up to [`ELECTION`]: what has no event to wait
/// for, such as a new leader answering.
async fn until_ok<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    attempt: impl FnMut() -> F,
) -> T {
    poll::until_ok(ELECTION, what, attempt).await
}

/// The stream's leader node, waiting for one to be elected.
async fn leader(cluster: &NatsCluster, client: &async_nats::Client, stream: &str) -> usize {
    until_ok(&format!("a leader for {stream}"), || async {
        let name = cluster.stream_leader(client, stream).await.ok_or("none")?;
        cluster.node_named(&name).ok_or("an unknown node")
    })
    .await
}

/// Publishes `events.<n>` for each `n` and waits for every acknowledgement, retrying through
/// a leader election; the message id makes a retried publish count once.
async fn publish_acked(js: &jetstream::Context, numbers: std::ops::Range<u32>) {
    for n in numbers {
        until_ok(&format!("publish event {n}"), || async {
            let ack = js
                .send_publish(
                    format!("events.{n}"),
                    PublishMessage::build()
                        .message_id(format!("event-{n}"))
                        .payload(n.to_string().into()),
                )
                .await
                .map_err(|e| e.to_string())?;
            ack.await.map_err(|e| e.to_string())
        })
        .await;
    }
}

/// The stream's message count, as `js` reads it.
async fn messages(js: &jetstream::Context, name: &str) -> Result<u64, String> {
    let stream = js.get_stream(name).await.map_err(|e| e.to_string())?;
    Ok(stream.cached_info().state.messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_stream_keeps_every_acked_message_when_its_leader_dies() {
    for flavour in flavours() {
        let started = Instant::now();
        let mut cluster = NatsCluster::start(flavour, 3).await;
        let first = cluster.client(0).await;
        let js = jetstream::new(first.clone());
        js.create_stream(stream::Config {
            name: "EVENTS".into(),
            subjects: vec!["events.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{flavour:?}: an R3 stream: {e}\n{}", cluster.logs()));
        assert_eq!(cluster.replicas(&first, "EVENTS").await, 3, "{flavour:?}");
        publish_acked(&js, 0..20).await;

        let dead = leader(&cluster, &first, "EVENTS").await;
        let survivor = (dead + 1) % cluster.len();
        let elsewhere = cluster.client(survivor).await;
        let js = impatient(&elsewhere);
        cluster.kill(dead);
        assert!(!cluster.is_running(dead));

        // Publishing goes on once the two others elect a leader, and nothing acked is lost.
        publish_acked(&js, 20..40).await;
        let new_leader = leader(&cluster, &elsewhere, "EVENTS").await;
        assert_ne!(new_leader, dead, "{flavour:?}: a dead node leads");
        let count = until_ok("the stream's state", || messages(&js, "EVENTS")).await;
        assert_eq!(
            count,
            40,
            "{flavour:?}: acked messages lost\n{}",
            cluster.logs()
        );
        eprintln!(
            "{flavour:?} (nats-server {}): leader {} killed, {} leads, 40 of 40 messages kept, {:?}",
            cluster.version,
            cluster.plan(dead).name,
            cluster.plan(new_leader).name,
            started.elapsed()
        );
    }
}

/// A KV bucket's stream with `replicas` replicas, laid out as `src/cluster/mod.rs`'s
/// `kv_stream_config` does (async-nats's `create_key_value` fails on nats-server 2.9).
fn kv_stream(bucket: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_bytes: -1,
        max_messages: -1,
        max_message_size: -1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// `key`'s value in `bucket`, as `client`'s node serves it.
async fn value_of(client: &async_nats::Client, bucket: &str, key: &str) -> Result<String, String> {
    let store = impatient(client)
        .get_key_value(bucket)
        .await
        .map_err(|e| e.to_string())?;
    let value = store.get(key).await.map_err(|e| e.to_string())?;
    let value = value.ok_or_else(|| format!("{key} is missing"))?;
    Ok(String::from_utf8_lossy(&value).into_owned())
}

/// Waits until every replica of `stream` but the leader's says it is current.
async fn until_replicas_current(cluster: &NatsCluster, client: &async_nats::Client, stream: &str) {
    let js = impatient(client);
    until_ok(&format!("{stream}'s replicas current"), || async {
        let s = js.get_stream(stream).await.map_err(|e| e.to_string())?;
        let cluster_info = s.cached_info().cluster.clone().ok_or("no cluster info")?;
        let current = cluster_info.replicas.iter().filter(|p| p.current).count();
        match current + 1 == cluster.len() && cluster_info.leader.is_some() {
            true => Ok(()),
            false => Err(format!("{cluster_info:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_kv_bucket_survives_losing_its_leader_and_the_node_catches_up() {
    for flavour in flavours() {
        let started = Instant::now();
        let mut cluster = NatsCluster::start(flavour, 3).await;
        let first = cluster.client(0).await;
        let js = jetstream::new(first.clone());
        js.create_stream(kv_stream("STATE", 3))
            .await
            .unwrap_or_else(|e| panic!("{flavour:?}: an R3 bucket: {e}\n{}", cluster.logs()));
        let store: kv::Store = js.get_key_value("STATE").await.expect("the bucket");
        store.put("before", "kept".into()).await.expect("put");

        let dead = leader(&cluster, &first, "KV_STATE").await;
        let survivor = (dead + 1) % cluster.len();
        let elsewhere = cluster.client(survivor).await;
        cluster.kill(dead);

        // The key written before is still there, and writes go on.
        let before = until_ok("read a key", || value_of(&elsewhere, "STATE", "before")).await;
        assert_eq!(before, "kept", "{flavour:?}");
        until_ok("write a key", || async {
            let store = impatient(&elsewhere)
                .get_key_value("STATE")
                .await
                .map_err(|e| e.to_string())?;
            store
                .put("during", "written".into())
                .await
                .map_err(|e| e.to_string())
        })
        .await;

        // The node comes back on its store and catches up; a client of its own reads what it
        // missed.
        cluster.restart(dead);
        until_replicas_current(&cluster, &elsewhere, "KV_STATE").await;
        let returned = cluster.client(dead).await;
        let during = until_ok("read on the returned node", || {
            value_of(&returned, "STATE", "during")
        })
        .await;
        assert_eq!(during, "written", "{flavour:?}");
        eprintln!(
            "{flavour:?} (nats-server {}): KV leader {} killed and restarted, {:?}",
            cluster.version,
            cluster.plan(dead).name,
            started.elapsed()
        );
    }
}
