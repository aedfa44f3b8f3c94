//! nats-server running the shipped `deploy/nats/nats-server.conf` itself, on free loopback
//! ports and a temporary JetStream store (the file's `store_dir` is the one line changed;
//! command-line flags override its ports), with a password for each of its users. Killed when
//! dropped. What a test proves on it is what the shipped file allows.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use async_nats::ConnectOptions;
use llmbus::local_nats::free_port;

/// Each user of the file: name, the variable its password comes from, the password the tests
/// give it, and the inbox prefix it may read (`None`: the default `_INBOX`, the workers').
pub const USERS: [(&str, &str, &str, Option<&str>); 5] = [
    ("llmbus", "LLMBUS_NATS_PASSWORD", "worker-secret", None),
    (
        "app1",
        "APP1_NATS_PASSWORD",
        "app1-secret",
        Some("_INBOX_app1"),
    ),
    (
        "app2",
        "APP2_NATS_PASSWORD",
        "app2-secret",
        Some("_INBOX_app2"),
    ),
    ("ops", "OPS_NATS_PASSWORD", "ops-secret", Some("_INBOX_ops")),
    ("admin", "ADMIN_NATS_PASSWORD", "admin-secret", None),
];

/// The environment that gives the file its passwords.
pub fn passwords() -> Vec<(&'static str, &'static str)> {
    USERS.iter().map(|(_, var, pw, _)| (*var, *pw)).collect()
}

fn user(name: &str) -> (&'static str, &'static str, Option<&'static str>) {
    USERS
        .iter()
        .find(|(u, ..)| *u == name)
        .map(|(u, _, pw, inbox)| (*u, *pw, *inbox))
        .unwrap_or_else(|| panic!("the shipped config has no user {name}"))
}

/// The shipped file.
pub fn conf_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nats/nats-server.conf")
}

/// A running nats-server on the shipped config.
pub struct ShippedNats {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl ShippedNats {
    /// Starts it; waits for "Server is ready".
    pub fn start() -> Self {
        let mut last = String::new();
        // Another process may take a free port before the server binds it: try a few.
        for _ in 0..3 {
            let store = tempfile::tempdir().expect("temp dir");
            // The file's store_dir cannot be overridden with -sd (nats-server calls that a
            // duplicate): use a copy that points at the temporary store.
            let conf = std::fs::read_to_string(conf_path()).expect("deploy/nats/nats-server.conf");
            let line = "store_dir: \"/var/lib/nats\"";
            assert!(conf.contains(line), "nats-server.conf lacks {line:?}");
            let conf = conf.replace(line, &format!("store_dir: {:?}", store.path().join("js")));
            let conf_path = store.path().join("nats-server.conf");
            std::fs::write(&conf_path, conf).expect("write the config copy");
            let port = free_port().expect("free port");
            let monitor = free_port().expect("free port");
            let mut child = Command::new(super::nats_server::default_binary())
                .arg("-c")
                .arg(&conf_path)
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .args(["-m", &monitor.to_string()])
                .envs(passwords())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start nats-server");
            let stderr = child.stderr.take().expect("piped stderr");
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut log = Vec::new();
                let mut told = false;
                // Read to the end so the server never blocks on a full pipe.
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if !told && line.contains("Server is ready") {
                        told = true;
                        let _ = tx.send(Ok(()));
                    }
                    log.push(line);
                }
                if !told {
                    let _ = tx.send(Err(log.join("\n")));
                }
            });
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(Ok(())) => {
                    return Self {
                        child,
                        port,
                        _store: store,
                    };
                }
                Ok(Err(log)) => last = log,
                Err(_) => last = "no \"Server is ready\" within 60s".into(),
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nats-server with deploy/nats/nats-server.conf did not start:\n{last}");
    }

    /// `nats://127.0.0.1:<port>`, no credentials.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `nats://<user>:<password>@127.0.0.1:<port>`.
    pub fn url_as(&self, name: &str) -> String {
        let (u, pw, _) = user(name);
        format!("nats://{u}:{pw}@127.0.0.1:{}", self.port)
    }

    /// The inbox prefix `name` reads (`None`: the default).
    pub fn inbox_of(name: &str) -> Option<&'static str> {
        user(name).2
    }

    /// Connects as `name`, with its inbox prefix; every connection event's text goes to the
    /// returned list.
    pub async fn connect(&self, name: &str) -> (async_nats::Client, Events) {
        let (u, pw, inbox) = user(name);
        self.connect_with(u, pw, inbox).await
    }

    /// Connects as `user` with `password` and inbox prefix `inbox` (`None`: the default).
    pub async fn connect_with(
        &self,
        user: &str,
        password: &str,
        inbox: Option<&str>,
    ) -> (async_nats::Client, Events) {
        let events = Events::default();
        let sink = events.clone();
        let mut opts = ConnectOptions::with_user_and_password(user.into(), password.into())
            .event_callback(move |event| {
                let sink = sink.clone();
                async move { sink.push(event.to_string()) }
            });
        if let Some(inbox) = inbox {
            opts = opts.custom_inbox_prefix(inbox);
        }
        let client = opts
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
        (client, events)
    }
}

impl Drop for ShippedNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection's events, with a way to wait for one.
#[derive(Clone, Default)]
pub struct Events {
    seen: Arc<Mutex<Vec<String>>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Events {
    fn push(&self, event: String) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
        self.notify.notify_waiters();
    }

    /// Every event so far.
    pub fn all(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The permissions violations so far.
    pub fn violations(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|e| e.to_lowercase().contains("permission"))
            .collect()
    }

    /// Waits until an event mentions a permissions violation on `subject`; panics after
    /// `limit`.
    pub async fn wait_violation_on(&self, subject: &str, limit: Duration) -> String {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                if let Some(v) = self.violations().into_iter().find(|v| v.contains(subject)) {
                    return v;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or_else(|_| {
            panic!(
                "no permissions violation on {subject} within {limit:?}; events: {:?}",
                self.all()
            )
        })
    }

    /// Waits until an event mentions a permissions violation; panics after `limit`.
    pub async fn wait_violation(&self, limit: Duration) -> String {
        self.wait_violation_on("", limit).await
    }
}
