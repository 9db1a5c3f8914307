//! Failpoints (`rowcast::failpoints`) are process-wide, and every suite of a
//! test binary shares the process: a fault armed for one test's server fires
//! in whichever server passes that point first. A test that arms a failpoint
//! holds [`exclusive`] while it is armed; a test whose in-process servers can
//! pass an armed point on their own holds [`shared`] — today that is
//! `source.between_pages`, passed by a server that reads more changes at
//! once than its source page (5,000 by default).

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static FAULTS: RwLock<()> = RwLock::const_new(());

/// For a test that arms a failpoint: no test holding [`shared`] runs meanwhile.
pub(crate) async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    FAULTS.write().await
}

/// For a test whose servers pass failpoints another test may arm.
pub(crate) async fn shared() -> RwLockReadGuard<'static, ()> {
    FAULTS.read().await
}
