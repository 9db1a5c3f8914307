//! Logs to stderr through `tracing`, for the binaries (`rowcast`, and the
//! bench's `rowcast-bench` and `rowcast-floor`): `RUST_LOG` when set, else the
//! binary's default filter; colours only when stderr is a terminal and
//! `NO_COLOR` is unset (not in files or journals).

use std::io::IsTerminal;

/// Installs the global subscriber; call once, first thing in `main`.
pub fn init(default_filter: &str) {
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
