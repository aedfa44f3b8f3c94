//! `llmbus check FILE [--store]`: the config's problems, found without starting anything
//! ([`crate::preflight`]); with `--store`, also the NATS server's store as that config would
//! use it: each of llmbus's buckets and streams that exists with fewer replicas than
//! `llmbus.replicas` wants (by default 3 on a cluster of 3 or more servers) is a problem, one
//! that does not exist yet a note (a worker creates it).

use std::path::Path;

use super::Res;
use crate::{
    cluster::{Replicas, jetstream, store},
    config::Config,
    nats, preflight,
    wire::Subjects,
};

/// What the store check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StoreReport {
    /// Buckets and streams short of replicas.
    pub problems: Vec<String>,
    /// What is worth knowing (the replicas wanted, what does not exist yet).
    pub notes: Vec<String>,
}

/// `llmbus check FILE`, and with `store` the store on the config's NATS server (`url` first).
pub async fn run(path: &Path, store: bool, url: Option<String>) -> Res {
    let offline = preflight::check_command(path);
    if !store {
        return offline.map_err(Into::into);
    }
    let config = Config::load(path)?.config;
    let client = nats::connect(&config.llmbus, url.as_deref(), "llmbus-check").await?;
    let subjects = Subjects::new(config.llmbus.subject_prefix.clone());
    let replicas = Replicas::from_setting(config.llmbus.replicas);
    let report = examine_store(&client, &subjects, replicas).await?;
    let at = nats::url(&config.llmbus, url.as_deref());
    for n in &report.notes {
        println!("note: {n}");
    }
    if report.problems.is_empty() {
        println!("{at}: the store is OK");
    } else {
        println!("{at}: {} problem(s) in the store:", report.problems.len());
        for p in &report.problems {
            println!("  - {p}");
        }
    }
    offline?;
    if report.problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{at}: {} problem(s) in the store", report.problems.len()).into())
    }
}

/// Compares every llmbus bucket and stream on `client`'s server with `replicas`.
pub async fn examine_store(
    client: &async_nats::Client,
    subjects: &Subjects,
    replicas: Replicas,
) -> Result<StoreReport, crate::cluster::ClusterError> {
    let js = jetstream(client.clone(), std::time::Duration::from_secs(5));
    let names = store::names(subjects);
    let found = store::survey(&js, &names).await?;
    let size = store::cluster_size(&client.server_info());
    let wanted = replicas.wanted(client, &found);
    let mut report = StoreReport::default();
    report.notes.push(format!(
        "the server is one of {size} in its cluster (that answer now): buckets and streams \
         want {wanted} replica(s){}",
        match replicas {
            Replicas::Auto =>
                " (the default for that cluster, or the store's own; set \
                                llmbus.replicas to choose)",
            Replicas::Exactly(_) => " (llmbus.replicas)",
        }
    ));
    match replicas {
        Replicas::Exactly(n) if n > size => report.problems.push(format!(
            "llmbus.replicas is {n} but the server is one of {size}: JetStream cannot place \
             that many copies, so the buckets cannot be created"
        )),
        Replicas::Auto if wanted > size => report.notes.push(format!(
            "only {size} server(s) of the cluster answer: a bucket lost now cannot be created \
             again with {wanted} replicas until the others are back"
        )),
        _ => {}
    }
    for name in &names {
        match found.get(name) {
            Some(&has) => report
                .problems
                .extend(store::compare(name, has, wanted).map(|s| s.advice())),
            None => report
                .notes
                .push(format!("{name} does not exist yet (a worker creates it)")),
        }
    }
    Ok(report)
}
