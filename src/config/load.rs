//! TODO: loading (helper).
use super::Config;

/// A config that failed to load.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Anything.
    #[error("{0}")]
    Invalid(String),
}

/// A loaded config and the keys it had that llmbus does not support.
#[derive(Debug)]
pub struct Loaded {
    /// The config.
    pub config: Config,
    /// Dotted paths of unsupported keys.
    pub unsupported: Vec<String>,
    /// Other start-up warnings (missing environment variables, ...).
    pub warnings: Vec<String>,
}
