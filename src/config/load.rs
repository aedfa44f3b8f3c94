//! Loading a config: read, parse, resolve `os.environ/` references, check, report.
//!
//! Parsing runs serde_yaml_ng's deserializer wrapped twice: in `serde_ignored`, which reports
//! every key the structs do not take (collected as unsupported or, close to a known key, as a
//! typo; neither is fatal), and in `serde_path_to_error`, which gives the dotted key path of a
//! type error or a missing key. serde_yaml_ng gives the line and column. Then the security
//! audit (`security`), the `os.environ/` references (`env`), the checks (`check`) and the
//! per-deployment problems (`entries`).

use std::path::Path;

use super::{
    Config, Unenforced, check, entries,
    env::Resolver,
    locate::{KeyPath, locate},
    security, suggest,
};

/// A config that failed to load. The message names the file, the key and the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{origin}: cannot read the config file: {source}")]
    Read {
        /// The file.
        origin: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Bad YAML, a wrong type, a missing required key or a value llmbus rejects.
    #[error("{}", describe(.origin, .key, *.line, *.column, .message))]
    At {
        /// The file (or another name for the text, such as `quickstart`).
        origin: String,
        /// The key's dotted path, such as `model_list[1].litellm_params.rpm`; empty for the
        /// document itself.
        key: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A problem found outside the loader, for example by a provider building a deployment.
    #[error("{0}")]
    Invalid(String),
    /// An `os.environ/NAME` reference to a variable that is not set (never fatal alone: the
    /// loader marks the deployment misconfigured or warns, quoting this message).
    #[error(
        "environment variable `{name}` is not set ({key}{})",
        line.map_or(String::new(), |l| format!(", line {l}"))
    )]
    Unset {
        /// The variable.
        name: String,
        /// The key's dotted path.
        key: String,
        /// 1-based line of the key, when known.
        line: Option<usize>,
    },
    /// `--model` names no model.
    #[error(
        "--model needs a model name such as gpt-4o or anthropic/claude-sonnet-4-5, not {model:?}"
    )]
    ModelName {
        /// What was given.
        model: String,
    },
    /// The config turns on security settings llmbus does not enforce; every one is named.
    #[error("{}", describe_unenforced(.origin, .settings))]
    Unenforced {
        /// The file.
        origin: String,
        /// The settings, in file order.
        settings: Vec<Unenforced>,
    },
}

impl ConfigError {
    /// An error at `path`.
    pub(crate) fn at(
        origin: &str,
        path: &KeyPath,
        position: Option<(usize, usize)>,
        message: String,
    ) -> Self {
        ConfigError::At {
            origin: origin.to_owned(),
            key: path.to_string(),
            line: position.map(|(line, _)| line),
            column: position.map(|(_, column)| column),
            message,
        }
    }

    /// Turns a parse error into one that names the key and line.
    fn from_serde(err: serde_path_to_error::Error<serde_yaml_ng::Error>, origin: &str) -> Self {
        let mut path = KeyPath::from_serde(err.path());
        let inner = err.into_inner();
        let position = inner.location().map(|l| (l.line(), l.column()));
        // serde_yaml_ng writes "path: message at line L column C"; keep only the message.
        let mut message = inner.to_string();
        if let Some((line, column)) = position {
            message = message.replacen(&format!(" at line {line} column {column}"), "", 1);
        }
        if let Some(rest) = message.strip_prefix(&format!("{path}: ")) {
            message = rest.to_owned();
        }
        // serde names the parent of a missing or repeated key; name the key itself.
        for (prefix, replacement) in [
            ("missing field `", "required key is missing"),
            ("duplicate field `", "key appears more than once"),
        ] {
            if let Some(field) = message
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix('`'))
            {
                path = path.key(field);
                message = replacement.to_owned();
                break;
            }
        }
        Self::at(origin, &path, position, message)
    }
}

/// `file, line 3, column 5: key: message`.
fn describe(
    origin: &str,
    key: &str,
    line: Option<usize>,
    column: Option<usize>,
    message: &str,
) -> String {
    let place = match (line, column) {
        (Some(line), Some(column)) => format!("line {line}, column {column}"),
        (Some(line), None) => format!("line {line}"),
        _ => "line unknown".to_owned(),
    };
    if key.is_empty() {
        format!("{origin}, {place}: {message}")
    } else {
        format!("{origin}, {place}: {key}: {message}")
    }
}

/// The refusal of a config that relies on security settings llmbus does not enforce.
fn describe_unenforced(origin: &str, settings: &[Unenforced]) -> String {
    let mut out = format!(
        "{origin}: llmbus refuses to start: the config turns on security settings that llmbus \
         does not enforce, so it would run less safely than the file says:"
    );
    for s in settings {
        let place = s
            .line
            .map_or("line unknown".to_owned(), |l| format!("line {l}"));
        out.push_str(&format!("\n  {place}: {}: {}", s.key, s.why));
    }
    out
}

/// A loaded config and the keys it had that llmbus does not support.
#[derive(Debug)]
pub struct Loaded {
    /// The config. Deployments that cannot work are kept, marked
    /// [`super::ModelEntry::misconfigured`].
    pub config: Config,
    /// Dotted paths of unsupported keys, in file order, each once (typos excepted).
    pub unsupported: Vec<String>,
    /// Keys that look like a typo of a key llmbus knows: `file, line N: key: ... did you mean
    /// `known`?`.
    pub typos: Vec<String>,
    /// Other start-up warnings (missing environment variables in the `llmbus:` section, ...).
    pub warnings: Vec<String>,
}

impl Config {
    /// Loads the config file at `path`, resolving `os.environ/NAME` from the process
    /// environment.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            origin: origin.clone(),
            source,
        })?;
        Self::from_yaml(&text, &origin)
    }

    /// Loads a config from YAML text; `origin` names it in messages (usually the file name).
    pub fn from_yaml(text: &str, origin: &str) -> Result<Loaded, ConfigError> {
        Self::from_yaml_with_env(text, origin, &|name| std::env::var(name).ok())
    }

    /// [`Config::from_yaml`] with `env` in place of the process environment.
    pub fn from_yaml_with_env(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Loaded, ConfigError> {
        let mut ignored: Vec<KeyPath> = Vec::new();
        let mut on_ignored = |path: serde_ignored::Path<'_>| {
            ignored.push(KeyPath::from_ignored(&path));
        };
        let deserializer = serde_yaml_ng::Deserializer::from_str(text);
        let mut config: Config = serde_path_to_error::deserialize(
            serde_ignored::Deserializer::new(deserializer, &mut on_ignored),
        )
        .map_err(|err| ConfigError::from_serde(err, origin))?;

        security::audit(text, origin)?;

        let mut unsupported: Vec<String> = Vec::new();
        let mut typos: Vec<String> = Vec::new();
        for path in ignored {
            let key = path.to_string();
            if let Some(known) = suggest::key_suggestion(&path) {
                let at = match locate(text, &path) {
                    Some((line, _)) => format!("{origin}, line {line}"),
                    None => origin.to_owned(),
                };
                let line =
                    format!("{at}: {key}: llmbus does not know this key; did you mean `{known}`?");
                if !typos.contains(&line) {
                    typos.push(line);
                }
            } else if !unsupported.contains(&key) {
                unsupported.push(key);
            }
        }

        let mut resolver = Resolver::new(env, text, origin);
        resolver.config(&mut config)?;
        let mut warnings = resolver.warnings;
        check::check(&config, text, origin)?;
        entries::mark(&mut config, text, origin);
        if config.model_list.is_empty() {
            warnings.push(format!(
                "{origin}: model_list is empty: there are no models to serve"
            ));
        }
        Ok(Loaded {
            config,
            unsupported,
            typos,
            warnings,
        })
    }
}
