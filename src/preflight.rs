//! Preflight: everything a config would start a worker with that is not right, found without
//! starting one — for `llmbus check FILE`, `llmbus serve --strict` and the start-up log.
//!
//! A worker starts despite a misconfigured deployment, a deployment without credentials, a key
//! that looks like a typo or an environment variable of the `llmbus:` section that is not set:
//! it logs a warning and serves what works. For CI pipelines and careful operators,
//! [`examine`] lists each of these as a *problem*; `check` exits non-zero on any, and
//! `serve --strict` refuses to start. Keys llmbus merely does not support (LiteLLM features it
//! lacks) are *notes*, never problems. A config that does not load at all (bad YAML, a wrong
//! type, a security setting llmbus does not enforce) is one problem: the loader's error.
//!
//! [`examine_detached`] is the same examination for `llmbus config push`, made where the
//! workers' environment is not: every `os.environ/` variable counts as set.

use std::{fmt::Write as _, path::Path};

use crate::{
    config::{Config, Detached, Loaded, ModelEntry},
    providers,
};

/// Why a config is refused: it has problems ([`Report::problems`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreflightError {
    /// `llmbus check FILE` found problems (the report is printed above the error).
    #[error("{file}: {count} problem{}", plural(*count))]
    Problems {
        /// The file.
        file: String,
        /// How many problems.
        count: usize,
    },
    /// `--strict`: the worker does not start; every problem is listed.
    #[error(
        "--strict: refusing to start over {} problem{}:\n  - {}",
        problems.len(),
        plural(problems.len()),
        problems.join("\n  - ")
    )]
    Strict {
        /// The problems.
        problems: Vec<String>,
    },
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// What [`examine`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Each thing that would make the gateway serve less than the config says; `check` and
    /// `--strict` fail on any.
    pub problems: Vec<String>,
    /// Keys llmbus does not support: informative only.
    pub notes: Vec<String>,
    /// Deployments the config has.
    pub deployments: usize,
    /// Deployments that would serve (not misconfigured).
    pub ready: usize,
}

impl Report {
    /// True when there is no problem.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The report as `llmbus check` prints it.
    pub fn render(&self, origin: &str) -> String {
        let mut out = String::new();
        if self.ok() {
            let _ = writeln!(
                out,
                "{origin}: OK: {} deployments, all ready",
                self.deployments
            );
        } else {
            let _ = writeln!(
                out,
                "{origin}: {} problem{} ({} of {} deployments ready):",
                self.problems.len(),
                if self.problems.len() == 1 { "" } else { "s" },
                self.ready,
                self.deployments
            );
            for p in &self.problems {
                let _ = writeln!(out, "  - {p}");
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }
}

/// Every problem of a loaded config. Builds each deployment's provider (no network call) to
/// see what the worker would see.
pub fn examine(loaded: &Loaded) -> Report {
    examine_with_env(loaded, &|name| std::env::var(name).ok())
}

/// [`examine`] with `env` in place of the process environment.
pub fn examine_with_env(loaded: &Loaded, env: &dyn Fn(&str) -> Option<String>) -> Report {
    examine_where(loaded, env, &|_| None)
}

/// [`examine`] for a config checked away from its workers (`llmbus config push`; see
/// [`crate::config::Detached`]): every `os.environ/` variable counts as set, and a deployment
/// that does not build here for a reason only a worker can judge (a Vertex AI key read on the
/// workers, a `model` from a variable) is a note, not a problem.
pub fn examine_detached(detached: &Detached) -> Report {
    examine_where(&detached.loaded, &|name| detached.env(name), &|entry| {
        detached.checked_on_workers(entry)
    })
}

/// The examination; `elsewhere(entry)` says why a deployment that does not build here is
/// checked on the workers instead, when it is.
fn examine_where(
    loaded: &Loaded,
    env: &dyn Fn(&str) -> Option<String>,
    elsewhere: &dyn Fn(&ModelEntry) -> Option<&'static str>,
) -> Report {
    let mut report = Report {
        problems: loaded.typos.clone(),
        ..Report::default()
    };
    report.problems.extend(loaded.warnings.iter().cloned());
    if !loaded.unsupported.is_empty() {
        report.notes.push(unsupported_line(&loaded.unsupported));
    }
    let http = reqwest::Client::new();
    let config = &loaded.config;
    for (i, entry) in config.model_list.iter().enumerate() {
        let mut params = entry.litellm_params.clone();
        params.drop_params = params
            .drop_params
            .or(Some(config.litellm_settings.drop_params));
        let prepared = providers::prepare_with_env(entry, &params, &http, env);
        report.deployments += 1;
        let at = entry
            .location
            .as_deref()
            .map_or(String::new(), |l| format!("{l}: "));
        let name = format!(
            "deployment model_list[{i}] (model_name `{}`, model `{}`)",
            entry.model_name, entry.litellm_params.model
        );
        if let Some(reason) = &prepared.misconfigured {
            if let Some(why) = elsewhere(entry) {
                // Not `reason`: it names the placeholders; each worker reports the real one.
                report
                    .notes
                    .push(format!("{at}{name} is not checked here: {why}"));
                continue;
            }
            report
                .problems
                .push(format!("{at}{name} is misconfigured: {reason}"));
            continue;
        }
        report.ready += 1;
        if let Some(reason) = &prepared.missing_credentials {
            report.problems.push(format!("{at}{name} has {reason}"));
        }
    }
    report
}

/// Loads and examines the file at `path`; a config that does not load is one problem.
pub fn examine_file(path: &Path) -> Report {
    match Config::load(path) {
        Ok(loaded) => examine(&loaded),
        Err(e) => Report {
            problems: vec![e.to_string()],
            ..Report::default()
        },
    }
}

/// `llmbus check FILE`: prints the report; `Err` (a non-zero exit) when there is a problem.
pub fn check_command(path: &Path) -> Result<(), PreflightError> {
    let report = examine_file(path);
    print!("{}", report.render(&path.display().to_string()));
    if report.ok() {
        Ok(())
    } else {
        Err(PreflightError::Problems {
            file: path.display().to_string(),
            count: report.problems.len(),
        })
    }
}

/// The config a worker starts with: logs the loader's warnings (the deployments' own warnings
/// come from the worker as it builds them); with `strict`, any problem [`examine`] finds is an
/// error listing them all instead.
pub fn startup(loaded: Loaded, strict: bool) -> Result<Config, PreflightError> {
    if strict {
        let report = examine(&loaded);
        if !report.ok() {
            return Err(PreflightError::Strict {
                problems: report.problems,
            });
        }
    }
    if !loaded.unsupported.is_empty() {
        tracing::warn!("{}", unsupported_line(&loaded.unsupported));
    }
    for line in loaded.typos.iter().chain(&loaded.warnings) {
        tracing::warn!("{line}");
    }
    Ok(loaded.config)
}

fn unsupported_line(keys: &[String]) -> String {
    format!(
        "config keys llmbus does not support are ignored: {}",
        keys.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn loaded(yaml: &str) -> Loaded {
        Config::from_yaml_with_env(yaml, "t.yaml", &no_env).unwrap()
    }

    #[test]
    fn a_clean_config_has_no_problem() {
        let l = loaded(
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/a\n      api_key: sk-1\n",
        );
        let r = examine_with_env(&l, &no_env);
        assert!(r.ok(), "{r:?}");
        assert_eq!((r.deployments, r.ready), (1, 1));
        assert!(r.render("t.yaml").contains("OK"));
    }

    #[test]
    fn every_problem_is_listed_with_its_line() {
        let yaml = "\
model_list:
  - model_name: a
    litellm_params:
      model: nosuch/a
  - model_name: b
    litellm_params:
      model: anthropic/b
      api_key: os.environ/B_KEY
  - model_name: c
    litellm_params:
      model: openai/c
router_settings:
  num_retires: 3
  redis_host: localhost
";
        let r = examine_with_env(&loaded(yaml), &no_env);
        assert_eq!(r.problems.len(), 4, "{:#?}", r.problems);
        let all = r.problems.join("\n");
        assert!(
            all.contains("t.yaml, line 13: router_settings.num_retires"),
            "{all}"
        );
        assert!(all.contains("did you mean `num_retries`?"), "{all}");
        assert!(
            all.contains("t.yaml, line 4: deployment model_list[0]"),
            "{all}"
        );
        assert!(all.contains("unknown provider `nosuch`"), "{all}");
        assert!(all.contains("anthropic, gemini"), "{all}");
        assert!(
            all.contains("environment variable `B_KEY` is not set"),
            "{all}"
        );
        assert!(
            all.contains("t.yaml, line 11: deployment model_list[2]"),
            "{all}"
        );
        assert!(all.contains("OPENAI_API_KEY"), "{all}");
        assert_eq!(r.notes.len(), 1);
        assert!(r.notes[0].contains("router_settings.redis_host"));
        assert_eq!((r.deployments, r.ready), (3, 1));
        assert!(startup(loaded(yaml), true).is_err());
        assert!(startup(loaded(yaml), false).is_ok());
    }
}
