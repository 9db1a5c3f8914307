//! Schema migrations, embedded in the binary.
//!
//! Each file runs once, inside one transaction, and is recorded in
//! `rowcast.migrations`; a session-level advisory lock makes concurrent
//! `rowcast serve --migrate` processes on one database take turns.

use crate::error::Result;
use tokio_postgres::Client;

/// The core: change log, doorbell, `rowcast.emit`, `rowcast.track`, and the
/// default (allow-all) `rowcast.authorize`. Applied in this order; a version
/// missing from a database is applied even when a later one is there.
pub const CORE: &[(&str, &str)] = &[
    ("001_core", include_str!("../sql/001_core.sql")),
    ("002_authorize", include_str!("../sql/002_authorize.sql")),
    ("003_guarantees", include_str!("../sql/003_guarantees.sql")),
    ("004_track", include_str!("../sql/004_track.sql")),
    (
        "005_default_topics",
        include_str!("../sql/005_default_topics.sql"),
    ),
    ("006_presence", include_str!("../sql/006_presence.sql")),
    ("007_lean_emit", include_str!("../sql/007_lean_emit.sql")),
    ("008_try_arm", include_str!("../sql/008_try_arm.sql")),
    (
        "009_cheap_check",
        include_str!("../sql/009_cheap_check.sql"),
    ),
    ("010_bell_lock", include_str!("../sql/010_bell_lock.sql")),
    (
        "011_commit_probe",
        include_str!("../sql/011_commit_probe.sql"),
    ),
    (
        "012_socketio_rooms",
        include_str!("../sql/012_socketio_rooms.sql"),
    ),
    ("013_capture", include_str!("../sql/013_capture.sql")),
    (
        "014_lost_changes",
        include_str!("../sql/014_lost_changes.sql"),
    ),
    (
        "015_slot_in_subtransaction",
        include_str!("../sql/015_slot_in_subtransaction.sql"),
    ),
    (
        "016_track_beside_the_slot",
        include_str!("../sql/016_track_beside_the_slot.sql"),
    ),
    ("017_touch_once", include_str!("../sql/017_touch_once.sql")),
    (
        "018_slot_undone_on_failure",
        include_str!("../sql/018_slot_undone_on_failure.sql"),
    ),
    (
        "019_read_positions",
        include_str!("../sql/019_read_positions.sql"),
    ),
    ("020_era_token", include_str!("../sql/020_era_token.sql")),
];

/// The FR-021 farmers-market reference schema (`market.*`), its triggers and
/// its topic policy.
pub const MARKET: &[(&str, &str)] = &[
    (
        "market/001_market",
        include_str!("../sql/market/001_market.sql"),
    ),
    (
        "market/002_authorize",
        include_str!("../sql/market/002_authorize.sql"),
    ),
    (
        "market/003_private_orders",
        include_str!("../sql/market/003_private_orders.sql"),
    ),
    (
        "market/004_carts",
        include_str!("../sql/market/004_carts.sql"),
    ),
    (
        "market/005_default_topics",
        include_str!("../sql/market/005_default_topics.sql"),
    ),
    (
        "market/006_presence",
        include_str!("../sql/market/006_presence.sql"),
    ),
    (
        "market/007_farmer_writes",
        include_str!("../sql/market/007_farmer_writes.sql"),
    ),
    (
        "market/008_lean_capture",
        include_str!("../sql/market/008_lean_capture.sql"),
    ),
    (
        "market/009_capture_events",
        include_str!("../sql/market/009_capture_events.sql"),
    ),
    (
        "market/010_presence_once",
        include_str!("../sql/market/010_presence_once.sql"),
    ),
    (
        "market/011_messages",
        include_str!("../sql/market/011_messages.sql"),
    ),
    (
        "market/012_removed_at_zero",
        include_str!("../sql/market/012_removed_at_zero.sql"),
    ),
    (
        "market/013_presence_ids",
        include_str!("../sql/market/013_presence_ids.sql"),
    ),
    (
        "market/014_unit_words",
        include_str!("../sql/market/014_unit_words.sql"),
    ),
    (
        "market/015_previous_quantity",
        include_str!("../sql/market/015_previous_quantity.sql"),
    ),
    (
        "market/016_presence_per_farm",
        include_str!("../sql/market/016_presence_per_farm.sql"),
    ),
];

/// The advisory key that makes concurrent migrations wait for each other.
/// rowcast's keys are 7305280317090915 (the doorbell key), ...916 (the bell
/// key, `sql/010_bell_lock.sql`), ...917 (retention), this one and ...919
/// (the capturer, `capture`). Until
/// 2026-11-26 migrations took ...916, which `010_bell_lock` then chose for
/// the bell key: every sleeping node holds it shared, so `rowcast migrate`
/// (and `serve --migrate` on a second node) waited for as long as any node
/// slept. An older binary's `migrate` still takes ...916 (replace binaries
/// first, then migrate, as the README's "Plugging in" says).
const LOCK_KEY: i64 = 7_305_280_317_090_918;

/// The payload of the notification on channel `rowcast` that a `migrate`
/// which applied anything sends once it has committed (also when a later
/// file then failed: what was committed stays). A running node's
/// source (which LISTENs on that channel before it looks at the schema)
/// takes it as its cue to connect again and look afresh: which columns the
/// log has, which doorbell the database speaks, whether it can time commits
/// (`source`). Older nodes take it for a ring: one read more.
pub(crate) const MIGRATED: &str = "migrated";

/// Applies the core migrations, and the market schema when `market` is set.
/// Returns the versions applied by this call (empty when all were there
/// already); when it applied any, tells running nodes ([`MIGRATED`]).
pub async fn migrate(client: &mut Client, market: bool) -> Result<Vec<String>> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply_all(client, market).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply_all(client: &mut Client, market: bool) -> Result<Vec<String>> {
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS rowcast;
             CREATE TABLE IF NOT EXISTS rowcast.migrations (
                 version    text PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let mut files: Vec<&(&str, &str)> = CORE.iter().collect();
    if market {
        files.extend(MARKET.iter());
    }
    let mut applied = Vec::new();
    let result = apply_each(client, files, &mut applied).await;
    // running nodes are told whenever something was committed, even if a
    // later file failed: they must not keep the older schema's protocols
    if !applied.is_empty() {
        let told = client
            .execute("SELECT pg_notify('rowcast', $1)", &[&MIGRATED])
            .await;
        if let Err(e) = &told {
            tracing::warn!(
                error = %e,
                "could not tell running nodes of the migration: restart them"
            );
        }
        result?;
        told?;
    } else {
        result?;
    }
    Ok(applied)
}

/// Applies each of `files` not yet recorded, each in its own transaction,
/// pushing its version to `applied` once committed.
async fn apply_each(
    client: &mut Client,
    files: Vec<&(&str, &str)>,
    applied: &mut Vec<String>,
) -> Result<()> {
    for (version, sql) in files {
        let done = client
            .query_opt(
                "SELECT 1 FROM rowcast.migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO rowcast.migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tx.commit().await?;
        // the CLI prints what was applied: no need to say it twice on stderr
        tracing::debug!(version, "applied migration");
        applied.push((*version).to_string());
    }
    Ok(())
}
