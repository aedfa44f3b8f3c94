//! `os.environ/NAME` references: LiteLLM's way to keep keys out of the file.
//!
//! After parsing, every string field that can hold a reference (keys, URLs, headers, the NATS
//! credentials, ...) is replaced by the variable's value. A variable that is not set leaves the
//! field unset and adds a warning naming the key and the variable, never a value.

use std::collections::BTreeMap;

use super::{
    Config, ConfigError, GeneralSettings, LitellmParams, LlmbusSettings, Secret,
    locate::{KeyPath, locate},
};

/// The prefix LiteLLM uses for a reference.
const PREFIX: &str = "os.environ/";

/// The variable a value refers to, when it is an `os.environ/NAME` reference.
pub(crate) fn reference(value: &str) -> Option<&str> {
    value.trim().strip_prefix(PREFIX).map(str::trim)
}

/// Replaces the references in `config`, collecting warnings.
pub(crate) struct Resolver<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    text: &'a str,
    origin: &'a str,
    /// One line per variable that is not set.
    pub(crate) warnings: Vec<String>,
}

impl<'a> Resolver<'a> {
    pub(crate) fn new(
        env: &'a dyn Fn(&str) -> Option<String>,
        text: &'a str,
        origin: &'a str,
    ) -> Self {
        Self {
            env,
            text,
            origin,
            warnings: Vec::new(),
        }
    }

    /// Resolves every reference in the config. Fails only for a required field (`model`).
    pub(crate) fn config(&mut self, config: &mut Config) -> Result<(), ConfigError> {
        let list = KeyPath::root().key("model_list");
        for (i, entry) in config.model_list.iter_mut().enumerate() {
            let path = list.index(i).key("litellm_params");
            self.params(&mut entry.litellm_params, &path)?;
        }
        self.general(
            &mut config.general_settings,
            &KeyPath::root().key("general_settings"),
        );
        self.llmbus(&mut config.llmbus, &KeyPath::root().key("llmbus"));
        Ok(())
    }

    fn params(&mut self, p: &mut LitellmParams, path: &KeyPath) -> Result<(), ConfigError> {
        if let Some(name) = reference(&p.model) {
            match (self.env)(name) {
                Some(value) => p.model = value,
                None => {
                    let path = path.key("model");
                    return Err(ConfigError::at(
                        self.origin,
                        &path,
                        locate(self.text, &path),
                        format!(
                            "environment variable `{name}` is not set (and `model` is required)"
                        ),
                    ));
                }
            }
        }
        self.string(&mut p.api_base, &path.key("api_base"));
        self.secret(&mut p.api_key, &path.key("api_key"));
        self.string(&mut p.api_version, &path.key("api_version"));
        self.string(&mut p.organization, &path.key("organization"));
        self.string(&mut p.vertex_project, &path.key("vertex_project"));
        self.string(&mut p.vertex_location, &path.key("vertex_location"));
        self.secret(&mut p.vertex_credentials, &path.key("vertex_credentials"));
        self.string(&mut p.aws_region_name, &path.key("aws_region_name"));
        self.secret(&mut p.aws_access_key_id, &path.key("aws_access_key_id"));
        self.secret(
            &mut p.aws_secret_access_key,
            &path.key("aws_secret_access_key"),
        );
        self.secret(&mut p.aws_session_token, &path.key("aws_session_token"));
        self.map(&mut p.extra_headers, &path.key("extra_headers"));
        Ok(())
    }

    fn general(&mut self, g: &mut GeneralSettings, path: &KeyPath) {
        self.secret(&mut g.master_key, &path.key("master_key"));
    }

    fn llmbus(&mut self, l: &mut LlmbusSettings, path: &KeyPath) {
        self.string(&mut l.nats_url, &path.key("nats_url"));
        self.string(&mut l.nats_user, &path.key("nats_user"));
        self.secret(&mut l.nats_password, &path.key("nats_password"));
        self.secret(&mut l.nats_token, &path.key("nats_token"));
        self.secret(&mut l.nats_nkey, &path.key("nats_nkey"));
        self.string(&mut l.nats_creds_file, &path.key("nats_creds_file"));
        self.string(&mut l.nats_tls_ca, &path.key("nats_tls_ca"));
        self.string(&mut l.nats_tls_cert, &path.key("nats_tls_cert"));
        self.string(&mut l.nats_tls_key, &path.key("nats_tls_key"));
    }

    /// The value to use: `value` itself when it is not a reference, else the variable's value,
    /// or `None` (and a warning) when the variable is not set.
    fn lookup(&mut self, value: &str, path: &KeyPath) -> Option<String> {
        let Some(name) = reference(value) else {
            return Some(value.to_owned());
        };
        let found = (self.env)(name);
        if found.is_none() {
            let at = match locate(self.text, path) {
                Some((line, _)) => format!("{}, line {line}", self.origin),
                None => self.origin.to_owned(),
            };
            self.warnings.push(format!(
                "{at}: {path}: environment variable `{name}` is not set; the key is left unset"
            ));
        }
        found
    }

    fn string(&mut self, value: &mut Option<String>, path: &KeyPath) {
        if let Some(v) = value.take() {
            *value = self.lookup(&v, path);
        }
    }

    fn secret(&mut self, value: &mut Option<Secret>, path: &KeyPath) {
        if let Some(v) = value.take() {
            *value = self.lookup(v.expose(), path).map(Secret::new);
        }
    }

    fn map(&mut self, map: &mut BTreeMap<String, String>, path: &KeyPath) {
        let old = std::mem::take(map);
        for (key, value) in old {
            if let Some(value) = self.lookup(&value, &path.key(&key)) {
                map.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_references() {
        assert_eq!(
            reference("os.environ/OPENAI_API_KEY"),
            Some("OPENAI_API_KEY")
        );
        assert_eq!(reference(" os.environ/ X "), Some("X"));
        assert_eq!(reference("sk-123"), None);
        assert_eq!(reference("OS.ENVIRON/X"), None);
    }
}
