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
//! run in `tests/examples.rs`.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use support::{gateway::Gateway, pyenv, run::run_limited};

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
