//! `os.environ/NAME` references: LiteLLM's way to keep keys out of the file.
//!
//! After parsing, every string field that can hold a reference (keys, URLs, headers, the NATS
//! credentials, ...) is replaced by the variable's value. A variable that is not set leaves the
//! field unset and is reported naming the file, line, key and variable, never a value: in a
//! deployment's model, base URL, credentials, region or project it marks the deployment
//! misconfigured (it is kept and takes no traffic); in `general_settings.master_key` it stops
//! the load; anywhere else it is a warning. `llmbus check` and `serve --strict` treat every
//! one as a problem.

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

    /// Resolves every reference in the config. A variable that is not set marks the
    /// deployment that refers to it misconfigured (naming the variable and the key); for
    /// `general_settings.master_key` it is an error, since the gateway would otherwise accept
    /// every request without a key.
    pub(crate) fn config(&mut self, config: &mut Config) -> Result<(), ConfigError> {
        let list = KeyPath::root().key("model_list");
        for (i, entry) in config.model_list.iter_mut().enumerate() {
            let path = list.index(i).key("litellm_params");
            let unset = self.params(&mut entry.litellm_params, &path);
            if !unset.is_empty() {
                entry.misconfigure(unset.join("; "));
            }
        }
        self.general(
            &mut config.general_settings,
            &KeyPath::root().key("general_settings"),
        )?;
        self.llmbus(&mut config.llmbus, &KeyPath::root().key("llmbus"));
        Ok(())
    }

    /// Resolves a deployment's references. Returns one line per variable that is not set in a
    /// key that says where or as whom to call (model, base URL, credentials, region, project):
    /// without it the call would go to the wrong place or account, so the deployment is
    /// misconfigured. An unset variable in an optional decoration (`api_version`,
    /// `organization`, `extra_headers`) only leaves that key unset, with a warning.
    fn params(&mut self, p: &mut LitellmParams, path: &KeyPath) -> Vec<String> {
        let mut unset = Vec::new();
        if let Some(name) = reference(&p.model) {
            match (self.env)(name) {
                Some(value) => p.model = value,
                None => unset.push(self.unset(name, &path.key("model")).to_string()),
            }
        }
        for (value, key) in [
            (&mut p.api_base, "api_base"),
            (&mut p.vertex_project, "vertex_project"),
            (&mut p.vertex_location, "vertex_location"),
            (&mut p.aws_region_name, "aws_region_name"),
        ] {
            if let Err(unset_var) = self.resolve(value, &path.key(key)) {
                unset.push(unset_var.to_string());
            }
        }
        for (value, key) in [
            (&mut p.api_key, "api_key"),
            (&mut p.vertex_credentials, "vertex_credentials"),
            (&mut p.aws_access_key_id, "aws_access_key_id"),
            (&mut p.aws_secret_access_key, "aws_secret_access_key"),
            (&mut p.aws_session_token, "aws_session_token"),
        ] {
            if let Err(unset_var) = self.resolve_secret(value, &path.key(key)) {
                unset.push(unset_var.to_string());
            }
        }
        let mut optional = Vec::new();
        for (value, key) in [
            (&mut p.api_version, "api_version"),
            (&mut p.organization, "organization"),
        ] {
            if let Err(unset_var) = self.resolve(value, &path.key(key)) {
                optional.push(unset_var);
            }
        }
        let headers = path.key("extra_headers");
        let old = std::mem::take(&mut p.extra_headers);
        for (key, value) in old {
            match self.lookup(&value, &headers.key(&key)) {
                Ok(value) => {
                    p.extra_headers.insert(key, value);
                }
                Err(unset_var) => optional.push(unset_var),
            }
        }
        let origin = self.origin;
        self.warnings.extend(
            optional
                .into_iter()
                .map(|unset_var| format!("{origin}: {unset_var}; the key is left unset")),
        );
        unset
    }

    fn general(&mut self, g: &mut GeneralSettings, path: &KeyPath) -> Result<(), ConfigError> {
        let path = path.key("master_key");
        let Some(key) = g.master_key.take() else {
            return Ok(());
        };
        let fail = |message: String| {
            ConfigError::at(self.origin, &path, locate(self.text, &path), message)
        };
        let value = match reference(key.expose()) {
            Some(name) => (self.env)(name).ok_or_else(|| {
                fail(format!(
                    "environment variable `{name}` is not set, and without it every request \
                     would be accepted without a key; set it, or remove `master_key` to run \
                     without authentication"
                ))
            })?,
            None => key.expose().to_owned(),
        };
        if value.trim().is_empty() {
            return Err(fail(
                "the master key is empty; set a key, or remove `master_key` to run without \
                 authentication"
                    .to_owned(),
            ));
        }
        g.master_key = Some(Secret::new(value));
        Ok(())
    }

    fn llmbus(&mut self, l: &mut LlmbusSettings, path: &KeyPath) {
        for (value, key) in [
            (&mut l.nats_url, "nats_url"),
            (&mut l.nats_user, "nats_user"),
            (&mut l.nats_creds_file, "nats_creds_file"),
            (&mut l.nats_tls_ca, "nats_tls_ca"),
            (&mut l.nats_tls_cert, "nats_tls_cert"),
            (&mut l.nats_tls_key, "nats_tls_key"),
        ] {
            if let Err(unset_var) = self.resolve(value, &path.key(key)) {
                let origin = self.origin;
                self.warnings
                    .push(format!("{origin}: {unset_var}; the key is left unset"));
            }
        }
        for (value, key) in [
            (&mut l.nats_password, "nats_password"),
            (&mut l.nats_token, "nats_token"),
            (&mut l.nats_nkey, "nats_nkey"),
        ] {
            if let Err(unset_var) = self.resolve_secret(value, &path.key(key)) {
                let origin = self.origin;
                self.warnings
                    .push(format!("{origin}: {unset_var}; the key is left unset"));
            }
        }
    }

    /// The value to use: `value` itself when it is not a reference, else the variable's value;
    /// [`ConfigError::Unset`] naming the line, key and variable when the variable is not set.
    fn lookup(&self, value: &str, path: &KeyPath) -> Result<String, ConfigError> {
        match reference(value) {
            None => Ok(value.to_owned()),
            Some(name) => (self.env)(name).ok_or_else(|| self.unset(name, path)),
        }
    }

    /// `environment variable `NAME` is not set (key, line N)`.
    fn unset(&self, name: &str, path: &KeyPath) -> ConfigError {
        ConfigError::Unset {
            name: name.to_owned(),
            key: path.to_string(),
            line: locate(self.text, path).map(|(line, _)| line),
        }
    }

    /// Resolves an optional string; an unset variable leaves it unset.
    fn resolve(&self, value: &mut Option<String>, path: &KeyPath) -> Result<(), ConfigError> {
        if let Some(v) = value.take() {
            *value = Some(self.lookup(&v, path)?);
        }
        Ok(())
    }

    /// Resolves an optional secret; an unset variable leaves it unset. A value read from a
    /// variable keeps the variable's name ([`Secret::variable`]).
    fn resolve_secret(
        &self,
        value: &mut Option<Secret>,
        path: &KeyPath,
    ) -> Result<(), ConfigError> {
        if let Some(v) = value.take() {
            let resolved = self.lookup(v.expose(), path)?;
            *value = Some(match reference(v.expose()) {
                Some(name) => Secret::from_env(resolved, name),
                None => Secret::new(resolved),
            });
        }
        Ok(())
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
