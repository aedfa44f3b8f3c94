//! Connecting to a NATS server that wants credentials (user/password and token, from the
//! `llmbus:` section of the config), and what the shipped `deploy/nats/nats-server.conf`
//! keeps one application from doing to another, proven on that file itself:
//!
//! - an application reads only its own inbox prefix (`_INBOX_app1.>`), never another's, and the
//!   workers answer it there; it cannot serve the job subjects, publish health gossip, write
//!   the health or config buckets, use the JetStream API or the admin subjects;
//! - a cancel needs the job's own key (or the master key): one without is refused and counted;
//! - a cooldown on the health board from a worker that is not a member is ignored, and one
//!   from a member is cut to what another worker may impose.

use std::time::Duration;

use crate::support::{
    command::{self, Finished},
    fake_provider::{FakeProvider, Fault},
    gateway::PATIENCE,
    http_front::HttpGateway,
    nats_server::NatsServer,
    shipped_nats::ShippedNats,
    worker_process::{WorkerOptions, WorkerProcess},
};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use llmbus::{
    Worker,
    client::LlmClient,
    cluster::{
        epoch_ms,
        health::HealthBoard,
        members::{MemberInfo, Members},
    },
    config::Config,
    nats,
};
use serde_json::{Value, json};

async fn connect_with(yaml: &str, url: &str) -> Result<async_nats::Client, nats::ConnectError> {
    let loaded = Config::from_yaml(yaml, "auth.yaml").unwrap();
    nats::connect(&loaded.config.llmbus, Some(url), "test").await
}

#[tokio::test]
async fn user_and_password_from_the_config_are_used() {
    let server = NatsServer::start_with(&["--user", "llm", "--pass", "s3cret-pass"]);
    let ok = connect_with(
        "llmbus:\n  nats_user: llm\n  nats_password: s3cret-pass\n",
        &server.url(),
    )
    .await;
    assert!(ok.is_ok(), "{:?}", ok.err());
    let bad = connect_with(
        "llmbus:\n  nats_user: llm\n  nats_password: wrong\n",
        &server.url(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(bad.contains("cannot connect to NATS"), "{bad}");
    assert!(!bad.contains("wrong"), "the password is not echoed: {bad}");
}

#[tokio::test]
async fn user_and_password_in_the_url_are_used() {
    let server = NatsServer::start_with(&["--user", "llm", "--pass", "s3cret:p@ss"]);
    let url = format!("nats://llm:s3cret%3Ap%40ss@127.0.0.1:{}", server.port());
    let ok = connect_with("{}", &url).await;
    assert!(ok.is_ok(), "{:?}", ok.err());
    let wrong = format!("nats://llm:nope@127.0.0.1:{}", server.port());
    let err = connect_with("{}", &wrong).await.unwrap_err().to_string();
    assert!(err.contains("cannot connect to NATS"), "{err}");
    assert!(!err.contains("nope"), "the password is not echoed: {err}");
}

#[tokio::test]
async fn a_token_from_the_environment_is_used() {
    let server = NatsServer::start_with(&["--auth", "tok-123456"]);
    let yaml = "llmbus:\n  nats_token: os.environ/LLMBUS_TEST_NATS_TOKEN\n";
    let loaded = Config::from_yaml_with_env(yaml, "auth.yaml", &|k| {
        (k == "LLMBUS_TEST_NATS_TOKEN").then(|| "tok-123456".to_string())
    })
    .unwrap();
    let client = nats::connect(&loaded.config.llmbus, Some(&server.url()), "test").await;
    assert!(client.is_ok(), "{:?}", client.err());
    assert!(
        connect_with("{}", &server.url()).await.is_err(),
        "no token, no entry"
    );
}

// ---------------------------------------------------------------------------------------------
// The shipped deploy/nats/nats-server.conf: what one application can do to another
// ---------------------------------------------------------------------------------------------

const MASTER: &str = "sk-master-side-door-0123";

fn bearer(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Authorization", format!("Bearer {key}").as_str());
    h
}

/// `llm.deployments` as `client` sees it.
async fn deployments(client: &async_nats::Client) -> Vec<Value> {
    let r = LlmClient::new(client.clone(), "llm")
        .request(
            "llm.deployments".into(),
            bearer(MASTER),
            Bytes::new(),
            PATIENCE,
        )
        .await
        .expect("llm.deployments answers");
    assert_eq!(r.status, 200, "{:?}", r.json());
    serde_json::from_slice(&r.body).expect("a list of deployments")
}

fn status_of(all: &[Value], id: &str) -> Value {
    all.iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("no deployment `{id}` in {all:?}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_shipped_config_one_application_neither_reads_nor_cools_down_for_another() {
    let nats = ShippedNats::start();
    let (worker_nc, worker_events) = nats.connect("llmbus").await;
    let yaml = format!(
        "model_list:\n  - model_name: demo\n    litellm_params: {{model: mock/demo, \
         mock_response: \"for app2 only\"}}\n    model_info: {{id: demo-1}}\n\
         general_settings:\n  master_key: {MASTER}\nllmbus:\n  metrics_listen: null\n"
    );
    let loaded = Config::from_yaml(&yaml, "test.yaml").expect("config");
    let worker = Worker::start(&loaded.config, worker_nc.clone())
        .await
        .expect("the worker starts as the llmbus user");
    let (app1, app1_events) = nats.connect("app1").await;
    let (app2, _) = nats.connect("app2").await;

    // app2 is answered on its own inbox prefix, request/reply and stream: the workers answer
    // `_INBOX_app2.*` through their response permission.
    let app2_client = LlmClient::new(app2.clone(), "llm");
    let body = json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]});
    let reply = app2_client
        .complete(bearer(MASTER), Bytes::from(body.to_string()), PATIENCE)
        .await
        .expect("app2 gets its reply");
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (chunks, sentinel) = app2_client
        .stream(bearer(MASTER), Bytes::from(streamed.to_string()), PATIENCE)
        .await
        .expect("stream started")
        .collect()
        .await
        .expect("app2 reads its stream to the sentinel");
    assert!(!chunks.is_empty());
    assert_eq!(sentinel.status, 200);

    // app1 may not read app2's inboxes, nor the default ones, nor serve the job subjects.
    for subject in ["_INBOX_app2.>", "_INBOX.>", "llm.completion"] {
        let _sub = app1.subscribe(subject).await.expect("subscribe call");
        let v = app1_events.wait_violation_on(subject, PATIENCE).await;
        assert!(v.to_lowercase().contains("subscription"), "{v}");
    }

    // app1 may not cool a deployment down: no gossip, no write to the health bucket, no
    // JetStream API (it could delete the bucket), no config change.
    let cooldown = json!({"deployment": "demo-1", "worker": "forged", "state": "cooldown",
        "cooldown_ms": 3_600_000, "reason": "RateLimit"});
    let board = json!({"deployment": "demo-1", "until_ms": u64::MAX / 2, "reason": "x",
        "worker": "forged"});
    for (subject, payload) in [
        ("llm.health.demo-1", cooldown.to_string()),
        ("$KV.LLM_HEALTH.demo-1", board.to_string()),
        ("$JS.API.STREAM.DELETE.KV_LLM_HEALTH", String::new()),
        ("$KV.LLM_CONFIG.config", "{}".into()),
        ("llm.admin.config.push", "{}".into()),
    ] {
        app1.publish(subject, payload.into())
            .await
            .expect("publish");
        app1.flush().await.expect("flush");
        let v = app1_events.wait_violation_on(subject, PATIENCE).await;
        assert!(v.to_lowercase().contains("publish"), "{v}");
    }
    let demo = status_of(&deployments(&app1).await, "demo-1");
    assert_eq!(demo["state"], "healthy", "{demo}");
    assert_eq!(demo["cooldowns"], 0, "{demo}");

    worker_nc
        .flush()
        .await
        .expect("flush the worker connection");
    assert!(
        worker_events.violations().is_empty(),
        "the llmbus user lacks a permission: {:?}",
        worker_events.violations()
    );
    worker.stop().await;
}

/// The value of counter `name` on a worker's `/metrics` (0 while absent).
async fn counter(addr: std::net::SocketAddr, name: &str) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics text");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_without_the_jobs_key_is_refused_and_counted() {
    let nats = ShippedNats::start();
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::NeverEnding { after_chunks: 2 });
    let yaml = format!(
        "model_list:\n  - model_name: slow\n    litellm_params: {{model: openai/slow, api_base: \
         \"{}\", api_key: sk-fake-0123456789}}\ngeneral_settings:\n  master_key: {MASTER}\n",
        fake.url()
    );
    let options = WorkerOptions {
        metrics: true,
        ..Default::default()
    };
    let worker = WorkerProcess::start("w", &nats.url_as("llmbus"), &yaml, options).await;
    let metrics = worker.metrics_addr().expect("metrics");
    let (app1, app1_events) = nats.connect("app1").await;
    let (app2, _) = nats.connect("app2").await;

    // app2 starts a stream that never ends, and reads its first chunk.
    let inbox = app2.new_inbox();
    assert!(inbox.starts_with("_INBOX_app2."), "{inbox}");
    let mut sub = app2.subscribe(inbox.clone()).await.unwrap();
    let body =
        json!({"model": "slow", "stream": true, "messages": [{"role": "user", "content": "go"}]});
    app2.publish_with_reply_and_headers(
        "llm.completion",
        inbox.clone(),
        bearer(MASTER),
        body.to_string().into(),
    )
    .await
    .unwrap();
    let first = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("a first chunk")
        .expect("subscription open");
    assert!(!first.payload.is_empty());

    // app1 learnt the reply subject somehow and names it, without the job's key: refused.
    for wrong in [HeaderMap::new(), bearer("sk-guessed-0123456789")] {
        app1.publish_with_headers("llm.cancel", wrong, inbox.clone().into())
            .await
            .unwrap();
    }
    app1.flush().await.unwrap();
    let started = std::time::Instant::now();
    while counter(metrics, "llmbus_cancels_refused_total").await < 2 {
        assert!(
            started.elapsed() < PATIENCE,
            "the refused cancels were never counted\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        app1_events.violations().is_empty(),
        "{:?}",
        app1_events.violations()
    );
    assert_eq!(fake.cut_bodies(), 0, "a refused cancel stopped the job");
    assert!(!worker.log().contains(MASTER) && !worker.log().contains("sk-guessed"));

    // Its own key (here the master key, the only one there is) cancels it.
    app2.publish_with_headers("llm.cancel", bearer(MASTER), inbox.into())
        .await
        .unwrap();
    fake.wait_for_cut_bodies(1, PATIENCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_cool_deployments_down_and_for_a_bounded_time() {
    let server = NatsServer::start();
    // Another worker of the cluster, as far as membership and the health board go.
    let member = Members::start(
        server.client().await,
        "llm",
        MemberInfo::new("worker-b", vec![], "f"),
    )
    .await
    .expect("worker-b joins");
    let yaml = "\
model_list:
  - model_name: g
    litellm_params: {model: mock/x, mock_response: ok}
    model_info: {id: x}
  - model_name: g
    litellm_params: {model: mock/y, mock_response: ok}
    model_info: {id: y}
llmbus:
  metrics_listen: null
";
    let loaded = Config::from_yaml(yaml, "t.yaml").unwrap();
    let worker = Worker::start(&loaded.config, server.client().await)
        .await
        .unwrap();
    let hour = epoch_ms() + 3_600_000;
    // Written in this order, so the worker reads the intruder's entry first.
    HealthBoard::open(
        server.client().await,
        "llm",
        "intruder",
        llmbus::cluster::Replicas::Auto,
    )
    .await
    .unwrap()
    .publish("x", hour, "RateLimit")
    .await
    .unwrap();
    HealthBoard::open(
        server.client().await,
        "llm",
        "worker-b",
        llmbus::cluster::Replicas::Auto,
    )
    .await
    .unwrap()
    .publish("y", hour, "RateLimit")
    .await
    .unwrap();
    let client = server.client().await;
    let started = std::time::Instant::now();
    let y = loop {
        let y = status_of(&deployments(&client).await, "y");
        if y["state"] == "cooling_down" {
            break y;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "worker-b's cooldown never arrived: {y}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let remaining = y["cooldown_remaining_ms"].as_u64().expect("remaining");
    assert!(
        remaining <= 60_000,
        "an hour announced by another worker is cut to the longer of cooldown_time (5 s) and \
         60 s: {y}"
    );
    let x = status_of(&deployments(&client).await, "x");
    assert_eq!(
        x["state"], "healthy",
        "a non-member's cooldown was believed: {x}"
    );
    assert_eq!(x["cooldowns"], 0, "{x}");
    worker.stop().await;
    drop(member);
}

/// Runs `llmbus <args>` to the end with `env` (the test's environment cannot leak in).
async fn llmbus_cli(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = command::llmbus();
        cmd.args(&args).envs(env);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        command::run_command(cmd, &args)
    })
    .await
    .expect("runner")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_shipped_config_only_workers_or_the_master_key_change_the_config() {
    let nats = ShippedNats::start();
    let dir = tempfile::tempdir().unwrap();
    let first_text = "model_list:\n  - model_name: demo\n    litellm_params: {model: mock/demo, \
                      mock_response: hi}\ngeneral_settings:\n  master_key: \
                      os.environ/TEST_MASTER_KEY\n";
    let first = dir.path().join("first.yaml");
    std::fs::write(&first, first_text).unwrap();
    let second = dir.path().join("second.yaml");
    std::fs::write(&second, first_text.replace("hi}", "hello}")).unwrap();
    let (first, second) = (first.display().to_string(), second.display().to_string());
    let ops_url = nats.url_as("ops");
    let ops = [("NATS_INBOX_PREFIX", "_INBOX_ops")];

    // Before any worker runs: an operator's user cannot write the bucket, the workers' can
    // (the first push).
    let out = llmbus_cli(&["config", "push", &first, "--nats-url", &ops_url], &ops).await;
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("workers' NATS permissions"),
        "{}",
        out.describe()
    );
    assert!(!out.stderr.contains("ops-secret"), "{}", out.describe());
    let worker_url = nats.url_as("llmbus");
    let out = llmbus_cli(&["config", "push", &first, "--nats-url", &worker_url], &[]).await;
    assert!(out.status.success(), "{}", out.describe());

    // A worker serves it; the operator pushes with the master key, through the worker.
    let (worker_nc, _) = nats.connect("llmbus").await;
    let env = |name: &str| (name == "TEST_MASTER_KEY").then(|| MASTER.to_string());
    let loaded = Config::from_yaml_with_env(first_text, "first.yaml", &env).unwrap();
    let worker = Worker::start(&loaded.config, worker_nc).await.unwrap();
    let args = [
        "config",
        "push",
        &second,
        "--master-key",
        MASTER,
        "--nats-url",
        &ops_url,
    ];
    let out = llmbus_cli(&args, &ops).await;
    assert!(out.status.success(), "{}", out.describe());
    assert!(out.stdout.contains("as revision 2"), "{}", out.describe());
    // ... and reads it back (the config bucket, read-only).
    let out = llmbus_cli(&["config", "show", "--nats-url", &ops_url], &ops).await;
    assert!(out.status.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("mock_response: hello"),
        "{}",
        out.describe()
    );
    let out = llmbus_cli(&["config", "history", "--nats-url", &ops_url], &ops).await;
    assert!(out.status.success(), "{}", out.describe());
    // A wrong key is refused by the worker.
    let args = [
        "config",
        "rollback",
        "1",
        "--master-key",
        "sk-guess-0123",
        "--nats-url",
        &ops_url,
    ];
    let out = llmbus_cli(&args, &ops).await;
    assert!(out.stderr.contains("answered 401"), "{}", out.describe());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_fronts_cancel_carries_the_jobs_key() {
    let fake = FakeProvider::start().await;
    fake.set_default(Fault::NeverEnding { after_chunks: 2 });
    let yaml = format!(
        "model_list:\n  - model_name: slow\n    litellm_params: {{model: openai/slow, api_base: \
         \"{}\", api_key: sk-fake-0123456789}}\ngeneral_settings:\n  master_key: {MASTER}\n\
         llmbus:\n  metrics_listen: null\n",
        fake.url()
    );
    let gw = HttpGateway::start(&yaml).await;
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gw.base))
        .bearer_auth(MASTER)
        .json(&json!({"model": "slow", "stream": true, "messages": [{"role": "user", "content": "go"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(PATIENCE, body.next())
        .await
        .expect("a first event");
    assert!(first.is_some());
    assert_eq!(fake.cut_bodies(), 0);
    // The client goes away: the front's cancel, with the job's key, stops the upstream call.
    drop(body);
    fake.wait_for_cut_bodies(1, PATIENCE).await;
}
