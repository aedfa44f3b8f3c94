//! Connecting to NATS with the credentials and TLS settings of the `llmbus:` section.

use std::time::Duration;

use async_nats::{Client, ConnectOptions};

use crate::config::{DEFAULT_NATS_URL, LlmbusSettings};

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials file could not be read.
    #[error("NATS credentials file {path}: {source}")]
    Creds {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server could not be reached or refused us.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why.
        source: async_nats::ConnectError,
    },
}

/// The URL to use: the flag or `NATS_URL` (`url_override`), else the config, else the default.
pub fn url(settings: &LlmbusSettings, url_override: Option<&str>) -> String {
    url_override
        .map(str::to_string)
        .or_else(|| settings.nats_url.clone())
        .unwrap_or_else(|| DEFAULT_NATS_URL.to_string())
}

/// Connection options from the settings: user/password, token, nkey, creds file, TLS.
pub async fn options(
    settings: &LlmbusSettings,
    name: &str,
) -> Result<ConnectOptions, ConnectError> {
    let mut opts = match &settings.nats_creds_file {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| ConnectError::Creds {
                path: path.clone(),
                source,
            })?,
        None => ConnectOptions::new(),
    };
    if let (Some(user), Some(pass)) = (&settings.nats_user, &settings.nats_password) {
        opts = opts.user_and_password(user.clone(), pass.expose().to_string());
    }
    if let Some(token) = &settings.nats_token {
        opts = opts.token(token.expose().to_string());
    }
    if let Some(seed) = &settings.nats_nkey {
        opts = opts.nkey(seed.expose().to_string());
    }
    if let Some(ca) = &settings.nats_tls_ca {
        opts = opts.add_root_certificates(ca.into());
    }
    if let (Some(cert), Some(key)) = (&settings.nats_tls_cert, &settings.nats_tls_key) {
        opts = opts.add_client_certificate(cert.into(), key.into());
    }
    if settings.nats_require_tls {
        opts = opts.require_tls(true);
    }
    Ok(opts
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None))
}

/// Connects, failing fast when the server does not answer at first.
pub async fn connect(
    settings: &LlmbusSettings,
    url_override: Option<&str>,
    name: &str,
) -> Result<Client, ConnectError> {
    let url = url(settings, url_override);
    let opts = options(settings, name)
        .await?
        .event_callback(|e| async move {
            tracing::info!(event = %e, "NATS connection event");
        });
    opts.connect(&url)
        .await
        .map_err(|source| ConnectError::Connect { url, source })
}
