//! Opening many connections: loopback source addresses, the concurrency of
//! connects, and telling a system limit (descriptors, ports, memory) from a
//! server problem when a connect fails.
//!
//! Each loopback source address (127.0.0.2, 127.0.0.3, …) has its own
//! ephemeral port range (about 28k ports with the default
//! `net.ipv4.ip_local_port_range`), so spreading sockets over several of them
//! lifts the ~28k ceiling on connections to one server address.
//!
//! Knows nothing of the protocols: it runs a connect function many times.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::BenchError;
use herald_client::ClientError;

/// Connections per loopback source address the bench aims for: well under
/// the ~28k ephemeral ports of one address, leaving room for TIME_WAIT.
const PER_SOURCE: usize = 10_000;
/// Most source addresses used (127.0.0.2 … 127.0.0.201).
const MAX_SOURCES: usize = 200;

/// The loopback source addresses connections are spread over, round-robin.
#[derive(Debug, Clone)]
pub struct Sources(Vec<IpAddr>);

impl Sources {
    /// `count` addresses, or enough for `connections` when `count` is None.
    pub fn new(count: Option<usize>, connections: usize) -> Self {
        let n = count
            .unwrap_or(connections.div_ceil(PER_SOURCE) + 1)
            .clamp(1, MAX_SOURCES);
        Self(
            (0..n)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
                .collect(),
        )
    }

    /// The source of connection number `i`.
    pub fn pick(&self, i: usize) -> IpAddr {
        self.0[i % self.0.len()]
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// What stopped connection attempts, named for the operator.
pub fn explain_os_error(code: i32, opened: usize) -> Option<String> {
    let fds = herald::limits::fd_limit()
        .map(|l| format!("soft {} / hard {}", l.soft, l.hard))
        .unwrap_or_else(|_| "unknown".into());
    let ports = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join("–"))
        .unwrap_or_default();
    let text = match code {
        libc::EMFILE => format!(
            "file descriptors: this process hit RLIMIT_NOFILE ({fds}) after {opened} connections; \
             raise the hard limit (`ulimit -Hn`, LimitNOFILE=, docker --ulimit nofile=) or give the bench CAP_SYS_RESOURCE so it raises it itself"
        ),
        libc::ENFILE => format!(
            "file descriptors: the system-wide table (fs.file-max) is full after {opened} connections"
        ),
        libc::EADDRNOTAVAIL | libc::EADDRINUSE => format!(
            "ephemeral ports: no free local port after {opened} connections \
             (ip_local_port_range {ports} per source address); use more --sources"
        ),
        libc::ENOMEM | libc::ENOBUFS => {
            format!("memory: the kernel refused socket memory after {opened} connections")
        }
        _ => return None,
    };
    Some(text)
}

/// Opens `n` connections with `open(i)`, at most `concurrency` at a time,
/// counting them in `opened`. Returns them in index order and how long
/// opening all took. The first failure stops the rest; a system limit is
/// named.
pub async fn open_all<T, F, Fut>(
    n: usize,
    concurrency: usize,
    opened: Arc<super::stats::Count>,
    open: F,
) -> Result<(Vec<T>, Duration), BenchError>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, ClientError>> + Send + 'static,
{
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let open = Arc::new(open);
    let mut set = JoinSet::new();
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut failure = None;
    'spawn: for i in 0..n {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BenchError::Internal("connect permits closed".into()))?;
        // Reap what finished, to stop at the first failure.
        while let Some(done) = set.try_join_next() {
            if let Err(e) = file(done, &mut out, &opened) {
                failure = Some(e);
                break 'spawn;
            }
        }
        let open = open.clone();
        set.spawn(async move {
            let r = open(i).await;
            drop(permit);
            (i, r)
        });
    }
    if failure.is_some() {
        set.abort_all();
    }
    while let Some(done) = set.join_next().await {
        if failure.is_none()
            && let Err(e) = file(done, &mut out, &opened)
        {
            failure = Some(e);
            set.abort_all();
        }
    }
    if let Some(e) = failure {
        let count = opened.get() as usize;
        return Err(
            match e.os_error().and_then(|c| explain_os_error(c, count)) {
                Some(limit) => BenchError::Limit(limit),
                None => BenchError::Connect {
                    opened: count,
                    source: e,
                },
            },
        );
    }
    let all: Vec<T> = out.into_iter().flatten().collect();
    if all.len() != n {
        return Err(BenchError::Internal(format!(
            "opened {} of {n} connections",
            all.len()
        )));
    }
    Ok((all, started.elapsed()))
}

type Done<T> = Result<(usize, Result<T, ClientError>), tokio::task::JoinError>;

/// Files a finished connect, or returns why it failed.
fn file<T>(
    done: Done<T>,
    out: &mut [Option<T>],
    opened: &super::stats::Count,
) -> Result<(), ClientError> {
    match done {
        Ok((i, Ok(c))) => {
            out[i] = Some(c);
            opened.add(1);
            Ok(())
        }
        Ok((_, Err(e))) => Err(e),
        // An aborted task after a failure, or a panic in a connect.
        Err(e) => Err(ClientError::BadFrame(format!("connect task ended: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_cover_the_connections() {
        assert_eq!(Sources::new(None, 10).len(), 2);
        assert_eq!(Sources::new(None, 50_000).len(), 6);
        assert_eq!(Sources::new(Some(3), 50_000).len(), 3);
        let s = Sources::new(Some(2), 0);
        assert_eq!(s.pick(0).to_string(), "127.0.0.2");
        assert_eq!(s.pick(3).to_string(), "127.0.0.3");
        assert!(
            explain_os_error(libc::EMFILE, 5)
                .unwrap()
                .contains("file descriptors")
        );
        assert!(explain_os_error(libc::ECONNREFUSED, 5).is_none());
    }
}
