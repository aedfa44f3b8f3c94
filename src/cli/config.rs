//! `llmbus config push|show|history|rollback`: the cluster's config in JetStream KV
//! ([`crate::cluster::config_store`]).
//!
//! These commands connect like the other client commands (`--nats-url`, else `NATS_URL`, else
//! `nats://127.0.0.1:4222`; credentials go in the URL, `nats://user:pass@host:4222`). `push`
//! checks the file before it connects, so a refused file needs no server. `show` prints the
//! text exactly as pushed on stdout (`llmbus config show > config.yaml` gives the file back)
//! and what it is on stderr; `--json` prints one JSON document instead.
//!
//! Who may push or roll back: with `--master-key` (or `LLMBUS_MASTER_KEY`), the request goes
//! to the workers on `llm.admin.config.push|rollback` ([`crate::runtime::admin`]), which check
//! the key and write the bucket themselves; any NATS user allowed to publish there can do it.
//! Without it the command writes the bucket directly, which takes the workers' NATS
//! permissions (`$JS.API.>`, `$KV.>`): the only way for the first push, when no worker runs.

use std::{path::PathBuf, time::Duration};

use async_nats::HeaderMap;
use bytes::Bytes;
use serde_json::json;

use super::Res;
use crate::{
    client::{ClientError, LlmClient},
    cluster::config_store::{
        AdminPush, AdminReply, AdminRollback, ConfigStore, PushError, PushOptions, Stored,
        validate, who,
    },
    config::LlmbusSettings,
    nats,
    wire::{Subjects, headers},
};

/// How long an admin request may take (a worker validates the config and writes the bucket).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The subject prefix when none is given.
const DEFAULT_PREFIX: &str = "llm";

/// `llmbus config ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConfigCommand {
    /// Check a config file and store it as the cluster's config.
    ///
    /// Every `llmbus serve` without --config serves it. `os.environ/NAME` references are stored
    /// as written and resolved on each worker; a file with a problem `llmbus check` would
    /// report is refused, and so is a secret written as a literal.
    Push {
        /// The LiteLLM-style config file.
        file: PathBuf,
        /// The subject prefix whose workers serve it (else the file's llmbus.subject_prefix,
        /// else llm).
        #[arg(long)]
        prefix: Option<String>,
        /// Store it even though it writes a key, the master key, a token or a credential in a
        /// URL as a literal (anyone who may read the KV bucket can read them).
        #[arg(long)]
        allow_literal_secrets: bool,
        /// Push through the workers with the cluster's master key (they check it and write the
        /// bucket); without it, the bucket is written directly, which needs the workers' NATS
        /// permissions.
        #[arg(long, env = "LLMBUS_MASTER_KEY", hide_env_values = true)]
        master_key: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the cluster's config (the text on stdout, what it is on stderr).
    Show {
        /// An earlier revision instead of the current one.
        #[arg(long)]
        revision: Option<u64>,
        /// Subject prefix.
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
        /// Print the revision as JSON (with the text).
        #[arg(long)]
        json: bool,
    },
    /// List the revisions kept (the last 64), newest first.
    History {
        /// Subject prefix.
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
        /// Print them as JSON (without the texts).
        #[arg(long)]
        json: bool,
    },
    /// Make an earlier revision's config the cluster's config again (as a new revision).
    Rollback {
        /// The revision to go back to (see `llmbus config history`).
        revision: u64,
        /// Subject prefix.
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
        /// Roll back even to a text that writes a secret as a literal.
        #[arg(long)]
        allow_literal_secrets: bool,
        /// Roll back through the workers with the cluster's master key (see `push`).
        #[arg(long, env = "LLMBUS_MASTER_KEY", hide_env_values = true)]
        master_key: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `llmbus config` command.
pub async fn run(url: Option<String>, command: ConfigCommand) -> Res {
    match command {
        ConfigCommand::Push {
            file,
            prefix,
            allow_literal_secrets,
            master_key,
            json,
        } => {
            let options = PushOptions {
                allow_literal_secrets,
            };
            push(url, file, prefix, options, master_key, json).await
        }
        ConfigCommand::Show {
            revision,
            prefix,
            json,
        } => show(url, &prefix, revision, json).await,
        ConfigCommand::History { prefix, json } => history(url, &prefix, json).await,
        ConfigCommand::Rollback {
            revision,
            prefix,
            allow_literal_secrets,
            master_key,
            json,
        } => {
            let request = AdminRollback {
                revision,
                allow_literal_secrets,
            };
            rollback(url, &prefix, request, master_key, json).await
        }
    }
}

/// Connects and opens the store of `prefix`.
pub async fn open(
    url: Option<String>,
    prefix: &str,
) -> Result<ConfigStore, Box<dyn std::error::Error>> {
    let client = nats::connect(&LlmbusSettings::default(), url.as_deref(), "llmbus-config").await?;
    Ok(ConfigStore::open(client, prefix, crate::cluster::Replicas::Auto).await?)
}

async fn push(
    url: Option<String>,
    file: PathBuf,
    prefix: Option<String>,
    options: PushOptions,
    master_key: Option<String>,
    json: bool,
) -> Res {
    let source = file.display().to_string();
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("{source}: cannot read the config file: {e}"))?;
    // Checked before connecting: a refused file needs no server, and a secret in it never
    // leaves this machine.
    let valid = validate(&text, &source, &options)?;
    let prefix = prefix.unwrap_or_else(|| valid.prefix.clone());
    let through_workers = match &master_key {
        Some(key) => {
            let request = AdminPush {
                text: text.clone(),
                source: source.clone(),
                pushed_by: who(),
                allow_literal_secrets: options.allow_literal_secrets,
            };
            let subject = Subjects::new(prefix.as_str()).admin_config_push();
            admin(url.as_deref(), subject, key, serde_json::to_vec(&request)?).await?
        }
        None => None,
    };
    let reply = match through_workers {
        Some(reply) => reply,
        None => {
            let store = open_to_write(url, &prefix).await?;
            let before = store.current().await?;
            let revision = store
                .push_with(&text, &source, &options)
                .await
                .map_err(direct_write_failed)?;
            AdminReply {
                revision,
                bucket: store.bucket().to_owned(),
                same_as: before
                    .filter(|b| b.fingerprint == valid.fingerprint)
                    .map(|b| b.revision),
                rollback_of: None,
                fingerprint: valid.fingerprint,
                deployments: valid.deployments,
                notes: valid.notes,
            }
        }
    };
    if json {
        let mut v = serde_json::to_value(&reply)?;
        v["source"] = json!(source);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "pushed {source} as revision {} of the cluster's config ({}): fingerprint {}, {} \
         deployment{}{}",
        reply.revision,
        reply.bucket,
        reply.fingerprint,
        reply.deployments,
        if reply.deployments == 1 { "" } else { "s" },
        reply.same_as.map_or(String::new(), |r| format!(
            ", the same text as revision {r}"
        )),
    );
    for note in &reply.notes {
        println!("note: {note}");
    }
    Ok(())
}

/// One admin request with the master key: the worker's answer, its error as ours, or `None`
/// when no worker serves the subject (the caller then writes the bucket directly, which only
/// the workers' NATS permissions allow: the first push, before any worker runs).
async fn admin(
    url: Option<&str>,
    subject: String,
    key: &str,
    body: Vec<u8>,
) -> Result<Option<AdminReply>, Box<dyn std::error::Error>> {
    let client = nats::connect(&LlmbusSettings::default(), url, "llmbus-config").await?;
    let mut h = HeaderMap::new();
    h.insert(headers::AUTHORIZATION, format!("Bearer {key}").as_str());
    let answer = LlmClient::new(client, "llm")
        .request(subject.clone(), h, Bytes::from(body), ADMIN_TIMEOUT)
        .await;
    let reply = match answer {
        Ok(reply) => reply,
        Err(ClientError::NoResponders(_)) => {
            eprintln!(
                "no llmbus worker serves {subject} (none runs yet, or they serve another \
                 --prefix): writing the config bucket directly, which only the workers' NATS \
                 user may do"
            );
            return Ok(None);
        }
        Err(e) => return Err(format!("{subject}: {e}").into()),
    };
    if reply.status == 200 {
        let ok = serde_json::from_slice(&reply.body)
            .map_err(|e| format!("{subject}: an answer that is not the admin reply: {e}"))?;
        return Ok(Some(ok));
    }
    let message = reply.json()["error"]["message"].as_str().map_or_else(
        || String::from_utf8_lossy(&reply.body).into_owned(),
        str::to_owned,
    );
    Err(format!("{subject} answered {}: {message}", reply.status).into())
}

/// A direct write that failed: a refusal as it is; a store error with who may write.
fn direct_write_failed(e: PushError) -> Box<dyn std::error::Error> {
    match e {
        PushError::Store(s) => who_may_write(s.to_string()),
        other => other.into(),
    }
}

/// The store, opened to be written directly; an error says who may.
async fn open_to_write(
    url: Option<String>,
    prefix: &str,
) -> Result<ConfigStore, Box<dyn std::error::Error>> {
    open(url, prefix)
        .await
        .map_err(|e| who_may_write(e.to_string()))
}

/// `error`, and who may write the config bucket directly.
fn who_may_write(error: String) -> Box<dyn std::error::Error> {
    format!(
        "{error}\nwriting the cluster's config directly takes the workers' NATS permissions \
         (the JetStream API and $KV.>; in deploy/nats/nats-server.conf only the `llmbus` user \
         has them): connect as that user, or push through the workers with --master-key (or \
         LLMBUS_MASTER_KEY)"
    )
    .into()
}

async fn show(url: Option<String>, prefix: &str, revision: Option<u64>, json: bool) -> Res {
    let store = open(url, prefix).await?;
    let stored = match revision {
        Some(r) => store.revision(r).await?.ok_or_else(|| {
            format!(
                "revision {r} is not in the cluster's config history ({}); `llmbus config \
                 history` lists the revisions kept",
                store.bucket()
            )
        })?,
        None => store.current().await?.ok_or_else(|| empty(&store))?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&stored)?);
    } else {
        eprintln!("# {}", describe(&stored));
        print!("{}", stored.text);
    }
    Ok(())
}

async fn history(url: Option<String>, prefix: &str, json: bool) -> Res {
    let store = open(url, prefix).await?;
    let all = store.history().await?;
    if json {
        let list: Vec<_> = all
            .iter()
            .map(|s| {
                json!({
                    "revision": s.revision,
                    "source": s.source,
                    "pushed_at_ms": s.pushed_at_ms,
                    "pushed_by": s.pushed_by,
                    "fingerprint": s.fingerprint,
                    "rollback_of": s.rollback_of,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if all.is_empty() {
        return Err(empty(&store).into());
    }
    println!(
        "{:<9} {:<20} {:<17} {:<24} SOURCE",
        "REVISION", "PUSHED (UTC)", "FINGERPRINT", "BY"
    );
    for (i, s) in all.iter().enumerate() {
        let mut source = s.source.clone();
        if let Some(r) = s.rollback_of {
            source.push_str(&format!(" (rollback to {r})"));
        }
        if i == 0 {
            source.push_str("  <- current");
        }
        println!(
            "{:<9} {:<20} {:<17} {:<24} {source}",
            s.revision,
            utc(s.pushed_at_ms),
            s.fingerprint,
            s.pushed_by
        );
    }
    Ok(())
}

async fn rollback(
    url: Option<String>,
    prefix: &str,
    request: AdminRollback,
    master_key: Option<String>,
    json: bool,
) -> Res {
    let revision = request.revision;
    let through_workers = match &master_key {
        Some(key) => {
            let subject = Subjects::new(prefix).admin_config_rollback();
            admin(url.as_deref(), subject, key, serde_json::to_vec(&request)?).await?
        }
        None => None,
    };
    let reply = match through_workers {
        Some(reply) => reply,
        None => {
            let store = open_to_write(url, prefix).await?;
            let options = PushOptions {
                allow_literal_secrets: request.allow_literal_secrets,
            };
            let before = store.current().await?;
            let new = store
                .rollback_with(revision, &options)
                .await
                .map_err(direct_write_failed)?;
            let stored = store
                .revision(new)
                .await?
                .ok_or_else(|| format!("revision {new} vanished from {}", store.bucket()))?;
            let everything = PushOptions {
                allow_literal_secrets: true,
            };
            let valid = validate(&stored.text, &stored.source, &everything)?;
            AdminReply {
                revision: new,
                bucket: store.bucket().to_owned(),
                same_as: before
                    .filter(|b| b.fingerprint == stored.fingerprint)
                    .map(|b| b.revision),
                rollback_of: Some(revision),
                fingerprint: stored.fingerprint,
                deployments: valid.deployments,
                notes: valid.notes,
            }
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(());
    }
    println!(
        "rolled back: revision {} is revision {revision}'s config (fingerprint {})",
        reply.revision, reply.fingerprint
    );
    Ok(())
}

/// The error for a store nothing was pushed to.
fn empty(store: &ConfigStore) -> String {
    format!(
        "the cluster has no config yet (JetStream KV bucket {}): push one with `llmbus config \
         push FILE`",
        store.bucket()
    )
}

/// `revision 7, pushed 2026-01-02 03:04:05 UTC by me@host from config.yaml, fingerprint ...`.
pub fn describe(s: &Stored) -> String {
    let rollback = s
        .rollback_of
        .map_or(String::new(), |r| format!(" (rollback to revision {r})"));
    format!(
        "revision {}, pushed {} UTC by {} from {}{rollback}, fingerprint {}",
        s.revision,
        utc(s.pushed_at_ms),
        if s.pushed_by.is_empty() {
            "unknown"
        } else {
            &s.pushed_by
        },
        s.source,
        s.fingerprint
    )
}

/// Epoch milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn epoch_milliseconds_print_as_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        // 2000-02-29 12:34:56 UTC, a leap day.
        assert_eq!(utc(951_827_696_000), "2000-02-29 12:34:56");
        // 2024-12-31 23:59:59.999 UTC.
        assert_eq!(utc(1_735_689_599_999), "2024-12-31 23:59:59");
    }
}
