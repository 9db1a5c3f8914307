//! Shared test harness. Every suite of a test binary shares one throwaway
//! PostgreSQL cluster (from the project's own `embedded_pg`, started on first
//! use) and gets a fresh database per test, copied from a migrated template;
//! servers run in-process on loopback (or as child processes where a test
//! reads their memory, limits their descriptors or kills them); small WS / SSE / polling
//! clients turn what they receive into [`Msg`]s.
//!
//! One file per concern: [`pg`] (cluster, databases, seed data, queries),
//! [`server`] (in-process servers), [`process`] (`rowcast` child processes),
//! [`ws`], [`sse`], [`poll`] (the clients), [`msg`] (what clients yield),
//! [`metrics`] (reading `/metrics` text), [`raw`] (raw TCP sockets),
//! [`tokens`], [`wait`] (the arrival bound and bounded waits), [`tools`]
//! (programs from outside the build: found, or the test skipped outside CI),
//! [`panics`] and [`faults`] (process-wide state the suites share).

pub(crate) mod faults;
pub(crate) mod metrics;
pub(crate) mod msg;
pub(crate) mod panics;
pub(crate) mod pg;
pub(crate) mod poll;
pub(crate) mod process;
pub(crate) mod raw;
pub(crate) mod server;
pub(crate) mod sse;
pub(crate) mod tokens;
pub(crate) mod tools;
pub(crate) mod wait;
pub(crate) mod ws;

pub(crate) use metrics::*;
pub(crate) use msg::*;
pub(crate) use panics::*;
pub(crate) use pg::*;
pub(crate) use poll::*;
pub(crate) use process::*;
pub(crate) use raw::*;
pub(crate) use server::*;
pub(crate) use sse::*;
pub(crate) use tokens::*;
pub(crate) use tools::*;
pub(crate) use wait::*;
pub(crate) use ws::*;
