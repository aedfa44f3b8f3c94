//! The `llmbus` binary as a child process for the CLI tests: [`llmbus`] makes a command with
//! an environment that cannot leak into the test, [`Running`] reads its stdout and stderr
//! lines as they come (waiting for lines is waiting for events, never a sleep), [`run`] runs
//! one to the end. Every child is killed when its guard drops, with the processes registered
//! in `also_kill` (the nats-server a SIGKILLed `up` could not stop).

use std::{
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use super::nats_server::default_binary;

/// How long `up` may take to serve (it starts a nats-server and a worker on a busy machine).
pub const STARTUP: Duration = Duration::from_secs(60);
/// How long a short command (`complete`, `models`, ...) may take.
pub const COMMAND: Duration = Duration::from_secs(60);
/// How long `up` may take to stop after SIGTERM.
pub const SHUTDOWN: Duration = Duration::from_secs(30);

/// `llmbus` with an environment that cannot leak into the test: no `NATS_URL`, no config, no
/// OpenAI key (so the quickstart has only `demo` and `demo-embedding`), no `RUST_LOG` (each
/// command's own default loudness), no master key or inbox prefix, and the tests' nats-server
/// for `up` to start.
pub fn llmbus() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmbus"));
    cmd.env_remove("NATS_URL")
        .env_remove("LLMBUS_CONFIG")
        .env_remove("OPENAI_API_KEY")
        .env_remove("RUST_LOG")
        .env_remove("LLMBUS_MASTER_KEY")
        .env_remove("NATS_INBOX_PREFIX")
        .env("LLMBUS_NATS_SERVER", default_binary())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// One line a child wrote.
#[derive(Debug, Clone)]
pub enum Line {
    Out(String),
    Err(String),
}

impl Line {
    pub fn text(&self) -> &str {
        match self {
            Line::Out(s) | Line::Err(s) => s,
        }
    }
}

/// A running child whose stdout and stderr lines arrive on a channel; killed when dropped,
/// with the processes it started that are registered in `also_kill`.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<Line>,
    /// Every line read so far.
    pub seen: Vec<Line>,
    /// Processes to kill with it.
    pub also_kill: Vec<u32>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Self {
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads lines until every one of `needles` has appeared in some line. Panics, showing the
    /// output, when the child exits first or `limit` passes.
    pub fn wait_for_lines(&mut self, needles: &[&str], limit: Duration) {
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
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
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
    pub fn transcript(&mut self) -> String {
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

pub fn forward(pipe: impl Read + Send + 'static, tx: mpsc::Sender<Line>, wrap: fn(String) -> Line) {
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
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl Finished {
    pub fn describe(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `llmbus <args>` to the end (killed after `COMMAND`).
pub fn run(args: &[&str]) -> Finished {
    let mut cmd = llmbus();
    cmd.args(args);
    run_command(cmd, args)
}

/// Runs `cmd` to the end (killed after `COMMAND`).
pub fn run_command(cmd: Command, args: &[&str]) -> Finished {
    let mut running = Running::spawn(cmd);
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
pub fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .is_ok()
}

/// The pid of the `nats-server` started with `-p <port>`, from `/proc`.
#[cfg(target_os = "linux")]
pub fn nats_server_pid(port: u16) -> Option<u32> {
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
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: "123 (nats-server) S ...".
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
