//! nats-py speaks llmbus's NATS contract: `tests/python/client_test.py` runs against a private
//! nats-server and an in-process worker with mock deployments, and must exit 0.
//!
//! What the script checks: request/reply (`chat.completion`, `Llm-Status`, `Llm-Model-Group`,
//! `Llm-Cost-Usd`), streaming by hand (inbox, `Llm-Seq` without gaps, deltas that add up to the
//! mock text, the usage chunk last, the empty sentinel with `Llm-Status: 200`), error replies
//! (unknown model, malformed JSON, a stream that fails before it starts), NATS "no responders",
//! and `llm.models`.
//!
//! A second test runs the Python example of `schemas/README.md` as it is written (only its
//! server URL changed), so the documentation cannot drift from what works.
//!
//! It needs `python3` with nats-py (`pip install nats-py`; `.ci/run` installs it). A missing
//! nats-py fails this test: it is never skipped.

mod support;

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use support::gateway::Gateway;

/// Keep the text in sync with `MOCK_TEXT` in `tests/python/client_test.py`.
const CONFIG: &str = r#"
model_list:
  - model_name: demo
    litellm_params:
      model: mock/demo-a
      mock_response: "Hello from the mock: several words, ünïcode and  double  spaces."
  - model_name: demo
    litellm_params:
      model: mock/demo-b
      mock_response: "Hello from the mock: several words, ünïcode and  double  spaces."
  - model_name: small
    litellm_params: {model: mock/small, mock_response: "hi"}
  # The model group the examples of schemas/README.md use.
  - model_name: gpt-4o-mini
    litellm_params: {model: mock/gpt-4o-mini, mock_response: "Hello from the README's model."}
"#;

/// The script's own deadline is 120 s; this one only catches a stuck interpreter.
const SCRIPT_LIMIT: Duration = Duration::from_secs(180);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client_test.py")
}

/// The first ```python block of the "Python (nats-py)" section of `schemas/README.md`.
fn readme_example() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/README.md"))
            .expect("schemas/README.md");
    let section = readme
        .split("### Python (nats-py)")
        .nth(1)
        .expect("a Python (nats-py) section");
    let code = section
        .split("```python\n")
        .nth(1)
        .expect("a python code block");
    code.split("```")
        .next()
        .expect("a closed block")
        .to_string()
}

/// Fails with a clear message when python3 or nats-py is missing.
fn require_nats_py() {
    let out = Command::new("python3")
        .args(["-c", "import nats, nats.errors"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed for this test and did not run: {e}"));
    assert!(
        out.status.success(),
        "nats-py is not installed for python3: run `python3 -m pip install nats-py` \
         (.ci/run does). python3 said:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `python3 <script> <url>`, killing it after `limit`; (exit success, stdout, stderr).
fn run_python(script: &Path, url: &str, limit: Duration) -> (bool, String, String) {
    let mut child = Command::new("python3")
        .arg(script)
        .arg(url)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(());
        status
    });
    let finished = rx.recv_timeout(limit).is_ok();
    if !finished {
        // Still running past the limit: end it so the pipes close and the test reports.
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    }
    let status = waiter.join().expect("waiter thread");
    let stdout = out.join().unwrap_or_default();
    let mut stderr = err.join().unwrap_or_default();
    if !finished {
        stderr.push_str(&format!("\n[killed after {limit:?}]"));
    }
    (
        finished && status.is_ok_and(|s| s.success()),
        stdout,
        stderr,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_client_speaks_the_contract() {
    require_nats_py();
    let gw = Gateway::start(CONFIG).await;
    let url = gw.nats.url();
    let (ok, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_python(&script(), &url, SCRIPT_LIMIT))
            .await
            .expect("python runner");
    assert!(
        ok,
        "tests/python/client_test.py failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    assert!(
        stdout.contains("all Python client checks passed"),
        "the script exited 0 without finishing\n{stdout}"
    );
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_python_example_runs() {
    require_nats_py();
    let gw = Gateway::start(CONFIG).await;
    let example = readme_example();
    let default_url = "\"nats://127.0.0.1:4222\"";
    assert!(
        example.contains(default_url),
        "the README example no longer connects to {default_url}: update this test"
    );
    let example = example.replace(default_url, &format!("\"{}\"", gw.nats.url()));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("readme_example.py");
    std::fs::write(&path, example).expect("write the example");
    let url = gw.nats.url();
    let (ok, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_python(&path, &url, SCRIPT_LIMIT))
            .await
            .expect("python runner");
    assert!(
        ok,
        "the README's Python example failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    // complete() prints the answer, stream() prints it again, then its usage and cost.
    assert_eq!(
        stdout.matches("Hello from the README's model.").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains(" tokens, $"), "{stdout}");
}

/// The ```python block of the "Python: consuming usage events (nats-py)" section.
fn readme_usage_consumer() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/README.md"))
            .expect("schemas/README.md");
    let section = readme
        .split("### Python: consuming usage events (nats-py)")
        .nth(1)
        .expect("a usage consumer section");
    let code = section
        .split("```python\n")
        .nth(1)
        .expect("a python code block");
    code.split("```")
        .next()
        .expect("a closed block")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_usage_consumer_runs() {
    require_nats_py();
    let gw = Gateway::start(CONFIG).await;
    let mut jobs = Vec::new();
    for (model, user) in [
        ("gpt-4o-mini", "alice"),
        ("small", "bob"),
        ("nope", "alice"),
    ] {
        let r = gw
            .complete(serde_json::json!({
                "model": model, "user": user,
                "messages": [{"role": "user", "content": "hi"}]
            }))
            .await;
        jobs.push((
            r.header("Llm-Job-Id").expect("a job id").to_string(),
            r.status,
        ));
    }
    let example = readme_usage_consumer();
    let default_url = "\"nats://127.0.0.1:4222\"";
    assert!(example.contains(default_url), "update this test");
    let example = example.replace(default_url, &format!("\"{}\"", gw.nats.url()));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("usage_consumer.py");
    std::fs::write(&path, example).expect("write the example");
    let url = gw.nats.url();
    let (ok, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_python(&path, &url, SCRIPT_LIMIT))
            .await
            .expect("python runner");
    assert!(
        ok,
        "the usage consumer failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    for (job, status) in &jobs {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(job.as_str()))
            .unwrap_or_else(|| panic!("no line for job {job}:\n{stdout}"));
        assert!(line.contains(&format!("status {status}")), "{line}");
    }
    assert!(
        stdout.contains("by alice") && stdout.contains("by bob"),
        "{stdout}"
    );
    assert!(stdout.contains("spend by key or user:"), "{stdout}");
}
