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
    /// The inbox prefix is not a subject NATS can use.
    #[error(
        "the NATS inbox prefix `{0}` (llmbus.nats_inbox_prefix or NATS_INBOX_PREFIX) is not a \
         subject: use letters, digits, `_`, `-` and `.` between tokens, such as `_INBOX_app1`"
    )]
    InboxPrefix(String),
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
    if let Some(prefix) = inbox_prefix(settings)? {
        opts = opts.custom_inbox_prefix(prefix);
    }
    Ok(opts
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None))
}

/// The user and password (or token) written in the URL (`nats://user:password@host:4222`,
/// `nats://token@host:4222`), when the settings name no credentials of their own: the client
/// library does not read them from the URL itself.
fn with_url_credentials(
    opts: ConnectOptions,
    settings: &LlmbusSettings,
    url: &str,
) -> ConnectOptions {
    let configured = settings.nats_user.is_some()
        || settings.nats_token.is_some()
        || settings.nats_nkey.is_some()
        || settings.nats_creds_file.is_some();
    let first = url.split(',').next().unwrap_or_default().trim();
    let Ok(addr) = first.parse::<async_nats::ServerAddr>() else {
        return opts;
    };
    match (configured, addr.username(), addr.password()) {
        (false, Some(user), Some(password)) => {
            opts.user_and_password(percent_decoded(user), percent_decoded(password))
        }
        (false, Some(token), None) => opts.token(percent_decoded(token)),
        _ => opts,
    }
}

/// `url` fit to print: the password (or token) in each server's user info is `***`.
pub fn redacted(url: &str) -> String {
    url.split(',')
        .map(|one| match one.split_once("://") {
            Some((scheme, rest)) => {
                let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                match rest[..end].rsplit_once('@') {
                    Some((userinfo, host)) => {
                        let user = match userinfo.split_once(':') {
                            Some((user, _)) => format!("{user}:***"),
                            None => "***".to_string(),
                        };
                        format!("{scheme}://{user}@{host}{}", &rest[end..])
                    }
                    None => one.to_string(),
                }
            }
            None => one.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `%XX` escapes decoded (a URL's user info is percent-encoded).
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The inbox prefix: `llmbus.nats_inbox_prefix`, else `NATS_INBOX_PREFIX`, else none (the
/// client's `_INBOX`).
fn inbox_prefix(settings: &LlmbusSettings) -> Result<Option<String>, ConnectError> {
    let Some(prefix) = settings
        .nats_inbox_prefix
        .clone()
        .or_else(|| std::env::var("NATS_INBOX_PREFIX").ok())
        .filter(|p| !p.is_empty())
    else {
        return Ok(None);
    };
    let token_ok = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$')
    };
    if prefix.split('.').all(token_ok) {
        Ok(Some(prefix))
    } else {
        Err(ConnectError::InboxPrefix(prefix))
    }
}

/// The servers of a URL list: `nats://a:4222,nats://b:4222` (spaces around the commas are
/// allowed) is two. async-nats takes a single string as one address, so a list must be split.
/// `None` when one of them is not a NATS URL (connecting to the text then says why).
pub fn servers(url: &str) -> Option<Vec<async_nats::ServerAddr>> {
    let list: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect::<Option<_>>()?;
    (!list.is_empty()).then_some(list)
}

/// Connects (to any server of a comma-separated list), failing fast when the server does not
/// answer at first.
pub async fn connect(
    settings: &LlmbusSettings,
    url_override: Option<&str>,
    name: &str,
) -> Result<Client, ConnectError> {
    let url = url(settings, url_override);
    let opts = with_url_credentials(options(settings, name).await?, settings, &url);
    let opts = opts.event_callback(|e| async move {
        tracing::info!(event = %e, "NATS connection event");
    });
    let connected = match servers(&url) {
        Some(list) => opts.connect(list).await,
        None => opts.connect(&url).await,
    };
    connected.map_err(|source| ConnectError::Connect {
        url: redacted(&url),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::{percent_decoded, redacted, servers};

    #[test]
    fn a_comma_separated_url_is_every_server_of_the_list() {
        let list = servers("nats://127.0.0.1:4222, nats://127.0.0.1:4223,nats://b:4224").unwrap();
        let ports: Vec<u16> = list.iter().map(|a| a.port()).collect();
        assert_eq!(ports, [4222, 4223, 4224]);
        assert_eq!(servers("nats://127.0.0.1:4222").unwrap().len(), 1);
        assert!(servers("nats://127.0.0.1:4222,nats://x:notaport").is_none());
        assert!(servers("").is_none());
    }

    #[test]
    fn urls_print_without_their_passwords() {
        assert_eq!(
            redacted("nats://app1:s3cret@nats:4222"),
            "nats://app1:***@nats:4222"
        );
        assert_eq!(redacted("nats://tok3n@nats"), "nats://***@nats");
        assert_eq!(
            redacted("nats://a:b@x:1,nats://y:2"),
            "nats://a:***@x:1,nats://y:2"
        );
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }

    #[test]
    fn user_info_is_percent_decoded() {
        assert_eq!(percent_decoded("p%40ss%3Aw0rd"), "p@ss:w0rd");
        assert_eq!(percent_decoded("plain"), "plain");
        assert_eq!(percent_decoded("50%"), "50%");
        assert_eq!(percent_decoded("%zz"), "%zz");
    }
}
