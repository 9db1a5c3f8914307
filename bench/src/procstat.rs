//! Process figures from `/proc`.
//!
//! The server runs as a separate process precisely so that its CPU time and
//! resident memory can be read here without the load generator's own mixed in.

use crate::BenchError;
use std::time::Duration;

/// CPU time and resident set of one process at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// User + system CPU time.
    pub cpu: Duration,
    /// `VmRSS`, bytes.
    pub rss: u64,
}

/// Reads `/proc/<pid>/stat` (utime, stime) and `/proc/<pid>/status` (VmRSS).
pub fn sample(pid: u32) -> Result<ProcSample, BenchError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| BenchError::Proc(format!("/proc/{pid}/stat: {e}")))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| BenchError::Proc(format!("/proc/{pid}/status: {e}")))?;
    Ok(ProcSample {
        cpu: parse_cpu(&stat)?,
        rss: parse_rss(&status)?,
    })
}

/// This process's own figures (the load generator).
pub fn sample_self() -> Result<ProcSample, BenchError> {
    sample(std::process::id())
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

/// Fields 14 and 15 (utime, stime) follow the parenthesised command name,
/// which may itself contain spaces, so parsing starts after the last `)`.
fn parse_cpu(stat: &str) -> Result<Duration, BenchError> {
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| BenchError::Proc("malformed stat".into()))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state), so utime (14) is index 11
    let ticks = |i: usize| -> Result<u64, BenchError> {
        f.get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| BenchError::Proc("malformed stat".into()))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(total as f64 / clock_ticks() as f64))
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
        let stat = "42 (a b) S 1 1 1 0 -1 0 0 0 0 0 250 50 0 0 20 0 1 0 1 1 1";
        let cpu = parse_cpu(stat).unwrap();
        assert!((cpu.as_secs_f64() - 300.0 / clock_ticks() as f64).abs() < 1e-9);
        assert_eq!(parse_rss("Name:\tx\nVmRSS:\t  1024 kB\n").unwrap(), 1 << 20);
    }

    #[test]
    fn samples_self() {
        assert!(sample_self().unwrap().rss > 0);
    }
}
