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

/// A log line any client can cause, at most once per `every`: `ready`
/// says whether to write it now, with how many were left out since the
/// last one (for the line), and counts it as left out otherwise.
pub(crate) struct Throttle {
    every: std::time::Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttle {
    pub(crate) const fn new(every: std::time::Duration) -> Throttle {
        Throttle {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    pub(crate) fn ready(&self) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if st.0.is_some_and(|t| now.duration_since(t) < self.every) {
            st.1 += 1;
            return None;
        }
        let left_out = std::mem::take(&mut st.1);
        st.0 = Some(now);
        Some(left_out)
    }

    /// The next line goes through whenever it comes (a new spell of
    /// failures after a quiet one); what was left out is still counted.
    pub(crate) fn reset(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_one_line_through_per_period_and_counts_the_rest() {
        let t = Throttle::new(std::time::Duration::from_millis(50));
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), None);
        assert_eq!(t.ready(), None);
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(t.ready(), Some(2));
        assert_eq!(t.ready(), None);
        t.reset();
        assert_eq!(t.ready(), Some(1), "after a reset, at once");
    }
}
