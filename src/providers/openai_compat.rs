//! TODO (helper): the OpenAI-compatible family.
use std::sync::Arc;
use super::Provider;
use crate::config::{ConfigError, LitellmParams};
/// Builds one.
pub fn build(_p: &LitellmParams, _http: &reqwest::Client) -> Result<(Arc<dyn Provider>, String), ConfigError> { todo!() }
