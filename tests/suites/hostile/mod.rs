//! Issue #4: hostile input. Every case gets its documented answer (README,
//! "Security"), nothing panics, and well-behaved clients running alongside
//! receive their whole stream, in order.
//!
//! One test per case, each in its own [`arena::Arena`]: a fresh server with a
//! well-behaved client per transport and a writer, checked after the case.

mod arena;
mod http;
mod identity;
mod limits;
mod queries;
mod ws_messages;
