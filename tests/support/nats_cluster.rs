//! A real NATS cluster for one test: N `nats-server` processes of one binary, joined by
//! routes, with clustered JetStream, each with its own name (`n1`, `n2`, ...), free loopback
//! client and cluster ports and its own store in a temporary directory. Nodes can be killed
//! and started again on the same ports and store; every node is killed when the cluster is
//! dropped.
//!
//! [`NatsCluster::start`] returns once the cluster has formed and JetStream answers in
//! clustered mode: a stream with one replica per node can be created (the "Server is ready"
//! line of each node only says that node listens). [`NatsCluster::start_nodes`] starts nodes
//! from a command of the caller's own, for configuration files such as the shipped
//! `deploy/nats/cluster/` ones. Each node's log lines are kept ([`NatsCluster::logs`]), for
//! failure messages.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, stream};
use llmbus::local_nats::free_port;

use super::nats_server::{Flavour, version_of};

/// How long a node may take to say "Server is ready", and the cluster to offer clustered
/// JetStream (a busy 2-core machine runs many tests at once).
pub const FORMING: Duration = Duration::from_secs(60);

/// The cluster name every node of [`NatsCluster::start`] shares.
pub const CLUSTER_NAME: &str = "llmbus-test";

/// What a node is started with: everything a command line or a config file needs.
#[derive(Debug, Clone)]
pub struct NodePlan {
    /// Its place in the cluster, from 0.
    pub index: usize,
    /// Its `server_name` in [`NatsCluster::start`]'s config: `n1`, `n2`, ...
    pub name: String,
    /// Its client port (on 127.0.0.1).
    pub port: u16,
    /// Its cluster (route) port (on 127.0.0.1).
    pub cluster_port: u16,
    /// Its monitoring port (on 127.0.0.1), so that nodes never share one from a config file.
    pub monitor_port: u16,
    /// A folder of its own, kept across restarts: config files go here.
    pub dir: PathBuf,
    /// Its JetStream store, inside `dir`.
    pub store: PathBuf,
    /// Every node's route URL (`nats://127.0.0.1:<cluster port>`), its own included.
    pub routes: Vec<String>,
}

/// Makes the command that starts one node (the cluster sets its stdio and spawns it).
pub type NodeCommand = Box<dyn Fn(&NodePlan) -> Command + Send + Sync>;

/// One node: its plan, its process while it runs, and its log.
struct Node {
    plan: NodePlan,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

/// A running cluster of nats-server nodes; every node is killed when dropped.
pub struct NatsCluster {
    nodes: Vec<Node>,
    command: NodeCommand,
    /// What the binary says with `--version`: `2.9.10`, `2.15.1`, ...
    pub version: String,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `nodes` nodes of `flavour` with clustered JetStream and waits until a stream
    /// with `nodes` replicas can be created. Panics when the flavour is not on this machine
    /// (take the list from `nats_server::flavours`) or the cluster does not form in
    /// [`FORMING`].
    pub async fn start(flavour: Flavour, nodes: usize) -> Self {
        let binary = flavour
            .binary()
            .unwrap_or_else(|| panic!("{flavour:?} nats-server is not on this machine"));
        let cluster = Self::start_nodes(&binary, nodes, Box::new(plain_node(binary.clone())));
        let client = cluster.client(0).await;
        cluster.wait_for_jetstream(&client).await;
        cluster
    }

    /// Starts `nodes` nodes with `command` and waits for each one's "Server is ready" line; a
    /// node that exits first (a free port taken by another process meanwhile) makes the whole
    /// cluster start again on other ports, up to five times. Wait for clustered JetStream with
    /// [`NatsCluster::wait_for_jetstream`].
    pub fn start_nodes(binary: &Path, nodes: usize, mut command: NodeCommand) -> Self {
        assert!(nodes >= 1, "a cluster of no node");
        let version = version_of(binary).unwrap_or_default();
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("a folder for the cluster");
            let mut cluster = Self {
                nodes: plans(dir.path(), nodes)
                    .into_iter()
                    .map(|plan| Node {
                        plan,
                        child: None,
                        log: Arc::default(),
                    })
                    .collect(),
                command,
                version: version.clone(),
                _dir: dir,
            };
            match (0..nodes).try_for_each(|i| cluster.launch(i)) {
                Ok(()) => return cluster,
                Err(why) => last = format!("{why}\n{}", cluster.logs()),
            }
            command = cluster.into_command();
        }
        panic!(
            "a {nodes}-node cluster of nats-server {version} ({}) did not start: {last}",
            binary.display()
        );
    }

    /// Waits until JetStream answers in clustered mode: until a stream with one replica per
    /// node can be created through `client` (which is then deleted). Panics with every node's
    /// log after [`FORMING`].
    pub async fn wait_for_jetstream(&self, client: &async_nats::Client) {
        // Requests go unanswered until the nodes elect a metadata leader: ask often.
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(client.clone());
        let config = stream::Config {
            name: "CLUSTER_FORMED".into(),
            subjects: vec!["cluster.formed".into()],
            num_replicas: self.nodes.len(),
            storage: stream::StorageType::Memory,
            ..Default::default()
        };
        let deadline = Instant::now() + FORMING;
        loop {
            match js.create_stream(config.clone()).await {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => panic!(
                    "clustered JetStream did not answer within {FORMING:?}: {e}\n{}",
                    self.logs()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        js.delete_stream("CLUSTER_FORMED")
            .await
            .expect("delete the stream that proved the cluster formed");
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `nats://127.0.0.1:<port>` of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].plan.port)
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// Node `i`'s plan: its name, ports and folders.
    pub fn plan(&self, i: usize) -> &NodePlan {
        &self.nodes[i].plan
    }

    /// The index of the node whose `server_name` is `name`.
    pub fn node_named(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.plan.name == name)
    }

    /// A new connection to node `i` (it may move to another node when `i` goes down: the
    /// client learns the others from the server).
    pub async fn client(&self, i: usize) -> async_nats::Client {
        async_nats::connect(self.url(i))
            .await
            .unwrap_or_else(|e| panic!("connect to node {i} ({}): {e}", self.url(i)))
    }

    /// A connection that knows every node and keeps reconnecting through outages.
    pub async fn client_all(&self) -> async_nats::Client {
        super::nats_server::reconnecting(self.urls()).await
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on the same ports and store, trying for 5 s while a port is still
    /// held by the old process's socket.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.nodes[i]
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push("--- restarted by the test ---".into());
        let mut last = String::new();
        for _ in 0..50 {
            match self.launch(i) {
                Ok(()) => return,
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("node {i} did not restart: {last}\n{}", self.logs());
    }

    /// Whether node `i`'s process is alive.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i]
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The `server_name` of the node leading `stream`'s replicas, as `client` hears it
    /// (`None` while there is no leader or the stream cannot be read).
    pub async fn stream_leader(&self, client: &async_nats::Client, stream: &str) -> Option<String> {
        let info = stream_info(client, stream).await?;
        info.cluster?.leader
    }

    /// How many replicas `stream` is configured with (0 when it cannot be read).
    pub async fn replicas(&self, client: &async_nats::Client, stream: &str) -> usize {
        stream_info(client, stream)
            .await
            .map_or(0, |info| info.config.num_replicas)
    }

    /// Every node's last log lines, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = n.log.lock().unwrap_or_else(|p| p.into_inner());
                let tail = &log[log.len().saturating_sub(40)..];
                format!("--- {} ---\n{}", n.plan.name, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Spawns node `i` and waits for its "Server is ready"; the log so far when it exits
    /// first.
    fn launch(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let mut child = (self.command)(&node.plan)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", node.plan.name))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let ready = keep_log(stderr, node.log.clone());
        match ready.recv_timeout(FORMING) {
            Ok(()) => {
                node.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{} did not become ready: {e}", node.plan.name))
            }
        }
    }

    /// Kills every node and hands back the command, for another attempt.
    fn into_command(mut self) -> NodeCommand {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        std::mem::replace(&mut self.command, Box::new(|_| Command::new("false")))
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A plan per node: distinct free ports, a folder each, and the routes to all of them.
fn plans(dir: &Path, nodes: usize) -> Vec<NodePlan> {
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < nodes * 3 {
        let port = free_port().expect("a free loopback port");
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let routes: Vec<String> = ports[nodes..nodes * 2]
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    (0..nodes)
        .map(|i| {
            let name = format!("n{}", i + 1);
            let dir = dir.join(&name);
            std::fs::create_dir_all(&dir).expect("a node's folder");
            NodePlan {
                index: i,
                store: dir.join("jetstream"),
                dir,
                name,
                port: ports[i],
                cluster_port: ports[nodes + i],
                monitor_port: ports[nodes * 2 + i],
                routes: routes.clone(),
            }
        })
        .collect()
}

/// The command of [`NatsCluster::start`]'s nodes: a config file written into the node's
/// folder (clustered JetStream needs a `server_name` and a cluster name, which only a file
/// sets on every release).
fn plain_node(binary: PathBuf) -> impl Fn(&NodePlan) -> Command + Send + Sync {
    move |plan| {
        let conf = plan.dir.join("nats-server.conf");
        std::fs::write(&conf, plain_config(plan)).expect("write a node's config");
        let mut cmd = Command::new(&binary);
        cmd.arg("-c").arg(conf);
        cmd
    }
}

/// A node's config: its name and ports, JetStream in its own store, routes to every node.
fn plain_config(plan: &NodePlan) -> String {
    let routes: Vec<String> = plan.routes.iter().map(|r| format!("    {r:?}")).collect();
    format!(
        "server_name: {name}\n\
         listen: \"127.0.0.1:{port}\"\n\
         http: \"127.0.0.1:{monitor}\"\n\
         jetstream {{\n  store_dir: {store:?}\n}}\n\
         cluster {{\n  name: {CLUSTER_NAME}\n  listen: \"127.0.0.1:{cluster}\"\n  routes: [\n{routes}\n  ]\n}}\n",
        name = plan.name,
        port = plan.port,
        monitor = plan.monitor_port,
        store = plan.store,
        cluster = plan.cluster_port,
        routes = routes.join("\n"),
    )
}

/// Reads a node's stderr to the end into `log` (so it never blocks on a full pipe); the
/// receiver hears once, when the node says "Server is ready", and is dropped unheard when it
/// exits first.
fn keep_log(stderr: std::process::ChildStderr, log: Arc<Mutex<Vec<String>>>) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("Server is ready")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
            log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });
    rx
}

/// `$JS.API.STREAM.INFO.<stream>` through `client`; `None` when it does not answer within
/// 3 s (during an election: the caller asks again).
async fn stream_info(client: &async_nats::Client, stream: &str) -> Option<stream::Info> {
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(3))
        .build(client.clone());
    let stream = js.get_stream(stream).await.ok()?;
    Some(stream.cached_info().clone())
}
