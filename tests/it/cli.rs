//! The `llmbus` command as a user runs it: real processes of the built binary.
//!
//! - `llmbus up` on a free loopback port where nothing listens starts its own nats-server and a
//!   worker with the quickstart config; `complete` (streaming and `--no-stream`), `models` and
//!   `deployments` talk to it; SIGTERM stops `up` and the nats-server it started.
//! - `llmbus serve` with a broken config exits non-zero naming the key and the line.
//! - `llmbus complete` with no worker on the bus exits non-zero saying no worker answers.
//!
//! Every child is killed when its guard drops, every wait is for an event (a log line, an exit)
//! with a generous limit, and every port is a free one: nothing here uses 127.0.0.1:4222.

use crate::support;

use std::process::Command;

#[cfg(target_os = "linux")]
use crate::support::command::{alive, nats_server_pid};
use crate::support::{
    command::{Running, SHUTDOWN, STARTUP, listening, llmbus, run},
    nats_server::NatsServer,
};
use llmbus::{config::Config, local_nats::free_port};
use serde_json::Value;

/// The quickstart's mock answers of `demo` (`demo-a`, `demo-b`).
fn quickstart_answers() -> Vec<String> {
    let answers: Vec<String> = Config::quickstart_with_env(&|_| None)
        .config
        .model_list
        .iter()
        .filter(|m| m.model_name == "demo")
        .filter_map(|m| m.litellm_params.mock_response.clone())
        .collect();
    assert_eq!(answers.len(), 2, "the quickstart has two mock deployments");
    answers
}

#[test]
fn up_starts_nats_and_a_worker_and_stops_both_on_sigterm() {
    let port = free_port().expect("a free port");
    assert!(!listening(port), "port {port} was meant to be free");
    let url = format!("nats://127.0.0.1:{port}");

    let mut up = Running::spawn({
        let mut cmd = llmbus();
        cmd.args(["up", "--nats-url", &url]);
        cmd
    });
    up.wait_for_lines(
        &[
            "starting nats-server",
            &format!("llmbus is up on {url}"),
            "complete -m demo",
            "worker is serving",
        ],
        STARTUP,
    );
    assert!(listening(port), "up started no server on {port}");
    #[cfg(target_os = "linux")]
    let nats_pid = nats_server_pid(port)
        .unwrap_or_else(|| panic!("no nats-server process with -p {port}\n{}", up.transcript()));

    #[cfg(target_os = "linux")]
    {
        assert!(alive(nats_pid), "pid {nats_pid} is not a live process");
        up.also_kill.push(nats_pid);
    }

    let answers = quickstart_answers();

    // Streaming (the default): the mock text, then the usage line on stderr.
    let done = run(&["complete", "-m", "demo", "Say hello", "--nats-url", &url]);
    assert!(done.status.success(), "{}", done.describe());
    let text = done.stdout.trim_end_matches('\n');
    assert!(
        answers.iter().any(|a| a == text),
        "the stream printed something else than a demo answer\n{}",
        done.describe()
    );
    assert!(done.stderr.contains("[usage:"), "{}", done.describe());

    // --no-stream: the whole chat.completion as JSON.
    let done = run(&[
        "complete",
        "-m",
        "demo",
        "--no-stream",
        "Say hello",
        "--nats-url",
        &url,
    ]);
    assert!(done.status.success(), "{}", done.describe());
    let reply: Value = serde_json::from_str(&done.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e})\n{}", done.describe()));
    assert_eq!(reply["object"], "chat.completion", "{reply}");
    let content = reply["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(answers.iter().any(|a| a == content), "{reply}");

    // models: only the mock groups without OPENAI_API_KEY.
    let done = run(&["models", "--nats-url", &url]);
    assert!(done.status.success(), "{}", done.describe());
    let list: Value = serde_json::from_str(&done.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e})\n{}", done.describe()));
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["demo", "demo-embedding"], "{list}");

    // deployments: both mock deployments, one of which served the two jobs.
    let done = run(&["deployments", "--nats-url", &url]);
    assert!(done.status.success(), "{}", done.describe());
    let deps: Value = serde_json::from_str(&done.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e})\n{}", done.describe()));
    let mut ids: Vec<&str> = deps
        .as_array()
        .expect("a list of deployments")
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["demo-a", "demo-b", "demo-embedding"], "{deps}");

    // SIGTERM: up drains the worker, stops its nats-server and exits 0.
    let killed = Command::new("kill")
        .args(["-TERM", &up.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let Some(status) = up.wait_exit(SHUTDOWN) else {
        panic!(
            "llmbus up still runs {SHUTDOWN:?} after SIGTERM\n{}",
            up.transcript()
        );
    };
    assert!(
        status.success(),
        "up exited with {status}\n{}",
        up.transcript()
    );
    #[cfg(target_os = "linux")]
    assert!(
        !alive(nats_pid),
        "the nats-server up started (pid {nats_pid}) outlived it\n{}",
        up.transcript()
    );
    assert!(
        !listening(port),
        "something still listens on {port} after up exited\n{}",
        up.transcript()
    );
}

#[test]
fn serve_with_a_broken_config_names_the_key_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broken.yaml");
    std::fs::write(
        &path,
        "model_list:\n  - model_name: demo\n    litellm_params:\n      model: openai/gpt-4o\n      rpm: lots\n",
    )
    .expect("write the config");
    // A port nothing listens on: the config must fail before any connection is tried.
    let url = format!("nats://127.0.0.1:{}", free_port().expect("a free port"));
    let done = run(&[
        "serve",
        "--config",
        path.to_str().expect("UTF-8 path"),
        "--nats-url",
        &url,
    ]);
    assert!(!done.status.success(), "{}", done.describe());
    for needle in [
        "model_list[0].litellm_params.rpm",
        "line 5",
        "broken.yaml",
        "lots",
    ] {
        assert!(
            done.stderr.contains(needle),
            "stderr lacks {needle:?}\n{}",
            done.describe()
        );
    }
    assert!(
        !done.stderr.contains("cannot connect"),
        "serve tried NATS before checking its config\n{}",
        done.describe()
    );
}

#[test]
fn complete_without_a_worker_says_no_worker_answers() {
    let nats = NatsServer::start();
    let url = nats.url();
    for args in [
        &["complete", "-m", "demo", "hi", "--nats-url", &url][..],
        &[
            "complete",
            "-m",
            "demo",
            "--no-stream",
            "hi",
            "--nats-url",
            &url,
        ][..],
        &["models", "--nats-url", &url][..],
    ] {
        let done = run(args);
        assert!(
            !done.status.success(),
            "`llmbus {}` succeeded\n{}",
            args.join(" "),
            done.describe()
        );
        assert!(
            done.stderr.contains("no llmbus worker answers"),
            "`llmbus {}`\n{}",
            args.join(" "),
            done.describe()
        );
    }
}

#[test]
fn complete_without_a_nats_server_says_it_cannot_connect() {
    let port = free_port().expect("a free port");
    let url = format!("nats://127.0.0.1:{port}");
    let done = run(&["complete", "-m", "demo", "hi", "--nats-url", &url]);
    assert!(!done.status.success(), "{}", done.describe());
    assert!(
        done.stderr
            .contains(&format!("cannot connect to NATS at {url}")),
        "{}",
        done.describe()
    );
}

/// A fake worker on `llm.completion`: hands each request (headers, body) to the test and
/// answers with `answer(request)`'s messages, published to the reply subject in order.
async fn fake_worker(
    nats: &NatsServer,
    answer: impl Fn(&async_nats::Message) -> Vec<(async_nats::HeaderMap, String)> + Send + 'static,
) -> tokio::sync::mpsc::UnboundedReceiver<async_nats::Message> {
    use futures::StreamExt;
    let client = nats.client().await;
    let mut sub = client
        .subscribe("llm.completion")
        .await
        .expect("subscribe llm.completion");
    client.flush().await.expect("flush the subscription");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let Some(reply) = m.reply.clone() else {
                continue;
            };
            for (h, body) in answer(&m) {
                let _ = client
                    .publish_with_headers(reply.clone(), h, body.into())
                    .await;
            }
            let _ = client.flush().await;
            let _ = tx.send(m);
        }
    });
    rx
}

fn headers_of(pairs: &[(&str, &str)]) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, *v);
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_stops_on_a_stream_that_stalls_with_a_clear_message() {
    let nats = NatsServer::start();
    // One chunk, then silence: what a worker that died mid-stream looks like from outside.
    let _requests = fake_worker(&nats, |_| {
        vec![(
            headers_of(&[("Llm-Seq", "1")]),
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hello wor"}}]}"#.into(),
        )]
    })
    .await;
    let url = nats.url();
    let done = tokio::task::spawn_blocking(move || {
        run(&[
            "complete",
            "-m",
            "demo",
            "--stall",
            "1s",
            "hi",
            "--nats-url",
            &url,
        ])
    })
    .await
    .expect("runner");
    assert!(!done.status.success(), "{}", done.describe());
    assert_eq!(done.stdout.trim(), "Hello wor", "{}", done.describe());
    assert!(
        done.stderr
            .contains("the stream stalled: no message for 1s after message 1")
            && done.stderr.contains("--stall"),
        "{}",
        done.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_sends_its_options_in_the_body_and_headers() {
    let nats = NatsServer::start();
    let mut requests = fake_worker(&nats, |_| {
        vec![(
            headers_of(&[("Llm-Status", "200")]),
            r#"{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}"#.into(),
        )]
    })
    .await;
    let url = nats.url();
    let done = tokio::task::spawn_blocking(move || {
        run(&[
            "complete",
            "-m",
            "demo",
            "--no-stream",
            "--system",
            "Be brief.",
            "--temperature",
            "0.25",
            "--max-tokens",
            "12",
            "--timeout",
            "1.5",
            "-H",
            "Llm-Tags:fast",
            "-H",
            "X-Trace:abc",
            "Say",
            "hi",
            "--nats-url",
            &url,
        ])
    })
    .await
    .expect("runner");
    assert!(done.status.success(), "{}", done.describe());
    let m = requests
        .recv()
        .await
        .expect("the fake worker got the request");
    let body: Value = serde_json::from_slice(&m.payload).expect("a JSON request");
    assert_eq!(body["model"], "demo", "{body}");
    assert_eq!(body["temperature"], 0.25, "{body}");
    assert_eq!(body["max_tokens"], 12, "{body}");
    assert_eq!(
        body["messages"][0],
        serde_json::json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(
        body["messages"][1],
        serde_json::json!({"role": "user", "content": "Say hi"})
    );
    assert!(body.get("stream").is_none(), "{body}");
    let h = m.headers.expect("request headers");
    assert_eq!(h.get("Llm-Timeout-Ms").map(|v| v.as_str()), Some("1500"));
    assert_eq!(h.get("Llm-Tags").map(|v| v.as_str()), Some("fast"));
    assert_eq!(h.get("X-Trace").map(|v| v.as_str()), Some("abc"));
    // --timeout in milliseconds, and the older --timeout-ms, say the same.
    for args in [&["--timeout", "250ms"][..], &["--timeout-ms", "250"][..]] {
        let url = nats.url();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let done = tokio::task::spawn_blocking(move || {
            let mut all = vec![
                "complete",
                "-m",
                "demo",
                "--no-stream",
                "hi",
                "--nats-url",
                &url,
            ];
            all.extend(args.iter().map(String::as_str));
            run(&all)
        })
        .await
        .expect("runner");
        assert!(done.status.success(), "{}", done.describe());
        let m = requests.recv().await.expect("the request");
        let h = m.headers.expect("headers");
        assert_eq!(h.get("Llm-Timeout-Ms").map(|v| v.as_str()), Some("250"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_are_quiet_unless_asked_with_v() {
    let nats = NatsServer::start();
    let worker = support::gateway::start_worker(
        &nats,
        "model_list:\n  - model_name: demo\n    litellm_params: {model: mock/demo, mock_response: quiet please}\n",
    )
    .await;
    let url = nats.url();
    let (quiet, loud, models) = tokio::task::spawn_blocking(move || {
        (
            run(&["complete", "-m", "demo", "hi", "--nats-url", &url]),
            run(&["-v", "complete", "-m", "demo", "hi", "--nats-url", &url]),
            run(&["models", "--nats-url", &url]),
        )
    })
    .await
    .expect("runner");
    for done in [&quiet, &loud, &models] {
        assert!(done.status.success(), "{}", done.describe());
    }
    assert_eq!(quiet.stdout.trim(), "quiet please", "{}", quiet.describe());
    // Only the usage line, never a log line.
    assert!(
        quiet.stderr.lines().all(|l| l.starts_with("[usage:")),
        "{}",
        quiet.describe()
    );
    assert!(!models.stderr.contains("INFO"), "{}", models.describe());
    assert!(
        loud.stderr.contains("INFO"),
        "-v shows info logs\n{}",
        loud.describe()
    );
    worker.stop().await;
}
