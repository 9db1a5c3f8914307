//! rowcast: Postgres row changes to browsers, over WebSocket, Server-Sent Events
//! and HTTP polling, gap-free and in commit order.
//!
//! # Layout
//!
//! A change travels: an app's trigger calls `rowcast.emit` (`sql/`) inside its
//! transaction → [`source`] reads the change log in snapshot order, woken by a
//! doorbell NOTIFY ([`doorbell`] is the node's side of that protocol;
//! [`commit_probe`] times the database's commits, which tells the source when
//! rings would queue writers) →
//! [`hub`] fans it out per topic (keeping recent batches in
//! the [`window`]) → each client's [`feed`] joins catch-up from the log
//! ([`changelog`]) with the live queue → a transport
//! ([`transport`]`::{ws, sse, poll, socketio}`) frames it onto a socket. For a table
//! captured by a logical replication slot instead of a trigger, [`capture`]
//! appends what the slot decodes to the same log, after the writers' commits.
//!
//! Beside that path: [`access`] is the gate every client passes (slots, token,
//! topic limits, the `rowcast.authorize` policy) built on [`auth`] and
//! [`limits`], reading query strings with [`query`]; [`http`] and [`sockets`] bound what a connection may hold
//! before it is admitted, and [`direct_http1`] answers SSE streams and long
//! polls without hyper's per-connection buffers; [`budget`] bounds catch-up memory and [`pool_share`] each client address's share of the pool; [`retention`]
//! prunes the log, below every node's [`read_positions`]; [`metrics`] measures; [`config`] is every flag; [`server`]
//! wires and stops it all (with [`shutdown`]).
//!
//! Off that path, writing instead of reading: [`shop`] is the demo
//! storefront's HTTP API (`rowcast demo`, `serve --market-api`), a thin layer
//! over the market schema's SQL functions, whose answers carry the id of the
//! transaction that wrote (`"tx"`), as every change's envelope does.
//! The browser side is `web/`: the client `rowcast.js`, served by
//! [`transport`] at `/rowcast.js`, and the demo storefront built on it and on
//! that API, served by `demo` (its `storefront`) only.
//!
//! The public surface is what the `rowcast` binary, the benchmark and the
//! tests use: starting a server, configuring it, the cursor format, the
//! client message parser, tokens, migrations and a throwaway PostgreSQL.

pub mod auth;
pub mod config;
pub mod cursor;
pub mod db;
pub mod demo;
pub mod embedded_pg;
pub mod error;
pub mod failpoints;
pub mod logging;
pub mod migrate;
pub mod protocol;
pub mod rlimit;
pub mod server;
pub mod shutdown;
pub mod snapshot;

pub(crate) mod access;
pub(crate) mod api_error;
pub(crate) mod budget;
pub(crate) mod capture;
pub(crate) mod change;
pub(crate) mod changelog;
pub(crate) mod commit_probe;
pub(crate) mod direct_http1;
pub(crate) mod doorbell;
pub(crate) mod feed;
pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod pool_share;
pub(crate) mod presence;
pub(crate) mod query;
pub(crate) mod read_positions;
pub(crate) mod retention;
pub(crate) mod shop;
pub(crate) mod sockets;
pub(crate) mod source;
pub(crate) mod transport;
pub(crate) mod window;

pub use error::{Error, Result};
pub use limits::Origins;

/// What an idle connection holds is mostly futures: the tests that keep them
/// small measure a future's type from the `async fn` that makes it, without
/// running (or even building) one.
#[cfg(test)]
pub(crate) mod future_size {
    /// Size of the future `f(a)` returns.
    pub(crate) fn of1<A, F: std::future::Future>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Size of the future `f(a, b)` returns.
    pub(crate) fn of2<A, B, F: std::future::Future>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }
}
