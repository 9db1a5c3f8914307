//! The node's side of the doorbell: telling writers that this node is about
//! to sleep (arming), that it reads again on its own (disarming), and waiting
//! for the writers that may not have rung.
//!
//! # Contract
//! The source may sleep until a notification only while it is armed, and
//! only after a read that started once it was: then every change committed
//! by a writer that did not ring has been read, and every writer that
//! commits from then on rings (its NOTIFY, sent at its commit, wakes the
//! source). With the bell key, armed means: the key is held, and since it
//! was taken the node has waited for the doorbell key (in the arm itself, or
//! by a [`Doorbell::wait`] that began after it); a release ends it, and a
//! wait that outlives a release arms nothing ([`Doorbell::wait_arms`]).
//! Arming never makes a writer wait for the node: writers only ever *try*
//! the keys.
//!
//! # Two protocols, picked per connection
//! - **The bell key** (`sql/010_bell_lock.sql`, where the writer's side and
//!   the proof are): a sleeping node holds a second advisory key (the bell
//!   key) shared, on its LISTEN connection; a writer rings when a
//!   try-and-release of it fails. To arm, the node takes the bell key, then
//!   the doorbell key exclusively (waiting for every writer that tested the
//!   bell before); it stays armed for as long as it holds the bell key, so a
//!   ring needs no new arm, and it disarms (releases the bell key) when changes
//!   flow, reading every busy pause instead.
//! - **The flag** (`sql/001_core.sql`, `007_lean_emit.sql`, `008_try_arm.sql`),
//!   for a database not yet migrated to the bell key: arming sets
//!   `rowcast.doorbell.armed` after the same wait; the first writer that
//!   finds it set clears it and rings, so every ring disarms, and the read
//!   after a ring has to arm again. Databases older still lack the prepared
//!   `try_arm_doorbell()` (the node then always waits on its second
//!   connection) or even `arm_doorbell()` (the same steps as one batch).
//!
//! In both, the arm is sent in one round trip ahead of a read on the source's
//! own connection ([`Doorbell::arm_call`]); when a writer transaction holds
//! the doorbell key the try fails and the node waits for it with
//! [`Doorbell::wait`] on its second connection.

use crate::error::{Error, Result};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

/// What an arm sent ahead of a read achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Armed {
    /// Armed: the node may sleep after the read that followed.
    Yes,
    /// A writer holds the doorbell key: [`Doorbell::wait`] for it, then read.
    WaitForWriters,
    /// The bell key was being tested by a writer at that instant: try again
    /// after a pause.
    Retry,
}

/// The doorbell as one node's source drives it (see the module doc).
pub(crate) struct Doorbell {
    protocol: Protocol,
    /// The bell key is held by the source's connection (bell key only).
    held: bool,
}

enum Protocol {
    Bell {
        try_arm: Statement,
        disarm: Statement,
        wait: Statement,
    },
    Flag {
        try_arm: Option<Statement>,
        wait: Option<Statement>,
    },
}

/// A prepared arm and its one parameter, if it takes one.
pub(crate) struct ArmCall {
    stmt: Statement,
    /// The bell key's `held` argument.
    held: Option<bool>,
}

impl ArmCall {
    pub(crate) fn statement(&self) -> &Statement {
        &self.stmt
    }

    pub(crate) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        match &self.held {
            Some(h) => vec![h as &(dyn ToSql + Sync)],
            None => Vec::new(),
        }
    }
}

impl Doorbell {
    /// Prepares the calls: `client` is the source's LISTEN connection, which
    /// holds the bell key; `waiter` the second one, which waits for writers.
    pub(crate) async fn prepare(client: &Client, waiter: &Client) -> Result<Doorbell> {
        let protocol = match optional(client, "SELECT rowcast.try_arm_bell($1)").await? {
            Some(try_arm) => Protocol::Bell {
                try_arm,
                disarm: client.prepare("SELECT rowcast.disarm_bell()").await?,
                wait: waiter.prepare("SELECT rowcast.wait_for_writers()").await?,
            },
            None => {
                tracing::warn!("the database lacks rowcast.try_arm_bell(): run `rowcast migrate`; the doorbell uses its older flag meanwhile");
                Protocol::Flag {
                    try_arm: optional(client, "SELECT rowcast.try_arm_doorbell()").await?,
                    wait: optional(waiter, "SELECT rowcast.arm_doorbell()").await?,
                }
            }
        };
        Ok(Doorbell {
            protocol,
            held: false,
        })
    }

    /// The arm to send ahead of the next read, or `None` when the database
    /// has none that can go there (then [`Doorbell::wait`] arms).
    pub(crate) fn arm_call(&self) -> Option<ArmCall> {
        match &self.protocol {
            Protocol::Bell { try_arm, .. } => Some(ArmCall {
                stmt: try_arm.clone(),
                held: Some(self.held),
            }),
            Protocol::Flag { try_arm, .. } => try_arm.as_ref().map(|t| ArmCall {
                stmt: t.clone(),
                held: None,
            }),
        }
    }

    /// Takes the answer of [`Doorbell::arm_call`]'s statement.
    pub(crate) fn armed(&mut self, row: &Row) -> Result<Armed> {
        let took: Option<bool> = row.try_get(0)?;
        if matches!(self.protocol, Protocol::Bell { .. }) && took.is_some() {
            self.held = true;
        }
        Ok(match took {
            Some(true) => Armed::Yes,
            Some(false) => Armed::WaitForWriters,
            None => Armed::Retry,
        })
    }

    /// The release to send ahead of the next read when changes flow, if
    /// there is one to send (bell key held).
    pub(crate) fn disarm_call(&self) -> Option<Statement> {
        match &self.protocol {
            Protocol::Bell { disarm, .. } if self.held => Some(disarm.clone()),
            _ => None,
        }
    }

    /// Takes the answer of [`Doorbell::disarm_call`]'s statement.
    pub(crate) fn disarmed(&mut self, row: &Row) -> Result<()> {
        self.held = false;
        let released: bool = row.try_get(0)?;
        if released {
            Ok(())
        } else {
            Err(Error::Invariant(
                "the source released a bell key it did not hold".into(),
            ))
        }
    }

    /// Whether a ring leaves the node armed: with the bell key it does (the
    /// key is still held, every writer rings until it is released); with the
    /// flag it does not (the writer that rang cleared it).
    pub(crate) fn ring_keeps_armed(&self) -> bool {
        matches!(self.protocol, Protocol::Bell { .. })
    }

    /// Whether a completed [`Doorbell::wait`] leaves the node armed: with
    /// the flag it set the flag; with the bell key only if the key is still
    /// held (a wait outliving a release arms nothing).
    pub(crate) fn wait_arms(&self) -> bool {
        match self.protocol {
            Protocol::Bell { .. } => self.held,
            Protocol::Flag { .. } => true,
        }
    }

    /// The call that waits for the writers holding the doorbell key, to run
    /// on the second connection (as its own task: it may wait long).
    pub(crate) fn wait(&self) -> Wait {
        match &self.protocol {
            Protocol::Bell { wait, .. } => Wait(Some(wait.clone())),
            Protocol::Flag { wait, .. } => Wait(wait.clone()),
        }
    }
}

/// A wait for writers, detached from the [`Doorbell`] so that it can run in a
/// task of its own.
pub(crate) struct Wait(Option<Statement>);

impl Wait {
    /// Returns once no writer that may have skipped its ring is still running
    /// (and, with the flag, once the flag is set).
    pub(crate) async fn run(self, waiter: &Client) -> Result<()> {
        match self.0 {
            Some(stmt) => {
                waiter.execute(&stmt, &[]).await?;
            }
            None => {
                waiter
                    .batch_execute(
                        "BEGIN;
                         SELECT pg_advisory_xact_lock(7305280317090915);
                         UPDATE rowcast.doorbell SET armed = true WHERE id = 1 AND NOT armed;
                         COMMIT;",
                    )
                    .await?
            }
        }
        Ok(())
    }
}

/// A prepared call, or `None` when the database lacks the function (a server
/// newer than the last `rowcast migrate`).
async fn optional(client: &Client, call: &'static str) -> Result<Option<Statement>> {
    match client.prepare(call).await {
        Ok(stmt) => Ok(Some(stmt)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) => {
            tracing::warn!(
                call,
                "a doorbell function is missing: run `rowcast migrate`; arming the slower way meanwhile"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
