//! Membership and shared cooldowns in JetStream KV, on Debian's nats-server 2.9 and on a
//! current 2.1x: workers see each other join, leave and die; a worker that starts during a
//! cooldown knows it at once. Figures are printed with `--nocapture`.

use std::time::{Duration, Instant};

use crate::support::{
    nats_flavour::{FlavourServer, flavours},
    poll,
};
use futures::StreamExt;
use llmbus::cluster::{
    epoch_ms,
    health::HealthBoard,
    members::{MemberInfo, MemberView, Members, MembersOptions},
};

const PATIENCE: Duration = Duration::from_secs(30);

fn opts() -> MembersOptions {
    MembersOptions {
        heartbeat: Duration::from_millis(500),
        stale_after: 3,
        max_age: Duration::from_secs(15),
        replicas: llmbus::cluster::Replicas::Auto,
    }
}

async fn join(server: &FlavourServer, id: &str, groups: &[&str]) -> Members {
    Members::start_with(
        server.client().await,
        "llm",
        MemberInfo::new(id, groups.iter().map(|g| g.to_string()).collect(), "cfg-1"),
        opts(),
    )
    .await
    .expect("join the cluster")
}

/// Waits until `members`' view satisfies `ok`; returns how long it took.
async fn until(members: &Members, ok: impl Fn(&MemberView) -> bool) -> Duration {
    let start = Instant::now();
    let mut changed = members.changed();
    loop {
        if ok(&members.snapshot()) {
            return start.elapsed();
        }
        tokio::time::timeout(PATIENCE, changed.changed())
            .await
            .expect("the view changed in time")
            .expect("membership is running");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_that_say_nothing_new_leave_the_view_alone() {
    // Each worker hears every other's heartbeats: rebuilding its view (and waking whoever
    // follows it) for each one grew with the square of the cluster.
    for flavour in flavours() {
        let server = FlavourServer::start(flavour);
        let a = join(&server, "a", &["gpt-4o"]).await;
        let b = join(&server, "b", &["gpt-4o"]).await;
        until(&a, |v| v.len() == 2).await;
        let before = *a.changed().borrow();
        // Ten heartbeats or more of each, as the bucket counts them.
        let js = async_nats::jetstream::new(server.client().await);
        let written = |js: async_nats::jetstream::Context| async move {
            let mut stream = js.get_stream("KV_LLM_WORKERS").await.unwrap();
            stream.info().await.unwrap().state.last_sequence
        };
        let first = written(js.clone()).await;
        let what = format!("{flavour:?}: twenty heartbeats");
        poll::until(PATIENCE, &what, || async {
            written(js.clone()).await >= first + 20
        })
        .await;
        // What a heartbeat's watcher did with them is done once a later write is seen.
        b.update(vec!["gpt-4o".into(), "claude".into()], "cfg-1".into())
            .await
            .unwrap();
        until(&a, |v| v.serves("claude")).await;
        let after = *a.changed().borrow();
        assert_eq!(
            after,
            before + 1,
            "{flavour:?}: the view changed {} times for one real change",
            after - before
        );
        assert_eq!(a.snapshot().len(), 2, "{flavour:?}: nobody went stale");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_see_each_other_join_leave_and_die() {
    for flavour in flavours() {
        let server = FlavourServer::start(flavour);
        let a = join(&server, "a", &["gpt-4o"]).await;
        assert!(
            a.snapshot().members.contains_key("a"),
            "a sees itself at once"
        );
        let b = join(&server, "b", &["claude", "gpt-4o"]).await;
        // The joiner knows the others when `start` returns.
        assert_eq!(b.snapshot().len(), 2);
        let join_seen = until(&a, |v| v.members.contains_key("b")).await;
        let view = a.snapshot();
        assert_eq!(view.serving("gpt-4o").count(), 2);
        assert_eq!(
            view.serving("claude")
                .map(|m| m.worker.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert!(!view.serves("mistral"));
        assert_eq!(view.fingerprints().len(), 1);

        // A config change is announced at once.
        b.update(vec!["claude".into()], "cfg-2".into())
            .await
            .unwrap();
        until(&a, |v| v.fingerprints().len() == 2).await;
        assert_eq!(a.snapshot().serving("gpt-4o").count(), 1);

        // A clean leave.
        let left = Instant::now();
        b.leave().await.unwrap();
        until(&a, |v| !v.members.contains_key("b")).await;
        let leave_seen = left.elapsed();

        // A crash: the process stops heartbeating without a word.
        let c = join(&server, "c", &["gpt-4o"]).await;
        until(&a, |v| v.members.contains_key("c")).await;
        let died = Instant::now();
        drop(c);
        until(&a, |v| !v.members.contains_key("c")).await;
        let death_seen = died.elapsed();

        // A worker that starts after the crash never sees the dead one.
        let d = join(&server, "d", &["gpt-4o"]).await;
        assert!(
            !d.snapshot().members.contains_key("c"),
            "a late joiner does not count a dead worker: {:?}",
            d.snapshot()
        );
        assert!(d.snapshot().members.contains_key("a"));
        eprintln!(
            "[members {flavour:?} {}] join seen after {:.0} ms, clean leave after {:.0} ms, \
             kill after {:.2} s (heartbeat {} ms, dropped after {} missed)",
            server.version,
            join_seen.as_secs_f64() * 1e3,
            leave_seen.as_secs_f64() * 1e3,
            death_seen.as_secs_f64(),
            opts().heartbeat.as_millis(),
            opts().stale_after,
        );
        drop((a, d));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_starts_during_a_cooldown_knows_it_at_once() {
    for flavour in flavours() {
        let server = FlavourServer::start(flavour);
        let a = HealthBoard::open(
            server.client().await,
            "llm",
            "worker-a",
            llmbus::cluster::Replicas::Auto,
        )
        .await
        .unwrap();
        // A running worker follows the board.
        let b = HealthBoard::open(
            server.client().await,
            "llm",
            "worker-b",
            llmbus::cluster::Replicas::Auto,
        )
        .await
        .unwrap();
        let mut b_watch = Box::pin(b.watch().await.unwrap());
        assert!(b.initial().await.unwrap().is_empty());

        let until_ms = epoch_ms() + 60_000;
        let published = Instant::now();
        assert!(
            a.publish("azure/gpt-4o.eu", until_ms, "RateLimit")
                .await
                .unwrap()
        );
        let seen = tokio::time::timeout(PATIENCE, b_watch.next())
            .await
            .expect("the running worker heard of the cooldown")
            .unwrap();
        let gossip = published.elapsed();
        assert_eq!(seen.deployment, "azure/gpt-4o.eu");
        assert_eq!(seen.until_ms, until_ms);
        assert_eq!(seen.worker, "worker-a");

        // A shorter cooldown decided elsewhere does not cut the longer one short.
        assert!(
            !a.publish("azure/gpt-4o.eu", until_ms - 30_000, "Timeout")
                .await
                .unwrap()
        );
        // A longer one replaces it.
        assert!(
            a.publish("azure/gpt-4o.eu", until_ms + 1_000, "Timeout")
                .await
                .unwrap()
        );
        // An ended cooldown of another deployment is stored but not in force.
        a.publish("old", epoch_ms() - 1, "Timeout").await.unwrap();

        // The late joiner starts now and knows at once.
        let started = Instant::now();
        let late = HealthBoard::open(
            server.client().await,
            "llm",
            "worker-late",
            llmbus::cluster::Replicas::Auto,
        )
        .await
        .unwrap();
        let known = late.initial().await.unwrap();
        let startup = started.elapsed();
        assert_eq!(known.len(), 1, "{known:?}");
        assert_eq!(known[0].deployment, "azure/gpt-4o.eu");
        assert_eq!(known[0].until_ms, until_ms + 1_000);
        assert_eq!(known[0].reason, "Timeout");
        assert!(known[0].remaining(epoch_ms()).unwrap() > Duration::from_secs(50));
        eprintln!(
            "[health {flavour:?} {}] a cooldown reached a running worker in {:.1} ms; a late \
             joiner read the cooldowns in force in {:.1} ms at start-up",
            server.version,
            gossip.as_secs_f64() * 1e3,
            startup.as_secs_f64() * 1e3,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_watch_survives_a_server_restart() {
    for flavour in flavours() {
        let mut server = FlavourServer::start(flavour);
        let b = HealthBoard::open(
            server.client().await,
            "llm",
            "b",
            llmbus::cluster::Replicas::Auto,
        )
        .await
        .unwrap();
        let mut watch = Box::pin(b.watch().await.unwrap());
        assert!(b.initial().await.unwrap().is_empty());
        tokio::task::block_in_place(|| server.restart());
        // Written while the watcher reconnects, or after: it arrives either way.
        let a = HealthBoard::open(
            server.client().await,
            "llm",
            "a",
            llmbus::cluster::Replicas::Auto,
        )
        .await
        .unwrap();
        a.publish("d1", epoch_ms() + 60_000, "RateLimit")
            .await
            .unwrap();
        let seen = tokio::time::timeout(PATIENCE, watch.next())
            .await
            .expect("the watch came back after the restart")
            .unwrap();
        assert_eq!(seen.deployment, "d1");
    }
}
