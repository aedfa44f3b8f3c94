//! Every example in `README.md` and `schemas/README.md` runs as written against `llmbus up`.
//!
//! The code blocks are read from the Markdown files at test time (never copied), and run
//! against a real `llmbus up` process serving the built-in quickstart config on a private
//! nats-server whose URL they get in `NATS_URL` (the examples read it, defaulting to
//! `nats://127.0.0.1:4222`, so they run unchanged outside the tests too):
//!
//! - ```` ```python ```` blocks with the test venv's Python, nats-py and the OpenAI SDK
//!   (`support::pyenv`); the HTTP examples read the front's root from `LLMBUS_HTTP_URL`
//!   (default `http://127.0.0.1:4000`);
//! - ```` ```js ```` blocks saved as `.mjs` files and run by node with the npm `nats` package;
//!   each must exit on its own (it drains its connection);
//! - ```` ```sh ```` blocks line by line: `cargo run --release -- <command>` lines run the
//!   built binary with those arguments; `curl` lines run with `sh` and the real `curl`, with
//!   `LLMBUS_HTTP_URL` set; `nats req` and `nats micro` lines are carried out by a
//!   small interpreter of natscli's syntax (`-H`, `--timeout`, `--replies`, `--server`) over
//!   async-nats, because natscli itself cannot be installed here (no Debian package, no
//!   PyPI/npm wrapper); developer commands (`cargo test`, `git diff`, ...) are listed and
//!   skipped; any other line fails the test, so a new example is either run or listed;
//! - ```` ```go ```` blocks are not run (no Go toolchain): they are reviewed by hand.
//!
//! The Python and JavaScript examples that talk to the workers over NATS run a second time as
//! the application user `app1` of the shipped `deploy/nats/nats-server.conf` (its user in
//! `NATS_URL`, its inbox prefix in `NATS_INBOX_PREFIX`), where reading any inbox but its own is
//! refused: the examples' inbox prefix option is what makes them work there.

use std::{path::Path, process::Command, time::Duration};

use crate::support::{
    pyenv,
    run::run_limited,
    shell::{logical_lines, words},
    shipped_nats::ShippedNats,
    up::Up,
    worker_process::WorkerProcess,
};
use futures::StreamExt;
use serde_json::Value;

/// How long one example may run before it is killed (and fails).
const LIMIT: Duration = Duration::from_secs(120);

/// The files whose examples must run.
const FILES: &[&str] = &["README.md", "schemas/README.md"];

/// The start of the quickstart's `demo` answers.
const DEMO_ANSWER: &str = "Hello from llmbus!";

/// Shell lines that are developer commands, not examples of talking to llmbus.
const NOT_EXAMPLES: &[&str] = &[
    "cargo run --release -- up",
    "cargo test",
    "cargo bench --bench suite",
    "cargo bench --bench soak",
    "cargo bench --bench cluster_cpu",
    "cargo bench --bench http_flood",
    "cargo bench --bench quota_scale",
    "cargo install cargo-fuzz",
    "cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -a sse -- -max_total_time=300",
    "LLMBUS_BLESS=1 cargo test --test it schemas::",
    "git diff schemas/",
];

/// One fenced code block.
#[derive(Debug, Clone)]
struct Block {
    file: &'static str,
    /// 1-based line of the opening fence.
    line: usize,
    lang: String,
    code: String,
}

impl Block {
    fn place(&self) -> String {
        format!("{} line {}", self.file, self.line)
    }
}

fn read(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Every fenced block of `file`.
fn blocks(file: &'static str) -> Vec<Block> {
    let text = read(file);
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match (&mut open, fence) {
            (None, true) => {
                open = Some(Block {
                    file,
                    line: i + 1,
                    lang: line.trim_start()[3..].trim().to_lowercase(),
                    code: String::new(),
                })
            }
            (Some(_), true) => out.extend(open.take()),
            (Some(b), false) => {
                b.code.push_str(line);
                b.code.push('\n');
            }
            (None, false) => {}
        }
    }
    assert!(open.is_none(), "{file}: a code block is not closed");
    out
}

fn blocks_of(langs: &[&str]) -> Vec<Block> {
    let all: Vec<Block> = FILES
        .iter()
        .flat_map(|f| blocks(f))
        .filter(|b| langs.contains(&b.lang.as_str()))
        .collect();
    all
}

#[test]
fn the_markdown_reader_finds_every_kind_of_example() {
    let langs: Vec<String> = FILES
        .iter()
        .flat_map(|f| blocks(f))
        .map(|b| b.lang)
        .collect();
    for lang in ["python", "js", "sh", "go"] {
        assert!(
            langs.iter().any(|l| l == lang),
            "no {lang} block: {langs:?}"
        );
    }
}

#[test]
fn python_examples_run_against_llmbus_up() {
    let examples = blocks_of(&["python", "py"]);
    assert!(examples.len() >= 2, "{examples:?}");
    let python = pyenv::python();
    let up = Up::start();
    let dir = tempfile::tempdir().expect("temp dir");
    for (i, b) in examples.iter().enumerate() {
        let path = dir.path().join(format!("example_{i}.py"));
        std::fs::write(&path, &b.code).expect("write the example");
        let mut cmd = Command::new(&python);
        cmd.arg(&path)
            .env("NATS_URL", up.url())
            .env("LLMBUS_HTTP_URL", up.http_url())
            .env("PYTHONUNBUFFERED", "1");
        let run = run_limited(cmd, LIMIT);
        assert!(
            run.success,
            "the Python example at {} failed\n{}\n--- llmbus up ---\n{}",
            b.place(),
            run.describe(),
            up.output()
        );
        // An example that asks for a completion prints the answer (others, such as the usage
        // consumer, only have to run).
        let asks = b.code.contains("llm.completion") || b.code.contains("chat.completions");
        assert!(
            !asks || run.stdout.contains(DEMO_ANSWER),
            "the Python example at {} printed no answer\n{}",
            b.place(),
            run.describe()
        );
    }
}

#[test]
fn javascript_examples_run_against_llmbus_up_and_exit() {
    let examples = blocks_of(&["js", "javascript", "mjs"]);
    assert!(examples.len() >= 2, "{examples:?}");
    let node = pyenv::node();
    let modules = pyenv::node_modules();
    let up = Up::start();
    // ES modules find `nats` in a node_modules folder above the script, never by NODE_PATH.
    let dir = tempfile::tempdir_in(modules.parent().expect("the node folder")).expect("temp dir");
    for (i, b) in examples.iter().enumerate() {
        let path = dir.path().join(format!("example_{i}.mjs"));
        std::fs::write(&path, &b.code).expect("write the example");
        let mut cmd = Command::new(&node.node);
        cmd.arg(&path).env("NATS_URL", up.url());
        let run = run_limited(cmd, LIMIT);
        assert!(
            !run.timed_out,
            "the JavaScript example at {} did not exit within {LIMIT:?} (is its connection \
             drained or closed?)\n{}",
            b.place(),
            run.describe()
        );
        assert!(
            run.success,
            "the JavaScript example at {} failed\n{}\n--- llmbus up ---\n{}",
            b.place(),
            run.describe(),
            up.output()
        );
        assert!(
            run.stdout.contains(DEMO_ANSWER),
            "the JavaScript example at {} printed no answer\n{}",
            b.place(),
            run.describe()
        );
    }
}

/// The examples that talk to the workers over NATS as an application would (not the HTTP
/// ones, not the JetStream consumers): they must also run as an application user of the shipped
/// `deploy/nats/nats-server.conf`, which may read only its own inboxes.
fn application_examples(langs: &[&str]) -> Vec<Block> {
    blocks_of(langs)
        .into_iter()
        .filter(|b| {
            b.code.contains("llm.completion")
                && !b.code.contains("chat.completions")
                && !b.code.contains("jetstream")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_run_as_an_application_of_the_shipped_nats_config() {
    let nats = ShippedNats::start();
    let quickstart = llmbus::config::QUICKSTART_YAML;
    let worker =
        WorkerProcess::start("w", &nats.url_as("llmbus"), quickstart, Default::default()).await;
    let python = pyenv::python();
    let (node, modules) = (pyenv::node(), pyenv::node_modules());
    let dir = tempfile::tempdir_in(modules.parent().expect("the node folder")).expect("temp dir");
    let (url, inbox) = (nats.url_as("app1"), ShippedNats::inbox_of("app1").unwrap());
    let mut ran = 0;
    for (lang, b) in application_examples(&["python", "py"])
        .into_iter()
        .map(|b| ("python", b))
        .chain(application_examples(&["js"]).into_iter().map(|b| ("js", b)))
    {
        let mut cmd = if lang == "python" {
            let path = dir.path().join(format!("app_{ran}.py"));
            std::fs::write(&path, &b.code).expect("write the example");
            let mut cmd = Command::new(&python);
            cmd.arg(path).env("PYTHONUNBUFFERED", "1");
            cmd
        } else {
            let path = dir.path().join(format!("app_{ran}.mjs"));
            std::fs::write(&path, &b.code).expect("write the example");
            let mut cmd = Command::new(&node.node);
            cmd.arg(path);
            cmd
        };
        cmd.env("NATS_URL", &url).env("NATS_INBOX_PREFIX", inbox);
        let run = tokio::task::spawn_blocking(move || run_limited(cmd, LIMIT))
            .await
            .expect("runner");
        assert!(
            run.success && run.stdout.contains(DEMO_ANSWER),
            "the example at {} failed as user app1 of deploy/nats/nats-server.conf\n{}\n--- \
             worker ---\n{}",
            b.place(),
            run.describe(),
            worker.log()
        );
        ran += 1;
    }
    assert!(ran >= 4, "only {ran} examples ran as an application");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_examples_run_against_llmbus_up() {
    let examples = blocks_of(&["sh", "bash", "shell"]);
    let up = tokio::task::spawn_blocking(Up::start)
        .await
        .expect("llmbus up");
    let nats = async_nats::connect(up.url())
        .await
        .expect("connect to the private server");
    let mut ran = 0;
    for b in &examples {
        for line in logical_lines(&b.code) {
            let words = words(&line);
            let Some(first) = words.first() else { continue };
            let place = format!("{}: `{line}`", b.place());
            if NOT_EXAMPLES.contains(&line.as_str()) {
                continue;
            }
            if first == "nats" {
                run_natscli(&nats, &words[1..], &place).await;
            } else if first == "curl" {
                let (line, http) = (line.clone(), up.http_url());
                let run = tokio::task::spawn_blocking(move || {
                    let mut cmd = Command::new("sh");
                    cmd.args(["-c", &format!("{line} --fail-with-body")])
                        .env("LLMBUS_HTTP_URL", http);
                    run_limited(cmd, LIMIT)
                })
                .await
                .expect("runner");
                assert!(run.success, "{place} failed\n{}", run.describe());
                assert!(
                    // An answer, a stream to its end, or the model list.
                    run.stdout.contains(DEMO_ANSWER)
                        || run.stdout.contains("data: [DONE]")
                        || run.stdout.contains("\"object\":\"list\""),
                    "{place} printed no answer\n{}",
                    run.describe()
                );
            } else if words.starts_with(&[
                "cargo".into(),
                "run".into(),
                "--release".into(),
                "--".into(),
            ]) {
                let args = words[4..].to_vec();
                let url = up.url();
                let run = tokio::task::spawn_blocking(move || {
                    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmbus"));
                    cmd.args(&args).env("NATS_URL", url).env_remove("RUST_LOG");
                    run_limited(cmd, LIMIT)
                })
                .await
                .expect("runner");
                assert!(run.success, "{place} failed\n{}", run.describe());
                assert!(
                    !run.stdout.trim().is_empty(),
                    "{place} printed nothing\n{}",
                    run.describe()
                );
            } else {
                panic!(
                    "{place}: not an example this test can run; run it here or list it in \
                     NOT_EXAMPLES"
                );
            }
            ran += 1;
        }
    }
    assert!(ran >= 10, "only {ran} shell lines ran");
}

/// natscli's `req` and `micro` commands, carried out over async-nats with natscli's meaning.
async fn run_natscli(nats: &async_nats::Client, args: &[String], place: &str) {
    match args.first().map(String::as_str) {
        Some("req" | "request") => natscli_req(nats, &args[1..], place).await,
        Some("micro") => natscli_micro(nats, &args[1..], place).await,
        _ => panic!("{place}: this test knows `nats req` and `nats micro` only"),
    }
}

async fn natscli_req(nats: &async_nats::Client, args: &[String], place: &str) {
    let mut headers = async_nats::HeaderMap::new();
    let mut timeout = Duration::from_secs(5); // natscli's default
    let mut replies: Option<u32> = None;
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .unwrap_or_else(|| panic!("{place}: {flag} needs a value"))
        };
        match flag {
            "-H" | "--header" => {
                let v = value();
                let (name, val) = v
                    .split_once(':')
                    .unwrap_or_else(|| panic!("{place}: header {v:?} is not Name:value"));
                headers.append(name, val);
            }
            "--timeout" => {
                let v = value();
                timeout = llmbus::cli::parse_duration(&v)
                    .unwrap_or_else(|e| panic!("{place}: --timeout {e}"));
            }
            "--replies" => replies = Some(value().parse().expect("--replies N")),
            "--server" | "-s" => {
                let _ = value(); // the test's connection is already to the server up serves
            }
            f if f.starts_with('-') => panic!("{place}: this test does not know {f}"),
            _ => positional.push(a.clone()),
        }
    }
    let [subject, payload] = positional.as_slice() else {
        panic!("{place}: expected a subject and a payload, got {positional:?}");
    };
    if payload.is_empty() {
        // An empty request: `llm.models`, `llm.deployments`.
    } else {
        let _: Value = serde_json::from_str(payload)
            .unwrap_or_else(|e| panic!("{place}: the payload is not JSON: {e}"));
    }
    if replies.is_some_and(|n| n != 1) {
        // Many replies: a stream, read to the empty sentinel (natscli shows them as they come).
        let inbox = nats.new_inbox();
        let mut sub = nats.subscribe(inbox.clone()).await.expect("subscribe");
        nats.publish_with_reply_and_headers(
            subject.clone(),
            inbox,
            headers,
            payload.clone().into(),
        )
        .await
        .expect("publish");
        let mut chunks = 0;
        loop {
            let m = tokio::time::timeout(timeout, sub.next())
                .await
                .unwrap_or_else(|_| panic!("{place}: no sentinel within {timeout:?}"))
                .expect("subscription open");
            if m.payload.is_empty() {
                let status = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Llm-Status"))
                    .map(|v| v.to_string());
                assert_eq!(status.as_deref(), Some("200"), "{place}: the sentinel");
                assert!(chunks > 0, "{place}: a stream without chunks");
                return;
            }
            let chunk: Value = serde_json::from_slice(&m.payload).expect("a JSON chunk");
            assert_eq!(chunk["object"], "chat.completion.chunk", "{place}: {chunk}");
            chunks += 1;
        }
    }
    let reply = tokio::time::timeout(
        timeout,
        nats.send_request(
            subject.clone(),
            async_nats::Request::new()
                .headers(headers)
                .payload(payload.clone().into()),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("{place}: no reply within {timeout:?}"))
    .unwrap_or_else(|e| panic!("{place}: {e}"));
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Llm-Status"))
        .map(|v| v.to_string());
    let body: Value = serde_json::from_slice(&reply.payload)
        .unwrap_or_else(|e| panic!("{place}: the reply is not JSON ({e})"));
    assert!(
        status.as_deref().is_none_or(|s| s == "200"),
        "{place}: Llm-Status {status:?}: {body}"
    );
    assert!(body.get("error").is_none(), "{place}: {body}");
    match subject.as_str() {
        "llm.completion" => assert_eq!(body["object"], "chat.completion", "{place}: {body}"),
        "llm.embedding" => {
            let n = serde_json::from_str::<Value>(payload).expect("JSON")["input"]
                .as_array()
                .map_or(1, Vec::len);
            assert_eq!(
                body["data"].as_array().map(Vec::len),
                Some(n),
                "{place}: {body}"
            );
        }
        "llm.models" => assert_eq!(body["object"], "list", "{place}: {body}"),
        _ => {}
    }
}

async fn natscli_micro(nats: &async_nats::Client, args: &[String], place: &str) {
    let (verb, service) = match args {
        [v] => (v.as_str(), None),
        [v, s] => (v.as_str(), Some(s.as_str())),
        _ => panic!("{place}: `nats micro <ls|info|stats> [service]`"),
    };
    let kind = match verb {
        "ls" | "list" => "PING",
        "info" => "INFO",
        "stats" => "STATS",
        v => panic!("{place}: this test does not know `nats micro {v}`"),
    };
    let subject = match service {
        Some(s) => format!("$SRV.{kind}.{s}"),
        None => format!("$SRV.{kind}"),
    };
    let reply = tokio::time::timeout(Duration::from_secs(10), nats.request(subject, "".into()))
        .await
        .unwrap_or_else(|_| panic!("{place}: no service answered"))
        .unwrap_or_else(|e| panic!("{place}: {e}"));
    let body: Value = serde_json::from_slice(&reply.payload).expect("JSON");
    assert_eq!(body["name"], "llmbus", "{place}: {body}");
}

#[test]
fn the_shell_reader_reads_lines_as_a_shell_would() {
    assert_eq!(
        logical_lines("# a comment\nnats req a \\\n  '{\"x\":\"# not a comment\"}' # one\n\n"),
        ["nats req a '{\"x\":\"# not a comment\"}'"]
    );
    assert_eq!(
        words(r#"nats req -H 'A:b c' "x$NO_SUCH_VARIABLE_HERE" ''"#),
        ["nats", "req", "-H", "A:b c", "x", ""]
    );
}
