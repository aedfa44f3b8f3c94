//! Subject names. Every subject starts with the configurable prefix (`llm` by default).

/// The subjects one llmbus deployment uses, built from its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (for example `llm`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `llm.completion`: chat completion jobs (request/reply, queue group).
    pub fn completion(&self) -> String {
        format!("{}.completion", self.prefix)
    }

    /// `llm.embedding`: embedding jobs (request/reply, queue group).
    pub fn embedding(&self) -> String {
        format!("{}.embedding", self.prefix)
    }

    /// `llm.models`: the model groups in the OpenAI `/v1/models` shape.
    pub fn models(&self) -> String {
        format!("{}.models", self.prefix)
    }

    /// `llm.deployments`: each deployment's state.
    pub fn deployments(&self) -> String {
        format!("{}.deployments", self.prefix)
    }

    /// `llm.cancel`: a requester that gives up publishes its job's reply subject here (the
    /// payload is the subject, UTF-8); the worker running that job stops its upstream call and
    /// frees its capacity. Every worker listens (no queue group).
    pub fn cancel(&self) -> String {
        format!("{}.cancel", self.prefix)
    }

    /// `llm.worker.<worker>.completion` (or `.embedding`): one worker's own request subjects.
    /// A worker that gets a job for a model group it does not serve hands it to a worker that
    /// serves it on these; only that worker listens.
    pub fn direct(&self, worker: &str, kind: &str) -> String {
        format!("{}.worker.{}.{kind}", self.prefix, token(worker))
    }

    /// `llm.usage.<model_group>`: one usage event per finished request.
    pub fn usage(&self, model_group: &str) -> String {
        format!("{}.usage.{}", self.prefix, token(model_group))
    }

    /// `llm.usage.>`: every usage event (what the `LLM_USAGE` stream captures).
    pub fn usage_all(&self) -> String {
        format!("{}.usage.>", self.prefix)
    }

    /// `llm.health.<deployment>`: health changes of one deployment.
    pub fn health(&self, deployment: &str) -> String {
        format!("{}.health.{}", self.prefix, token(deployment))
    }

    /// `LLM_USAGE`: the JetStream stream that keeps the usage events. Named after the prefix,
    /// like the cluster's buckets, so two installations on one server keep apart.
    pub fn usage_stream(&self) -> String {
        bucket_name(&self.prefix, "USAGE")
    }

    /// `LLM_SPEND`: the key-value bucket of the spend aggregates.
    pub fn spend_bucket(&self) -> String {
        bucket_name(&self.prefix, "SPEND")
    }

    /// `llm.admin.>`: every admin subject (request/reply, the master key required).
    pub fn admin_all(&self) -> String {
        format!("{}.admin.>", self.prefix)
    }

    /// `llm.admin.config.push`: store a config as the cluster's config (one worker of the queue
    /// group checks the master key and writes the config bucket).
    pub fn admin_config_push(&self) -> String {
        format!("{}.admin.config.push", self.prefix)
    }

    /// `llm.admin.config.rollback`: make an earlier revision of the cluster's config current.
    pub fn admin_config_rollback(&self) -> String {
        format!("{}.admin.config.rollback", self.prefix)
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new("llm")
    }
}

/// Makes `name` safe as one subject token: `.`, `*`, `>` and white space become `_`, and an
/// empty name is `_` (a job whose body named no model still has a usage subject; `llm.usage.`
/// is no subject at all, and JetStream would refuse its event for ever).
pub fn token(name: &str) -> String {
    if name.is_empty() {
        return "_".into();
    }
    name.chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() => '_',
            c => c,
        })
        .collect()
}

/// The name of one of llmbus's buckets under a subject prefix: `bucket_name("llm", "QUOTA")`
/// is `LLM_QUOTA`. Characters a bucket name cannot hold become `_`.
pub fn bucket_name(prefix: &str, what: &str) -> String {
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}_{what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_use_the_prefix_and_safe_tokens() {
        let s = Subjects::new("acme.llm");
        assert_eq!(s.completion(), "acme.llm.completion");
        assert_eq!(s.usage("gpt-4o.mini"), "acme.llm.usage.gpt-4o_mini");
        assert_eq!(s.health("a b*>"), "acme.llm.health.a_b__");
        assert_eq!(s.usage(""), "acme.llm.usage._");
        assert_eq!(s.usage_stream(), "ACME_LLM_USAGE");
        assert_eq!(s.spend_bucket(), "ACME_LLM_SPEND");
        let default = Subjects::default();
        assert_eq!(
            (
                default.usage_stream().as_str(),
                default.spend_bucket().as_str()
            ),
            ("LLM_USAGE", "LLM_SPEND"),
            "the names of installations that predate the prefix in them"
        );
    }
}
