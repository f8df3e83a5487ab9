//! Publish load through the server API and its verdict: every publish with
//! its own idempotency key, retried with the same key until acknowledged;
//! then history read back and compared with the acknowledgements (lost,
//! duplicated, not dense). Shared by the crash and cluster tests.
//!
//! Knows nothing of which processes run or what is killed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::process::Api;

/// One acknowledged publish.
#[derive(Debug, Clone)]
pub struct Ack {
    pub channel: String,
    pub key: String,
    pub offset: u64,
    /// When the attempt that succeeded was sent, and when its reply came.
    pub sent: Instant,
    pub acked: Instant,
    pub attempts: u32,
}

/// Publishes through the API with `key`, retrying with the same key after
/// any failure (HTTP error or `{"error"}`) until a success reply.
pub async fn publish_retrying(api: &Api, channel: String, key: String, data: Value) -> Ack {
    let body = json!({"channel": channel, "data": data, "idempotency_key": key});
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let sent = Instant::now();
        if let Ok(v) = api.call("publish", &body).await
            && let Some(offset) = v["result"]["offset"].as_u64()
        {
            return Ack {
                channel,
                key,
                offset,
                sent,
                acked: Instant::now(),
                attempts,
            };
        }
        assert!(
            Instant::now() < deadline,
            "publish {key} never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publisher tasks: each sends its messages spread over the channels, up to
/// `window` in flight, every one with its own idempotency key.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub publishers: usize,
    pub channels: usize,
    pub per_publisher: usize,
    pub window: usize,
}

impl Load {
    pub fn total(&self) -> usize {
        self.publishers * self.per_publisher
    }

    pub fn channel(&self, i: usize) -> String {
        format!("load-{}", i % self.channels)
    }

    pub fn spawn(&self, api: &Api, acked: &Arc<AtomicUsize>) -> Vec<JoinHandle<Vec<Ack>>> {
        self.spawn_as("", api, acked)
    }

    /// [`Load::spawn`] with keys starting with `prefix`, so two loads on the
    /// same channels never share a key.
    pub fn spawn_as(
        &self,
        prefix: &str,
        api: &Api,
        acked: &Arc<AtomicUsize>,
    ) -> Vec<JoinHandle<Vec<Ack>>> {
        (0..self.publishers)
            .map(|p| {
                let (load, api, acked) = (*self, api.clone(), acked.clone());
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    futures::stream::iter(0..load.per_publisher)
                        .map(|m| {
                            let key = format!("{prefix}p{p}-m{m}");
                            let channel = load.channel(p + m * load.publishers);
                            let data = json!({"key": key, "p": p, "m": m});
                            let (api, acked) = (&api, &acked);
                            async move {
                                let ack = publish_retrying(api, channel, key, data).await;
                                acked.fetch_add(1, Ordering::SeqCst);
                                ack
                            }
                        })
                        .buffer_unordered(load.window)
                        .collect()
                        .await
                })
            })
            .collect()
    }
}

pub async fn join_all(tasks: Vec<JoinHandle<Vec<Ack>>>) -> Vec<Ack> {
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await.expect("publisher task"));
    }
    acks
}

/// What history holds compared with the acknowledgements.
#[derive(Debug, Default)]
pub struct Verdict {
    pub acked: usize,
    pub stored: usize,
    /// Acknowledged (channel, offset) not holding that publication.
    pub lost: usize,
    /// Publications stored more than once (same key).
    pub duplicated: usize,
    /// Channels whose offsets are not exactly 1..n.
    pub not_dense: usize,
}

impl Verdict {
    /// Panics unless all `acked` publishes are stored exactly once, at
    /// their acknowledged offsets, with every channel dense.
    pub fn assert_clean(&self, acked: usize) {
        assert_eq!(self.acked, acked, "{self:?}");
        assert_eq!(self.lost, 0, "{self:?}");
        assert_eq!(self.duplicated, 0, "{self:?}");
        assert_eq!(self.not_dense, 0, "{self:?}");
        assert_eq!(self.stored, self.acked, "{self:?}");
    }
}

/// Every stored publication of `channel`, oldest first.
pub async fn history(api: &Api, channel: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let since = out.last().map_or(0, |p| p["offset"].as_u64().unwrap_or(0));
        let r = api
            .ok(
                "history",
                &json!({"channel": channel, "limit": 1000, "since": {"offset": since}}),
                Duration::from_secs(20),
            )
            .await;
        let page = r["publications"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

pub async fn verify(api: &Api, acks: &[Ack], channels: &[String]) -> Verdict {
    let mut by_channel: HashMap<&str, Vec<&Ack>> = HashMap::new();
    for a in acks {
        by_channel.entry(&a.channel).or_default().push(a);
    }
    let mut v = Verdict {
        acked: acks.len(),
        ..Verdict::default()
    };
    for ch in channels {
        let pubs = history(api, ch).await;
        v.stored += pubs.len();
        if pubs
            .iter()
            .enumerate()
            .any(|(i, p)| p["offset"].as_u64() != Some(i as u64 + 1))
        {
            v.not_dense += 1;
        }
        let mut keys: HashMap<&str, usize> = HashMap::new();
        for p in &pubs {
            *keys
                .entry(p["data"]["key"].as_str().unwrap_or(""))
                .or_default() += 1;
        }
        v.duplicated += keys.values().map(|n| n - 1).sum::<usize>();
        for a in by_channel.get(ch.as_str()).into_iter().flatten() {
            let at = pubs.get(a.offset as usize - 1);
            if at.and_then(|p| p["data"]["key"].as_str()) != Some(a.key.as_str()) {
                v.lost += 1;
            }
        }
    }
    v
}
