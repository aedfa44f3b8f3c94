//! Running a child program (an interpreter on an example, a script) to its end with a time
//! limit: its stdout and stderr are collected on threads, so a chatty child never blocks on a
//! full pipe, and a child still running at the limit is killed, so the test reports instead of
//! hanging.

use std::{
    io::Read,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// How a limited run ended.
#[derive(Debug)]
pub struct Outcome {
    /// It exited 0 within the limit.
    pub success: bool,
    /// It was killed at the limit.
    pub timed_out: bool,
    /// How it ended (exit code or signal), as text.
    pub status: String,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

impl Outcome {
    /// Everything, for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "success: {}, killed at the limit: {}, ended: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.success, self.timed_out, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` (stdin closed) and waits for it, killing it after `limit`.
pub fn run_limited(mut cmd: Command, limit: Duration) -> Outcome {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
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
    let stderr = err.join().unwrap_or_default();
    Outcome {
        success: finished && status.as_ref().is_ok_and(|s| s.success()),
        timed_out: !finished,
        status: match &status {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        },
        stdout,
        stderr,
    }
}
