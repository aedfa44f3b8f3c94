//! `llmbus config push|show|history|rollback`: the cluster's config in JetStream KV
//! ([`crate::cluster::config_store`]).
//!
//! These commands connect like the other client commands (`--nats-url`, else `NATS_URL`, else
//! `nats://127.0.0.1:4222`; credentials go in the URL, `nats://user:pass@host:4222`). `push`
//! checks the file before it connects, so a refused file needs no server. `show` prints the
//! text exactly as pushed on stdout (`llmbus config show > config.yaml` gives the file back)
//! and what it is on stderr; `--json` prints one JSON document instead.

use std::path::PathBuf;

use serde_json::json;

use super::Res;
use crate::{
    cluster::config_store::{ConfigStore, PushOptions, Stored, validate},
    config::LlmbusSettings,
    nats,
};

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
        /// Store it even though it writes a key, the master key or a NATS credential as a
        /// literal (anyone who may read the KV bucket can read them).
        #[arg(long)]
        allow_literal_secrets: bool,
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
            json,
        } => push(url, file, prefix, allow_literal_secrets, json).await,
        ConfigCommand::Show {
            revision,
            prefix,
            json,
        } => show(url, &prefix, revision, json).await,
        ConfigCommand::History { prefix, json } => history(url, &prefix, json).await,
        ConfigCommand::Rollback {
            revision,
            prefix,
            json,
        } => rollback(url, &prefix, revision, json).await,
    }
}

/// Connects and opens the store of `prefix`.
pub async fn open(
    url: Option<String>,
    prefix: &str,
) -> Result<ConfigStore, Box<dyn std::error::Error>> {
    let client = nats::connect(&LlmbusSettings::default(), url.as_deref(), "llmbus-config").await?;
    Ok(ConfigStore::open(client, prefix).await?)
}

async fn push(
    url: Option<String>,
    file: PathBuf,
    prefix: Option<String>,
    allow_literal_secrets: bool,
    json: bool,
) -> Res {
    let source = file.display().to_string();
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("{source}: cannot read the config file: {e}"))?;
    let options = PushOptions {
        allow_literal_secrets,
    };
    // Checked before connecting: a refused file needs no server.
    let valid = validate(&text, &source, &options)?;
    let prefix = prefix.unwrap_or_else(|| valid.prefix.clone());
    let store = open(url, &prefix).await?;
    let before = store.current().await?;
    let revision = store.push_with(&text, &source, &options).await?;
    let same_as = before
        .filter(|b| b.fingerprint == valid.fingerprint)
        .map(|b| b.revision);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "revision": revision,
                "bucket": store.bucket(),
                "source": source,
                "fingerprint": valid.fingerprint,
                "deployments": valid.deployments,
                "same_as": same_as,
                "notes": valid.notes,
            }))?
        );
        return Ok(());
    }
    println!(
        "pushed {source} as revision {revision} of the cluster's config ({}): fingerprint {}, {} \
         deployment{}{}",
        store.bucket(),
        valid.fingerprint,
        valid.deployments,
        if valid.deployments == 1 { "" } else { "s" },
        same_as.map_or(String::new(), |r| format!(
            ", the same text as revision {r}"
        )),
    );
    for note in &valid.notes {
        println!("note: {note}");
    }
    Ok(())
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

async fn rollback(url: Option<String>, prefix: &str, revision: u64, json: bool) -> Res {
    let store = open(url, prefix).await?;
    let new = store.rollback(revision).await?;
    let stored = store
        .revision(new)
        .await?
        .ok_or_else(|| format!("revision {new} vanished from {}", store.bucket()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stored)?);
    } else {
        println!(
            "rolled back: revision {new} is revision {revision}'s config ({}, fingerprint {})",
            stored.source, stored.fingerprint
        );
    }
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
