//! The `llmbus usage tail` and `llmbus spend` commands: their arguments and what they run
//! (the logic is in [`crate::usage::tail`] and [`crate::usage::report`]).

use clap::{Args, Subcommand};

use crate::{
    config::LlmbusSettings,
    usage::{
        report::{self, parse_since},
        tail::{self, StatusFilter, TailOptions},
    },
    wire::{Subjects, usage::now_ms},
};

/// `llmbus usage ...`.
#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Follow the usage events live: one line per finished job.
    Tail(TailArgs),
}

/// `llmbus usage tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Only this model group.
    #[arg(long)]
    pub model_group: Option<String>,
    /// Only these jobs: `ok` (2xx), `error` (anything else) or one status such as 429.
    #[arg(long)]
    pub status: Option<StatusFilter>,
    /// Print each event as its JSON (schemas/usage-event.json), one per line.
    #[arg(long)]
    pub json: bool,
    /// Start this far back instead of with new events: a date (2025-01-31), `today`, or a
    /// duration such as 30m, 24h or 7d.
    #[arg(long)]
    pub since: Option<String>,
    /// Exit after printing this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Subject prefix.
    #[arg(long, default_value = "llm")]
    pub prefix: String,
}

/// `llmbus spend`.
#[derive(Debug, Args)]
pub struct SpendArgs {
    /// From this UTC day on: a date (2025-01-31), `today`, or a duration back from now such
    /// as 24h, 7d or 2w. Default: every day kept.
    #[arg(long)]
    pub since: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Subject prefix: the installation whose spend to read.
    #[arg(long, default_value = "llm")]
    pub prefix: String,
}

/// Runs `llmbus usage ...`.
pub async fn usage(nats_url: Option<String>, command: UsageCommand) -> Result<(), String> {
    match command {
        UsageCommand::Tail(args) => {
            let since_ms = match &args.since {
                Some(s) => Some(parse_since(s, now_ms()).map_err(|e| e.to_string())?.ms),
                None => None,
            };
            let client = connect(nats_url, "llmbus-usage-tail").await?;
            let options = TailOptions {
                model_group: args.model_group,
                status: args.status,
                json: args.json,
                since_ms,
                count: args.count,
            };
            let mut out = std::io::stdout();
            tail::tail(client, &Subjects::new(args.prefix), &options, &mut out)
                .await
                .map_err(|e| e.to_string())
        }
    }
}

/// Runs `llmbus spend`.
pub async fn spend(nats_url: Option<String>, args: SpendArgs) -> Result<(), String> {
    let since = match &args.since {
        Some(s) => Some(parse_since(s, now_ms()).map_err(|e| e.to_string())?),
        None => None,
    };
    let client = connect(nats_url, "llmbus-spend").await?;
    let report = report::spend(client, &Subjects::new(args.prefix), since)
        .await
        .map_err(|e| e.to_string())?;
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

async fn connect(url: Option<String>, name: &str) -> Result<async_nats::Client, String> {
    let settings = LlmbusSettings::default();
    crate::nats::connect(&settings, url.as_deref(), name)
        .await
        .map_err(|e| e.to_string())
}
