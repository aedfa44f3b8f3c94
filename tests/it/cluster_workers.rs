//! Several worker processes on one nats-server behave as one gateway: a deployment's `rpm`
//! holds for all of them together, a worker that starts during a cooldown knows it, a job for
//! a group only some workers serve never gets a 404 (nor goes to a worker that has left but is
//! still listed, and its hand-over needs no permission the shipped NATS config lacks), and a
//! config pushed to the cluster reaches running workers without failing a job. Each test runs on every nats-server release
//! the machine has (Debian's 2.9 and the current one), at the same time.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::support::{
    fake_provider::{FakeProvider, Fault},
    gateway::{PATIENCE, chat, content, headers},
    llmbus_process::LlmbusProcess,
    nats_server::{Flavour, NatsServer, flavours},
    shipped_nats::ShippedNats,
    worker_process::{WorkerOptions, WorkerProcess},
};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use llmbus::{Worker, client::LlmClient, cluster::config_store::ConfigStore, config::Config};
use serde_json::Value;

/// Runs `test` once per server flavour, all at once.
async fn on_every_flavour<F, Fut>(test: F)
where
    F: Fn(Flavour) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let runs: Vec<_> = flavours()
        .into_iter()
        .map(|f| tokio::spawn(test(f)))
        .collect();
    for run in runs {
        run.await.expect("a flavour's run");
    }
}

/// The `worker_id` of every serving worker, from `$SRV.STATS`.
async fn worker_ids(nats: &async_nats::Client, expected: usize) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let workers = llmbus::client::health::check(nats, "llm", Duration::from_secs(2))
            .await
            .expect("health check");
        let mut ids = Vec::new();
        for w in &workers {
            let reply = nats
                .request(format!("$SRV.STATS.llmbus.{}", w.id), Bytes::new())
                .await
                .expect("stats");
            let stats: Value = serde_json::from_slice(&reply.payload).expect("stats JSON");
            if let Some(id) = stats["endpoints"][0]["data"]["worker_id"].as_str() {
                ids.push(id.to_string());
            }
        }
        if ids.len() >= expected {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "only {} workers answer",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The most upstream calls in any `window`, over the arrival times `at`.
fn max_in_window(at: &[Instant], window: Duration) -> usize {
    let mut sorted = at.to_vec();
    sorted.sort();
    let mut best = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end] - sorted[start] >= window {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_holds_across_three_workers_under_uneven_load() {
    on_every_flavour(|flavour| async move {
        const RPM: usize = 120;
        let server = NatsServer::start_flavour(flavour);
        let fake = FakeProvider::start().await;
        let yaml = format!(
            "model_list:\n  - model_name: limited\n    litellm_params: {{model: openai/x, api_base: \"{}\", api_key: sk-quota-0123456789, rpm: {RPM}}}\n",
            fake.url()
        );
        let mut workers = Vec::new();
        for name in ["a", "b", "c"] {
            workers.push(
                WorkerProcess::start(name, &server.url(), &yaml, WorkerOptions::default()).await,
            );
        }
        let nats = server.client().await;
        let ids = worker_ids(&nats, 3).await;
        // Three times the limit, 80 % of it to one worker, for a minute and a quarter; worker
        // "c" is killed with SIGKILL half-way and its share goes to the first.
        let offered_per_sec = 3.0 * RPM as f64 / 60.0;
        let run = Duration::from_secs(75);
        let kill_at = Duration::from_secs(40);
        let started = Instant::now();
        let ok = Arc::new(AtomicU64::new(0));
        let limited = Arc::new(AtomicU64::new(0));
        let mut jobs = Vec::new();
        let mut killed = false;
        let mut n: u64 = 0;
        while started.elapsed() < run {
            if !killed && started.elapsed() >= kill_at {
                killed = true;
                drop(workers.pop());
            }
            let target = match n % 10 {
                0 => &ids[1],
                1 if !killed => &ids[2],
                _ => &ids[0],
            };
            let subject = format!("llm.worker.{target}.completion");
            let (nats, ok, limited) = (nats.clone(), ok.clone(), limited.clone());
            jobs.push(tokio::spawn(async move {
                let mut h = HeaderMap::new();
                h.insert("Llm-Timeout-Ms", "1000");
                let body = Bytes::from(chat("limited", "x").to_string());
                if let Ok(Ok(r)) = tokio::time::timeout(
                    PATIENCE,
                    nats.request_with_headers(subject, h, body),
                )
                .await
                {
                    let status = r
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Llm-Status"))
                        .map(|v| v.to_string());
                    match status.as_deref() {
                        Some("200") => ok.fetch_add(1, Ordering::Relaxed),
                        Some("429") => limited.fetch_add(1, Ordering::Relaxed),
                        _ => 0,
                    };
                }
            }));
            n += 1;
            let due = started + Duration::from_secs_f64(n as f64 / offered_per_sec);
            tokio::time::sleep_until(due.into()).await;
        }
        for j in jobs {
            let _ = j.await;
        }
        let arrivals: Vec<Instant> = fake.requests().iter().map(|r| r.at).collect();
        let worst = max_in_window(&arrivals, Duration::from_secs(60));
        // The first full window, from the first call: how much of the limit the cluster used.
        let first = arrivals.iter().min().copied().expect("calls");
        let used_first = arrivals
            .iter()
            .filter(|t| **t < first + Duration::from_secs(60))
            .count();
        eprintln!(
            "[rpm {flavour:?}] {n} jobs offered over {:?} (3x {RPM} rpm, 80/10/10, one worker \
             killed at {kill_at:?}): {} served, {} refused with 429; most upstream calls in any \
             60 s window {worst} (limit {RPM}); first window used {used_first} ({:.0} %)",
            run,
            ok.load(Ordering::Relaxed),
            limited.load(Ordering::Relaxed),
            used_first as f64 * 100.0 / RPM as f64
        );
        assert!(
            worst as f64 <= RPM as f64 * 1.1,
            "{worst} calls in one 60 s window, limit {RPM}"
        );
        assert!(
            used_first as f64 >= RPM as f64 * 0.9,
            "only {used_first} of {RPM} used in the first window"
        );
        assert!(limited.load(Ordering::Relaxed) > 0, "the load was over the limit");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_starts_during_a_cooldown_knows_it() {
    on_every_flavour(|flavour| async move {
        let server = NatsServer::start_flavour(flavour);
        let bad = FakeProvider::start().await;
        bad.set_default(Fault::status(500));
        let good = FakeProvider::start().await;
        let yaml = format!(
            r#"model_list:
  - model_name: g
    litellm_params: {{model: openai/x, api_base: "{}", api_key: sk-bad-0123456789}}
    model_info: {{id: bad}}
  - model_name: g
    litellm_params: {{model: openai/x, api_base: "{}", api_key: sk-good-0123456789}}
    model_info: {{id: good}}
router_settings:
  allowed_fails: 1
  cooldown_time: 120
  num_retries: 2
"#,
            bad.url(),
            good.url()
        );
        let first =
            WorkerProcess::start("first", &server.url(), &yaml, WorkerOptions::default()).await;
        let client = LlmClient::new(server.client().await, "llm");
        // Until the bad deployment has failed twice it still gets picked; every job succeeds
        // on the good one anyway.
        let deadline = Instant::now() + PATIENCE;
        while bad.request_count() < 2 {
            let r = client
                .complete(
                    HeaderMap::new(),
                    chat("g", "x").to_string().into(),
                    PATIENCE,
                )
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            assert!(
                Instant::now() < deadline,
                "the bad deployment is never picked"
            );
        }
        first.wait_for_log("deployment cools down", PATIENCE).await;
        let seen = bad.request_count();
        let late =
            WorkerProcess::start("late", &server.url(), &yaml, WorkerOptions::default()).await;
        first.terminate();
        first.assert_exits_cleanly(PATIENCE).await;
        for _ in 0..20 {
            let r = client
                .complete(
                    HeaderMap::new(),
                    chat("g", "x").to_string().into(),
                    PATIENCE,
                )
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.header("Llm-Deployment"), Some("good"));
        }
        assert_eq!(
            bad.request_count(),
            seen,
            "{flavour:?}: the late worker sent jobs to a deployment cooling down\n{}",
            late.log()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_only_one_worker_serves_never_gets_a_404() {
    on_every_flavour(|flavour| async move {
        let server = NatsServer::start_flavour(flavour);
        let old = "model_list:\n  - model_name: demo\n    litellm_params: {model: mock/demo, mock_response: old}\n";
        let new = format!(
            "{old}  - model_name: x\n    litellm_params: {{model: mock/x, mock_response: from-x}}\n"
        );
        let _a = WorkerProcess::start("a", &server.url(), old, WorkerOptions::default()).await;
        let _b = WorkerProcess::start("b", &server.url(), &new, WorkerOptions::default()).await;
        let client = LlmClient::new(server.client().await, "llm");
        // Worker "a" learns that "b" serves x from the membership: give it the moment that
        // takes, with a job that must succeed.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let r = client
                .complete(HeaderMap::new(), chat("x", "hi").to_string().into(), PATIENCE)
                .await
                .unwrap();
            if r.status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "x never answered: {}", r.status);
        }
        let replies = futures::stream::iter(0..200)
            .map(|_| {
                let client = client.clone();
                async move {
                    client
                        .complete(HeaderMap::new(), chat("x", "hi").to_string().into(), PATIENCE)
                        .await
                        .unwrap()
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
        assert!(
            statuses.iter().all(|s| *s == 200),
            "{flavour:?}: {statuses:?}"
        );
        assert!(replies.iter().all(|r| content(r) == "from-x"));
        // A group nobody serves is still a 404.
        let r = client
            .complete(HeaderMap::new(), chat("nobody", "hi").to_string().into(), PATIENCE)
            .await
            .unwrap();
        assert_eq!(r.status, 404);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_config_reaches_running_workers_without_failing_a_job() {
    // One flavour after the other (the process helper's futures stay on this task).
    for flavour in flavours() {
        let server = NatsServer::start_flavour(flavour);
        let v1 = "model_list:\n  - model_name: demo\n    litellm_params: {model: mock/demo, mock_response: one}\n";
        let v2 = "model_list:\n  - model_name: demo\n    litellm_params: {model: mock/demo, mock_response: two}\n  - model_name: added\n    litellm_params: {model: mock/added, mock_response: new-group}\n";
        let store = ConfigStore::open(
            server.client().await,
            "llm",
            llmbus::cluster::Replicas::Auto,
        )
        .await
        .unwrap();
        store.push(v1, "v1.yaml").await.unwrap();
        let url = server.url();
        let workers: Vec<LlmbusProcess> = (0..2)
            .map(|_| LlmbusProcess::start(&["serve", "--nats-url", &url], &[]))
            .collect();
        for w in &workers {
            w.wait_for_line("worker is serving", PATIENCE).await;
        }
        let client = LlmClient::new(server.client().await, "llm");
        // Load all along: every job must succeed, before, during and after the reload.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let served = Arc::new(AtomicU64::new(0));
        let load: Vec<_> = (0..8)
            .map(|_| {
                let (client, stop, failures, served) = (
                    client.clone(),
                    stop.clone(),
                    failures.clone(),
                    served.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let r = client
                            .complete(headers(&[]), chat("demo", "x").to_string().into(), PATIENCE)
                            .await;
                        match r {
                            Ok(r) if r.status == 200 => served.fetch_add(1, Ordering::Relaxed),
                            _ => failures.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pushed = Instant::now();
        store.push(v2, "v2.yaml").await.unwrap();
        // Every worker has it once the new group answers from each (the queue group spreads
        // the probes; 20 in a row means both have it, with overwhelming likelihood, and the
        // log lines below make sure).
        for w in &workers {
            w.wait_for_line("serving the cluster's config revision=2", PATIENCE)
                .await;
        }
        let reloaded = pushed.elapsed();
        for _ in 0..20 {
            let r = client
                .complete(
                    HeaderMap::new(),
                    chat("added", "x").to_string().into(),
                    PATIENCE,
                )
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{flavour:?}");
            assert_eq!(content(&r), "new-group");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        for l in load {
            l.await.unwrap();
        }
        eprintln!(
            "[reload {flavour:?}] pushed to applied on both workers in {reloaded:?}; {} jobs \
             served during the run, {} failed",
            served.load(Ordering::Relaxed),
            failures.load(Ordering::Relaxed)
        );
        assert_eq!(failures.load(Ordering::Relaxed), 0);
        let r = client
            .complete(
                HeaderMap::new(),
                chat("demo", "x").to_string().into(),
                PATIENCE,
            )
            .await
            .unwrap();
        assert_eq!(content(&r), "two");
    }
}

/// Puts a member that has left without a word into the membership: `ghost` serves `x`, its
/// heartbeat is fresh and its period long, so every worker keeps it in its view, yet nothing
/// subscribes to its subjects (like a worker killed with `kill -9` a moment ago).
async fn put_ghost(nats: &async_nats::Client) {
    let js = async_nats::jetstream::new(nats.clone());
    let kv = js
        .get_key_value(llmbus::cluster::bucket_name("llm", "WORKERS"))
        .await
        .expect("the membership bucket");
    let mut ghost = llmbus::cluster::members::MemberInfo::new("ghost", vec!["x".into()], "gone");
    ghost.heartbeat_ms = llmbus::cluster::epoch_ms();
    ghost.every_ms = 600_000;
    kv.put("ghost", serde_json::to_vec(&ghost).unwrap().into())
        .await
        .expect("write the ghost's entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_never_handed_to_a_worker_that_has_left() {
    on_every_flavour(|flavour| async move {
        let server = NatsServer::start_flavour(flavour);
        let demo = "model_list:\n  - model_name: demo\n    litellm_params: {model: mock/demo, mock_response: demo}\n";
        let a = WorkerProcess::start("a", &server.url(), demo, WorkerOptions::default()).await;
        let nats = server.client().await;
        let a_id = worker_ids(&nats, 1).await.remove(0);
        put_ghost(&nats).await;
        let client = LlmClient::new(nats.clone(), "llm");
        let ask = |model: &'static str| {
            let client = client.clone();
            async move {
                client
                    .complete(HeaderMap::new(), chat(model, "hi").to_string().into(), PATIENCE)
                    .await
                    .unwrap_or_else(|e| panic!("{flavour:?}: no answer for {model}: {e}"))
            }
        };
        // Once worker "a" sees the ghost, a job for x is handed to it: the ghost's subject has
        // no responders, so the job gets a clear 503 instead of NATS's empty status.
        let deadline = Instant::now() + PATIENCE;
        let r = loop {
            let r = ask("x").await;
            if r.status != 404 {
                break r;
            }
            assert!(Instant::now() < deadline, "{flavour:?}: a never saw the ghost");
        };
        assert_eq!(r.status, 503, "{flavour:?}: {}", String::from_utf8_lossy(&r.body));
        let e = r.json();
        assert_eq!(e["error"]["code"], "worker_unreachable", "{e}");
        assert_eq!(e["error"]["type"], "service_unavailable_error", "{e}");
        a.wait_for_log("did not answer", PATIENCE).await;
        // A worker that does serve x joins: every job for x reaches it, none is lost to the
        // ghost, whichever worker the queue group gives it to.
        let with_x = format!(
            "{demo}  - model_name: x\n    litellm_params: {{model: mock/x, mock_response: from-x}}\n"
        );
        let _c = WorkerProcess::start("c", &server.url(), &with_x, WorkerOptions::default()).await;
        // Until "a" sees "c" too (a job on a's own subject is one "a" must hand over).
        let via_a = llmbus::wire::Subjects::new("llm").direct(&a_id, "completion");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let m = nats
                .request(via_a.clone(), chat("x", "hi").to_string().into())
                .await
                .unwrap_or_else(|e| panic!("{flavour:?}: no answer from a: {e}"));
            let status = m.headers.as_ref().and_then(|h| h.get("Llm-Status"));
            if status.is_some_and(|s| s.as_str() == "200") {
                break;
            }
            assert!(Instant::now() < deadline, "{flavour:?}: a never saw c");
        }
        put_ghost(&nats).await;
        let replies = futures::stream::iter(0..100)
            .map(|_| ask("x"))
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await;
        let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
        assert!(statuses.iter().all(|s| *s == 200), "{flavour:?}: {statuses:?}");
        assert!(replies.iter().all(|r| content(r) == "from-x"));
        // For the record (printed, not asserted): one job at a time on a's own subject, each
        // handed over after probing the ghost (no responders) and "c".
        let per_job = |model: &'static str| {
            let (nats, via_a) = (nats.clone(), via_a.clone());
            async move {
                let started = Instant::now();
                for _ in 0..50 {
                    nats.request(via_a.clone(), chat(model, "hi").to_string().into())
                        .await
                        .expect("an answer");
                }
                started.elapsed() / 50
            }
        };
        let (local, handed) = (per_job("demo").await, per_job("x").await);
        eprintln!(
            "[hand-over {flavour:?}] a job run by a: {local:?}; handed over (probes of a \
             listed-but-gone worker and of c included): {handed:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_shipped_permissions_a_hand_over_and_its_probe_are_allowed() {
    // Two workers as the `llmbus` user of deploy/nats/nats-server.conf, serving different
    // groups; app2 asks for the group only one serves. Jobs the queue group gives the other
    // are probed for and handed over: neither worker may hit a permission violation.
    let nats = ShippedNats::start();
    let master = "sk-master-handover";
    let config = |group: &str| {
        let yaml = format!(
            "model_list:\n  - model_name: {group}\n    litellm_params: {{model: mock/{group}, \
             mock_response: from-{group}}}\ngeneral_settings:\n  master_key: {master}\n\
             llmbus:\n  metrics_listen: null\n"
        );
        Config::from_yaml(&yaml, "test.yaml")
            .expect("config")
            .config
    };
    let (a_nc, a_events) = nats.connect("llmbus").await;
    let (b_nc, b_events) = nats.connect("llmbus").await;
    let a = Worker::start(&config("demo"), a_nc.clone())
        .await
        .expect("worker a");
    let b = Worker::start(&config("x"), b_nc.clone())
        .await
        .expect("worker b");
    let (app2, _) = nats.connect("app2").await;
    let client = LlmClient::new(app2, "llm");
    let mut auth = HeaderMap::new();
    auth.insert("Authorization", format!("Bearer {master}").as_str());
    // Until 20 in a row succeed: "a" knows "b" by then (a job it got before would be a 404),
    // and some of the 20 went through "a" (all 20 on "b" has a chance of one in a million).
    let deadline = Instant::now() + PATIENCE;
    let mut in_a_row = 0;
    while in_a_row < 20 {
        let r = client
            .complete(auth.clone(), chat("x", "hi").to_string().into(), PATIENCE)
            .await
            .expect("app2 gets an answer");
        in_a_row = if r.status == 200 { in_a_row + 1 } else { 0 };
        assert!(Instant::now() < deadline, "x never answered 20 in a row");
    }
    for nc in [&a_nc, &b_nc] {
        nc.flush().await.expect("flush");
    }
    for (name, events) in [("a", &a_events), ("b", &b_events)] {
        assert!(
            events.violations().is_empty(),
            "worker {name} lacks a permission: {:?}",
            events.violations()
        );
    }
    a.stop().await;
    b.stop().await;
}
