//! Panics anywhere in the test process, server tasks included.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

/// Counts panics anywhere in this test process (server tasks included, whose
/// panics would otherwise only end their own task), keeping the default report.
/// Process-wide: a test that asserts it did not move also notices a panic in
/// any test running beside it, which then fails on its own anyway.
pub(crate) fn panic_count() -> usize {
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
    PANICS.load(Ordering::SeqCst)
}
