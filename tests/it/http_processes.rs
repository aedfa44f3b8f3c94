//! The HTTP front as users run it, as real processes:
//!
//! - `llmbus front` in front of 2 worker processes answers exactly as a worker's own HTTP front
//!   (`serve --http`): same statuses, bodies (but ids and timestamps) and routing headers, for
//!   plain replies, streams, errors and the model list;
//! - `llmbus up` prints a Python OpenAI SDK line and a curl line that work as printed;
//! - LiteLLM's one-liner, `llmbus --model provider/name --api-key …` (and `llmbus up --model …`)
//!   serves that one model;
//! - an HTTP address the user chose that is taken stops the process with a clear message.

use std::{path::Path, time::Duration};

use crate::support::{
    fake_provider::FakeProvider,
    llmbus_process::LlmbusProcess,
    nats_server::NatsServer,
    pyenv,
    worker_process::{WorkerOptions, WorkerProcess},
};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(60);

fn model_list(fake: &FakeProvider) -> String {
    format!(
        r#"model_list:
  - model_name: fake
    litellm_params: {{model: openai/gpt-4o-mini, api_base: "{}", api_key: sk-upstream}}
    model_info: {{id: fake-1}}
router_settings:
  num_retries: 0
"#,
        fake.url()
    )
}

fn write_config(dir: &Path, yaml: &str) -> String {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).expect("write the config");
    path.to_string_lossy().into_owned()
}

/// Ids and timestamps differ from one answer to the next; everything else must not.
fn normalized(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for key in ["id", "created"] {
                    if map.contains_key(key) && !map[key].is_object() {
                        map.insert(key.to_string(), json!("<volatile>"));
                    }
                }
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// What a front answered: status, the routing headers, the body (normalized JSON, or the SSE
/// events each normalized).
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<Value>,
}

async fn ask(
    client: &reqwest::Client,
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let url = format!("{base}{path}");
    let request = match body {
        Some(b) => client.post(url).json(&b),
        None if method == "GET" => client.get(url),
        None => client.post(url),
    };
    let r = request.send().await.expect("a response");
    let status = r.status().as_u16();
    let headers = [
        "content-type",
        "x-llmbus-deployment",
        "x-llmbus-model-group",
        "x-llmbus-attempts",
        "x-litellm-model-id",
        "x-accel-buffering",
    ]
    .iter()
    .filter_map(|h| {
        r.headers()
            .get(*h)
            .map(|v| (h.to_string(), v.to_str().unwrap_or("?").to_string()))
    })
    .collect();
    let sse = r
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "text/event-stream");
    let text = r.text().await.expect("the body");
    let body = if sse {
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(|d| {
                if d == "[DONE]" {
                    json!("[DONE]")
                } else {
                    normalized(serde_json::from_str(d).expect("a JSON event"))
                }
            })
            .collect()
    } else {
        vec![normalized(
            serde_json::from_str(&text).expect("a JSON body"),
        )]
    };
    Answer {
        status,
        headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llmbus_front_answers_as_the_in_worker_front() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Worker A serves HTTP itself; worker B does not; the front serves HTTP for both.
    let config = write_config(
        dir.path(),
        &format!("{}llmbus:\n  metrics_listen: null\n", model_list(&fake)),
    );
    let a = LlmbusProcess::start(
        &[
            "serve",
            "--config",
            &config,
            "--nats-url",
            &nats.url(),
            "--http",
            "127.0.0.1:0",
        ],
        &[],
    );
    let in_worker = a
        .wait_for_url("OpenAI-compatible HTTP front at", PATIENCE)
        .await;
    a.wait_for_line("worker is serving", PATIENCE).await;
    let _b = WorkerProcess::start(
        "b",
        &nats.url(),
        &model_list(&fake),
        WorkerOptions::default(),
    )
    .await;
    let front = LlmbusProcess::start(
        &[
            "front",
            "--listen",
            "127.0.0.1:0",
            "--nats-url",
            &nats.url(),
        ],
        &[],
    );
    let standalone = front
        .wait_for_url("llmbus front: OpenAI-compatible HTTP at", PATIENCE)
        .await;

    let client = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let chat = |stream: bool, model: &str| {
        json!({
            "model": model,
            "stream": stream,
            "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
            "messages": [{"role": "user", "content": "the same question"}]
        })
    };
    let cases: Vec<(&str, &str, Option<Value>)> = vec![
        ("POST", "/v1/chat/completions", Some(chat(false, "fake"))),
        ("POST", "/v1/chat/completions", Some(chat(true, "fake"))),
        ("POST", "/v1/chat/completions", Some(chat(false, "nope"))),
        (
            "POST",
            "/v1/chat/completions",
            Some(json!({"model": "fake"})),
        ),
        ("GET", "/v1/models/fake", None),
        ("GET", "/v1/models", None),
    ];
    for (method, path, body) in cases {
        let front_answer = ask(&client, &standalone, method, path, body.clone()).await;
        let worker_answer = ask(&client, &in_worker, method, path, body.clone()).await;
        assert_eq!(
            front_answer, worker_answer,
            "{method} {path} {body:?}: llmbus front and the worker's own front differ"
        );
    }
    // Several jobs through the front, spread over both workers by NATS: all answered.
    for i in 0..10 {
        let a = ask(
            &client,
            &standalone,
            "POST",
            "/v1/chat/completions",
            Some(chat(i % 2 == 0, "fake")),
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    let answer = ask(
        &client,
        &standalone,
        "POST",
        "/v1/chat/completions",
        Some(chat(false, "fake")),
    )
    .await;
    assert_eq!(
        answer.body[0]["choices"][0]["message"]["content"],
        "echo: the same question"
    );

    front.terminate();
    let status = front.wait_exit(PATIENCE).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "front exit {status:?}:\n{}",
        front.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_prints_sdk_and_curl_lines_that_work_as_printed() {
    let nats = NatsServer::start();
    let python = tokio::task::spawn_blocking(pyenv::python).await.unwrap();
    let up = LlmbusProcess::start(
        &["up", "--http", "127.0.0.1:0", "--nats-url", &nats.url()],
        &[("OPENAI_API_KEY", "")],
    );
    let sdk_line = up.wait_for_line("python3 -c", PATIENCE).await;
    let curl_line = up.wait_for_line("curl -s", PATIENCE).await;
    assert!(
        sdk_line.contains("base_url=\"http://127.0.0.1:"),
        "{sdk_line}"
    );
    let path = format!(
        "{}:{}",
        python.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for line in [sdk_line.trim(), curl_line.trim()] {
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(line)
            .env("PATH", &path)
            .output()
            .await
            .expect("run the banner's line");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("Hello from llmbus"),
            "{line}\nexit {:?}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    up.terminate();
    let status = up.wait_exit(PATIENCE).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "up exit {status:?}:\n{}",
        up.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_liner_serves_one_model() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    let client = reqwest::Client::new();
    let forms: [&[&str]; 2] = [&[], &["up"]];
    for (i, form) in forms.iter().enumerate() {
        let mut args: Vec<&str> = form.to_vec();
        let api_base = fake.url();
        args.extend([
            "--model",
            "openai/fake-model",
            "--api-key",
            "sk-one-liner",
            "--api-base",
            &api_base,
            "--http",
            "127.0.0.1:0",
            "--nats-url",
        ]);
        let url = nats.url();
        args.push(&url);
        let p = LlmbusProcess::start(&args, &[]);
        let base = p.wait_for_url("OpenAI-compatible HTTP at", PATIENCE).await;
        // The group is named as given, and the bare name is an alias of it.
        for model in ["openai/fake-model", "fake-model"] {
            let r = client
                .post(format!("{base}/v1/chat/completions"))
                .json(&json!({"model": model, "messages": [{"role": "user", "content": "one"}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{model}: {}", p.log());
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["choices"][0]["message"]["content"], "echo: one");
        }
        let seen = fake.wait_for_requests(2 * (i + 1), PATIENCE).await;
        let last = seen.last().unwrap();
        assert_eq!(last.header("authorization"), Some("Bearer sk-one-liner"));
        assert_eq!(last.model(), Some("fake-model"));
        p.terminate();
        let status = p.wait_exit(PATIENCE).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "{:?}:\n{}",
            status,
            p.log()
        );
        assert!(
            !p.log().contains("sk-one-liner"),
            "the key was printed:\n{}",
            p.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chosen_http_address_that_is_taken_refuses_to_start() {
    let nats = NatsServer::start();
    let fake = FakeProvider::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "{}llmbus:\n  metrics_listen: null\n  http_listen: \"{addr}\"\n",
            model_list(&fake)
        ),
    );
    for args in [
        vec!["serve", "--config", &config, "--nats-url", &nats.url()],
        vec!["front", "--listen", &addr, "--nats-url", &nats.url()],
        vec!["up", "--config", &config, "--nats-url", &nats.url()],
    ] {
        let p = LlmbusProcess::start(&args, &[]);
        let status = p.wait_exit(PATIENCE).await;
        assert!(
            status.is_some_and(|s| !s.success()),
            "{args:?} did not refuse: {status:?}\n{}",
            p.log()
        );
        let log = p.log();
        assert!(
            log.contains("cannot listen for HTTP") && log.contains(&addr),
            "{log}"
        );
    }
}
