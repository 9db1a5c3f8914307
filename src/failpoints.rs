//! Fault injection for tests (cargo feature `failpoints`, which only the test
//! suite turns on: `[dev-dependencies] rowcast = { features = ["failpoints"] }`).
//!
//! Code marks a place where a fault matters with `failpoints::hit("name").await?`.
//! Without the feature that call is an inlined `Ok(())`: release builds carry no
//! registry, no lock and no branch. With it, a test arms a name to fail the
//! next N hits, or to pause there until the test releases it (to restart
//! PostgreSQL at an exact point, say).

/// A fault a test injected at a named place.
#[derive(Debug, thiserror::Error)]
#[error("injected fault at {0}")]
pub struct Injected(pub &'static str);

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn hit(_name: &'static str) -> Result<(), Injected> {
    Ok(())
}

/// `hit` for one key of a place (a client's address, say, compared as `{:?}`): only a hold armed
/// for that key (`hold`) stops it, so a test can stop its own clients there
/// while other tests' clients pass.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn hit_for<K: std::fmt::Debug>(_name: &'static str, _key: K) {}

#[cfg(feature = "failpoints")]
pub use armed::*;

#[cfg(feature = "failpoints")]
mod armed {
    use super::Injected;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    use tokio::sync::Notify;

    enum Action {
        Fail(usize),
        Pause(Arc<Pause>),
    }

    /// A paused failpoint: `reached` fires when code arrives, `release` lets it go on.
    #[derive(Default)]
    pub struct Pause {
        pub reached: Notify,
        pub release: Notify,
    }

    fn registry() -> &'static Mutex<HashMap<&'static str, Action>> {
        static R: OnceLock<Mutex<HashMap<&'static str, Action>>> = OnceLock::new();
        R.get_or_init(Default::default)
    }

    fn lock() -> std::sync::MutexGuard<'static, HashMap<&'static str, Action>> {
        registry().lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `times` hits of `name` fail.
    pub fn fail(name: &'static str, times: usize) {
        lock().insert(name, Action::Fail(times));
    }

    /// The next hit of `name` waits until the returned pause is released.
    pub fn pause(name: &'static str) -> Arc<Pause> {
        let p = Arc::new(Pause::default());
        lock().insert(name, Action::Pause(Arc::clone(&p)));
        p
    }

    /// Whether `name` is still armed (not yet hit as often as asked).
    pub fn armed(name: &'static str) -> bool {
        lock().contains_key(name)
    }

    pub fn clear(name: &'static str) {
        lock().remove(name);
    }

    pub async fn hit(name: &'static str) -> Result<(), Injected> {
        let pause = {
            let mut reg = lock();
            match reg.get_mut(name) {
                None => return Ok(()),
                Some(Action::Fail(n)) => {
                    if *n <= 1 {
                        reg.remove(name);
                    } else {
                        *n -= 1;
                    }
                    return Err(Injected(name));
                }
                Some(Action::Pause(_)) => match reg.remove(name) {
                    Some(Action::Pause(p)) => p,
                    _ => return Ok(()),
                },
            }
        };
        pause.reached.notify_one();
        pause.release.notified().await;
        Ok(())
    }

    /// Every hit of a place for one key waits until the hold is released
    /// (or dropped); `reached` counts the hits.
    pub struct Hold {
        pub reached: std::sync::atomic::AtomicUsize,
        released: tokio::sync::watch::Sender<bool>,
        at: (&'static str, String),
    }

    type Holds = Mutex<HashMap<(&'static str, String), Arc<Hold>>>;

    fn holds() -> std::sync::MutexGuard<'static, HashMap<(&'static str, String), Arc<Hold>>> {
        static H: OnceLock<Holds> = OnceLock::new();
        H.get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Holds every hit of `name` for `key` (`hit_for`) until released.
    pub fn hold(name: &'static str, key: impl std::fmt::Debug) -> Arc<Hold> {
        let at = (name, format!("{key:?}"));
        let h = Arc::new(Hold {
            reached: Default::default(),
            released: tokio::sync::watch::channel(false).0,
            at: at.clone(),
        });
        holds().insert(at, Arc::clone(&h));
        h
    }

    impl Hold {
        /// Lets every held hit, and every later one, go on.
        pub fn release(&self) {
            holds().remove(&self.at);
            self.released.send_replace(true);
        }

        /// Hits that reached the place so far.
        pub fn reached(&self) -> usize {
            self.reached.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Drop for Hold {
        fn drop(&mut self) {
            self.released.send_replace(true);
        }
    }

    pub async fn hit_for<K: std::fmt::Debug>(name: &'static str, key: K) {
        let held = holds().get(&(name, format!("{key:?}"))).cloned();
        let Some(h) = held else {
            return;
        };
        let mut released = h.released.subscribe();
        h.reached.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = released.wait_for(|r| *r).await;
    }
}
