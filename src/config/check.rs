//! Checks that need the whole parsed config: values serde accepts but llmbus cannot run with.
//!
//! The first problem found stops the load, naming the key and its line. (A deployment without
//! a `model` does not: `entries` marks it misconfigured.)

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Config, ConfigError,
    locate::{KeyPath, locate},
};

/// The most seconds a config may give for a timeout, a cooldown or a wait: a year. Nobody means
/// more, and far more is no time at all: `timeout: 1e20` made building the worker's deployments
/// panic (`Duration::from_secs_f64`), and so did `cooldown_time: 1e20` or `retry_after: .inf`
/// building its policies (found writing the `config` fuzz target).
const MAX_SECONDS: f64 = 365.0 * 24.0 * 60.0 * 60.0;

/// Checks `config`; `text` and `origin` are for the error's line and file.
pub(crate) fn check(config: &Config, text: &str, origin: &str) -> Result<(), ConfigError> {
    Checker { text, origin }.run(config)
}

struct Checker<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Checker<'_> {
    fn fail(&self, path: &KeyPath, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.origin, path, locate(self.text, path), message.into())
    }

    fn run(&self, config: &Config) -> Result<(), ConfigError> {
        self.deployments(config)?;
        self.router(config)?;
        let litellm = KeyPath::root().key("litellm_settings");
        self.seconds(
            config.litellm_settings.request_timeout,
            &litellm.key("request_timeout"),
        )?;
        self.llmbus(config)
    }

    fn deployments(&self, config: &Config) -> Result<(), ConfigError> {
        let list = KeyPath::root().key("model_list");
        let mut ids = BTreeSet::new();
        for (i, entry) in config.model_list.iter().enumerate() {
            let at = list.index(i);
            if entry.model_name.trim().is_empty() {
                return Err(self.fail(&at.key("model_name"), "must not be empty"));
            }
            let params = &entry.litellm_params;
            let p = at.key("litellm_params");
            self.seconds(params.timeout, &p.key("timeout"))?;
            self.seconds(params.stream_timeout, &p.key("stream_timeout"))?;
            if let Some(weight) = params.weight
                && !(weight.is_finite() && weight >= 0.0)
            {
                return Err(self.fail(&p.key("weight"), format!("must be 0 or more, not {weight}")));
            }
            if params.max_parallel_requests == Some(0) {
                return Err(self.fail(&p.key("max_parallel_requests"), "must be at least 1"));
            }
            if let Some(id) = &entry.model_info.id
                && !ids.insert(id.as_str())
            {
                let path = at.key("model_info").key("id");
                return Err(self.fail(&path, format!("`{id}` is used by another deployment")));
            }
        }
        Ok(())
    }

    fn router(&self, config: &Config) -> Result<(), ConfigError> {
        let r = &config.router_settings;
        let path = KeyPath::root().key("router_settings");
        self.seconds(r.timeout, &path.key("timeout"))?;
        self.seconds(r.stream_timeout, &path.key("stream_timeout"))?;
        if let Some(name) = &r.routing_strategy
            && super::Strategy::parse(name, 0.0).is_none()
        {
            return Err(self.fail(
                &path.key("routing_strategy"),
                format!(
                    "unknown routing strategy `{name}` (llmbus has simple-shuffle, least-busy, \
                     latency-based-routing, usage-based-routing-v2, cost-based-routing)"
                ),
            ));
        }
        for (key, value) in [
            ("cooldown_time", r.cooldown_time),
            ("retry_after", r.retry_after),
        ] {
            if let Some(secs) = value
                && !(secs.is_finite() && (0.0..=MAX_SECONDS).contains(&secs))
            {
                return Err(self.fail(
                    &path.key(key),
                    format!("must be 0 or more seconds, at most {MAX_SECONDS} (a year)"),
                ));
            }
        }

        let groups: BTreeSet<&str> = config
            .model_list
            .iter()
            .map(|m| m.model_name.as_str())
            .collect();
        let known = |name: &str| groups.contains(name);
        let aliases = path.key("model_group_alias");
        for (alias, target) in &r.model_group_alias {
            if !known(target.group()) {
                let message = unknown_group(target.group(), &groups);
                return Err(self.fail(&aliases.key(alias), message));
            }
        }
        // Fallbacks may name a group or an alias of one.
        let known = |name: &str| known(name) || r.model_group_alias.contains_key(name);
        for (key, lists) in [
            ("fallbacks", &r.fallbacks),
            ("context_window_fallbacks", &r.context_window_fallbacks),
            ("content_policy_fallbacks", &r.content_policy_fallbacks),
        ] {
            self.fallbacks(lists, &path.key(key), &known, &groups)?;
        }
        for (i, name) in r.default_fallbacks.iter().enumerate() {
            if !known(name) {
                let at = path.key("default_fallbacks").index(i);
                return Err(self.fail(&at, unknown_group(name, &groups)));
            }
        }
        Ok(())
    }

    fn fallbacks(
        &self,
        lists: &[BTreeMap<String, Vec<String>>],
        path: &KeyPath,
        known: &dyn Fn(&str) -> bool,
        groups: &BTreeSet<&str>,
    ) -> Result<(), ConfigError> {
        for (i, map) in lists.iter().enumerate() {
            for (from, to) in map {
                let at = path.index(i).key(from);
                if let Some(name) = std::iter::once(from).chain(to).find(|name| !known(name)) {
                    return Err(self.fail(&at, unknown_group(name, groups)));
                }
            }
        }
        Ok(())
    }

    fn llmbus(&self, config: &Config) -> Result<(), ConfigError> {
        let l = &config.llmbus;
        let path = KeyPath::root().key("llmbus");
        // A prefix may have several tokens (`acme.llm`); a queue group name is one token.
        if !l.subject_prefix.split('.').all(is_subject_token) {
            let message = format!(
                "`{}` is not a NATS subject prefix (dot-separated non-empty words without `*`, `>` or spaces)",
                l.subject_prefix
            );
            return Err(self.fail(&path.key("subject_prefix"), message));
        }
        if !is_subject_token(&l.queue_group) {
            let message = format!(
                "`{}` is not a NATS queue group name (one non-empty word: no `.`, `*`, `>` or spaces)",
                l.queue_group
            );
            return Err(self.fail(&path.key("queue_group"), message));
        }
        if l.max_in_flight == 0 {
            return Err(self.fail(&path.key("max_in_flight"), "must be at least 1"));
        }
        let days = l.usage_retention_days;
        if !(days.is_finite() && days > 0.0 && days <= 36_500.0) {
            let message = format!("must be a positive number of days (at most 36500), not {days}");
            return Err(self.fail(&path.key("usage_retention_days"), message));
        }
        if let Some(n) = l.replicas
            && !(1..=5).contains(&n)
        {
            let message = format!("must be 1 to 5 (JetStream keeps at most 5 replicas), not {n}");
            return Err(self.fail(&path.key("replicas"), message));
        }
        if l.usage_buffer == 0 {
            return Err(self.fail(&path.key("usage_buffer"), "must be at least 1"));
        }
        if l.usage_buffer_bytes < 4096 {
            let message = format!(
                "must be at least 4096 (a few usage events), not {}",
                l.usage_buffer_bytes
            );
            return Err(self.fail(&path.key("usage_buffer_bytes"), message));
        }
        for (key, secs) in [
            ("http_keepalive_secs", l.http_keepalive_secs),
            ("http_header_timeout_secs", l.http_header_timeout_secs),
            ("http_body_timeout_secs", l.http_body_timeout_secs),
            ("http_idle_timeout_secs", l.http_idle_timeout_secs),
        ] {
            self.seconds(Some(secs), &path.key(key))?;
        }
        for (key, n) in [
            ("http_max_connections", l.http_max_connections),
            ("http_stream_buffer", l.http_stream_buffer),
        ] {
            if n == 0 {
                return Err(self.fail(&path.key(key), "must be at least 1"));
            }
        }
        if l.price_table
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return Err(self.fail(&path.key("price_table"), "must be a file path"));
        }
        Ok(())
    }

    /// A duration in seconds, when set, must be a positive number.
    fn seconds(&self, value: Option<f64>, path: &KeyPath) -> Result<(), ConfigError> {
        match value {
            Some(secs) if !(secs.is_finite() && secs > 0.0 && secs <= MAX_SECONDS) => Err(self
                .fail(
                    path,
                    format!(
                        "must be a positive number of seconds, at most {MAX_SECONDS} (a year), \
                         not {secs}"
                    ),
                )),
            _ => Ok(()),
        }
    }
}

/// The message for a name that is not a model group.
fn unknown_group(name: &str, groups: &BTreeSet<&str>) -> String {
    let list: Vec<&str> = groups.iter().copied().collect();
    format!(
        "`{name}` is not a model group (the model_list has: {})",
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        }
    )
}

/// True when `s` is a single NATS subject token.
pub(crate) fn is_subject_token(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usage_buffer_is_bounded_in_bytes() {
        let load = |v: &str| {
            crate::config::Config::from_yaml(
                &format!("model_list: []\nllmbus:\n  usage_buffer_bytes: {v}\n"),
                "t.yaml",
            )
        };
        let loaded = load("8_000_000").expect("a byte bound loads").config;
        assert_eq!(loaded.llmbus.usage_buffer_bytes, 8_000_000);
        let e = load("100").expect_err("too small").to_string();
        assert!(
            e.contains("usage_buffer_bytes") && e.contains("4096"),
            "{e}"
        );
        let default = crate::config::Config::from_yaml("model_list: []\n", "t.yaml")
            .unwrap()
            .config;
        assert_eq!(default.llmbus.usage_buffer_bytes, 32 << 20);
    }

    #[test]
    fn subject_tokens() {
        assert!(is_subject_token("llm"));
        assert!(is_subject_token("acme-llm_2"));
        for bad in ["", "a.b", "a b", "*", ">", "llm\n", "a\tb"] {
            assert!(!is_subject_token(bad), "{bad:?}");
        }
    }
}
