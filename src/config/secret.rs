//! A secret value (API key, password) that never prints.

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
