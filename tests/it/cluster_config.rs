//! One configuration for the cluster: `llmbus config push|show|history|rollback` and `llmbus
//! serve` without `--config`, on a private nats-server of every flavour (Debian's 2.9 where it
//! is installed, and a current 2.1x).
//!
//! - The store: the text comes back byte for byte with its `os.environ/` references; history
//!   is newest first; a rollback is a new revision with the old text; a watch delivers each new
//!   revision and the latest after the server restarts.
//! - Refusals: bad YAML, an unknown provider, a refused security setting, a literal secret
//!   (by key name, or by its shape: a token in `extra_headers`, `user:password@` or `?key=` in
//!   `api_base`), an empty model list, another subject prefix: refused at push, and the store
//!   is unchanged. A rollback to a revision stored before that check is refused the same way.
//! - Who may push: the admin subjects `llm.admin.config.push|rollback` want the master key
//!   (401 without, 403 from a worker that has none), and `llmbus config push --master-key`
//!   goes through them.
//! - The commands as real processes: `config push` (and its refusal), `show`, `history`,
//!   `rollback`; `serve` with no `--config` answers a job from the pushed config, and refuses
//!   in one line when nothing was pushed; a server without JetStream is named as such.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use crate::support::{
    gateway::{chat, content},
    llmbus_process::LlmbusProcess,
    nats_server::{NatsServer, default_binary, flavours},
};
use async_nats::HeaderMap;
use futures::StreamExt;
use llmbus::{
    Worker,
    client::{LlmClient, Reply},
    cluster::config_store::{AdminReply, ConfigStore, PushError, PushOptions},
    config::{Config, fingerprint},
    local_nats::free_port,
};

const PATIENCE: Duration = Duration::from_secs(30);

/// A config with references, a comment, odd spacing and no newline at the end: what comes
/// back must be exactly this.
const FIRST: &str = "# the cluster's config\nmodel_list:\n  - model_name: gpt-4o   # kept as written\n    litellm_params:\n      model: openai/gpt-4o\n      api_key: os.environ/OPENAI_API_KEY\n      api_base: os.environ/OPENAI_BASE\ngeneral_settings:\n  master_key: os.environ/LLMBUS_MASTER_KEY";

const SECOND: &str = "\
model_list:
  - model_name: claude
    litellm_params:
      model: anthropic/claude-sonnet-4-5
      api_key: os.environ/ANTHROPIC_API_KEY
";

/// A config a worker serves with no key: a mock `demo` group, no metrics listener.
const DEMO: &str = "\
model_list:
  - model_name: demo
    litellm_params:
      model: mock/demo
      mock_response: hello from the cluster's config
llmbus:
  metrics_listen: null
";

async fn store(server: &NatsServer) -> ConfigStore {
    ConfigStore::open(
        server.client().await,
        "llm",
        llmbus::cluster::Replicas::Auto,
    )
    .await
    .expect("open the config store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_show_history_and_rollback_round_trip() {
    for flavour in flavours() {
        let server = NatsServer::start_flavour(flavour);
        let s = store(&server).await;
        assert_eq!(s.bucket(), "LLM_CONFIG");
        assert!(s.current().await.unwrap().is_none(), "{flavour:?}: empty");
        assert!(s.history().await.unwrap().is_empty());

        let r1 = s.push(FIRST, "first.yaml").await.expect("push the first");
        let r2 = s
            .push(SECOND, "second.yaml")
            .await
            .expect("push the second");
        assert!(r2 > r1);

        // Another connection opens the same bucket (idempotently) and sees the same.
        let other = store(&server).await;
        let now = other.current().await.unwrap().expect("a config");
        assert_eq!(now.revision, r2);
        assert_eq!(now.text, SECOND);
        assert_eq!(now.source, "second.yaml");
        assert_eq!(now.fingerprint, fingerprint(SECOND));
        assert!(now.pushed_at_ms > 0);
        assert!(!now.pushed_by.is_empty());

        let old = other
            .revision(r1)
            .await
            .unwrap()
            .expect("revision 1 is kept");
        assert_eq!(
            old.text.as_bytes(),
            FIRST.as_bytes(),
            "{flavour:?}: byte for byte"
        );
        assert!(old.text.contains("api_key: os.environ/OPENAI_API_KEY"));
        assert!(other.revision(r2 + 100).await.unwrap().is_none());

        let history = other.history().await.unwrap();
        let revisions: Vec<u64> = history.iter().map(|h| h.revision).collect();
        assert_eq!(revisions, vec![r2, r1], "newest first");

        let r3 = s.rollback(r1).await.expect("roll back");
        assert!(r3 > r2);
        let now = s.current().await.unwrap().unwrap();
        assert_eq!((now.revision, now.rollback_of), (r3, Some(r1)));
        assert_eq!(now.text, FIRST);
        assert_eq!(now.source, "first.yaml");
        assert_eq!(now.fingerprint, old.fingerprint);
        assert_eq!(s.history().await.unwrap().len(), 3);

        match s.rollback(r3 + 1000).await {
            Err(PushError::NoSuchRevision(r)) => assert_eq!(r, r3 + 1000),
            other => panic!("{flavour:?}: {other:?}"),
        }
        assert_eq!(s.current().await.unwrap().unwrap().revision, r3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_refused_and_the_store_is_unchanged() {
    let bad: &[(&str, String, &str)] = &[
        ("bad YAML", "model_list: [\n  - {".to_string(), "line"),
        (
            "unknown provider",
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: nosuch/a\n".into(),
            "unknown provider `nosuch`",
        ),
        (
            "refused security setting",
            format!("{SECOND}general_settings:\n  enforce_user_param: true\n"),
            "enforce_user_param",
        ),
        (
            "literal secret",
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/a\n      api_key: sk-live-secret\n".into(),
            "model_list[0].litellm_params.api_key",
        ),
        (
            "a token in extra_headers",
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/a\n      api_key: os.environ/K\n      extra_headers: {X-Proxy-Auth: \"Bearer sk-live-secret-in-a-header\"}\n".into(),
            "model_list[0].litellm_params.extra_headers.X-Proxy-Auth",
        ),
        (
            "credentials in api_base",
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/a\n      api_key: os.environ/K\n      api_base: https://proxy:sk-live-secret@llm.example.com/v1\n".into(),
            "user:password@",
        ),
        (
            "a key in api_base's query",
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/a\n      api_key: os.environ/K\n      api_base: https://llm.example.com/v1?key=sk-live-secret\n".into(),
            "model_list[0].litellm_params.api_base",
        ),
        ("no models", "model_list: []\n".into(), "model_list is empty"),
        (
            "a typo",
            format!("{SECOND}router_settings:\n  num_retires: 2\n"),
            "did you mean `num_retries`",
        ),
        (
            "another prefix",
            format!("{SECOND}llmbus:\n  subject_prefix: acme\n"),
            "subject_prefix is `acme`",
        ),
    ];
    for flavour in flavours() {
        let server = NatsServer::start_flavour(flavour);
        let s = store(&server).await;
        let good = s.push(SECOND, "good.yaml").await.unwrap();
        for (what, text, expect) in bad {
            match s.push(text, "bad.yaml").await {
                Err(PushError::Refused(refused)) => {
                    let message = refused.to_string();
                    assert!(message.contains(expect), "{what}: {message}");
                    assert!(
                        message.starts_with("bad.yaml: refused"),
                        "{what}: {message}"
                    );
                    assert!(!message.contains("sk-live-secret"), "{what}: {message}");
                }
                other => panic!("{flavour:?} {what}: pushed or failed otherwise: {other:?}"),
            }
        }
        let history = s.history().await.unwrap();
        assert_eq!(history.len(), 1, "{flavour:?}: nothing refused was stored");
        assert_eq!(s.current().await.unwrap().unwrap().revision, good);

        // A literal secret goes in only when allowed.
        let literal = "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/a\n      api_key: sk-local\n";
        let allowed = PushOptions {
            allow_literal_secrets: true,
        };
        let r = s.push_with(literal, "local.yaml", &allowed).await.unwrap();
        assert!(r > good);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_delivers_each_new_revision_and_the_latest_after_a_restart() {
    for flavour in flavours() {
        let mut server = NatsServer::start_flavour(flavour);
        let client = async_nats::ConnectOptions::new()
            .max_reconnects(None)
            .connect(server.url())
            .await
            .unwrap();
        let s = ConfigStore::open(client, "llm", llmbus::cluster::Replicas::Auto)
            .await
            .unwrap();
        let r1 = s.push(FIRST, "first.yaml").await.unwrap();

        // From the revision loaded: nothing until the next push, then that push.
        let mut from_r1 = s.watch(r1).await.unwrap();
        // From nothing: the latest stored first.
        let mut from_zero = s.watch(0).await.unwrap();
        let first = next(&mut from_zero).await;
        assert_eq!((first.revision, first.text.as_str()), (r1, FIRST));

        let r2 = s.push(SECOND, "second.yaml").await.unwrap();
        assert_eq!(next(&mut from_r1).await.revision, r2, "{flavour:?}");
        assert_eq!(next(&mut from_zero).await.revision, r2);

        // The server goes away and comes back with its store; a push made then still arrives.
        server.kill();
        server.restart();
        let r3 = push_when_back(&server, DEMO).await;
        let got = next(&mut from_r1).await;
        assert_eq!((got.revision, got.text.as_str()), (r3, DEMO), "{flavour:?}");
        assert_eq!(next(&mut from_zero).await.revision, r3);
    }
}

async fn next(
    stream: &mut futures::stream::BoxStream<'static, llmbus::cluster::config_store::Stored>,
) -> llmbus::cluster::config_store::Stored {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("a revision within the patience")
        .expect("the watch runs")
}

/// Pushes `text` once the restarted server's JetStream answers again.
async fn push_when_back(server: &NatsServer, text: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let attempt = async {
            let s = ConfigStore::open(
                server.client().await,
                "llm",
                llmbus::cluster::Replicas::Auto,
            )
            .await
            .ok()?;
            s.push(text, "demo.yaml").await.ok()
        };
        if let Some(r) = attempt.await {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "JetStream did not come back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `llmbus <args>` to the end (killed after a minute) and returns what it printed.
async fn llmbus(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let child = Command::new(env!("CARGO_BIN_EXE_llmbus"))
            .args(&args)
            .env_remove("NATS_URL")
            .env_remove("LLMBUS_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("LLMBUS_MASTER_KEY")
            .env_remove("NATS_INBOX_PREFIX")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn llmbus");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(out) => out.expect("llmbus ran"),
            Err(_) => {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
                panic!("`llmbus {}` still ran after a minute", args.join(" "));
            }
        }
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_commands_as_processes() {
    for flavour in flavours() {
        let server = NatsServer::start_flavour(flavour);
        let url = server.url();
        let dir = tempfile::tempdir().unwrap();
        let first = write(dir.path(), "first.yaml", FIRST);
        let second = write(dir.path(), "second.yaml", SECOND);
        let bad = write(
            dir.path(),
            "bad.yaml",
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: nosuch/a\n",
        );

        // Before any push: show says what to do.
        let out = llmbus(&["config", "show", "--nats-url", &url]).await;
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("llmbus config push FILE"),
            "{}",
            text(&out.stderr)
        );

        let out = llmbus(&["config", "push", &first, "--nats-url", &url]).await;
        assert!(out.status.success(), "{flavour:?}: {}", text(&out.stderr));
        let said = text(&out.stdout);
        assert!(said.contains("as revision"), "{said}");
        assert!(said.contains(&fingerprint(FIRST)), "{said}");

        let out = llmbus(&["config", "push", &second, "--nats-url", &url, "--json"]).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let pushed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let r2 = pushed["revision"].as_u64().expect("a revision");
        assert_eq!(pushed["fingerprint"], fingerprint(SECOND));
        assert_eq!(pushed["deployments"], 1);

        // A refused file: a clear error, exit 1, nothing stored.
        let out = llmbus(&["config", "push", &bad, "--nats-url", &url]).await;
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains("refused, nothing was pushed"), "{err}");
        assert!(err.contains("unknown provider `nosuch`"), "{err}");

        // show: the text byte for byte on stdout; what it is on stderr.
        let out = llmbus(&["config", "show", "--nats-url", &url]).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(out.stdout, SECOND.as_bytes());
        let about = text(&out.stderr);
        assert!(about.contains(&format!("revision {r2}")), "{about}");
        assert!(about.contains("second.yaml"), "{about}");

        let history = llmbus(&["config", "history", "--nats-url", &url, "--json"]).await;
        assert!(history.status.success());
        let list: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
        let list = list.as_array().expect("a list");
        assert_eq!(list.len(), 2, "the refused push left no revision: {list:?}");
        let r1 = list[1]["revision"].as_u64().unwrap();

        let out = llmbus(&["config", "rollback", &r1.to_string(), "--nats-url", &url]).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains(&format!("revision {r1}'s config")));

        let out = llmbus(&[
            "config",
            "show",
            "--revision",
            &r1.to_string(),
            "--nats-url",
            &url,
        ])
        .await;
        assert_eq!(out.stdout, FIRST.as_bytes());
        let out = llmbus(&["config", "show", "--nats-url", &url]).await;
        assert_eq!(out.stdout, FIRST.as_bytes(), "the rollback is current");

        let out = llmbus(&["config", "history", "--nats-url", &url]).await;
        let table = text(&out.stdout);
        assert_eq!(table.lines().count(), 4, "{table}");
        assert!(table.contains(&format!("(rollback to {r1})")), "{table}");
        assert!(table.contains("<- current"), "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_a_config_serves_the_cluster_config() {
    for flavour in flavours() {
        let server = NatsServer::start_flavour(flavour);
        let url = server.url();

        // Nothing pushed: one clear line, exit 1.
        let empty = LlmbusProcess::start(&["serve", "--nats-url", &url], &[]);
        let status = empty
            .wait_exit(Duration::from_secs(60))
            .await
            .expect("it exits");
        assert!(!status.success());
        let log = empty.log();
        let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("llmbus: ")).collect();
        assert_eq!(errors.len(), 1, "{log}");
        assert!(errors[0].contains("run `llmbus config push FILE`"), "{log}");
        assert!(!errors[0].contains("  "), "one tidy line: {log}");

        let s = store(&server).await;
        let revision = s.push(DEMO, "demo.yaml").await.unwrap();
        let worker = LlmbusProcess::start(&["serve", "--nats-url", &url], &[]);
        worker
            .wait_for_line("worker is serving", Duration::from_secs(60))
            .await;
        let line = worker
            .wait_for_line("serving the cluster's config", PATIENCE)
            .await;
        assert!(line.contains(&format!("revision={revision}")), "{line}");
        assert!(line.contains(&fingerprint(DEMO)), "{line}");

        let client = LlmClient::new(server.client().await, "llm");
        let reply = client
            .complete(
                Default::default(),
                chat("demo", "hi").to_string().into(),
                PATIENCE,
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{flavour:?}: {:?}", reply.json());
        assert_eq!(content(&reply), "hello from the cluster's config");

        worker.terminate();
        let status = worker.wait_exit(PATIENCE).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "{status:?}\n{}",
            worker.log()
        );
    }
}

/// A nats-server without JetStream, until dropped.
struct PlainNats(std::process::Child, u16);

impl PlainNats {
    fn start() -> Self {
        let port = free_port().unwrap();
        let mut child = Command::new(default_binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Server is ready") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("nats-server is ready");
        Self(child, port)
    }
}

impl Drop for PlainNats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_jetstream_is_named_as_such() {
    let plain = PlainNats::start();
    let url = format!("nats://127.0.0.1:{}", plain.1);
    let client = async_nats::connect(&url).await.unwrap();
    let err = ConfigStore::open(client, "llm", llmbus::cluster::Replicas::Auto)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("JetStream is not enabled"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "c.yaml", SECOND);
    for args in [
        vec!["config", "push", file.as_str(), "--nats-url", &url],
        vec!["serve", "--nats-url", &url],
    ] {
        let out = llmbus(&args).await;
        assert!(!out.status.success());
        let said = text(&out.stderr);
        assert!(
            said.contains("JetStream is not enabled"),
            "{args:?}: {said}"
        );
    }
}

/// A config text that writes a credential into `api_base`, stored as an older llmbus stored
/// it: straight into the bucket, with no check.
const OLD_WITH_SECRET: &str = "\
model_list:
  - model_name: a
    litellm_params:
      model: openai/a
      api_key: os.environ/K
      api_base: https://proxy:sk-stored-long-ago@llm.example.com/v1
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_is_checked_for_literal_secrets_like_a_push() {
    let server = NatsServer::start();
    let s = store(&server).await;
    let good = s.push(SECOND, "good.yaml").await.unwrap();
    let envelope = serde_json::json!({
        "text": OLD_WITH_SECRET,
        "source": "old.yaml",
        "pushed_at_ms": 1,
        "pushed_by": "someone@long-ago",
        "fingerprint": fingerprint(OLD_WITH_SECRET),
    });
    let kv = async_nats::jetstream::new(server.client().await)
        .get_key_value("LLM_CONFIG")
        .await
        .unwrap();
    let old = kv.put("config", envelope.to_string().into()).await.unwrap();
    s.push(SECOND, "good-again.yaml").await.unwrap();
    let before = s.current().await.unwrap().unwrap().revision;

    match s.rollback(old).await {
        Err(PushError::Refused(refused)) => {
            let message = refused.to_string();
            assert!(
                message.starts_with(&format!("old.yaml (revision {old}): refused")),
                "{message}"
            );
            assert!(
                message.contains("model_list[0].litellm_params.api_base"),
                "{message}"
            );
            assert!(!message.contains("sk-stored-long-ago"), "{message}");
        }
        other => panic!("the rollback was not refused: {other:?}"),
    }
    assert_eq!(s.current().await.unwrap().unwrap().revision, before);

    // The CLI says the same, and takes --allow-literal-secrets.
    let url = server.url();
    let rev = old.to_string();
    let out = llmbus(&["config", "rollback", &rev, "--nats-url", &url]).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("litellm_params.api_base"), "{err}");
    assert!(!err.contains("sk-stored-long-ago"), "{err}");
    let out = llmbus(&[
        "config",
        "rollback",
        &rev,
        "--allow-literal-secrets",
        "--nats-url",
        &url,
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let now = s.current().await.unwrap().unwrap();
    assert_eq!(
        (now.rollback_of, now.text.as_str()),
        (Some(old), OLD_WITH_SECRET)
    );
    assert!(good < old);
}

const ADMIN_KEY: &str = "sk-admin-master-0123456789";

/// One admin request; the reply.
async fn admin(
    client: &LlmClient,
    what: &str,
    key: Option<&str>,
    body: serde_json::Value,
) -> Reply {
    let mut h = HeaderMap::new();
    if let Some(key) = key {
        h.insert("Authorization", format!("Bearer {key}").as_str());
    }
    client
        .request(
            format!("llm.admin.config.{what}"),
            h,
            body.to_string().into(),
            PATIENCE,
        )
        .await
        .expect("a worker answers the admin subject")
}

fn error_code(r: &Reply) -> String {
    r.json()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_subjects_need_the_master_key() {
    let server = NatsServer::start();
    let yaml = format!("{DEMO}general_settings:\n  master_key: {ADMIN_KEY}\n");
    let loaded = Config::from_yaml(&yaml, "w.yaml").unwrap();
    let worker = Worker::start(&loaded.config, server.client().await)
        .await
        .unwrap();
    let client = LlmClient::new(server.client().await, "llm");
    let s = store(&server).await;
    let push =
        serde_json::json!({"text": SECOND, "source": "second.yaml", "pushed_by": "ops@desk"});

    for key in [None, Some("sk-not-the-master-key")] {
        let r = admin(&client, "push", key, push.clone()).await;
        assert_eq!(r.status, 401, "{:?}", r.json());
        assert_eq!(error_code(&r), "invalid_api_key");
        assert!(!String::from_utf8_lossy(&r.body).contains("sk-not-the"));
    }
    assert!(s.current().await.unwrap().is_none(), "nothing was written");

    // The worker checks the config as a push does: a literal secret is refused.
    let secret = serde_json::json!({"text": OLD_WITH_SECRET, "source": "bad.yaml"});
    let r = admin(&client, "push", Some(ADMIN_KEY), secret).await;
    assert_eq!(r.status, 400, "{:?}", r.json());
    assert_eq!(error_code(&r), "config_refused");
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(body.contains("api_base"), "{body}");
    assert!(!body.contains("sk-stored-long-ago"), "{body}");
    let r = admin(
        &client,
        "push",
        Some(ADMIN_KEY),
        serde_json::json!({"nope": 1}),
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.json());

    let r = admin(&client, "push", Some(ADMIN_KEY), push).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let pushed: AdminReply = serde_json::from_slice(&r.body).unwrap();
    let now = s.current().await.unwrap().unwrap();
    assert_eq!((now.revision, now.text.as_str()), (pushed.revision, SECOND));
    assert_eq!(now.pushed_by, "ops@desk");
    assert_eq!(pushed.fingerprint, fingerprint(SECOND));

    // The CLI goes through the workers with --master-key.
    let dir = tempfile::tempdir().unwrap();
    let first = write(dir.path(), "first.yaml", FIRST);
    let url = server.url();
    let out = llmbus(&[
        "config",
        "push",
        &first,
        "--master-key",
        ADMIN_KEY,
        "--nats-url",
        &url,
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("as revision"),
        "{}",
        text(&out.stdout)
    );
    let r1 = s.current().await.unwrap().unwrap().revision;
    let out = llmbus(&[
        "config",
        "push",
        &first,
        "--master-key",
        "sk-wrong-0123",
        "--nats-url",
        &url,
    ])
    .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("answered 401"), "{err}");
    assert!(!err.contains("sk-wrong-0123"), "{err}");

    // A rollback through the workers.
    let r = admin(
        &client,
        "rollback",
        Some(ADMIN_KEY),
        serde_json::json!({"revision": pushed.revision}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let rolled: AdminReply = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(rolled.rollback_of, Some(pushed.revision));
    assert!(rolled.revision > r1);
    let r = admin(
        &client,
        "rollback",
        Some(ADMIN_KEY),
        serde_json::json!({"revision": 999_999}),
    )
    .await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (404, "revision_not_found")
    );
    worker.stop().await;

    // A worker without a master key lets nobody in.
    let open = Config::from_yaml(DEMO, "open.yaml").unwrap();
    let worker = Worker::start(&open.config, server.client().await)
        .await
        .unwrap();
    let r = admin(
        &client,
        "push",
        Some(ADMIN_KEY),
        serde_json::json!({"text": SECOND, "source": "x"}),
    )
    .await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (403, "no_master_key"),
        "{:?}",
        r.json()
    );
    worker.stop().await;
}
