//! A 3-node nats-server cluster on loopback for the cluster tests: each node
//! with JetStream (its own store dir), a client port, a monitoring port and a
//! route port, all routes to all. Nodes can be `kill -9`ed and started again
//! on the same ports and store. Every node is killed when the handle drops.
//!
//! Knows nothing of Herald: only how to run, probe and stop the nodes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use super::eventually;
use super::process::{free_port, signal};

/// One node's fixed ports and store.
pub struct ClusterNode {
    pub name: String,
    pub port: u16,
    pub http_port: u16,
    pub route_port: u16,
    config: PathBuf,
    child: Option<Child>,
}

impl ClusterNode {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(super::nats_server_bin())
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start a cluster nats-server");
        self.child = Some(child);
    }

    /// `/connz` of this node: the names of the client connections it holds.
    pub async fn client_names(&self) -> Vec<String> {
        let url = format!("http://127.0.0.1:{}/connz?limit=1024", self.http_port);
        let Ok(resp) = reqwest::get(url).await else {
            return Vec::new();
        };
        let v: Value = resp.json().await.unwrap_or_default();
        v["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    }
}

pub struct NatsCluster {
    pub nodes: Vec<ClusterNode>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream answers on each (a meta
    /// leader is elected).
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("cluster temp dir");
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::new();
        for (i, route_port) in route_ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let (port, http_port) = (free_port(), free_port());
            let store = dir.path().join(&name);
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &config,
                node_config(&name, port, http_port, *route_port, &routes, &store),
            )
            .expect("write node config");
            nodes.push(ClusterNode {
                name,
                port,
                http_port,
                route_port: *route_port,
                config,
                child: None,
            });
        }
        for n in &mut nodes {
            n.spawn();
        }
        let cluster = Self { nodes, _dir: dir };
        for i in 0..3 {
            cluster.wait_ready(i).await;
        }
        cluster
    }

    /// All client URLs, comma-separated (a `nats_url` naming every node).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(ClusterNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until node `i` accepts clients and answers JetStream requests.
    pub async fn wait_ready(&self, i: usize) {
        let url = self.nodes[i].url();
        eventually(
            &format!("cluster node {} serves JetStream", self.nodes[i].name),
            Duration::from_secs(30),
            || {
                let url = url.clone();
                async move {
                    let client = async_nats::connect(&url).await.ok()?;
                    let js = async_nats::jetstream::new(client);
                    js.query_account().await.ok().map(|_| ())
                }
            },
        )
        .await;
    }

    /// SIGKILLs node `i` (no goodbye to clients or routes) and waits until
    /// its client port refuses connections.
    pub async fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let pid = node
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("cluster node is running");
        signal(pid, "KILL");
        if let Some(mut child) = node.child.take() {
            let _ = child.wait().await;
        }
        super::port_refuses(node.port).await;
    }

    /// Starts node `i` again on its ports and store; waits until it serves.
    pub async fn start_again(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.wait_ready(i).await;
    }

    /// Which node holds a client connection named `name` (e.g.
    /// `herald-serve`), if any.
    pub async fn node_of(&self, name: &str) -> Option<usize> {
        for (i, n) in self.nodes.iter().enumerate() {
            if n.client_names().await.iter().any(|c| c == name) {
                return Some(i);
            }
        }
        None
    }
}

fn node_config(
    name: &str,
    port: u16,
    http_port: u16,
    route_port: u16,
    routes: &str,
    store: &Path,
) -> String {
    format!(
        "server_name: {name}\n\
         listen: 127.0.0.1:{port}\n\
         http: 127.0.0.1:{http_port}\n\
         jetstream {{ store_dir: \"{store}\" }}\n\
         cluster {{\n  name: herald-test\n  listen: 127.0.0.1:{route_port}\n  routes: [{routes}]\n}}\n",
        store = store.display(),
    )
}
