//! llmbus on a real three-node NATS cluster (three `nats-server` processes joined by routes,
//! JetStream on each), with two worker processes connected to different nodes and serving the
//! cluster's config. On every nats-server release this machine has (2.9 and the current one):
//!
//! - every bucket and stream llmbus creates has 3 replicas (`llmbus.replicas` left at its
//!   default on a cluster of three);
//! - under steady load (plain requests, streams, a deployment with an `rpm` limit, usage events
//!   flowing), the node that leads the quota bucket and the usage stream is killed. Then the
//!   limit holds (at most +10 % in its window), no request is answered twice, every request is
//!   answered by its deadline except a few of those in flight through the dead node (NATS
//!   delivers at most once: their requesters learn it at their deadline), every answered job's
//!   usage event is stored once, and a config pushed after the loss reaches both workers as one
//!   pushed before did.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::support::{
    fake_provider::FakeProvider,
    gateway::{PATIENCE, chat},
    llmbus_process::LlmbusProcess,
    nats_cluster::NatsCluster,
    nats_server::flavours,
    poll,
};
use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use futures::StreamExt;
use llmbus::{
    client::LlmClient,
    cluster::{Replicas, config_store::ConfigStore, store},
    wire::{Subjects, headers as h},
};
use serde_json::Value;

/// The limited deployment's requests per minute.
const RPM: usize = 40;
/// Each job's deadline.
const DEADLINE: Duration = Duration::from_secs(12);
/// Load before the kill, and after it.
const BEFORE: Duration = Duration::from_secs(8);
const AFTER: Duration = Duration::from_secs(12);

/// The cluster's config: `plain` and `limited` on the fake, and mock groups named in `extra`.
fn config(fake: &FakeProvider, extra: &[&str]) -> String {
    let url = fake.url();
    let mut yaml = format!(
        "model_list:\n  - model_name: plain\n    litellm_params: {{model: openai/plain, api_base: \"{url}\", api_key: os.environ/NODE_LOSS_KEY}}\n  - model_name: limited\n    litellm_params: {{model: openai/limited, api_base: \"{url}\", api_key: os.environ/NODE_LOSS_KEY, rpm: {RPM}}}\n"
    );
    for name in extra {
        yaml.push_str(&format!(
            "  - model_name: {name}\n    litellm_params: {{model: mock/{name}, mock_response: {name}}}\n"
        ));
    }
    yaml.push_str("llmbus:\n  metrics_listen: null\n");
    yaml
}

/// What came back for one request: its final replies (a reply, or a stream's sentinel), the
/// status and job id of its first message, and every `Llm-Seq` seen.
#[derive(Debug, Default, Clone)]
struct Seen {
    finals: usize,
    status: Option<u16>,
    job: Option<String>,
    seqs: Vec<u64>,
}

type Replies = Arc<Mutex<BTreeMap<String, Seen>>>;

/// Collects every message on `<inbox>.>` into `replies`.
async fn collect(client: async_nats::Client, inbox: String, replies: Replies) {
    let mut sub = client.subscribe(format!("{inbox}.>")).await.unwrap();
    while let Some(m) = sub.next().await {
        let id = m.subject.rsplit('.').next().unwrap_or_default().to_string();
        let header = |name: &str| {
            m.headers
                .as_ref()
                .and_then(|hs| hs.get(name))
                .map(|v| v.as_str().to_string())
        };
        let mut all = replies.lock().unwrap();
        let seen = all.entry(id).or_default();
        if seen.status.is_none() {
            seen.status = header(h::STATUS).and_then(|s| s.parse().ok());
        }
        if seen.job.is_none() {
            seen.job = header(h::JOB_ID);
        }
        if let Some(seq) = header(h::SEQ).and_then(|s| s.parse().ok()) {
            seen.seqs.push(seq);
        }
        let stream = id_is_stream(m.subject.as_str());
        if !stream || m.payload.is_empty() {
            seen.finals += 1;
        }
    }
}

fn id_is_stream(subject: &str) -> bool {
    subject
        .rsplit('.')
        .next()
        .is_some_and(|id| id.starts_with('s'))
}

/// Sends request `id` (`p…` plain, `s…` stream, `l…` limited) with its reply on `<inbox>.<id>`.
async fn send(client: &async_nats::Client, inbox: &str, id: &str) {
    let (group, stream) = match &id[..1] {
        "s" => ("plain", true),
        "l" => ("limited", false),
        _ => ("plain", false),
    };
    let mut body = chat(group, id);
    if stream {
        body["stream"] = Value::Bool(true);
    }
    let mut headers = HeaderMap::new();
    headers.insert(h::TIMEOUT_MS, DEADLINE.as_millis().to_string().as_str());
    let _ = client
        .publish_with_reply_and_headers(
            "llm.completion",
            format!("{inbox}.{id}"),
            headers,
            Bytes::from(body.to_string()),
        )
        .await;
}

/// The workers' log lines saying they serve config revision `n`.
async fn both_serve(workers: &[LlmbusProcess], revision: u64) {
    for w in workers {
        w.wait_for_line(
            &format!("serving the cluster's config revision={revision}"),
            PATIENCE * 2,
        )
        .await;
    }
}

/// A mock group answers through `client` (a worker of each config has it).
async fn answers(client: &LlmClient, group: &str, jobs: &Mutex<BTreeSet<String>>) {
    for _ in 0..6 {
        let r = client
            .complete(
                HeaderMap::new(),
                chat(group, "x").to_string().into(),
                PATIENCE,
            )
            .await
            .unwrap();
        assert_eq!(
            r.status,
            200,
            "{group}: {}",
            String::from_utf8_lossy(&r.body)
        );
        jobs.lock()
            .unwrap()
            .insert(r.header(h::JOB_ID).unwrap().to_string());
    }
}

/// Every usage event's job id in the stream, once they stop growing.
async fn usage_jobs(js: &jetstream::Context) -> Vec<String> {
    let mut last = None;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut stream = js.get_stream("LLM_USAGE").await.unwrap();
        let n = stream.info().await.unwrap().state.messages;
        if last == Some(n) {
            break;
        }
        last = Some(n);
    }
    // Read by sequence (the stream's leader answers; no consumer to place).
    let stream = js.get_stream("LLM_USAGE").await.unwrap();
    let total = last.unwrap_or(0);
    let mut jobs = Vec::with_capacity(total as usize);
    for seq in 1..=total {
        let m = poll::until_ok(PATIENCE, &format!("usage event {seq}"), || {
            stream.get_raw_message(seq)
        })
        .await;
        let event: Value = serde_json::from_slice(&m.payload).unwrap();
        jobs.push(event["job_id"].as_str().unwrap().to_string());
    }
    jobs
}

/// `llmbus check <config> --store --nats-url <urls>` with the fake's key: (success, output).
fn check_store(config: &str, urls: &str) -> (bool, String) {
    crate::store::check_store(
        config,
        urls,
        &[("NODE_LOSS_KEY", "sk-node-loss-0123456789")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_node_that_leads_the_quota_and_usage_streams_loses_nothing() {
    for flavour in flavours() {
        let mut cluster = NatsCluster::start(flavour, 3).await;
        let version = cluster.version.clone();
        let fake = FakeProvider::start().await;
        let admin = cluster.client_all().await;
        let config_store = ConfigStore::open(admin.clone(), "llm", Replicas::Auto)
            .await
            .unwrap();
        config_store
            .push(&config(&fake, &[]), "v1.yaml")
            .await
            .unwrap();
        let workers: Vec<LlmbusProcess> = (0..2)
            .map(|i| {
                LlmbusProcess::start(
                    &["serve", "--nats-url", &cluster.url(i)],
                    &[("NODE_LOSS_KEY", "sk-node-loss-0123456789")],
                )
            })
            .collect();
        for w in &workers {
            w.wait_for_line("worker is serving", PATIENCE * 2).await;
        }

        // Every bucket and stream has three replicas.
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(20))
            .build(admin.clone());
        for name in store::names(&Subjects::default()) {
            let what = format!("{version}: {name} with 3 replicas");
            poll::until(PATIENCE, &what, || async {
                cluster.replicas(&admin, &name).await == 3
            })
            .await;
        }

        // A config pushed before the loss reaches both workers.
        let jobs = Mutex::new(BTreeSet::new());
        let probe = LlmClient::new(admin.clone(), "llm");
        config_store
            .push(&config(&fake, &["before"]), "v2.yaml")
            .await
            .unwrap();
        both_serve(&workers, 2).await;
        answers(&probe, "before", &jobs).await;

        // The victim leads the quota bucket; the usage stream's leader steps down until it is
        // the same node.
        let victim = cluster
            .stream_leader(&admin, "KV_LLM_QUOTA")
            .await
            .expect("the quota bucket has a leader");
        for _ in 0..30 {
            if cluster.stream_leader(&admin, "LLM_USAGE").await.as_deref() == Some(&victim) {
                break;
            }
            let _ = admin
                .request("$JS.API.STREAM.LEADER.STEPDOWN.LLM_USAGE", Bytes::new())
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(
            cluster.stream_leader(&admin, "LLM_USAGE").await.as_deref(),
            Some(victim.as_str()),
            "{version}: the usage stream's leader did not move to {victim}"
        );
        let victim_at = cluster.node_named(&victim).unwrap();
        let survivor = (0..3).find(|i| *i != victim_at).unwrap();

        // Steady load from a requester on a node that stays.
        let requester = cluster.client(survivor).await;
        let inbox = requester.new_inbox();
        let replies: Replies = Arc::default();
        let collector = tokio::spawn(collect(requester.clone(), inbox.clone(), replies.clone()));
        requester.flush().await.unwrap();
        let mut sent = Vec::new();
        let start = Instant::now();
        let mut killed_after = None;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut n = 0u64;
        while start.elapsed() < BEFORE + AFTER {
            tick.tick().await;
            n += 1;
            let mut ids = vec![format!("p{n}")];
            if n.is_multiple_of(2) {
                ids.push(format!("s{n}"));
            }
            if n.is_multiple_of(3) {
                ids.push(format!("l{n}"));
            }
            for id in ids {
                send(&requester, &inbox, &id).await;
                sent.push((id, Instant::now()));
            }
            if killed_after.is_none() && start.elapsed() >= BEFORE {
                cluster.kill(victim_at);
                killed_after = Some((sent.len(), Instant::now()));
            }
        }
        // Every request answers, or fails, by its deadline (plus the time to reconnect).
        let deadline = Instant::now() + DEADLINE + Duration::from_secs(20);
        loop {
            let done = {
                let all = replies.lock().unwrap();
                sent.iter()
                    .all(|(id, _)| all.get(id).is_some_and(|s| s.finals > 0))
            };
            if done || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Late duplicates would arrive now.
        tokio::time::sleep(Duration::from_secs(2)).await;
        collector.abort();
        let all = replies.lock().unwrap().clone();

        let (killed_after, killed_at) = killed_after.expect("the node was killed");
        let unanswered: Vec<&(String, Instant)> = sent
            .iter()
            .filter(|(id, _)| all.get(id).is_none_or(|s| s.finals == 0))
            .collect();
        // In flight when the node died: sent within a deadline before the kill, or within the
        // two seconds the others take to learn of it.
        let in_flight =
            |at: &Instant| *at + DEADLINE >= killed_at && *at <= killed_at + Duration::from_secs(2);
        let at_risk = sent.iter().filter(|(_, at)| in_flight(at)).count();
        let twice: Vec<(&String, &Seen)> = all.iter().filter(|(_, s)| s.finals > 1).collect();
        let mut statuses: BTreeMap<(char, Option<u16>), usize> = BTreeMap::new();
        for (id, s) in &all {
            *statuses
                .entry((id.chars().next().unwrap(), s.status))
                .or_default() += 1;
        }
        let limited_calls = fake
            .requests()
            .iter()
            .filter(|r| r.model() == Some("limited"))
            .count();
        eprintln!(
            "[node loss {version}] {} requests ({} before the kill of {victim}); by kind and \
             status {statuses:?}; {} unanswered; {} answered twice; the limited deployment was \
             called {limited_calls} times (rpm {RPM})",
            sent.len(),
            killed_after,
            unanswered.len(),
            twice.len()
        );
        assert!(twice.is_empty(), "{version}: answered twice: {twice:?}");
        for (id, s) in &all {
            let mut seqs = s.seqs.clone();
            seqs.sort_unstable();
            let before = seqs.len();
            seqs.dedup();
            assert_eq!(
                before,
                seqs.len(),
                "{version}: {id} repeated a chunk: {s:?}"
            );
        }
        // NATS delivers at most once: a message inside the node that died is lost with it, and
        // its requester learns so at its deadline (`LlmClient` returns a timeout). Only those
        // may go unanswered, and few of them.
        let ids: Vec<&String> = unanswered.iter().map(|(id, _)| id).collect();
        assert!(
            unanswered.iter().all(|(_, at)| in_flight(at)) && unanswered.len() <= at_risk / 20 + 1,
            "{version}: no answer by the deadline: {ids:?} (of {at_risk} in flight at the \
             kill)\n{}",
            cluster.logs()
        );
        // The limit held within +10 % of its window (the whole run is shorter than a window).
        assert!(
            limited_calls <= RPM + RPM / 10,
            "{version}: {limited_calls} calls within a minute at rpm {RPM}"
        );
        assert!(
            limited_calls >= RPM / 2,
            "{version}: the limited deployment was called only {limited_calls} times"
        );

        // A config pushed after the loss reaches both workers too.
        config_store
            .push(&config(&fake, &["before", "after"]), "v3.yaml")
            .await
            .unwrap();
        both_serve(&workers, 3).await;
        answers(&probe, "after", &jobs).await;

        // The store still has every replica, as `llmbus check --store` sees it through a URL
        // list whose first node is the dead one.
        let mut urls = cluster.urls();
        urls.rotate_left(victim_at);
        let (ok, text) = check_store(&config(&fake, &[]), &urls.join(","));
        assert!(ok, "{version}: {text}");
        assert!(
            text.contains(
                "one of 2 in its cluster (that answer now): buckets and streams want 3 replica(s)"
            ),
            "{version}: {text}"
        );

        // The usage events stored are exactly the jobs answered.
        let mut answered: BTreeSet<String> = jobs.into_inner().unwrap();
        answered.extend(all.values().filter_map(|s| s.job.clone()));
        let stored = usage_jobs(&js).await;
        let stored_set: BTreeSet<String> = stored.iter().cloned().collect();
        assert_eq!(
            stored.len(),
            stored_set.len(),
            "{version}: an event stored twice"
        );
        let missing: Vec<_> = answered.difference(&stored_set).collect();
        let extra: Vec<_> = stored_set.difference(&answered).collect();
        eprintln!(
            "[node loss {version}] {} usage events stored; {} of them for jobs whose answer never \
             arrived",
            stored.len(),
            extra.len()
        );
        // A request whose answer died with the node may still have run: its event is stored,
        // with a job id its requester never heard.
        assert!(
            missing.is_empty() && extra.len() <= unanswered.len(),
            "{version}: answered jobs without a usage event: {missing:?}; events of jobs not \
             answered: {extra:?}"
        );
        drop(workers);
    }
}

#[tokio::test]
async fn a_bucket_with_fewer_replicas_than_the_cluster_wants_is_reported() {
    let cluster = NatsCluster::start(flavours()[0], 3).await;
    let client = cluster.client(0).await;
    // Made with one replica, as an older llmbus (or one started while one node was up) would.
    let js = jetstream::new(client.clone());
    store::ensure_bucket(
        &js,
        llmbus::cluster::health::bucket("llm"),
        Replicas::Exactly(1),
    )
    .await
    .unwrap();
    let yaml = "model_list:\n  - model_name: demo\n    litellm_params: {model: mock/demo, mock_response: hi}\n";
    let loaded = llmbus::config::Config::from_yaml(yaml, "test.yaml").unwrap();
    let worker = llmbus::Worker::start(&loaded.config, client.clone())
        .await
        .unwrap();
    // The rest is created with three; the health bucket is used as it is, and reported.
    assert_eq!(cluster.replicas(&client, "KV_LLM_QUOTA").await, 3);
    assert_eq!(cluster.replicas(&client, "KV_LLM_HEALTH").await, 1);
    let short = poll::until_some(PATIENCE, "a worker reporting the shortfall", || async {
        let workers = llmbus::client::health::check(&client, "llm", Duration::from_secs(2))
            .await
            .unwrap();
        workers
            .into_iter()
            .find(|w| !w.store_short.is_empty())
            .map(|w| w.store_short)
    })
    .await;
    assert_eq!(short, ["KV_LLM_HEALTH has 1 replica of the 3 wanted"]);
    let (ok, text) = check_store(yaml, &cluster.url(1));
    assert!(!ok, "{text}");
    assert!(
        text.contains("KV_LLM_HEALTH has 1 replica of the 3 wanted"),
        "{text}"
    );
    worker.stop().await;
}
