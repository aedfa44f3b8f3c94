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

mod support;

use std::{
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use llmbus::{config::Config, local_nats::free_port};
use serde_json::Value;
use support::nats_server::NatsServer;

/// How long `up` may take to serve (it starts a nats-server and a worker on a busy machine).
const STARTUP: Duration = Duration::from_secs(60);
/// How long a short command (`complete`, `models`, ...) may take.
const COMMAND: Duration = Duration::from_secs(60);
/// How long `up` may take to stop after SIGTERM.
const SHUTDOWN: Duration = Duration::from_secs(30);

/// `llmbus` with an environment that cannot leak into the test: no `NATS_URL`, no config, no
/// OpenAI key (so the quickstart has only `demo`), plain `info` logs.
fn llmbus() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmbus"));
    cmd.env_remove("NATS_URL")
        .env_remove("LLMBUS_CONFIG")
        .env_remove("OPENAI_API_KEY")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// One line a child wrote.
#[derive(Debug, Clone)]
enum Line {
    Out(String),
    Err(String),
}

impl Line {
    fn text(&self) -> &str {
        match self {
            Line::Out(s) | Line::Err(s) => s,
        }
    }
}

/// A running child whose stdout and stderr lines arrive on a channel; killed when dropped,
/// with the processes it started that are registered in `also_kill`.
struct Running {
    child: Child,
    lines: mpsc::Receiver<Line>,
    seen: Vec<Line>,
    also_kill: Vec<u32>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().expect("start llmbus");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        forward(out, tx.clone(), Line::Out);
        forward(err, tx, Line::Err);
        Self {
            child,
            lines,
            seen: Vec::new(),
            also_kill: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads lines until every one of `needles` has appeared in some line. Panics, showing the
    /// output, when the child exits first or `limit` passes.
    fn wait_for_lines(&mut self, needles: &[&str], limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let missing: Vec<&str> = needles
                .iter()
                .copied()
                .filter(|n| !self.seen.iter().any(|l| l.text().contains(n)))
                .collect();
            if missing.is_empty() {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line with {missing:?} within {limit:?}\n{}",
                        self.transcript()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    panic!(
                        "llmbus exited ({status:?}) before printing {missing:?}\n{}",
                        self.transcript()
                    )
                }
            }
        }
    }

    /// Waits for the child to exit; `None` when it is still running after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The pipes are closed now: collect the last lines.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(line);
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Lines keep arriving while we wait; they double as the wake-up.
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line);
            }
        }
    }

    /// Everything read so far, for failure messages.
    fn transcript(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        let mut s = String::from("--- llmbus output ---\n");
        for line in &self.seen {
            match line {
                Line::Out(t) => s.push_str(&format!("out| {t}\n")),
                Line::Err(t) => s.push_str(&format!("err| {t}\n")),
            }
        }
        s
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A SIGKILLed `up` cannot stop its nats-server: do it here (a test that failed midway).
        for pid in &self.also_kill {
            #[cfg(target_os = "linux")]
            if !alive(*pid) {
                continue;
            }
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn forward(pipe: impl Read + Send + 'static, tx: mpsc::Sender<Line>, wrap: fn(String) -> Line) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(wrap(line)).is_err() {
                break;
            }
        }
    });
}

/// What a finished command printed.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn describe(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `llmbus <args>` to the end (killed after `COMMAND`).
fn run(args: &[&str]) -> Finished {
    let mut running = Running::spawn({
        let mut cmd = llmbus();
        cmd.args(args);
        cmd
    });
    let Some(status) = running.wait_exit(COMMAND) else {
        panic!(
            "`llmbus {}` still runs after {COMMAND:?}\n{}",
            args.join(" "),
            running.transcript()
        );
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    for line in &running.seen {
        match line {
            Line::Out(t) => {
                stdout.push_str(t);
                stdout.push('\n');
            }
            Line::Err(t) => {
                stderr.push_str(t);
                stderr.push('\n');
            }
        }
    }
    Finished {
        status,
        stdout,
        stderr,
    }
}

/// True when something accepts TCP connections on the loopback port.
fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .is_ok()
}

/// The pid of the `nats-server` started with `-p <port>`, from `/proc`.
#[cfg(target_os = "linux")]
fn nats_server_pid(port: u16) -> Option<u32> {
    let port = port.to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_nats = args.first().is_some_and(|a| a.ends_with(b"nats-server"));
            let on_port = args
                .windows(2)
                .any(|w| w[0] == b"-p" && w[1] == port.as_bytes());
            (is_nats && on_port).then_some(pid)
        })
}

/// True while process `pid` exists and is not a zombie.
#[cfg(target_os = "linux")]
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: "123 (nats-server) S ...".
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The quickstart's mock answers (`demo-a`, `demo-b`).
fn quickstart_answers() -> Vec<String> {
    let answers: Vec<String> = Config::quickstart_with_env(&|_| None)
        .config
        .model_list
        .iter()
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
            "llmbus complete -m demo",
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

    // models: only `demo` without OPENAI_API_KEY.
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
    assert_eq!(ids, ["demo"], "{list}");

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
    assert_eq!(ids, ["demo-a", "demo-b"], "{deps}");

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
