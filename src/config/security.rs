//! Security settings llmbus does not enforce: a config that relies on one does not start.
//!
//! A LiteLLM setting that restricts who may call, what they may send or get back, or how much
//! they may spend protects the user only if something enforces it. llmbus enforces
//! `general_settings.master_key` (see [`crate::auth`]); for each setting in [`RULES`] it has no
//! enforcement, so a config that turns one on is refused, naming every such key and its line,
//! instead of starting with a warning and running less safely than the file says.
//!
//! Settings that only relax a restriction (`public_routes`, `disable_*`), that guard features
//! llmbus does not have (the admin UI, `/key/generate`, pass-through routes, files, MCP), or
//! that llmbus satisfies by construction (it never logs prompts, completions or keys:
//! `turn_off_message_logging`, `redact_*`) are not refused; they are reported as unsupported
//! keys like any other. `database_url` is among them: without it llmbus accepts the master key
//! only, so a virtual key from LiteLLM's database is refused (401), never let through.

use serde_yaml_ng::Value;

use super::{
    ConfigError,
    locate::{KeyPath, locate},
};

/// One key llmbus does not enforce, as the refusal names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unenforced {
    /// The key's dotted path, such as `general_settings.custom_auth`.
    pub key: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What llmbus does not do, and what to do instead.
    pub why: String,
}

/// How a rule decides that a setting is on.
#[derive(Clone, Copy)]
enum When {
    /// Any value but `null`, `false`, `0`, an empty string, list or mapping.
    Set,
    /// Exactly `true`.
    True,
    /// A callback list that names a guardrail or moderation hook (or, for `callbacks`, custom
    /// Python code that may check requests).
    SafetyHooks { custom_code: bool },
}

/// One refused setting. A path step `[]` stands for every item of a list.
struct Rule {
    path: &'static [&'static str],
    when: When,
    why: &'static str,
}

/// The advice for an authentication method llmbus does not have.
macro_rules! auth {
    ($what:literal) => {
        concat!(
            $what,
            "; remove it: llmbus checks `Authorization: Bearer <general_settings.master_key>` on \
             every job, and NATS accounts and permissions decide who may publish jobs"
        )
    };
}
const BUDGET: &str = "llmbus does not stop spending at a budget; remove it and watch spend on \
                      `llm.usage.*` (every event carries the job's cost)";
const GUARDRAILS: &str = "llmbus does not run guardrails (content filters, PII masking, \
                          prompt-injection checks, tool permissions), so requests would reach the \
                          models unchecked; remove it, or keep a gateway that runs them in front";

/// The settings llmbus refuses, with why.
const RULES: &[Rule] = &[
    Rule {
        path: &["guardrails"],
        when: When::Set,
        why: GUARDRAILS,
    },
    Rule {
        path: &["policies"],
        when: When::Set,
        why: GUARDRAILS,
    },
    Rule {
        path: &["policy_attachments"],
        when: When::Set,
        why: GUARDRAILS,
    },
    Rule {
        path: &["litellm_settings", "guardrails"],
        when: When::Set,
        why: GUARDRAILS,
    },
    Rule {
        path: &["general_settings", "custom_auth"],
        when: When::Set,
        why: auth!("llmbus does not run custom auth code"),
    },
    Rule {
        path: &["general_settings", "enable_jwt_auth"],
        when: When::Set,
        why: auth!("llmbus does not verify JWTs"),
    },
    Rule {
        path: &["general_settings", "litellm_jwtauth"],
        when: When::Set,
        why: auth!("llmbus does not verify JWTs"),
    },
    Rule {
        path: &["general_settings", "enable_oauth2_auth"],
        when: When::Set,
        why: auth!("llmbus does not check OAuth2 tokens"),
    },
    Rule {
        path: &["general_settings", "enable_oauth2_proxy_auth"],
        when: When::Set,
        why: auth!("llmbus does not trust identity headers from an OAuth2 proxy"),
    },
    Rule {
        path: &["general_settings", "allowed_ips"],
        when: When::Set,
        why: "llmbus does not filter callers by IP address; remove it and limit who can reach \
              the NATS server (its authorization and your network policy)",
    },
    Rule {
        path: &["general_settings", "allowed_routes"],
        when: When::Set,
        why: "llmbus does not restrict routes; remove it and limit the subjects each NATS user \
              may publish to",
    },
    Rule {
        path: &["general_settings", "admin_only_routes"],
        when: When::Set,
        why: "llmbus has no admin role to restrict routes to; remove it and limit the subjects \
              each NATS user may publish to",
    },
    Rule {
        path: &["general_settings", "enforce_user_param"],
        when: When::Set,
        why: "llmbus does not require the `user` field in requests; remove it",
    },
    Rule {
        path: &["general_settings", "enforced_params"],
        when: When::Set,
        why: "llmbus does not require request parameters; remove it",
    },
    Rule {
        path: &["general_settings", "key_management_system"],
        when: When::Set,
        why: "llmbus reads `os.environ/NAME` from the process environment only, not from a \
              key manager; remove it and pass the secrets as environment variables",
    },
    Rule {
        path: &["general_settings", "key_management_settings"],
        when: When::Set,
        why: "llmbus reads `os.environ/NAME` from the process environment only, not from a \
              key manager; remove it and pass the secrets as environment variables",
    },
    Rule {
        path: &["general_settings", "use_google_kms"],
        when: When::Set,
        why: "llmbus does not decrypt keys with Google KMS; remove it and pass the decrypted \
              secrets as environment variables",
    },
    Rule {
        path: &["general_settings", "use_azure_key_vault"],
        when: When::Set,
        why: "llmbus does not read keys from Azure Key Vault; remove it and pass the secrets as \
              environment variables",
    },
    Rule {
        path: &["general_settings", "max_request_size_mb"],
        when: When::Set,
        why: "llmbus does not enforce a request size in MB; the NATS server's `max_payload` (1 MB \
              by default) bounds every job: set it there and remove this key",
    },
    Rule {
        path: &["general_settings", "max_response_size_mb"],
        when: When::Set,
        why: "llmbus does not enforce a response size in MB; the NATS server's `max_payload` \
              bounds every reply: set it there and remove this key",
    },
    Rule {
        path: &["general_settings", "max_parallel_requests"],
        when: When::Set,
        why: "llmbus has no per-key limits; remove it (`llmbus.max_in_flight` bounds the jobs \
              each worker runs)",
    },
    Rule {
        path: &["general_settings", "global_max_parallel_requests"],
        when: When::Set,
        why: "llmbus does not enforce it; use `llmbus.max_in_flight` (the jobs each worker runs \
              at once) and remove this key",
    },
    Rule {
        path: &["litellm_settings", "callbacks"],
        when: When::SafetyHooks { custom_code: true },
        why: "",
    },
    Rule {
        path: &["litellm_settings", "success_callback"],
        when: When::SafetyHooks { custom_code: false },
        why: "",
    },
    Rule {
        path: &["litellm_settings", "failure_callback"],
        when: When::SafetyHooks { custom_code: false },
        why: "",
    },
    Rule {
        path: &["litellm_settings", "input_callback"],
        when: When::SafetyHooks { custom_code: false },
        why: "",
    },
    Rule {
        path: &["litellm_settings", "max_budget"],
        when: When::Set,
        why: BUDGET,
    },
    Rule {
        path: &["litellm_settings", "max_end_user_budget"],
        when: When::Set,
        why: BUDGET,
    },
    Rule {
        path: &["litellm_settings", "max_internal_user_budget"],
        when: When::Set,
        why: BUDGET,
    },
    Rule {
        path: &["litellm_settings", "require_auth_for_metrics_endpoint"],
        when: When::True,
        why: "llmbus's Prometheus endpoint has no authentication; remove it and keep \
              `llmbus.metrics_listen` on a private address (the default is 127.0.0.1)",
    },
    Rule {
        path: &["router_settings", "provider_budget_config"],
        when: When::Set,
        why: BUDGET,
    },
    Rule {
        path: &["model_list", "[]", "litellm_params", "max_budget"],
        when: When::Set,
        why: BUDGET,
    },
];

/// LiteLLM's built-in callbacks that check or change requests for safety.
const SAFETY_HOOKS: &[&str] = &[
    "presidio",
    "llamaguard_moderations",
    "llmguard_moderations",
    "openai_moderations",
    "google_text_moderation",
    "azure_content_safety",
    "lakera_prompt_injection",
    "aporia_prompt_injection",
    "detect_prompt_injection",
    "hide_secrets",
    "banned_keywords",
    "blocked_user_check",
];

/// Checks the config text for settings llmbus refuses; `Err` names every one.
pub(crate) fn audit(text: &str, origin: &str) -> Result<(), ConfigError> {
    let Ok(doc) = serde_yaml_ng::from_str::<Value>(text) else {
        // The typed parse already accepted the text; nothing more to find here.
        return Ok(());
    };
    let mut found = Vec::new();
    for rule in RULES {
        for (path, value) in lookup(&doc, rule.path, KeyPath::root()) {
            if let Some(why) = refusal(rule, value) {
                found.push(Unenforced {
                    key: path.to_string(),
                    line: locate(text, &path).map(|(line, _)| line),
                    why,
                });
            }
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    found.sort_by_key(|u| u.line);
    Err(ConfigError::Unenforced {
        origin: origin.to_owned(),
        settings: found,
    })
}

/// The values at `path` (several when it crosses a list) with their key paths.
fn lookup<'v>(value: &'v Value, path: &[&str], at: KeyPath) -> Vec<(KeyPath, &'v Value)> {
    let Some((step, rest)) = path.split_first() else {
        return vec![(at, value)];
    };
    if *step == "[]" {
        let Value::Sequence(items) = value else {
            return Vec::new();
        };
        return items
            .iter()
            .enumerate()
            .flat_map(|(i, item)| lookup(item, rest, at.index(i)))
            .collect();
    }
    match value.get(*step) {
        Some(child) => lookup(child, rest, at.key(step)),
        None => Vec::new(),
    }
}

/// Why `value` makes `rule` refuse the config, or `None` when the setting is off.
fn refusal(rule: &Rule, value: &Value) -> Option<String> {
    let on = match rule.when {
        When::Set => is_set(value),
        When::True => matches!(value, Value::Bool(true)),
        When::SafetyHooks { custom_code } => return hooks(value, custom_code),
    };
    if !on {
        return None;
    }
    Some(rule.why.to_owned())
}

fn is_set(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.trim().is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(t) => is_set(&t.value),
        Value::Bool(true) => true,
    }
}

/// The refusal for a callback list that holds safety hooks.
fn hooks(value: &Value, custom_code: bool) -> Option<String> {
    let names: Vec<&str> = match value {
        Value::String(s) => vec![s.as_str()],
        Value::Sequence(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let safety: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| SAFETY_HOOKS.contains(&n.trim()))
        .collect();
    let custom: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| custom_code && n.contains('.'))
        .collect();
    if let Some(first) = safety.first() {
        return Some(format!(
            "llmbus does not run LiteLLM's `{first}` hook{}: requests would reach the models \
             unchecked; remove it, or keep a gateway that runs it in front",
            if safety.len() > 1 {
                format!(" (nor {})", safety[1..].join(", "))
            } else {
                String::new()
            }
        ));
    }
    custom.first().map(|first| {
        format!(
            "llmbus does not run Python callbacks such as `{first}`, which may check or change \
             requests; remove it (llmbus publishes each job's usage on `llm.usage.*` for \
             logging)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> Vec<Unenforced> {
        match audit(text, "t.yaml") {
            Ok(()) => Vec::new(),
            Err(ConfigError::Unenforced { settings, .. }) => settings,
            Err(other) => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn security_settings_that_are_on_are_refused_with_their_line() {
        let text = "\
model_list:
  - model_name: a
    litellm_params:
      model: openai/a
      max_budget: 10
general_settings:
  master_key: sk-1
  custom_auth: custom_auth.user_api_key_auth
  allowed_ips: [\"10.0.0.1\"]
  enforce_user_param: true
litellm_settings:
  callbacks: [\"prometheus\", \"presidio\"]
  max_budget: 100
guardrails:
  - guardrail_name: g
";
        let got = refused(text);
        let keys: Vec<(&str, Option<usize>)> =
            got.iter().map(|u| (u.key.as_str(), u.line)).collect();
        assert_eq!(
            keys,
            [
                ("model_list[0].litellm_params.max_budget", Some(5)),
                ("general_settings.custom_auth", Some(8)),
                ("general_settings.allowed_ips", Some(9)),
                ("general_settings.enforce_user_param", Some(10)),
                ("litellm_settings.callbacks", Some(12)),
                ("litellm_settings.max_budget", Some(13)),
                ("guardrails", Some(14)),
            ]
        );
        assert!(
            got[1]
                .why
                .starts_with("llmbus does not run custom auth code")
        );
        assert!(got[4].why.contains("`presidio`"), "{}", got[4].why);
        let message = audit(text, "t.yaml").unwrap_err().to_string();
        assert!(message.contains("t.yaml"), "{message}");
        assert!(
            message.contains("line 8: general_settings.custom_auth"),
            "{message}"
        );
    }

    #[test]
    fn settings_that_are_off_or_harmless_pass() {
        for text in [
            "general_settings:\n  enforce_user_param: false\n  allowed_ips: []\n",
            "general_settings:\n  master_key: sk-1\n  database_url: postgres://x\n",
            "general_settings:\n  public_routes: [\"/spend/calculate\"]\n  ui_access_mode: admin_only\n",
            "litellm_settings:\n  callbacks: [\"prometheus\", \"otel\"]\n  success_callback: [\"langfuse\"]\n",
            "litellm_settings:\n  require_auth_for_metrics_endpoint: false\n",
            "litellm_settings:\n  max_budget: 0\n  turn_off_message_logging: true\n",
            "guardrails: []\n",
        ] {
            assert!(refused(text).is_empty(), "{text}");
        }
    }

    #[test]
    fn custom_python_callbacks_are_refused_only_where_they_can_check_requests() {
        let text = "litellm_settings:\n  callbacks: custom_callbacks.proxy_handler_instance\n";
        assert_eq!(refused(text).len(), 1);
        let text = "litellm_settings:\n  success_callback: [custom_callbacks.logger]\n";
        assert!(refused(text).is_empty());
    }
}
