//! What `llmbus up` prints once it serves: where, which model groups, where the metrics are,
//! and "Try:" lines that work when pasted as printed. The `llmbus` in them is the command as
//! this process can be run again — `llmbus` when that is what `PATH` finds, `cargo run
//! --release --` when this is a build of the checkout the shell is in, else the full path —
//! and both lines name the server when it is not the default `nats://127.0.0.1:4222`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use super::worker::is_default_url;
use crate::{config::Config, local_nats::binary};

/// The banner of one `up`.
#[derive(Debug, Clone)]
pub struct Banner {
    url: String,
    groups: Vec<String>,
    prefix: String,
    started: Option<PathBuf>,
    command: String,
    /// Where the HTTP front listens, when it does.
    http: Option<SocketAddr>,
    master_key: bool,
}

impl Banner {
    /// The banner for `config` served on `url`; `started` is the nats-server binary `up`
    /// started, when it started one.
    pub fn new(config: &Config, url: &str, started: Option<&Path>) -> Self {
        let mut groups: Vec<String> = Vec::new();
        for m in &config.model_list {
            if !groups.contains(&m.model_name) {
                groups.push(m.model_name.clone());
            }
        }
        Self {
            url: url.to_string(),
            groups,
            prefix: config.llmbus.subject_prefix.clone(),
            started: started.map(Path::to_path_buf),
            command: self_command(),
            http: None,
            master_key: config.general_settings.master_key.is_some(),
        }
    }

    /// Adds the HTTP front's address (and its OpenAI SDK and curl lines).
    pub fn with_http(mut self, addr: SocketAddr) -> Self {
        self.http = Some(addr);
        self
    }

    /// Replaces the command name (for tests).
    pub fn with_command(mut self, command: &str) -> Self {
        self.command = command.to_string();
        self
    }

    /// The text, with the metrics address when metrics are on.
    pub fn render(&self, metrics: Option<SocketAddr>) -> String {
        let first = self
            .groups
            .iter()
            .find(|g| !g.contains("embedding"))
            .or(self.groups.first())
            .map_or("demo", String::as_str);
        let server = match &self.started {
            Some(b) => format!(" (a nats-server llmbus started: {})", b.display()),
            None => String::new(),
        };
        let metrics = match metrics {
            Some(addr) => format!("http://{addr}/metrics (and /healthz, /readyz)"),
            None => "off".to_string(),
        };
        let (nats_url_flag, server_flag) = if is_default_url(&self.url) {
            (String::new(), String::new())
        } else {
            (
                format!(" --nats-url {}", self.url),
                format!(" --server {}", self.url),
            )
        };
        let prefix = &self.prefix;
        let http = match self.http {
            Some(addr) => format!("\n{}\n", crate::http::banner(addr, first, self.master_key)),
            None => String::new(),
        };
        format!(
            "\nllmbus is up on {url}{server}\n  model groups: {groups}\n  metrics: {metrics}\n{http}\n\
             Try:\n  {cmd}{nats_url_flag} complete -m {first} \"Say hello\"\n  \
             nats req{server_flag} {prefix}.completion '{{\"model\":\"{first}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'\n\n\
             Ctrl-C stops it.\n",
            url = self.url,
            groups = self.groups.join(", "),
            cmd = self.command,
        )
    }
}

/// How to run this program again from the current shell: `llmbus` when `PATH` finds this very
/// executable, `cargo run [--release] --` when it is a build in the checkout around the
/// current directory, else its full path.
pub fn self_command() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "llmbus".into();
    };
    let exe = exe.canonicalize().unwrap_or(exe);
    let cwd = std::env::current_dir().ok();
    command_for(&exe, binary::on_path("llmbus").as_deref(), cwd.as_deref())
}

/// [`self_command`] for a given executable, `llmbus` found on `PATH`, and working directory.
pub fn command_for(exe: &Path, on_path: Option<&Path>, cwd: Option<&Path>) -> String {
    let same = on_path
        .map(|p| p.canonicalize().unwrap_or_else(|_| p.to_path_buf()))
        .is_some_and(|p| p == exe);
    if same {
        return "llmbus".into();
    }
    if let Some(target) = binary::cargo_target_of(exe)
        && let Some(checkout) = target.parent()
        && checkout.join("Cargo.toml").is_file()
        && cwd.is_some_and(|d| d.starts_with(checkout))
    {
        // target/<profile>/llmbus
        let profile = exe
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        return match profile {
            "debug" => "cargo run --".into(),
            "release" => "cargo run --release --".into(),
            other => format!("cargo run --profile {other} --"),
        };
    }
    let shown = exe.display().to_string();
    if shown.contains(' ') {
        format!("'{shown}'")
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("Cargo.toml"), "[package]\n").unwrap();
        std::fs::create_dir_all(root.join("target/release")).unwrap();
        std::fs::create_dir_all(root.join("target/debug")).unwrap();
        std::fs::write(root.join("target/CACHEDIR.TAG"), "x").unwrap();
        (dir, root)
    }

    #[test]
    fn the_command_is_the_one_that_runs_this_binary_again() {
        let (_d, root) = checkout();
        let release = root.join("target/release/llmbus");
        let debug = root.join("target/debug/llmbus");
        std::fs::write(&release, "").unwrap();
        assert_eq!(
            command_for(&release, None, Some(&root)),
            "cargo run --release --"
        );
        assert_eq!(
            command_for(&debug, None, Some(&root.join("src"))),
            "cargo run --"
        );
        // Installed: PATH finds this very file.
        assert_eq!(command_for(&release, Some(&release), Some(&root)), "llmbus");
        // Another llmbus on PATH, and the shell outside the checkout: the full path.
        let elsewhere = Path::new("/");
        assert_eq!(
            command_for(
                &release,
                Some(Path::new("/usr/bin/llmbus")),
                Some(elsewhere)
            ),
            release.display().to_string()
        );
    }

    #[test]
    fn a_private_server_is_named_in_both_try_lines() {
        let config = Config::quickstart_with_env(&|_| None).config;
        let b = Banner::new(
            &config,
            "nats://127.0.0.1:5555",
            Some(Path::new("/x/nats-server")),
        )
        .with_command("llmbus");
        let text = b.render(Some("127.0.0.1:9465".parse().unwrap()));
        assert!(
            text.contains("llmbus --nats-url nats://127.0.0.1:5555 complete -m demo \"Say hello\""),
            "{text}"
        );
        assert!(
            text.contains("nats req --server nats://127.0.0.1:5555 llm.completion '"),
            "{text}"
        );
        assert!(
            text.contains("metrics: http://127.0.0.1:9465/metrics"),
            "{text}"
        );
        assert!(
            text.contains("model groups: demo, demo-embedding"),
            "{text}"
        );
        let default = Banner::new(&config, "nats://127.0.0.1:4222", None).with_command("llmbus");
        let text = default.render(None);
        assert!(text.contains("  llmbus complete -m demo"), "{text}");
        assert!(text.contains("  nats req llm.completion '"), "{text}");
        assert!(text.contains("metrics: off"), "{text}");
    }
}
