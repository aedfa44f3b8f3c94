//! A secret value (API key, password) that never prints, and how to tell one written as a
//! literal in a config file: by the key it is written under ([`is_secret_key`]) or by its own
//! shape ([`credential_shape`]: the known key formats, `Bearer` tokens, JWTs, credentials in
//! a URL). `llmbus config push` refuses both, since the cluster's config is stored in NATS.

use serde::{Deserialize, Deserializer};

/// A secret string. `Debug` and `Display` print `***`; only [`Secret::expose`] gives the value.
/// A value read from an `os.environ/NAME` reference remembers the variable's name (not
/// secret), so that a deployment can be told apart by where its key comes from.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    from: Option<String>,
}

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            from: None,
        }
    }

    /// Wraps the value of environment variable `name`.
    pub(crate) fn from_env(value: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            from: Some(name.into()),
        }
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// The environment variable the value was read from (`os.environ/NAME`), if it was.
    pub fn variable(&self) -> Option<&str> {
        self.from.as_deref()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// Whether a value written under `key` is a secret by the key's name alone: provider keys, the
/// master key, NATS credentials, and credential headers in `extra_headers` (`Authorization`,
/// `x-api-key`, ...). Names compare case-insensitively, `-` as `_`.
pub(crate) fn is_secret_key(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "api_key",
        "master_key",
        "vertex_credentials",
        "nats_password",
        "nats_token",
        "nats_nkey",
        "password",
        "secret",
        "token",
        "authorization",
        "proxy_authorization",
        "x_api_key",
        "x_goog_api_key",
        "ocp_apim_subscription_key",
        "cookie",
    ];
    let key = key.to_ascii_lowercase().replace('-', "_");
    EXACT.contains(&key.as_str())
        || [
            "_api_key",
            "_secret",
            "_password",
            "_token",
            "_secret_access_key",
        ]
        .iter()
        .any(|suffix| key.ends_with(suffix))
}

/// What `value` looks like, when it looks like a credential whatever key it is written under:
/// `Some("an Anthropic key (sk-ant-...)")`, ... The description never repeats the value.
pub(crate) fn credential_shape(value: &str) -> Option<&'static str> {
    let v = value.trim();
    if v.contains("-----BEGIN") && v.contains("PRIVATE KEY-----") {
        return Some("a private key (PEM)");
    }
    if let Some(shape) = url_credentials(v) {
        return Some(shape);
    }
    if let Some((scheme, rest)) = v.split_once(' ') {
        let rest = rest.trim();
        if ["bearer", "basic", "token"].contains(&scheme.to_ascii_lowercase().as_str())
            && rest.len() >= 8
            && !rest.contains(char::is_whitespace)
        {
            return Some("an Authorization value (`Bearer <token>`, `Basic ...`)");
        }
        return None;
    }
    if is_jwt(v) {
        return Some("a JSON Web Token (eyJ...)");
    }
    prefixed_key(v)
}

/// A token behind a known key prefix, with enough of a body to be a key.
fn prefixed_key(v: &str) -> Option<&'static str> {
    const PREFIXES: &[(&str, usize, &str)] = &[
        ("sk-ant-", 16, "an Anthropic key (sk-ant-...)"),
        ("sk-", 16, "an OpenAI-style key (sk-...)"),
        ("AKIA", 16, "an AWS access key id (AKIA...)"),
        ("ASIA", 16, "an AWS temporary access key id (ASIA...)"),
        ("AIza", 30, "a Google API key (AIza...)"),
        ("gsk_", 16, "a Groq key (gsk_...)"),
        ("xai-", 16, "an xAI key (xai-...)"),
        ("pplx-", 16, "a Perplexity key (pplx-...)"),
        ("hf_", 16, "a Hugging Face token (hf_...)"),
        ("r8_", 16, "a Replicate token (r8_...)"),
        ("ghp_", 16, "a GitHub token (ghp_...)"),
        ("github_pat_", 16, "a GitHub token (github_pat_...)"),
        ("glpat-", 16, "a GitLab token (glpat-...)"),
        ("xoxb-", 16, "a Slack token (xox...)"),
        ("xoxp-", 16, "a Slack token (xox...)"),
    ];
    let body_ok = |b: &str| {
        b.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    PREFIXES.iter().find_map(|(prefix, min, what)| {
        let body = v.strip_prefix(prefix)?;
        (body.len() >= *min && body_ok(body)).then_some(*what)
    })
}

/// Three base64url segments, the first a JSON object (`eyJ`).
fn is_jwt(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && v.starts_with("eyJ")
        && parts.iter().take(2).all(|p| p.len() >= 8)
        && parts.iter().all(|p| {
            p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '=')
        })
}

/// Credentials inside a URL: a password in its user info, or a key in its query.
fn url_credentials(v: &str) -> Option<&'static str> {
    const QUERY_KEYS: &[&str] = &[
        "key",
        "api_key",
        "apikey",
        "api-key",
        "token",
        "access_token",
        "auth_token",
        "auth",
        "password",
        "secret",
        "client_secret",
        "sig",
        "signature",
        "x-api-key",
    ];
    let (_, rest) = v.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if let Some((userinfo, _)) = rest[..end].rsplit_once('@')
        && let Some((_, password)) = userinfo.split_once(':')
        && !password.is_empty()
    {
        return Some("credentials in a URL (user:password@)");
    }
    let query = rest.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .any(|(name, value)| {
            !value.is_empty() && QUERY_KEYS.contains(&name.to_ascii_lowercase().as_str())
        })
        .then_some("a credential in a URL's query (key=..., token=...)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_named_by_their_key_in_any_case() {
        for key in [
            "api_key",
            "master_key",
            "Authorization",
            "x-api-key",
            "X-Goog-Api-Key",
            "azure_ad_token",
            "client_secret",
            "aws_secret_access_key",
            "aws_session_token",
            "nats_password",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in [
            "api_base",
            "model",
            "max_tokens",
            "api_version",
            "aws_access_key_id",
            "tokens",
            "mock_response",
        ] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn credentials_are_known_by_their_shape() {
        let cases = [
            ("sk-proj-abcdefghijklmnop1234", "OpenAI"),
            ("sk-ant-api03-abcdefghijklmnopqrst", "Anthropic"),
            ("AKIAIOSFODNN7EXAMPLE", "AWS access key id"),
            ("AIzaSyA-abcdefghijklmnopqrstuvwxyz12345", "Google"),
            ("Bearer abcdef0123456789", "Authorization"),
            ("bearer abcdef0123456789", "Authorization"),
            ("Basic dXNlcjpwYXNzd29yZA==", "Authorization"),
            (
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlLXZhbHVl",
                "JSON Web Token",
            ),
            ("https://user:hunter2@llm.example.com/v1", "user:password@"),
            ("http://x:y@10.0.0.1:8080", "user:password@"),
            ("https://gen.example.com/v1?key=abc123", "query"),
            ("https://gen.example.com/v1?alt=sse&API_KEY=abc#x", "query"),
            ("https://x.example.com/?token=t0k3n", "query"),
            (
                "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
                "PEM",
            ),
            ("gsk_abcdefghijklmnopqrstu", "Groq"),
        ];
        for (value, what) in cases {
            let shape = credential_shape(value).unwrap_or_else(|| panic!("{value}: not seen"));
            assert!(shape.contains(what), "{value}: {shape}");
            assert!(!shape.contains(value), "the shape never repeats the value");
        }
    }

    #[test]
    fn ordinary_values_are_not_credentials() {
        for value in [
            "openai/gpt-4o",
            "gpt-4o-mini",
            "sk-short",
            "https://api.openai.com/v1",
            "https://example.openai.azure.com",
            "https://user@example.com/v1",
            "https://x.example.com/v1?api-version=2024-10-21",
            "https://x.example.com/v1?key=",
            "os.environ/OPENAI_API_KEY",
            "Hello from llmbus! The key is in the environment.",
            "Bearer",
            "2024-10-21",
            "us-east-1",
            "/etc/llmbus/sa.json",
            "AKIA is a prefix",
            "a.b.c",
        ] {
            assert_eq!(credential_shape(value), None, "{value}");
        }
    }
}
