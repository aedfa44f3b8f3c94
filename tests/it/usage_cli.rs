//! `llmbus spend` and `llmbus usage tail` as a user runs them: real `llmbus serve` worker
//! processes, the CLI as a process, on every nats-server binary found (Debian's 2.9 and,
//! where installed, the current 2.1x).
//!
//! - `spend` answers from the `LLM_SPEND` aggregates the workers keep, and the totals survive
//!   stopping every worker and starting new ones: the counts are exact (no event lost, none
//!   counted twice), and they match the cost each reply carried. A worker that stops gives
//!   the aggregator's lease back.
//! - `usage tail` follows new events live with its filters, and `--json` prints events that
//!   parse as `UsageEvent`.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use crate::support::{
    fake_provider::FakeProvider,
    nats_binaries::{Server, binaries},
    worker_process::{WorkerOptions, WorkerProcess},
};
use async_nats::HeaderMap;
use llmbus::{
    client::LlmClient,
    usage::{UsageEvent, aggregator, spend},
    wire::headers,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn model_list(fake: &FakeProvider) -> String {
    format!(
        r#"
model_list:
  - model_name: echo
    litellm_params: {{model: openai/gpt-4o-mini, api_base: {}, api_key: sk-test}}
    model_info: {{id: echo-1}}
  - model_name: demo
    litellm_params: {{model: mock/demo, mock_response: "hi"}}
"#,
        fake.url()
    )
}

/// Runs `llmbus <args>` to its end; (success, stdout, stderr).
fn llmbus(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llmbus"))
        .args(args)
        .env_remove("NATS_URL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run llmbus");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `llmbus spend --json` as a value, polled until `done` holds (or a panic after a minute).
async fn spend_until(url: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let url = url.to_string();
        let (ok, out, err) =
            tokio::task::spawn_blocking(move || llmbus(&["spend", "--json", "--nats-url", &url]))
                .await
                .unwrap();
        if ok {
            let v: Value = serde_json::from_str(&out).expect("spend --json prints JSON");
            if done(&v) {
                return v;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: {v:#}");
        } else {
            assert!(tokio::time::Instant::now() < deadline, "{what}: {err}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn jobs(client: &LlmClient, n: usize) -> f64 {
    let mut cost = 0.0;
    for i in 0..n {
        let body =
            json!({"model": "echo", "messages": [{"role": "user", "content": format!("job {i}")}]});
        let r = client
            .complete(HeaderMap::new(), body.to_string().into(), WAIT)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.json());
        cost += r.header(headers::COST_USD).unwrap().parse::<f64>().unwrap();
    }
    cost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_survives_restarting_every_worker() {
    for binary in binaries() {
        let server = Server::start(&binary, true);
        let url = server.url();
        let fake = FakeProvider::start().await;
        let list = model_list(&fake);
        let client = LlmClient::new(server.client().await, "llm");

        let first = [
            WorkerProcess::start("w1", &url, &list, WorkerOptions::default()).await,
            WorkerProcess::start("w2", &url, &list, WorkerOptions::default()).await,
        ];
        let mut cost = jobs(&client, 6).await;
        let v = spend_until(&url, "6 jobs aggregated", |v| {
            v["total"]["requests"] == 6 && v["stream_last_sequence"] == v["aggregated_through"]
        })
        .await;
        assert!(
            (v["total"]["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12,
            "{v:#}"
        );

        // Every worker stops.
        for w in &first {
            w.terminate();
        }
        for w in &first {
            w.assert_exits_cleanly(WAIT).await;
        }
        drop(first);
        // The worker that kept the aggregates gave its lease back on the way out, so the next
        // worker takes them over at once rather than after the lease's ttl.
        let js = async_nats::jetstream::new(server.client().await);
        let kv = spend::open(&js, "LLM_SPEND")
            .await
            .unwrap()
            .expect("the bucket");
        let lease = kv
            .get(aggregator::LEASE_KEY)
            .await
            .unwrap()
            .expect("a lease");
        let lease: Value = serde_json::from_slice(&lease).unwrap();
        assert_eq!(lease["holder"], "", "given back: {lease}");
        // With no worker running, spend still answers from the aggregates.
        let v = spend_until(&url, "spend without workers", |v| {
            v["total"]["requests"] == 6
        })
        .await;
        assert_eq!(v["by_model_group"]["echo"]["requests"], 6);

        let second = [
            WorkerProcess::start("w3", &url, &list, WorkerOptions::default()).await,
            WorkerProcess::start("w4", &url, &list, WorkerOptions::default()).await,
        ];
        cost += jobs(&client, 4).await;
        let v = spend_until(&url, "10 jobs aggregated", |v| {
            v["total"]["requests"] == 10 && v["stream_last_sequence"] == v["aggregated_through"]
        })
        .await;
        assert_eq!(v["total"]["failures"], 0);
        assert!(
            (v["total"]["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12,
            "{v:#}"
        );
        assert_eq!(v["by_deployment"]["echo-1"]["requests"], 10);
        assert_eq!(v["by_day"].as_array().unwrap().len(), 1);
        let prompt = v["total"]["prompt_tokens"].as_u64().unwrap();
        assert!(prompt > 0);

        // The text report, from today.
        let url2 = url.clone();
        let (ok, text, err) = tokio::task::spawn_blocking(move || {
            llmbus(&["spend", "--since", "today", "--nats-url", &url2])
        })
        .await
        .unwrap();
        assert!(ok, "{err}");
        assert!(text.starts_with("Spend since "), "{text}");
        assert!(text.contains("10 requests (0 failed)"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("echo-1 ")), "{text}");
        // A bad --since is a clear error.
        let (ok, _, err) = llmbus(&["spend", "--since", "soon", "--nats-url", &url]);
        assert!(!ok && err.contains("--since"), "{err}");
        drop(second);
        eprintln!("ok on nats-server {}", server.version);
    }
}

/// A running `llmbus usage tail`; its stdout lines arrive on `lines`.
struct Tail {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Tail {
    /// Starts it and waits until it says it follows.
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_llmbus"))
            .arg("usage")
            .arg("tail")
            .args(args)
            .env_remove("NATS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start llmbus usage tail");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (ready_tx, ready) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut said = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("following ") {
                    let _ = ready_tx.send(Ok(line.clone()));
                }
                said.push_str(&line);
                said.push('\n');
            }
            let _ = ready_tx.send(Err(said));
        });
        match ready.recv_timeout(WAIT) {
            Ok(Ok(line)) => assert!(line.contains("LLM_USAGE"), "{line}"),
            other => panic!("usage tail did not start following: {other:?}"),
        }
        Self { child, lines }
    }

    /// The next `n` lines, then the exit status (it was started with `--count n`).
    fn take(mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(
                self.lines
                    .recv_timeout(WAIT)
                    .expect("a line from usage tail"),
            );
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "usage tail exited with {status}");
        out
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_tail_follows_live_events_with_filters() {
    for binary in binaries() {
        let server = Server::start(&binary, true);
        let url = server.url();
        let fake = FakeProvider::start().await;
        let w =
            WorkerProcess::start("w1", &url, &model_list(&fake), WorkerOptions::default()).await;
        let client = LlmClient::new(server.client().await, "llm");

        let text = Tail::start(&[
            "--nats-url",
            &url,
            "--model-group",
            "echo",
            "--status",
            "ok",
            "--count",
            "2",
        ]);
        let json_tail = Tail::start(&[
            "--nats-url",
            &url,
            "--status",
            "error",
            "--json",
            "--count",
            "1",
        ]);
        // Filtered out: another group; a failure (for the first tail).
        let body = |m: &str| {
            json!({"model": m, "messages": [{"role": "user", "content": "x"}]})
                .to_string()
                .into()
        };
        let r = client
            .complete(HeaderMap::new(), body("demo"), WAIT)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let failed = client
            .complete(HeaderMap::new(), body("nope"), WAIT)
            .await
            .unwrap();
        assert_eq!(failed.status, 404);
        let mut ids = Vec::new();
        for _ in 0..2 {
            let r = client
                .complete(HeaderMap::new(), body("echo"), WAIT)
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            ids.push(r.header(headers::JOB_ID).unwrap().to_string());
        }
        let lines = tokio::task::spawn_blocking(move || text.take(2))
            .await
            .unwrap();
        for (line, id) in lines.iter().zip(&ids) {
            assert!(line.contains("  200  echo (echo-1)  "), "{line}");
            assert!(line.ends_with(&format!("job {id}")), "{line}");
            assert!(line.contains(" in / ") && line.contains(" ms"), "{line}");
        }
        let lines = tokio::task::spawn_blocking(move || json_tail.take(1))
            .await
            .unwrap();
        let e: UsageEvent = serde_json::from_str(&lines[0]).expect("--json prints an event");
        assert_eq!(e.status, 404);
        assert_eq!(e.job_id, failed.header(headers::JOB_ID).unwrap());

        // --since reaches back into the stream: all four events.
        let all = Tail::start(&["--nats-url", &url, "--since", "1h", "--count", "4"]);
        let lines = tokio::task::spawn_blocking(move || all.take(4))
            .await
            .unwrap();
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains("  echo (echo-1)"))
                .count(),
            2
        );
        drop(w);
        eprintln!("ok on nats-server {}", server.version);
    }
}
