//! Programs from outside the Rust build that some tests drive (Node with
//! socket.io-client, nginx, promtool): found on this machine, or the test is
//! skipped loudly, except in CI (`ROWCAST_CI`, set by `.ci/run`, which
//! installs them), where a missing tool is a failure.

use std::path::PathBuf;

/// Says why a test cannot run here: panics in CI, else prints a skip notice
/// the test's caller then acts on (by returning).
pub(crate) fn tool_missing(what: &str, msg: &str) {
    if std::env::var_os("ROWCAST_CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("\n*** SKIPPING {what}: {msg} ***\n");
}

/// `program` on the `PATH` (or in /usr/sbin, /sbin, where Debian puts
/// daemons), if it is there.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| PathBuf::from(d).join(program))
        .find(|p| p.is_file())
}
