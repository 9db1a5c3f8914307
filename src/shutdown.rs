//! Graceful shutdown, as one small type every long-running task holds.
//!
//! The contract: a task stops when the server asks it to **or when the asking
//! side is gone**. A `watch` channel whose sender was dropped without sending
//! (a `Server` dropped without `stop()`, a start-up that failed half way)
//! would otherwise make `changed()` fail at once, forever, and every loop that
//! selects on it would spin. Here a closed channel simply means "shut down".

use tokio::sync::watch;

/// The sending side: `trigger` (or dropping it) shuts every `Shutdown` down.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// The receiving side, cheap to clone into every task and connection.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl ShutdownTrigger {
    pub fn new() -> ShutdownTrigger {
        ShutdownTrigger {
            tx: watch::channel(false).0,
        }
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }

    /// Asks every holder of a `Shutdown` to stop.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

impl Default for ShutdownTrigger {
    fn default() -> ShutdownTrigger {
        ShutdownTrigger::new()
    }
}

impl Shutdown {
    /// True once shutdown was asked for, or its trigger is gone.
    pub fn is_shutdown(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Completes once shutdown was asked for (at once if it already was), or
    /// when the trigger is dropped. Cancel-safe: use it in `select!`.
    pub async fn recv(&mut self) {
        // Err means the sender is gone: that is a shutdown too.
        let _ = self.rx.wait_for(|s| *s).await;
    }

    /// Runs `work` unless shutdown comes first: `None` then, and `work` is
    /// dropped where it stood (a task's round waiting for a starved pool
    /// does not hold up a stop).
    pub async fn unless<T>(&mut self, work: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::select! {
            out = work => Some(out),
            _ = self.recv() => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn trigger_and_drop_both_shut_down() {
        let t = ShutdownTrigger::new();
        let mut s = t.subscribe();
        assert!(!s.is_shutdown());
        t.trigger();
        assert!(s.is_shutdown());
        tokio::time::timeout(Duration::from_secs(1), s.recv())
            .await
            .expect("recv after trigger");

        let t = ShutdownTrigger::new();
        let mut s = t.subscribe();
        drop(t);
        assert!(s.is_shutdown(), "a dropped trigger means shutdown");
        tokio::time::timeout(Duration::from_secs(1), s.recv())
            .await
            .expect("recv after the trigger was dropped");
    }

    #[tokio::test]
    async fn unless_gives_up_work_a_shutdown_interrupts() {
        let t = ShutdownTrigger::new();
        let mut s = t.subscribe();
        assert_eq!(s.unless(async { 7 }).await, Some(7));
        let stuck = tokio::spawn({
            let mut s = t.subscribe();
            async move { s.unless(std::future::pending::<()>()).await }
        });
        t.trigger();
        let out = tokio::time::timeout(Duration::from_secs(1), stuck)
            .await
            .expect("unless returned at the shutdown")
            .expect("the task ran");
        assert_eq!(out, None);
    }
}
