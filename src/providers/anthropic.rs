//! Anthropic Messages (`anthropic/`).
//!
//! Not written yet: building a deployment with this prefix is a configuration error.

use std::sync::Arc;

use super::Provider;
use crate::config::{ConfigError, LitellmParams};

/// Builds the provider of one deployment.
pub fn build(
    params: &LitellmParams,
    _http: &reqwest::Client,
) -> Result<(Arc<dyn Provider>, String), ConfigError> {
    Err(ConfigError::Invalid(format!(
        "model `{}`: this provider is not supported yet",
        params.model
    )))
}
