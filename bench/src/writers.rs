//! The write side: paced `UPDATE`s for the delivery scenarios, and the
//! unpaced write-path comparison (no trigger / per-row `pg_notify` / rowcast).
//!
//! Product `p` is written only by writer `(p - 1) % writers`, one statement at a
//! time, so its writes commit in the order their seqs were taken (see `ledger`),
//! and writers never wait on each other's row locks: what is measured is the
//! cost of the commit path, not lock contention the app would not have either.

use crate::ledger::Ledger;
use crate::target::connect;
use crate::BenchError;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, Statement};

const SET_QUANTITY: &str = "UPDATE market.products SET quantity = $2::int8 WHERE id = $1";
const BUMP_QUANTITY: &str = "UPDATE market.products SET quantity = quantity + 1 WHERE id = $1";

/// What one paced run achieved.
#[derive(Clone, Copy, Debug, Default)]
pub struct Written {
    pub committed: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

/// Writer connections, opened once and reused by every step.
pub struct Writers {
    conns: Vec<(Client, Statement)>,
}

impl Writers {
    pub async fn connect(url: &str, n: usize, sql: &str) -> Result<Writers, BenchError> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let c = connect(url).await?;
            // a stuck statement must not stall the bench past its deadlines
            c.batch_execute(
                "SET application_name = 'rowcast-bench-writer'; SET statement_timeout = '10s'",
            )
            .await?;
            let stmt = c.prepare(sql).await?;
            conns.push((c, stmt));
        }
        Ok(Writers { conns })
    }

    pub async fn paced(url: &str, n: usize) -> Result<Writers, BenchError> {
        Writers::connect(url, n, SET_QUANTITY).await
    }

    /// Writes `rate` changes/s in total for `duration`, spread over the writers,
    /// each setting a product's quantity to a fresh seq from `ledger`.
    pub async fn run_paced(
        &self,
        ledger: &Arc<Ledger>,
        products: usize,
        rate: f64,
        duration: Duration,
    ) -> Written {
        let n = self.conns.len();
        let committed = AtomicU64::new(0);
        let errors = AtomicU64::new(0);
        let start = tokio::time::Instant::now();
        let end = start + duration;
        let per_writer = rate / n as f64;
        let interval = Duration::from_secs_f64(1.0 / per_writer.max(1e-3));
        let jobs = self.conns.iter().enumerate().map(|(w, (client, stmt))| {
            let (committed, errors) = (&committed, &errors);
            async move {
                let mine: Vec<i64> = (1..=products as i64)
                    .filter(|p| (*p as usize - 1) % n == w)
                    .collect();
                if mine.is_empty() {
                    return;
                }
                // stagger the writers across one interval
                let mut next = start + interval.mul_f64(w as f64 / n as f64);
                let mut k = 0usize;
                while next < end {
                    tokio::time::sleep_until(next).await;
                    let Some(seq) = ledger.begin_write() else {
                        break;
                    };
                    let product = mine[k % mine.len()];
                    k += 1;
                    match client.execute(stmt, &[&product, &(seq as i64)]).await {
                        Ok(_) => {
                            ledger.committed(seq, product as usize);
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "bench write failed");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    next += interval;
                }
            }
        });
        futures::future::join_all(jobs).await;
        Written {
            committed: committed.load(Ordering::Relaxed),
            errors: errors.load(Ordering::Relaxed),
            elapsed: start.elapsed(),
        }
    }

    /// Unpaced: every writer commits back to back for `duration`; returns commits.
    async fn run_flat_out(&self, products: usize, duration: Duration) -> u64 {
        let n = self.conns.len();
        let done = AtomicU64::new(0);
        let end = Instant::now() + duration;
        let jobs = self.conns.iter().enumerate().map(|(w, (client, stmt))| {
            let done = &done;
            async move {
                let mine: Vec<i64> = (1..=products as i64)
                    .filter(|p| (*p as usize - 1) % n == w)
                    .collect();
                let mut k = 0usize;
                while !mine.is_empty() && Instant::now() < end {
                    let product = mine[k % mine.len()];
                    k += 1;
                    if client.execute(stmt, &[&product]).await.is_ok() && Instant::now() <= end {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        futures::future::join_all(jobs).await;
        done.load(Ordering::Relaxed)
    }
}

/// One write-path measurement.
#[derive(Clone, Debug, Serialize)]
pub struct WritePathRow {
    pub variant: &'static str,
    pub writers: usize,
    pub seconds: f64,
    pub transactions: u64,
    /// Median round.
    pub tps: f64,
    /// Every round, in run order.
    pub rounds_tps: Vec<f64>,
}

pub const VARIANTS: [&str; 4] = ["no_trigger", "pg_notify_per_row", "rowcast", "rowcast_slot"];

/// `rowcast_slot`: the products captured by the slot instead of the trigger
/// (`rowcast.capture_by_slot`, sql/013_capture.sql; the server under test
/// appends what the slot decodes). Measured only where the database has it
/// (a server build with `013_capture`, and `wal_level = logical`).
const SLOT_AVAILABLE: &str =
    "SELECT to_regprocedure('rowcast.capture_by_slot(regclass, regprocedure, name)') IS NOT NULL
       AND current_setting('wal_level') = 'logical'";
pub const TO_SLOT: &str = "SELECT rowcast.capture_by_slot('market.products',
    'market.products_event(text, market.products, market.products)', 'products_changed')";
/// Back to the trigger (waiting up to 5 minutes for the capturer to append
/// what the slot decoded), when the products are captured by the slot.
const FROM_SLOT: &str = "SELECT rowcast.capture_by_trigger('market.products', '5 minutes')
  FROM rowcast.captured WHERE relid = 'market.products'::regclass AND by_slot";

/// The channel [`NOTIFY_TRIGGER`] notifies on.
pub const NOTIFY_CHANNEL: &str = "bench_row";

/// A per-row NOTIFY trigger carrying the same payload as rowcast's market trigger:
/// the usual "LISTEN/NOTIFY for realtime" design rowcast is compared with, in
/// the write-path scenario and as what feeds the floor relay (`floor`).
pub const NOTIFY_TRIGGER: &str = "
CREATE OR REPLACE FUNCTION public.bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_row', jsonb_build_object(
        'productId', NEW.id::text, 'newQuantity', NEW.quantity,
        'previousQuantity', OLD.quantity, 'farmId', NEW.farm_id::text,
        'unit', NEW.unit, 'timestamp', market.epoch_ms())::text);
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS bench_notify ON market.products;
CREATE TRIGGER bench_notify AFTER UPDATE OF quantity ON market.products
    FOR EACH ROW EXECUTE FUNCTION public.bench_notify();";

/// The market's cart reconciliation (`products_reconcile_carts`) is off in every
/// variant: it is the market's business logic, not change capture, and with no
/// carts it would only add the same index probe to each variant.
fn toggle(variant: &str) -> &'static str {
    match variant {
        "no_trigger" => {
            "ALTER TABLE market.products DISABLE TRIGGER products_changed, DISABLE TRIGGER bench_notify,
                                         DISABLE TRIGGER products_reconcile_carts"
        }
        "pg_notify_per_row" => {
            "ALTER TABLE market.products DISABLE TRIGGER products_changed, ENABLE TRIGGER bench_notify,
                                         DISABLE TRIGGER products_reconcile_carts"
        }
        // rowcast_slot: the slot variant switches after this (the trigger
        // on, then `capture_by_slot` turns it off)
        _ => {
            "ALTER TABLE market.products ENABLE TRIGGER products_changed, DISABLE TRIGGER bench_notify,
                                         DISABLE TRIGGER products_reconcile_carts"
        }
    }
}

/// Transactions/s of single-row autocommit `UPDATE`s for each variant at each
/// writer count. The variants run interleaved, `rounds` times, `duration` each,
/// and the median round is reported: the machine is shared, and a background
/// burst of disk or CPU load would otherwise land on whichever variant ran then.
/// A CHECKPOINT precedes each run so that one run's dirty pages are not flushed
/// during the next. A listener is connected to the NOTIFY channel so that the
/// pg_notify variant pays for a real consumer.
pub async fn write_path(
    url: &str,
    products: usize,
    writer_counts: &[usize],
    duration: Duration,
    rounds: usize,
) -> Result<Vec<WritePathRow>, BenchError> {
    let admin = connect(url).await?;
    admin.batch_execute(NOTIFY_TRIGGER).await?;
    let listener = connect(url).await?;
    listener
        .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
        .await?;
    let mut rows = Vec::new();
    let slot: bool = admin.query_one(SLOT_AVAILABLE, &[]).await?.get(0);
    let variants: Vec<&str> = VARIANTS
        .iter()
        .copied()
        .filter(|v| slot || *v != "rowcast_slot")
        .collect();
    let result = async {
        for &w in writer_counts {
            let writers = Writers::connect(url, w, BUMP_QUANTITY).await?;
            let mut runs: Vec<Vec<(u64, f64)>> = vec![Vec::new(); variants.len()];
            for _ in 0..rounds.max(1) {
                for (v, variant) in variants.iter().enumerate() {
                    if slot {
                        admin.batch_execute(FROM_SLOT).await?;
                    }
                    admin.batch_execute(toggle(variant)).await?;
                    if *variant == "rowcast_slot" {
                        admin.batch_execute(TO_SLOT).await?;
                    }
                    admin.batch_execute("CHECKPOINT").await?;
                    // warm-up: caches, plans, the source's first drain
                    writers
                        .run_flat_out(products, Duration::from_millis(500))
                        .await;
                    let started = Instant::now();
                    let n = writers.run_flat_out(products, duration).await;
                    let secs = started.elapsed().as_secs_f64().min(duration.as_secs_f64());
                    tracing::info!(variant, writers = w, tps = n as f64 / secs, "write path");
                    runs[v].push((n, secs));
                }
            }
            for (v, variant) in variants.iter().enumerate() {
                let mut r = runs[v].clone();
                r.sort_by(|a, b| {
                    (a.0 as f64 / a.1.max(1e-9)).total_cmp(&(b.0 as f64 / b.1.max(1e-9)))
                });
                let all_tps: Vec<f64> = runs[v]
                    .iter()
                    .map(|(n, s)| *n as f64 / s.max(1e-9))
                    .collect();
                if let Some(&(n, secs)) = r.get(r.len() / 2) {
                    rows.push(WritePathRow {
                        variant,
                        writers: w,
                        seconds: secs,
                        transactions: n,
                        tps: n as f64 / secs.max(1e-9),
                        rounds_tps: all_tps,
                    });
                }
            }
        }
        Ok::<(), BenchError>(())
    }
    .await;
    if slot {
        // back to the trigger, and no slot left behind to retain WAL
        admin.batch_execute(FROM_SLOT).await?;
        admin
            .batch_execute(
                "SELECT rowcast.capture_release() FROM pg_replication_slots
                  WHERE slot_name = rowcast.capture_slot()",
            )
            .await?;
    }
    let restore = admin
        .batch_execute(
            "ALTER TABLE market.products ENABLE TRIGGER products_changed,
                                         ENABLE TRIGGER products_reconcile_carts;
             DROP TRIGGER IF EXISTS bench_notify ON market.products;",
        )
        .await;
    result?;
    restore?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trigger_notifies_on_the_channel() {
        assert!(NOTIFY_TRIGGER.contains(&format!("pg_notify('{NOTIFY_CHANNEL}'")));
    }
}
