//! A worker's life in the cluster, with real worker processes on a private nats-server:
//!
//! - started while the server has no JetStream, it serves with limits of its own and says so
//!   (`llmbus health`, `llm.deployments`, the `llmbus_limits_shared` gauge), `serve --strict`
//!   refuses to start; once the server has JetStream it takes up the shared limits without a
//!   restart;
//! - stopped with SIGTERM, it returns its unspent quota slices and leaves the membership
//!   before its connection closes;
//! - a worker whose clock runs 30 s fast still holds a cluster limit together with a normal
//!   one (it measures its offset from the server and corrects for it); one 2 minutes off
//!   refuses to share its limits and says so;
//! - deployment ids name the upstream, the same on every worker whatever its config's order.

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use crate::support::{
    fake_provider::{FakeProvider, Fault},
    gateway::{PATIENCE, chat, deployments, headers},
    nats_server::{Flavour, NatsServer, flavours},
    worker_process::{WorkerOptions, WorkerProcess},
};
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use llmbus::{
    client::LlmClient,
    client::health::{WorkerStatus, check},
    cluster::key_token,
    config::Config,
    limits::Ledger,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// One group `limited` with an `rpm` limit on the fake.
fn limited(fake: &FakeProvider, rpm: u64) -> String {
    format!(
        "model_list:\n  - model_name: limited\n    litellm_params: {{model: openai/x, api_base: \"{}\", api_key: sk-lifecycle-0123456789, rpm: {rpm}}}\n",
        fake.url()
    )
}

/// `llmbus <args>` to its end: (success, stdout and stderr).
fn llmbus(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llmbus"))
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("NATS_URL")
        .output()
        .expect("run llmbus");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The workers that answer, once `ok` holds for them (panics after [`WAIT`]).
async fn workers_until(
    nats: &async_nats::Client,
    what: &str,
    ok: impl Fn(&[WorkerStatus]) -> bool,
) -> Vec<WorkerStatus> {
    let deadline = Instant::now() + WAIT;
    loop {
        let workers = check(nats, "llm", Duration::from_secs(2))
            .await
            .unwrap_or_default();
        if ok(&workers) {
            return workers;
        }
        assert!(
            Instant::now() < deadline,
            "waited {WAIT:?} for {what}: {workers:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The worker id (`$SRV.STATS` data) of the service instance `instance`.
async fn worker_id(nats: &async_nats::Client, instance: &str) -> String {
    let reply = nats
        .request(format!("$SRV.STATS.llmbus.{instance}"), Bytes::new())
        .await
        .expect("stats");
    let stats: Value = serde_json::from_slice(&reply.payload).expect("stats JSON");
    stats["endpoints"][0]["data"]["worker_id"]
        .as_str()
        .expect("worker_id")
        .to_string()
}

/// A gauge's value on a worker's `/metrics`.
async fn gauge(worker: &WorkerProcess, name: &str) -> Option<f64> {
    let addr = worker.metrics_addr().expect("metrics");
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// One chat job for `limited`: its status and the deployment that served it.
async fn job(client: &LlmClient) -> (String, Option<String>) {
    let r = client
        .request(
            "llm.completion".to_string(),
            headers(&[("Llm-Timeout-Ms", "20000")]),
            Bytes::from(chat("limited", "hi").to_string()),
            PATIENCE,
        )
        .await
        .expect("a reply");
    (
        r.header("Llm-Status").unwrap_or_default().to_string(),
        r.header("Llm-Deployment").map(str::to_string),
    )
}

/// `"limits"` of each deployment in a `llm.deployments` reply.
async fn deployment_limits(client: &LlmClient) -> Vec<String> {
    deployments(client)
        .await
        .iter()
        .map(|d| d["limits"].as_str().unwrap_or("none").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_without_jetstream_takes_up_the_shared_limits_when_it_comes() {
    let mut server = NatsServer::start_without_jetstream();
    let fake = FakeProvider::start().await;
    let yaml = limited(&fake, 1000);

    // `serve --strict` refuses to start with limits of its own.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, format!("{yaml}llmbus:\n  metrics_listen: null\n")).unwrap();
    let (ok, text) = llmbus(&[
        "serve",
        "--strict",
        "--config",
        path.to_str().unwrap(),
        "--nats-url",
        &server.url(),
    ]);
    assert!(!ok, "serve --strict started without JetStream:\n{text}");
    assert!(
        text.contains("--strict") && text.contains("not shared") && text.contains("JetStream"),
        "{text}"
    );

    let options = WorkerOptions {
        metrics: true,
        ..Default::default()
    };
    let worker = WorkerProcess::start("a", &server.url(), &yaml, options).await;
    assert!(
        worker.logged("limits are local, not shared"),
        "{}",
        worker.log()
    );
    let nats = server.client().await;
    let workers = workers_until(&nats, "a worker", |w| !w.is_empty()).await;
    assert_eq!(workers[0].limits.as_deref(), Some("local"), "{workers:?}");
    let note = workers[0].limits_note.clone().unwrap_or_default();
    assert!(note.contains("JetStream"), "{note}");
    let (_, text) = llmbus(&["health", "--nats-url", &server.url(), "--wait-ms", "1500"]);
    assert!(
        text.contains("local, not shared") && text.contains("warning: 1 of 1 workers"),
        "{text}"
    );
    assert_eq!(gauge(&worker, "llmbus_limits_shared").await, Some(0.0));
    let client = LlmClient::new(nats.clone(), "llm");
    assert_eq!(job(&client).await.0, "200");
    assert_eq!(deployment_limits(&client).await, ["local"]);

    // JetStream comes: the same process takes up the shared limits.
    server.set_jetstream(true);
    server.restart();
    let nats = server.client().await;
    let workers = workers_until(&nats, "limits shared", |w| {
        w.len() == 1 && w[0].limits.as_deref() == Some("shared")
    })
    .await;
    assert!(workers[0].clock_offset_ms.is_some(), "{workers:?}");
    assert!(
        worker.wait_exit(Duration::ZERO).await.is_none(),
        "restarted?"
    );
    assert_eq!(gauge(&worker, "llmbus_limits_shared").await, Some(1.0));
    let client = LlmClient::new(nats.clone(), "llm");
    assert_eq!(deployment_limits(&client).await, ["shared"]);
    let (status, deployment) = job(&client).await;
    assert_eq!(status, "200");
    let key = format!("{}.rpm", key_token(&deployment.expect("Llm-Deployment")));
    let js = jetstream::new(nats.clone());
    let quota = js.get_key_value("LLM_QUOTA").await.expect("LLM_QUOTA");
    let entry = quota.get(&key).await.expect("read the ledger");
    let ledger = Ledger::decode(&entry.expect("a quota entry")).expect("a ledger");
    assert!(!ledger.owners.is_empty(), "{ledger:?}");
    let members = js.get_key_value("LLM_WORKERS").await.expect("LLM_WORKERS");
    let mut keys = members.keys().await.expect("keys");
    assert!(
        keys.next().await.is_some(),
        "the worker joined the membership"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_returns_the_slices_and_leaves_the_membership_before_the_connection_closes() {
    let server = NatsServer::start();
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::Delay(Duration::from_millis(150)));
    let worker =
        WorkerProcess::start("a", &server.url(), &limited(&fake, 100), Default::default()).await;
    let nats = server.client().await;
    let workers = workers_until(&nats, "a worker", |w| !w.is_empty()).await;
    let id = worker_id(&nats, &workers[0].id).await;
    let client = LlmClient::new(nats.clone(), "llm");
    let jobs: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { job(&client).await })
        })
        .collect();
    fake.wait_for_requests(1, PATIENCE).await;
    worker.terminate();
    let mut deployment = None;
    for j in jobs {
        let (status, d) = j.await.unwrap();
        assert_eq!(status, "200");
        deployment = deployment.or(d);
    }
    worker.assert_exits_cleanly(WAIT).await;

    let js = jetstream::new(nats.clone());
    let quota = js.get_key_value("LLM_QUOTA").await.expect("LLM_QUOTA");
    let key = format!("{}.rpm", key_token(&deployment.expect("Llm-Deployment")));
    let entry = quota.get(&key).await.expect("read the ledger");
    let ledger = Ledger::decode(&entry.expect("a quota entry")).expect("a ledger");
    let counted: u64 = ledger
        .owners
        .iter()
        .filter(|(owner, _)| owner.starts_with(&format!("{id}:")))
        .flat_map(|(_, slices)| slices.iter().map(|(_, n)| n))
        .sum();
    assert_eq!(
        counted,
        fake.request_count() as u64,
        "the ledger counts what the worker spent, no unspent slice: {ledger:?}"
    );
    let members = js.get_key_value("LLM_WORKERS").await.expect("LLM_WORKERS");
    assert_eq!(
        members.get(key_token(&id)).await.expect("read LLM_WORKERS"),
        None,
        "the stopped worker is still a member"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_30_s_fast_holds_the_limit_with_a_normal_one_and_2_min_off_refuses_to_share() {
    // On every nats-server release the machine has: the offset is read from KV timestamps.
    let runs: Vec<_> = flavours()
        .into_iter()
        .map(|f| tokio::spawn(clock_skew(f)))
        .collect();
    for run in runs {
        run.await.expect("a flavour's run");
    }
}

async fn clock_skew(flavour: Flavour) {
    const RPM: usize = 10;
    let server = NatsServer::start_flavour(flavour);
    let fake = FakeProvider::start().await;
    let yaml = limited(&fake, RPM as u64);
    let skewed = |ms: i64| WorkerOptions {
        metrics: true,
        env: vec![("LLMBUS_TEST_CLOCK_SKEW_MS".into(), ms.to_string())],
        ..Default::default()
    };
    let normal = WorkerProcess::start("normal", &server.url(), &yaml, Default::default()).await;
    let fast = WorkerProcess::start("fast", &server.url(), &yaml, skewed(30_000)).await;
    let nats = server.client().await;
    let workers = workers_until(&nats, "two workers sharing", |w| {
        w.len() == 2 && w.iter().all(|w| w.limits.as_deref() == Some("shared"))
    })
    .await;
    let mut ids = Vec::new();
    for w in &workers {
        ids.push(worker_id(&nats, &w.id).await);
        let offset = w.clock_offset_ms.expect("measured");
        assert!(
            offset.abs() < 1_000 || (-31_000..=-29_000).contains(&offset),
            "{offset}"
        );
    }
    let fast_offset = gauge(&fast, "llmbus_clock_offset_seconds").await.unwrap();
    assert!((-31.0..=-29.0).contains(&fast_offset), "{fast_offset}");

    // Both workers take jobs for 40 s: past the 31.5 s after which the fast one, on its own
    // clock, would see the other's slices as gone and lease their units again.
    let started = Instant::now();
    let mut n = 0u64;
    let mut jobs = Vec::new();
    while started.elapsed() < Duration::from_secs(40) {
        let subject = format!("llm.worker.{}.completion", ids[(n % 2) as usize]);
        let nats = nats.clone();
        jobs.push(tokio::spawn(async move {
            let h = headers(&[("Llm-Timeout-Ms", "500")]);
            let body = Bytes::from(chat("limited", "x").to_string());
            let _ =
                tokio::time::timeout(PATIENCE, nats.request_with_headers(subject, h, body)).await;
        }));
        n += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for j in jobs {
        let _ = j.await;
    }
    let calls = fake.request_count();
    eprintln!(
        "[clock {flavour:?}] {n} jobs offered over 40 s to two workers, one 30 s fast: {calls} \
         upstream calls (rpm {RPM})"
    );
    assert!(
        calls <= RPM,
        "{calls} upstream calls in one window, limit {RPM}"
    );
    assert!(
        calls >= RPM / 2,
        "only {calls} of {RPM}: the limit was not usable"
    );
    drop((normal, fast));

    // Two minutes off: past the bound, the worker keeps its limits to itself, and says so.
    let off = WorkerProcess::start("off", &server.url(), &yaml, skewed(120_000)).await;
    assert!(off.logged("clock is"), "{}", off.log());
    let workers = workers_until(&nats, "the worker 2 min off", |w| {
        w.iter().any(|w| w.limits.as_deref() == Some("local"))
    })
    .await;
    let note = workers[0].limits_note.clone().unwrap_or_default();
    assert!(note.contains("clock") && note.contains("120"), "{note}");
    assert_eq!(gauge(&off, "llmbus_limits_shared").await, Some(0.0));
}

#[tokio::test]
async fn deployment_ids_name_the_upstream_whatever_the_order_of_the_config() {
    let entry = |model: &str, region: &str| {
        format!(
            "  - model_name: gpt\n    litellm_params: {{model: openai/{model}, api_base: \"https://{region}.example/v1\", api_key: os.environ/LIFECYCLE_KEY_{region}, rpm: 10}}\n"
        )
    };
    let env = |name: &str| Some(format!("sk-value-of-{name}"));
    // Model → id, as one worker's config makes them.
    let ids = |yaml: String| {
        let config = Config::from_yaml_with_env(&yaml, "test.yaml", &env)
            .expect("loads")
            .config;
        let plan =
            llmbus::runtime::plan::Plan::of(&config, &reqwest::Client::new()).expect("a plan");
        plan.deployments
            .iter()
            .map(|d| (d.model.clone(), d.id.clone()))
            .collect::<BTreeMap<String, String>>()
    };
    let eu = entry("gpt-4o", "eu");
    let us = entry("gpt-4o-mini", "us");
    let a = ids(format!("model_list:\n{eu}{us}"));
    let b = ids(format!("model_list:\n{us}{eu}"));
    assert_eq!(a, b, "the same upstream gets the same id on both workers");
    assert_eq!(a.len(), 2);
    let distinct: Vec<&String> = a.values().collect();
    assert_ne!(
        distinct[0], distinct[1],
        "different upstreams, different ids"
    );
    for id in distinct {
        assert!(!id.contains("sk-value"), "{id}");
    }
}
