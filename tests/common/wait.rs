//! The one arrival bound, and bounded waits for a condition.

use std::future::Future;
use std::time::Duration;

/// Generous bound for "this must arrive"; never a performance assertion.
pub(crate) const ARRIVAL: Duration = Duration::from_secs(20);

/// How often a wait checks its condition again.
const RECHECK: Duration = Duration::from_millis(50);

/// Checks `cond` until it holds, for at most the arrival bound; panics with
/// `what` if it never does.
pub(crate) async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(RECHECK).await;
    }
}

/// `eventually` for a condition that has to ask something (a database, a socket).
pub(crate) async fn eventually_async<F: Future<Output = bool>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(RECHECK).await;
    }
}
