//! A network namespace joined to the root namespace by veth pairs, for the
//! partition tests: a process started inside it (see `Spec::in_netns`) reaches
//! the root namespace only through these links, and [`Netns::cut`] sets the
//! root end of one link down, so the kernel silently drops every packet on
//! it (no RST, no FIN: a real partition, not a closed socket) while the
//! process stays alive; [`Netns::heal`] sets it up again.
//!
//! Each link is a /30 in 198.18.0.0/16 (RFC 2544's benchmarking range, not
//! routed anywhere), picked from the test process's pid so two test
//! processes do not collide. Needs root and `ip netns` (iproute2);
//! [`Netns::create`] says visibly why it returns `None` otherwise. The
//! namespace and its veths are removed when the handle drops, also when the
//! test panics; leftovers of killed runs (a namespace named after a pid that
//! no longer runs) are removed before creating.
//!
//! Knows nothing of Herald or NATS.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};

/// One veth pair: `root_if` (address `root`) in the root namespace, its peer
/// (address `inside`) in the namespace.
pub struct Link {
    pub root_if: String,
    pub root: Ipv4Addr,
    pub inside: Ipv4Addr,
}

pub struct Netns {
    pub name: String,
    pub links: Vec<Link>,
}

/// iproute2's `ip`: /usr/sbin/ip where it usually is, else from PATH.
pub fn ip_bin() -> &'static str {
    if std::path::Path::new("/usr/sbin/ip").exists() {
        "/usr/sbin/ip"
    } else {
        "ip"
    }
}

fn ip(args: &[&str]) -> std::io::Result<Output> {
    Command::new(ip_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
}

/// Runs `ip args`; panics with its stderr when it fails.
fn ip_ok(args: &[&str]) {
    let out = ip(args).unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Netns {
    /// A namespace with `links` veth pairs (at most 2), each up with its
    /// addresses, and `lo` up inside; or `None` after saying on the real
    /// stderr (shown by `cargo test` even for passing tests) why `test` is
    /// skipped: not root, or `ip netns` does not work here.
    pub fn create(test: &str, links: usize) -> Option<Self> {
        assert!((1..=2).contains(&links), "at most two links per namespace");
        let skip = |why: String| {
            let _ = writeln!(std::io::stderr(), "{test}: skipped: {why}");
        };
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            skip("network namespaces need root (run the suite as root, as CI does)".into());
            return None;
        }
        remove_leftovers();
        let pid = std::process::id();
        let (name, veths) = names(pid, links);
        let ns = Self {
            name,
            links: veths
                .into_iter()
                .enumerate()
                .map(|(i, root_if)| {
                    let base = (pid % 8192) * 8 + u32::try_from(i).unwrap_or(0) * 4;
                    let addr = |host: u32| {
                        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + base + host)
                    };
                    Link {
                        root_if,
                        root: addr(1),
                        inside: addr(2),
                    }
                })
                .collect(),
        };
        ns.remove();
        match ip(&["netns", "add", &ns.name]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                skip(format!(
                    "`ip netns add` fails here: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                return None;
            }
            Err(e) => {
                skip(format!("cannot run {} (iproute2): {e}", ip_bin()));
                return None;
            }
        }
        // From here on a failure is the test's: `ns` drops and cleans up.
        ip_ok(&["-n", &ns.name, "link", "set", "lo", "up"]);
        for (i, link) in ns.links.iter().enumerate() {
            let peer = format!("hn{pid}l{i}");
            ip_ok(&[
                "link",
                "add",
                &link.root_if,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                &ns.name,
            ]);
            ip_ok(&[
                "addr",
                "add",
                &format!("{}/30", link.root),
                "dev",
                &link.root_if,
            ]);
            ip_ok(&["link", "set", &link.root_if, "up"]);
            ip_ok(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{}/30", link.inside),
                "dev",
                &peer,
            ]);
            ip_ok(&["-n", &ns.name, "link", "set", &peer, "up"]);
        }
        Some(ns)
    }

    /// Sets the root end of link `i` down: from now on every packet either
    /// way is dropped, silently.
    pub fn cut(&self, i: usize) {
        ip_ok(&["link", "set", &self.links[i].root_if, "down"]);
    }

    /// Sets the root end of link `i` up again.
    pub fn heal(&self, i: usize) {
        ip_ok(&["link", "set", &self.links[i].root_if, "up"]);
    }

    /// Deletes the veths (which deletes their peers too) and the namespace;
    /// errors (already gone) are ignored.
    fn remove(&self) {
        for link in &self.links {
            let _ = ip(&["link", "del", &link.root_if]);
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// The namespace and veth names of test process `pid`.
fn names(pid: u32, links: usize) -> (String, Vec<String>) {
    (
        format!("herald-test-{pid}"),
        (0..links).map(|i| format!("hr{pid}l{i}")).collect(),
    )
}

/// Removes the namespaces (and veths) of test processes that no longer run:
/// a run killed before its guards dropped.
fn remove_leftovers() {
    let Ok(out) = ip(&["netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(pid) = line
            .split_whitespace()
            .next()
            .and_then(|n| n.strip_prefix("herald-test-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let (name, veths) = names(pid, 2);
            for veth in veths {
                let _ = ip(&["link", "del", &veth]);
            }
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}
