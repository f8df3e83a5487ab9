//! A keyspace on the CQL node the suite runs against (`HERALD_SCYLLA_NODES`,
//! set by scripts/test.sh, which starts a Cassandra node), shared by every
//! Herald process of a test: a fresh keyspace per test created by the real
//! `herald migrate`, and the spec of each role on it. Tests that need
//! separate writer and sync processes use it (the embedded store is one
//! process's).
//!
//! Knows nothing of what a test checks.

use std::io::Write as _;
use std::time::Duration;

use super::process::{HeraldProcess, Spec};

/// The CQL contact points, or `None` after saying on the real stderr (shown
/// by `cargo test` even for passing tests) why `test` is skipped.
pub fn scylla_nodes(test: &str) -> Option<String> {
    match std::env::var("HERALD_SCYLLA_NODES") {
        Ok(n) if !n.trim().is_empty() => Some(n),
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped: HERALD_SCYLLA_NODES not set (scripts/test.sh starts a Cassandra \
                 node and sets it; or scripts/cassandra.sh start)"
            );
            None
        }
    }
}

/// A fresh keyspace on the CQL node, created by `herald migrate`; the spec
/// maker for every role on it.
pub struct SharedStore {
    pub nodes: String,
    pub keyspace: String,
}

impl SharedStore {
    pub async fn create(nodes: String, prefix: &str) -> Self {
        let keyspace = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let s = Self { nodes, keyspace };
        let mut migrate = HeraldProcess::spawn(s.spec("migrate", "migrate", "nats://127.0.0.1:1"));
        let status = migrate.wait(Duration::from_secs(120)).await;
        assert!(
            status.success(),
            "herald migrate: {status}\n{}",
            migrate.log()
        );
        s
    }

    /// `role` on the shared keyspace (4 ingest partitions).
    pub fn spec(&self, role: &'static str, name: &str, nats_url: &str) -> Spec {
        Spec::new(role, name, nats_url)
            .set("store", "scylla")
            .set("scylla_nodes", &self.nodes)
            .set("scylla_keyspace", &self.keyspace)
            .set("scylla_request_timeout", "10s")
            .set("ingest_partitions", 4)
    }
}
