//! A Python for the tests: a venv under `target/test-env` with `openai` and `nats-py`, made on
//! first use (`python3 -m venv`, then `pip install`). Processes share it through a file lock.

use std::{path::PathBuf, process::Command, sync::OnceLock};

/// The venv's `python`, ready (panics with what to do when it cannot be made).
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(make).clone()
}

fn make() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is under target/")
        .to_path_buf();
    let venv = target.join("test-env");
    let python = venv.join("bin").join("python");
    std::fs::create_dir_all(&target).expect("create target/");
    let lock = std::fs::File::create(target.join("test-env.lock")).expect("the venv lock file");
    lock.lock().expect("lock the venv");
    let ready = || {
        Command::new(&python)
            .args(["-c", "import openai, nats"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ready() {
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("run python3 (is it installed?)");
            assert!(
                out.status.success(),
                "{cmd:?} failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        if !python.exists() {
            run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
        }
        run(Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "openai",
            "nats-py",
        ]));
        assert!(
            ready(),
            "the venv at {} lacks openai or nats-py",
            venv.display()
        );
    }
    python
}
