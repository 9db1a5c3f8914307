//! The process's file-descriptor limit (RLIMIT_NOFILE), raised at start-up.
//!
//! Every client is a socket, and the default soft limit (often 1024) would cap
//! `rowcast serve` far below the connections it is benchmarked at. The soft
//! limit may be raised up to the hard one without privileges, so it is.

/// Raises RLIMIT_NOFILE's soft limit to the hard limit, and as root (which may)
/// the hard limit too, to `fs.nr_open`: 50k client sockets need 50k descriptors.
/// Returns the soft limit now in force (0 if it could not be read). Failing to
/// raise it is not an error: the process keeps the limit it had.
// rlim_t is u64 on Linux/x86_64 but not on every target: keep the casts.
#[allow(clippy::unnecessary_cast)]
#[allow(unsafe_code)] // getrlimit/setrlimit: see the SAFETY notes
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if nr_open > lim.rlim_max as u64 {
        let want = libc::rlimit {
            rlim_cur: nr_open as libc::rlim_t,
            rlim_max: nr_open as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the struct we own; failure (not privileged) is harmless.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return nr_open;
        }
    }
    let want = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we own; on failure nothing changes.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
        lim.rlim_max as u64
    } else {
        lim.rlim_cur as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (soft, hard) "Max open files" of this process, as the kernel reports them.
    fn proc_limits() -> (String, String) {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let mut f = line["Max open files".len()..].split_whitespace();
        (f.next().unwrap().into(), f.next().unwrap().into())
    }

    /// After raising, the soft limit is the hard one and is what was returned;
    /// raising again changes nothing.
    #[test]
    fn soft_limit_ends_at_the_hard_limit() {
        let now = raise_nofile();
        let (soft, hard) = proc_limits();
        assert_eq!(soft, hard);
        assert_eq!(soft, now.to_string());
        assert_eq!(raise_nofile(), now);
    }
}
