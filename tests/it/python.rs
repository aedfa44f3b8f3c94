//! nats-py speaks llmbus's NATS contract: `tests/python/client_test.py` runs against a private
//! nats-server and an in-process worker with mock deployments, and must exit 0.
//!
//! What the script checks: request/reply (`chat.completion`, `Llm-Status`, `Llm-Model-Group`,
//! `Llm-Cost-Usd`), streaming by hand (inbox, `Llm-Seq` without gaps, deltas that add up to the
//! mock text, the usage chunk last, the empty sentinel with `Llm-Status: 200`), error replies
//! (unknown model, malformed JSON, a stream that fails before it starts), NATS "no responders",
//! and `llm.models`.
//!
//! It runs the venv's Python from `support::pyenv` (nats-py installed on first use), so a
//! machine without nats-py still passes. The examples of `README.md` and `schemas/README.md`
//! run in `tests/it/examples.rs`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::support::{gateway::Gateway, pyenv, run::run_limited};

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
  - model_name: gpt-4o-mini
    litellm_params: {model: mock/gpt-4o-mini, mock_response: "Hello from the README's model."}
"#;

/// The script's own deadline is 120 s; this one only catches a stuck interpreter.
const SCRIPT_LIMIT: Duration = Duration::from_secs(180);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client_test.py")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_client_speaks_the_contract() {
    let python = tokio::task::spawn_blocking(pyenv::python)
        .await
        .expect("the test venv");
    let gw = Gateway::start(CONFIG).await;
    let mut cmd = Command::new(python);
    cmd.arg(script())
        .arg(gw.nats.url())
        .env("PYTHONUNBUFFERED", "1");
    let run = tokio::task::spawn_blocking(move || run_limited(cmd, SCRIPT_LIMIT))
        .await
        .expect("python runner");
    assert!(
        run.success,
        "tests/python/client_test.py failed\n{}",
        run.describe()
    );
    assert!(
        run.stdout.contains("all Python client checks passed"),
        "the script exited 0 without finishing\n{}",
        run.describe()
    );
    drop(gw);
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
    let python = tokio::task::spawn_blocking(pyenv::python)
        .await
        .expect("the test venv");
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
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("usage_consumer.py");
    std::fs::write(&path, readme_usage_consumer()).expect("write the example");
    let mut cmd = Command::new(python);
    cmd.arg(&path)
        .env("NATS_URL", gw.nats.url())
        .env("PYTHONUNBUFFERED", "1");
    let run = tokio::task::spawn_blocking(move || run_limited(cmd, SCRIPT_LIMIT))
        .await
        .expect("python runner");
    assert!(run.success, "the usage consumer failed\n{}", run.describe());
    let stdout = run.stdout;
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
