//! `llmbus models`, `llmbus deployments` and `llmbus health`: questions to the workers on the
//! bus, answered on stdout (JSON for the first two, one line per worker for `health`).

use std::time::Duration;

use super::{Res, complete::connect_client};
use crate::{client::health, config::LlmbusSettings, nats, wire::Subjects};

/// Asks `subject(prefix)` with an empty request and prints the JSON reply.
pub async fn show(url: Option<String>, prefix: &str, subject: impl Fn(&Subjects) -> String) -> Res {
    let client = connect_client(url, prefix).await?;
    let reply = client
        .request(
            subject(client.subjects()),
            async_nats::HeaderMap::new(),
            bytes::Bytes::new(),
            Duration::from_secs(10),
        )
        .await?;
    println!("{}", serde_json::to_string_pretty(&reply.json())?);
    if let Some(configs) = reply.header(crate::wire::headers::CONFIGS) {
        eprintln!("warning: the workers serve different configs: {configs}");
    }
    Ok(())
}

/// `llmbus health`: exit 0 when at least one worker serves `<prefix>.completion`.
pub async fn health(url: Option<String>, prefix: &str, wait_ms: u64) -> Res {
    let settings = LlmbusSettings::default();
    let nats = nats::connect(&settings, url.as_deref(), "llmbus-health").await?;
    let workers = health::check(&nats, prefix, Duration::from_millis(wait_ms.max(1))).await?;
    for w in &workers {
        println!(
            "{}  llmbus {}  {}  jobs in flight: {}  config {}  limits {}{}",
            w.id,
            w.version,
            w.state,
            w.in_flight.map_or("?".to_string(), |n| n.to_string()),
            w.config.as_deref().unwrap_or("?"),
            w.limits_note
                .as_deref()
                .or(w.limits.as_deref())
                .unwrap_or("?"),
            if w.serves_prefix {
                String::new()
            } else {
                format!("  (does not serve {prefix}.completion)")
            }
        );
    }
    let mut configs: Vec<&str> = workers.iter().filter_map(|w| w.config.as_deref()).collect();
    configs.sort_unstable();
    configs.dedup();
    if configs.len() > 1 {
        println!(
            "warning: the workers serve {} different configs ({}): jobs for a model group only some \
             of them serve are handed to those",
            configs.len(),
            configs.join(", ")
        );
    }
    let local = workers.iter().filter(|w| w.limits_local()).count();
    if local > 0 {
        println!(
            "warning: {local} of {} workers enforce rpm/tpm limits locally, not shared with the \
             cluster: each of them lets a whole limit through on its own",
            workers.len()
        );
    }
    for w in workers.iter().filter(|w| w.capacity_lost.unwrap_or(0) > 0) {
        println!(
            "warning: worker {} lost capacity: {} calls counted in flight on its deployments while              it ran no job (a bug; see its error log); restart it to get them back",
            w.id,
            w.capacity_lost.unwrap_or(0)
        );
    }
    let ready = workers.iter().filter(|w| w.is_ready()).count();
    let completion = format!("{prefix}.completion");
    if ready > 0 {
        println!(
            "ready: {ready} of {} llmbus workers serve {completion}",
            workers.len()
        );
        return Ok(());
    }
    let at = nats::url(&settings, url.as_deref());
    if workers.is_empty() {
        return Err(format!("no llmbus worker answers $SRV.PING.llmbus on {at}").into());
    }
    Err(format!(
        "no llmbus worker is ready to serve {completion} on {at}: {} answer, none serving",
        workers.len()
    )
    .into())
}
