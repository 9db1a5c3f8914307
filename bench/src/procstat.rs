//! Process figures from `/proc`.
//!
//! The server runs as a separate process precisely so that its CPU time and
//! resident memory can be read here without the load generator's own mixed in.
//! User and kernel time are kept apart: the kernel's share of a delivery (the
//! `sendto`, TCP) is much the same for any server, user space is where servers differ.

use crate::BenchError;
use std::time::Duration;

/// CPU time and resident set of one process at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// User + system CPU time.
    pub cpu: Duration,
    /// User CPU time (`utime`).
    pub user: Duration,
    /// Kernel CPU time (`stime`).
    pub sys: Duration,
    /// `VmRSS`, bytes.
    pub rss: u64,
}

/// CPU time of a group of processes at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub user: Duration,
    pub sys: Duration,
}

impl CpuTimes {
    pub fn total(&self) -> Duration {
        self.user + self.sys
    }

    /// `self - earlier`, saturating at zero.
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user.saturating_sub(earlier.user),
            sys: self.sys.saturating_sub(earlier.sys),
        }
    }
}

/// Reads `/proc/<pid>/stat` (utime, stime) and `/proc/<pid>/status` (VmRSS).
pub fn sample(pid: u32) -> Result<ProcSample, BenchError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| BenchError::Proc(format!("/proc/{pid}/stat: {e}")))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| BenchError::Proc(format!("/proc/{pid}/status: {e}")))?;
    let s = parse_stat(&stat)?;
    Ok(ProcSample {
        cpu: s.user + s.sys,
        user: s.user,
        sys: s.sys,
        rss: parse_rss(&status)?,
    })
}

/// This process's own figures (the load generator).
pub fn sample_self() -> Result<ProcSample, BenchError> {
    sample(std::process::id())
}

/// CPU time of process `root` and all its direct children, as of now: the
/// root's own time, the time of its children that it has already reaped
/// (`cutime`, `cstime`), and that of its live children (found through the
/// parent pid in every `/proc/<pid>/stat`). For a PostgreSQL postmaster this
/// is the whole cluster: every backend and auxiliary process is its child, and
/// a backend that exits during a measurement is counted once reaped.
pub fn tree_cpu(root: u32) -> Result<CpuTimes, BenchError> {
    let own = std::fs::read_to_string(format!("/proc/{root}/stat"))
        .map_err(|e| BenchError::Proc(format!("/proc/{root}/stat: {e}")))?;
    let own = parse_stat(&own)?;
    let mut t = CpuTimes {
        user: own.user + own.child_user,
        sys: own.sys + own.child_sys,
    };
    for (_, s) in children_of(root)? {
        t.user += s.user;
        t.sys += s.sys;
    }
    Ok(t)
}

/// The live direct children of `root`, with their stat fields.
fn children_of(root: u32) -> Result<Vec<(u32, Stat)>, BenchError> {
    let dir = std::fs::read_dir("/proc").map_err(|e| BenchError::Proc(format!("/proc: {e}")))?;
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // a process may exit between the listing and the read: skip it
        let Some(s) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|text| parse_stat(&text).ok())
        else {
            continue;
        };
        if s.ppid == root {
            out.push((pid, s));
        }
    }
    Ok(out)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// The fields of `/proc/<pid>/stat` the bench reads.
struct Stat {
    ppid: u32,
    user: Duration,
    sys: Duration,
    child_user: Duration,
    child_sys: Duration,
}

/// Fields 4 (ppid), 14–17 (utime, stime, cutime, cstime) follow the
/// parenthesised command name, which may itself contain spaces, so parsing
/// starts after the last `)`.
fn parse_stat(stat: &str) -> Result<Stat, BenchError> {
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| BenchError::Proc("malformed stat".into()))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): field n is index n - 3
    let num = |i: usize| -> Result<u64, BenchError> {
        f.get(i)
            .and_then(|v| v.parse::<i64>().ok())
            .map(|v| v.max(0) as u64)
            .ok_or_else(|| BenchError::Proc("malformed stat".into()))
    };
    let ticks = |i: usize| -> Result<Duration, BenchError> {
        Ok(Duration::from_secs_f64(
            num(i)? as f64 / clock_ticks() as f64,
        ))
    };
    Ok(Stat {
        ppid: num(1)? as u32,
        user: ticks(11)?,
        sys: ticks(12)?,
        child_user: ticks(13)?,
        child_sys: ticks(14)?,
    })
}

fn parse_rss(status: &str) -> Result<u64, BenchError> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| BenchError::Proc("no VmRSS".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let stat = "42 (a b) S 7 1 1 0 -1 0 0 0 0 0 250 50 30 20 20 0 1 0 1 1 1";
        let s = parse_stat(stat).unwrap();
        let hz = clock_ticks() as f64;
        assert_eq!(s.ppid, 7);
        assert!((s.user.as_secs_f64() - 250.0 / hz).abs() < 1e-9);
        assert!((s.sys.as_secs_f64() - 50.0 / hz).abs() < 1e-9);
        assert!((s.child_user.as_secs_f64() - 30.0 / hz).abs() < 1e-9);
        assert!((s.child_sys.as_secs_f64() - 20.0 / hz).abs() < 1e-9);
        assert_eq!(parse_rss("Name:\tx\nVmRSS:\t  1024 kB\n").unwrap(), 1 << 20);
    }

    #[test]
    fn samples_self() {
        let s = sample_self().unwrap();
        assert!(s.rss > 0);
        assert_eq!(s.cpu, s.user + s.sys);
    }

    #[test]
    fn finds_live_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let found = children_of(std::process::id()).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.iter().any(|(pid, _)| *pid == child.id()));
        assert!(tree_cpu(std::process::id()).is_ok());
    }
}
