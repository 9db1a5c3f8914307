//! The cluster every test of a binary shares, a fresh database per test, seed
//! data and small queries.

use rowcast::embedded_pg::{EmbeddedPg, Options};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use tokio::sync::OnceCell;
use tokio_postgres::Client;

/// The template every test database is copied from: rowcast's schema and the
/// market schema, migrated once per cluster.
const TEMPLATE: &str = "rowcast_template";

/// Connections the cluster accepts: each in-process server holds a pool and
/// its source, and the suites of one binary run side by side.
const MAX_CONNECTIONS: u32 = 1000;

static CLUSTER: OnceLock<EmbeddedPg> = OnceLock::new();
static MIGRATED: OnceCell<()> = OnceCell::const_new();
static DB_SEQ: AtomicU32 = AtomicU32::new(0);

/// This binary's cluster, started on first use (blocking: call it off the
/// runtime's threads, as `fresh_market_db` does).
pub(crate) fn cluster() -> &'static EmbeddedPg {
    CLUSTER.get_or_init(|| {
        EmbeddedPg::start(Options {
            max_connections: MAX_CONNECTIONS,
            ..Options::default()
        })
        .expect("start the embedded PostgreSQL cluster")
    })
}

pub(crate) async fn connect(url: &str) -> Client {
    rowcast::db::connect(url).await.expect("connect")
}

/// A new database with rowcast's schema and the market schema installed, with
/// an allow-all `rowcast.authorize`: the pipeline tests subscribe to order and
/// custom topics anonymously and test delivery, not policy. Policy tests use
/// `fresh_market_db()`.
pub(crate) async fn fresh_db() -> String {
    let url = fresh_market_db().await;
    connect(&url)
        .await
        .batch_execute(
            "CREATE OR REPLACE FUNCTION rowcast.authorize(claims jsonb, topic text)
             RETURNS boolean LANGUAGE sql STABLE AS $$ SELECT true $$",
        )
        .await
        .expect("allow-all policy");
    url
}

/// A new database with rowcast's schema, the market schema and the market's
/// topic policy, exactly as `rowcast migrate --market` leaves it: a copy of
/// the template.
pub(crate) async fn fresh_market_db() -> String {
    let pg = tokio::task::spawn_blocking(cluster).await.expect("cluster");
    MIGRATED.get_or_init(|| migrate_template(pg)).await;
    let name = db_name();
    connect(&pg.url("postgres"))
        .await
        .batch_execute(&format!("CREATE DATABASE \"{name}\" TEMPLATE {TEMPLATE}"))
        .await
        .expect("create database from the template");
    pg.url(&name)
}

/// A database as a release before some migration files left it: every
/// migration except `skip` applied and recorded (the way `rowcast migrate`
/// records them), with the allow-all `rowcast.authorize` of `fresh_db`.
pub(crate) async fn db_migrated_without(skip: &[&str]) -> String {
    let url = empty_db().await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE SCHEMA rowcast;
         CREATE TABLE rowcast.migrations (
             version    text PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .expect("the migrations table");
    let applied = rowcast::migrate::CORE
        .iter()
        .chain(rowcast::migrate::MARKET.iter())
        .filter(|(v, _)| !skip.contains(v));
    for (version, sql) in applied {
        db.batch_execute(sql).await.expect(version);
        db.execute(
            "INSERT INTO rowcast.migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .expect("record the migration");
    }
    db.batch_execute(
        "CREATE OR REPLACE FUNCTION rowcast.authorize(claims jsonb, topic text)
         RETURNS boolean LANGUAGE sql STABLE AS $$ SELECT true $$",
    )
    .await
    .expect("allow-all policy");
    url
}

/// A new database with nothing installed, for the tests of migration itself.
pub(crate) async fn empty_db() -> String {
    let pg = tokio::task::spawn_blocking(cluster).await.expect("cluster");
    pg.create_database(&db_name())
        .await
        .expect("create an empty database")
}

/// A database name no other test of this cluster uses.
fn db_name() -> String {
    format!(
        "t_{}_{}",
        std::process::id(),
        DB_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates and migrates the template, then closes it to connections:
/// PostgreSQL copies a database only while nobody is connected to it.
async fn migrate_template(pg: &EmbeddedPg) {
    let url = pg.create_database(TEMPLATE).await.expect("create template");
    {
        let mut client = connect(&url).await;
        rowcast::migrate::migrate(&mut client, true)
            .await
            .expect("migrate the template");
    }
    let admin = connect(&pg.url("postgres")).await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {TEMPLATE} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
        ))
        .await
        .expect("close the template");
    // the migrating backend exits once its client has gone
    crate::common::eventually_async("the template's last connection closed", || async {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                &[&TEMPLATE],
            )
            .await
            .expect("pg_stat_activity")
            .get::<_, i64>(0)
            == 0
    })
    .await;
}

/// Farms 1..=farms (farmer 100+id) and products 1..=products spread over them, quantity 20.
pub(crate) async fn seed(db: &Client, farms: i64, products: i64) {
    db.execute(
        "INSERT INTO market.farms (id, name, farmer_id)
         SELECT g, 'Farm ' || g, 100 + g FROM generate_series(1, $1::bigint) g",
        &[&farms],
    )
    .await
    .expect("farms");
    db.execute(
        "INSERT INTO market.products (id, farm_id, name, unit, quantity)
         SELECT g, 1 + (g - 1) % $1::bigint, 'Product ' || g, 'lb', 20
           FROM generate_series(1, $2::bigint) g",
        &[&farms, &products],
    )
    .await
    .expect("products");
}

/// Emits one `test.n` change `{"n": n}` on `topic`.
pub(crate) async fn emit(db: &Client, topic: &str, n: i64) {
    db.execute(
        "SELECT rowcast.emit(ARRAY[$1::text], 'test.n', jsonb_build_object('n', $2::bigint))",
        &[&topic, &n],
    )
    .await
    .expect("emit");
}

/// Emits `test.n` changes `{"n": n}` for n = from..=to on `topic`, in one
/// transaction.
pub(crate) async fn emit_range(db: &Client, topic: &str, from: i64, to: i64) {
    db.execute(
        "SELECT rowcast.emit(ARRAY[$1::text], 'test.n', jsonb_build_object('n', g))
           FROM generate_series($2::bigint, $3::bigint) g",
        &[&topic, &from, &to],
    )
    .await
    .expect("emit a range");
}

/// Emits `count` `test.n` changes on `topic`, n = 1..=count, each padded to
/// ~1 KB, in transactions of 1,000.
pub(crate) async fn emit_padded(db: &Client, topic: &str, count: i64) {
    for from in (1..=count).step_by(1000) {
        let to = (from + 999).min(count);
        db.execute(
            "SELECT rowcast.emit(ARRAY[$1::text], 'test.n',
                    jsonb_build_object('n', g, 'pad', repeat('p', 1000)))
               FROM generate_series($2::bigint, $3::bigint) g",
            &[&topic, &from, &to],
        )
        .await
        .expect("emit padded changes");
    }
}

/// First column of every row of `sql`.
pub(crate) async fn column<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    db: &Client,
    sql: &str,
) -> Vec<T> {
    db.query(sql, &[])
        .await
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A role name for `db`'s tests: `prefix` and the database's oid (role
/// names are cluster-wide, and every test has a database of its own).
pub(crate) async fn role_of_this_db(db: &Client, prefix: &str) -> String {
    let oid = column_i64(
        db,
        "SELECT oid::bigint FROM pg_database WHERE datname = current_database()",
    )
    .await[0];
    format!("{prefix}_{oid}")
}

/// First column of every row of `sql`, as i64.
pub(crate) async fn column_i64(db: &Client, sql: &str) -> Vec<i64> {
    column(db, sql).await
}

/// Replaces the policy with one that allows `product-*` topics and raises,
/// with SQLSTATE `errcode`, for topics starting with `raising` (a policy
/// bug: a cast of a topic that is not a number, say).
pub(crate) async fn policy_raising_for(db: &Client, raising: &str, errcode: &str) {
    db.batch_execute(&format!(
        "CREATE OR REPLACE FUNCTION rowcast.authorize(claims jsonb, topic text)
         RETURNS boolean LANGUAGE plpgsql STABLE AS $$
         BEGIN
             IF topic LIKE '{raising}%' THEN
                 RAISE EXCEPTION 'policy bug' USING ERRCODE = '{errcode}';
             END IF;
             RETURN topic LIKE 'product-%';
         END $$"
    ))
    .await
    .expect("the raising policy");
}
