//! The process's open-file limit (`RLIMIT_NOFILE`): every client connection
//! is a file descriptor, so a server left at the common soft limit of 1024
//! refuses connections long before memory or CPU run out. Both `herald serve`
//! and `herald bench` raise the soft limit to the hard limit at start; the
//! bench tool may also ask for more than the hard limit, which only a
//! privileged process (CAP_SYS_RESOURCE) gets, up to the kernel's
//! `fs.nr_open`.
//!
//! Knows nothing of sockets or roles: it reads and sets one limit.

/// The soft and hard open-file limits of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
}

/// Why a limit could not be read or raised.
#[derive(Debug, thiserror::Error)]
#[error("RLIMIT_NOFILE: {0}")]
pub struct LimitError(#[from] std::io::Error);

/// The current open-file limits.
pub fn fd_limit() -> Result<FdLimit, LimitError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(FdLimit {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

fn set_fd_limit(soft: u64, hard: u64) -> Result<(), LimitError> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard limit; returns the limits in
/// force afterwards.
pub fn raise_fd_limit() -> Result<FdLimit, LimitError> {
    let now = fd_limit()?;
    if now.soft < now.hard {
        set_fd_limit(now.hard, now.hard)?;
    }
    fd_limit()
}

/// Raises the soft limit to at least `wanted` descriptors: to the hard limit,
/// and past it when the process may (up to `fs.nr_open`). Returns the limits
/// in force afterwards, which may still be below `wanted` (the caller says
/// so).
pub fn raise_fd_limit_to(wanted: u64) -> Result<FdLimit, LimitError> {
    let now = raise_fd_limit()?;
    if now.soft >= wanted {
        return Ok(now);
    }
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(now.hard);
    let target = wanted.min(ceiling);
    if target > now.hard {
        // Fails with EPERM without CAP_SYS_RESOURCE: keep what we have.
        let _ = set_fd_limit(target, target);
    }
    fd_limit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit() {
        let after = raise_fd_limit().unwrap();
        assert_eq!(after.soft, after.hard);
        let again = raise_fd_limit_to(after.soft).unwrap();
        assert_eq!(again, after);
    }

    #[test]
    fn asking_past_the_hard_limit_never_lowers_it() {
        // Passing the hard limit needs CAP_SYS_RESOURCE (root in a container
        // may lack it): either the limit rises, or soft stays at hard.
        let before = raise_fd_limit().unwrap();
        let wanted = before.hard + 1000;
        let after = raise_fd_limit_to(wanted).unwrap();
        assert!(
            after.soft >= wanted || after == before,
            "{before:?} → {after:?}"
        );
    }
}
