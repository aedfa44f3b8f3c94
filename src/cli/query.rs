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
    for line in warnings(&workers) {
        println!("warning: {line}");
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

/// What `llmbus health` warns about, one line each: workers serving different configs, limits
/// kept locally, capacity lost, and the store's buckets and streams short of replicas or found
/// lost.
pub fn warnings(workers: &[health::WorkerStatus]) -> Vec<String> {
    let mut out = Vec::new();
    let mut configs: Vec<&str> = workers.iter().filter_map(|w| w.config.as_deref()).collect();
    configs.sort_unstable();
    configs.dedup();
    if configs.len() > 1 {
        out.push(format!(
            "the workers serve {} different configs ({}): jobs for a model group only some of \
             them serve are handed to those",
            configs.len(),
            configs.join(", ")
        ));
    }
    let local = workers.iter().filter(|w| w.limits_local()).count();
    if local > 0 {
        out.push(format!(
            "{local} of {} workers enforce rpm/tpm limits locally, not shared with the cluster: \
             each of them lets a whole limit through on its own",
            workers.len()
        ));
    }
    for w in workers.iter().filter(|w| w.capacity_lost.unwrap_or(0) > 0) {
        out.push(format!(
            "worker {} lost capacity: {} calls counted in flight on its deployments while it ran \
             no job (a bug; see its error log); restart it to get them back",
            w.id,
            w.capacity_lost.unwrap_or(0)
        ));
    }
    // The store is the cluster's, so every worker sees the same: each shortfall once.
    let mut short: Vec<&str> = workers
        .iter()
        .flat_map(|w| w.store_short.iter().map(String::as_str))
        .collect();
    short.sort_unstable();
    short.dedup();
    for s in short {
        out.push(format!(
            "{s}: losing the NATS node that holds it loses what it keeps (`llmbus check FILE \
             --store` lists them; `nats stream edit <name> --replicas N` raises them)"
        ));
    }
    for w in workers
        .iter()
        .filter(|w| w.store_recreated.unwrap_or(0) > 0)
    {
        out.push(format!(
            "worker {} found {} of llmbus's buckets and streams lost from the NATS store and \
             created them again (what they held is gone; see its log)",
            w.id,
            w.store_recreated.unwrap_or(0)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str) -> health::WorkerStatus {
        health::WorkerStatus {
            id: id.into(),
            version: "0".into(),
            state: "serving".into(),
            in_flight: Some(0),
            serves_prefix: true,
            config: Some("abc".into()),
            limits: Some("shared".into()),
            limits_note: None,
            clock_offset_ms: None,
            capacity_lost: Some(0),
            store_short: Vec::new(),
            store_recreated: Some(0),
        }
    }

    #[test]
    fn a_healthy_cluster_has_nothing_to_warn_about() {
        assert!(warnings(&[worker("a"), worker("b")]).is_empty());
    }

    #[test]
    fn each_warning_is_one_clean_line() {
        let mut a = worker("a");
        a.capacity_lost = Some(2);
        a.limits = Some("local".into());
        a.store_short = vec!["KV_LLM_QUOTA has 1 replica of the 3 wanted".into()];
        a.store_recreated = Some(1);
        let mut b = worker("b");
        b.config = Some("def".into());
        b.store_short = a.store_short.clone();
        let lines = warnings(&[a, b]);
        assert_eq!(lines.len(), 5, "{lines:#?}");
        for line in &lines {
            assert!(!line.contains("  ") && !line.contains('\n'), "{line:?}");
        }
        assert!(
            lines[2].starts_with("worker a lost capacity: 2 calls"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].starts_with("KV_LLM_QUOTA has 1 replica of the 3 wanted: losing"),
            "{}",
            lines[3]
        );
        assert!(
            lines[4].contains("found 1 of llmbus's buckets"),
            "{}",
            lines[4]
        );
    }
}
