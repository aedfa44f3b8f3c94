//! The config target: YAML text → config, with `os.environ/NAME` references, then what a
//! worker builds from a config at start and on every reload (its policies, job settings,
//! deployments and their providers), and the check `llmbus config push` makes.
//! (`preflight` is left out: it builds an HTTP client per call, which is slow in a fuzz
//! loop; it builds the same providers as here.)

use std::sync::OnceLock;

use super::{SECRET, no_secret};
use crate::{
    config::{Config, deployment_ids},
    policy::Policies,
    providers,
    runtime::JobSettings,
    worker::Plan,
};

/// One HTTP client for every run (building one reads the system's root certificates).
fn http() -> &'static reqwest::Client {
    static HTTP: OnceLock<reqwest::Client> = OnceLock::new();
    HTTP.get_or_init(reqwest::Client::new)
}

/// The environment the config is loaded with: a variable whose name ends in `_UNSET` is not
/// set, one ending in `_BLANK` holds blanks, a key-like name (`KEY`, `TOKEN`, `SECRET`,
/// `PASSWORD`) holds [`SECRET`], and any other holds an https URL.
fn env(name: &str) -> Option<String> {
    let upper = name.to_ascii_uppercase();
    if upper.ends_with("_UNSET") {
        None
    } else if upper.ends_with("_BLANK") {
        Some("  ".into())
    } else if ["KEY", "TOKEN", "SECRET", "PASSWORD"]
        .iter()
        .any(|k| upper.contains(k))
    {
        Some(SECRET.into())
    } else {
        Some("https://fuzz.invalid/v1".into())
    }
}

/// A config file's text. Input: the text (not UTF-8: nothing to do, a file that is not text
/// does not load). A config either fails with an error, or loads, and then loads again the
/// same (same fingerprint), and a worker can build everything from it without a panic. No
/// key from the environment comes back in an error, a warning or a preflight problem.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The loader reads the files a config names (a Vertex AI key file, a price table): not
    // devices, which never end.
    if ["/dev", "/proc", "/sys"].iter().any(|d| text.contains(d)) {
        return;
    }
    let echoes = text.contains(SECRET);
    let check = |message: &str, what: &str| {
        if !echoes {
            no_secret(message, what);
        }
    };
    let loaded = match Config::from_yaml_with_env(text, "fuzz.yaml", &env) {
        Ok(loaded) => loaded,
        Err(e) => return check(&e.to_string(), "a config error"),
    };
    let again = Config::from_yaml_with_env(text, "fuzz.yaml", &env).expect("it loaded once");
    assert_eq!(loaded.config.fingerprint(), again.config.fingerprint());
    for line in loaded.warnings.iter().chain(&loaded.typos) {
        check(line, "a config warning");
    }
    for entry in &loaded.config.model_list {
        let prepared = providers::prepare_with_env(entry, &entry.litellm_params, http(), &env);
        for reason in prepared
            .misconfigured
            .iter()
            .chain(&prepared.missing_credentials)
        {
            check(reason, "a deployment's problem");
        }
    }

    let mut config = loaded.config;
    assert_eq!(deployment_ids(&config).len(), config.model_list.len());
    config.default_timeout();
    Policies::from_config(&config);
    JobSettings::from_config(&config);
    config.llmbus.price_table = None;
    if let Err(e) = Plan::of(&config, http()) {
        check(&e.to_string(), "a worker's start error");
    }
    if let Ok(detached) = Config::from_yaml_detached(text, "fuzz.yaml") {
        let mut config = detached.loaded.config;
        config.llmbus.price_table = None;
        Plan::of(&config, http()).ok();
    }
}
