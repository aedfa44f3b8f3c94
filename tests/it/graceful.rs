//! Graceful operations with real worker processes: SIGTERM drains a worker (the jobs in flight,
//! streams included, finish with their full answer; the process exits 0), a rolling restart of
//! two workers under steady load loses no request, and a job slower than the grace period gets
//! a 503 instead of silence. Also readiness (`/readyz`) and `llmbus health`.

use std::{
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::support::{
    fake_provider::{FakeProvider, Fault},
    gateway::{PATIENCE, chat, content, streamed_text},
    nats_server::NatsServer,
    worker_process::{WorkerOptions, WorkerProcess},
};
use bytes::Bytes;
use llmbus::client::LlmClient;
use tokio::sync::watch;

/// How long a process may take to drain and exit.
const EXIT_PATIENCE: Duration = Duration::from_secs(60);

/// `slow` answers after a delay; `stream` streams its pieces with a gap between them.
fn config(slow: &FakeProvider, stream: &FakeProvider) -> String {
    format!(
        "model_list:\n  \
         - model_name: slow\n    litellm_params: {{model: openai/gpt-4o-mini, api_base: \"{}\", api_key: sk-test}}\n  \
         - model_name: stream\n    litellm_params: {{model: openai/gpt-4o-mini, api_base: \"{}\", api_key: sk-test}}\n",
        slow.url(),
        stream.url()
    )
}

fn pieces(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("w{i} ")).collect()
}

fn streaming(model: &str, text: &str) -> serde_json::Value {
    let mut body = chat(model, text);
    body["stream"] = true.into();
    body
}

/// `llmbus health` against `url`: its exit status and output.
fn health(url: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llmbus"))
        .args(["health", "--nats-url", url, "--wait-ms", "1500"])
        .env("NO_COLOR", "1")
        .output()
        .expect("run llmbus health");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn get_status(url: String) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_jobs_in_flight_and_exits_0() {
    let nats = NatsServer::start();
    let slow = FakeProvider::start().await;
    slow.set_default(Fault::Delay(Duration::from_secs(3)));
    let stream = FakeProvider::start().await;
    let words = pieces(10);
    stream.set_default(Fault::StreamChunks {
        pieces: words.clone(),
        gap: Duration::from_millis(300),
    });
    let worker = WorkerProcess::start(
        "a",
        &nats.url(),
        &config(&slow, &stream),
        WorkerOptions {
            grace_secs: Some(30.0),
            metrics: true,
            ..Default::default()
        },
    )
    .await;
    let ops = worker.metrics_addr().expect("metrics address");
    assert_eq!(get_status(format!("http://{ops}/readyz")).await, Some(200));
    assert_eq!(get_status(format!("http://{ops}/healthz")).await, Some(200));
    let (ok, out) = tokio::task::spawn_blocking({
        let url = nats.url();
        move || health(&url)
    })
    .await
    .unwrap();
    assert!(ok, "llmbus health while serving: {out}");
    assert!(out.contains("serving"), "{out}");

    let client = LlmClient::new(nats.client().await, "llm");
    let mut jobs = Vec::new();
    for i in 0..4 {
        let client = client.clone();
        jobs.push(tokio::spawn(async move {
            let r = client
                .complete(
                    Default::default(),
                    Bytes::from(chat("slow", &format!("job {i}")).to_string()),
                    PATIENCE,
                )
                .await
                .expect("a reply");
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(content(&r), format!("echo: job {i}"));
        }));
    }
    for i in 0..4 {
        let client = client.clone();
        let expected = words.concat();
        jobs.push(tokio::spawn(async move {
            let (chunks, end) = client
                .stream(
                    Default::default(),
                    Bytes::from(streaming("stream", &format!("stream {i}")).to_string()),
                    PATIENCE,
                )
                .await
                .expect("stream started")
                .collect()
                .await
                .expect("stream read to its sentinel");
            assert_eq!(end.status, 200);
            assert_eq!(streamed_text(&chunks), expected);
        }));
    }
    // Every job has reached the upstream: all eight are in flight in the worker.
    slow.wait_for_requests(4, PATIENCE).await;
    stream.wait_for_requests(4, PATIENCE).await;
    worker.terminate();

    // Draining: not ready any more (or already gone, on a very slow machine).
    let mut saw_draining = false;
    for _ in 0..200 {
        match get_status(format!("http://{ops}/readyz")).await {
            Some(503) => {
                saw_draining = true;
                break;
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            None => break,
        }
    }
    let exited_early = worker.wait_exit(Duration::ZERO).await.is_some();
    assert!(
        saw_draining || exited_early,
        "/readyz never said 503 while draining"
    );

    for job in jobs {
        job.await.expect("every job got its full answer");
    }
    worker.assert_exits_cleanly(EXIT_PATIENCE).await;
    assert!(
        worker.logged("drained: 8 jobs finished here, 0 cut off"),
        "{}",
        worker.log()
    );
    let (ok, out) = tokio::task::spawn_blocking({
        let url = nats.url();
        move || health(&url)
    })
    .await
    .unwrap();
    assert!(!ok, "llmbus health with no worker: {out}");
    assert!(out.contains("no llmbus worker answers"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_slower_than_the_grace_period_gets_a_503_and_the_worker_exits_0() {
    let nats = NatsServer::start();
    let slow = FakeProvider::start().await;
    slow.set_default(Fault::Delay(Duration::from_secs(120)));
    let stream = FakeProvider::start().await;
    stream.set_default(Fault::StreamChunks {
        pieces: pieces(4),
        gap: Duration::from_secs(120),
    });
    let worker = WorkerProcess::start(
        "a",
        &nats.url(),
        &config(&slow, &stream),
        WorkerOptions {
            grace_secs: Some(30.0),
            // The flag wins over the config.
            grace_flag: Some(1.0),
            ..Default::default()
        },
    )
    .await;
    let client = LlmClient::new(nats.client().await, "llm");
    let plain = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .complete(
                    Default::default(),
                    Bytes::from(chat("slow", "too slow").to_string()),
                    PATIENCE,
                )
                .await
                .expect("a reply")
        }
    });
    let streamed = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .stream(
                    Default::default(),
                    Bytes::from(streaming("stream", "too slow").to_string()),
                    PATIENCE,
                )
                .await
                .expect("stream started")
                .collect()
                .await
                .expect("stream read to its sentinel")
        }
    });
    slow.wait_for_requests(1, PATIENCE).await;
    stream.wait_for_requests(1, PATIENCE).await;
    let terminated = Instant::now();
    worker.terminate();

    let r = plain.await.unwrap();
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["code"], "worker_shutting_down");
    assert!(r.header("Llm-Job-Id").is_some());
    let (chunks, end) = streamed.await.unwrap();
    assert_eq!(end.status, 503);
    let error = chunks.last().expect("the error body before the sentinel");
    assert_eq!(error.json()["error"]["code"], "worker_shutting_down");
    // The grace was the flag's 1 s, not the config's 30 s.
    assert!(
        terminated.elapsed() < Duration::from_secs(25),
        "{:?}",
        terminated.elapsed()
    );
    worker.assert_exits_cleanly(EXIT_PATIENCE).await;
    assert!(
        worker.logged("drained: 0 jobs finished here, 2 cut off"),
        "{}",
        worker.log()
    );
}

/// Several clients sending jobs back to back until told to stop (or a bound is reached).
struct Load {
    ok: watch::Receiver<usize>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(nats: &NatsServer, clients: usize, max_per_client: usize) -> Load {
        let (ok_tx, ok) = watch::channel(0usize);
        let ok_tx = Arc::new(ok_tx);
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for c in 0..clients {
            let client = LlmClient::new(nats.client().await, "llm");
            let (ok_tx, failures, stop) = (ok_tx.clone(), failures.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..max_per_client {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let text = format!("client {c} job {i}");
                    let result = if i % 2 == 0 {
                        match client
                            .complete(
                                Default::default(),
                                Bytes::from(chat("slow", &text).to_string()),
                                PATIENCE,
                            )
                            .await
                        {
                            Ok(r) if r.status == 200 && content(&r) == format!("echo: {text}") => {
                                Ok(())
                            }
                            Ok(r) => Err(format!(
                                "{text}: status {} {}",
                                r.status,
                                String::from_utf8_lossy(&r.body)
                            )),
                            Err(e) => Err(format!("{text}: {e}")),
                        }
                    } else {
                        let read = async {
                            client
                                .stream(
                                    Default::default(),
                                    Bytes::from(streaming("stream", &text).to_string()),
                                    PATIENCE,
                                )
                                .await?
                                .collect()
                                .await
                        };
                        match read.await {
                            Ok((chunks, end)) if end.status == 200 && !chunks.is_empty() => Ok(()),
                            Ok((_, end)) => Err(format!("{text}: stream ended {}", end.status)),
                            Err(e) => Err(format!("{text} (stream): {e}")),
                        }
                    };
                    match result {
                        Ok(()) => {
                            ok_tx.send_modify(|n| *n += 1);
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            }));
        }
        Load {
            ok,
            failures,
            stop,
            tasks,
        }
    }

    /// Waits until `more` more jobs have succeeded than now.
    async fn wait_for_more(&mut self, more: usize) {
        let target = *self.ok.borrow() + more;
        tokio::time::timeout(PATIENCE, self.ok.wait_for(|n| *n >= target))
            .await
            .expect("the load makes progress")
            .expect("the load runs");
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a load task");
        }
        let ok = *self.ok.borrow();
        let failures = self.failures.lock().unwrap().clone();
        (ok, failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_request() {
    let nats = NatsServer::start();
    let slow = FakeProvider::start().await;
    slow.set_default(Fault::Delay(Duration::from_millis(40)));
    let stream = FakeProvider::start().await;
    stream.set_default(Fault::StreamChunks {
        pieces: pieces(4),
        gap: Duration::from_millis(15),
    });
    let yaml = config(&slow, &stream);
    let options = WorkerOptions::default();
    let a = WorkerProcess::start("a", &nats.url(), &yaml, options.clone()).await;
    let b = WorkerProcess::start("b", &nats.url(), &yaml, options.clone()).await;
    let started = Instant::now();
    let mut load = Load::start(&nats, 8, 2_000).await;
    load.wait_for_more(80).await;

    // Replace a while b serves, then b while a' serves: one worker is always up.
    a.terminate();
    let a2 = WorkerProcess::start("a'", &nats.url(), &yaml, options.clone()).await;
    a.assert_exits_cleanly(EXIT_PATIENCE).await;
    load.wait_for_more(80).await;
    b.terminate();
    let b2 = WorkerProcess::start("b'", &nats.url(), &yaml, options.clone()).await;
    b.assert_exits_cleanly(EXIT_PATIENCE).await;
    load.wait_for_more(80).await;

    let (ok, failures) = load.finish().await;
    eprintln!(
        "rolling restart: {} requests, {} failed, in {:?}",
        ok + failures.len(),
        failures.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:#?}\n--- a ---\n{}\n--- b ---\n{}",
        failures.len(),
        ok + failures.len(),
        a.log(),
        b.log()
    );
    for w in [&a, &b] {
        let log = w.log();
        let drained = log.lines().find(|l| l.contains("drained:"));
        assert!(drained.is_some(), "{log}");
        eprintln!("{}", drained.unwrap_or_default());
    }
    drop((a2, b2));
}
