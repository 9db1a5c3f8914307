//! rowcast: Postgres row changes to browsers, over WebSocket, Server-Sent Events
//! and HTTP polling, gap-free and in commit order.
//!
//! Data flow: triggers call `rowcast.emit` (sql/) → `source` reads the change log
//! in snapshot order, woken by a doorbell NOTIFY → `hub` fans out per topic →
//! `feed` joins log catch-up and live stream per client → `transport::{ws, sse, poll}`.

pub mod access;
pub mod auth;
pub mod budget;
pub mod change;
pub mod changelog;
pub mod config;
pub mod cursor;
pub mod db;
pub mod demo;
pub mod embedded_pg;
pub mod error;
pub mod failpoints;
pub mod feed;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod migrate;
pub mod protocol;
pub mod retention;
pub mod rlimit;
pub mod server;
pub mod shutdown;
pub mod snapshot;
pub mod sockets;
pub mod source;
pub mod transport;

pub use error::{Error, Result};
