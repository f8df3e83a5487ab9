//! Publishing known publications into many channels through the server API
//! before a measurement: what `history` reads back and what `recovery`'s
//! clients miss. Not measured itself; only counted for the progress line.
//!
//! Knows the server API's publish and the payload format; nothing of what
//! the scenario does with the publications afterwards.

use std::net::IpAddr;
use std::sync::Arc;

use super::BenchError;
use super::payload;
use super::stats::{Count, Progress};
use super::target::Herald;

/// Server API connections publishing at once.
pub const WORKERS: usize = 32;

/// What to publish: `per_channel` publications (payload sequence numbers
/// 1..=per_channel, `size` bytes) into each of `channels` channels, channel
/// `c` named `name(c)`.
pub struct Fill<N> {
    pub label: &'static str,
    pub quiet: bool,
    pub channels: usize,
    pub per_channel: u64,
    pub size: usize,
    pub name: N,
}

/// Publishes `fill` on up to [`WORKERS`] connections (worker `w` takes
/// channels w, w + WORKERS, …, each channel's publications in order), worker
/// `w` from `source(w)`; fails on the first refused publish.
pub async fn run<N>(
    herald: &Herald,
    fill: Fill<N>,
    source: impl Fn(usize) -> Option<IpAddr>,
) -> Result<(), BenchError>
where
    N: Fn(usize) -> String + Clone + Send + 'static,
{
    let published = Arc::new(Count::default());
    let progress = {
        let (published, total) = (published.clone(), fill.per_channel * fill.channels as u64);
        Progress::start(fill.label.into(), fill.quiet, move || {
            format!("{} / {total} published", published.get())
        })
    };
    let mut workers = Vec::new();
    for w in 0..WORKERS.min(fill.channels) {
        let mut api = herald.api(source(w)).await?;
        let published = published.clone();
        let (channels, per_channel, size, name) = (
            fill.channels,
            fill.per_channel,
            fill.size,
            fill.name.clone(),
        );
        workers.push(tokio::spawn(async move {
            for c in (w..channels).step_by(WORKERS) {
                for s in 1..=per_channel {
                    api.publish_raw(&name(c), &payload::encode(s, size))
                        .await
                        .map_err(|e| e.to_string())?;
                    published.add(1);
                }
            }
            Ok::<_, String>(())
        }));
    }
    for w in workers {
        w.await
            .map_err(|e| BenchError::Internal(format!("publisher task: {e}")))?
            .map_err(|e| BenchError::Server(format!("publish: {e}")))?;
    }
    progress.finish().await;
    Ok(())
}
