//! Every suite that can share one PostgreSQL cluster, in one test binary:
//! one cluster start and one link instead of one per suite, and every test
//! runs beside every other (`cargo test --test main <suite>` runs one suite).
//! `restart` and `chaos` stop PostgreSQL, so they are binaries of their own,
//! with their own cluster; `bench_smoke` runs the benchmark binary.

mod common;

#[path = "suites/browser.rs"]
mod browser;
#[path = "suites/capture.rs"]
mod capture;
#[path = "suites/carts.rs"]
mod carts;
#[path = "suites/core.rs"]
mod core;
#[path = "suites/demo.rs"]
mod demo;
#[path = "suites/direct_write.rs"]
mod direct_write;
#[path = "suites/grafana.rs"]
mod grafana;
#[path = "suites/guarantees.rs"]
mod guarantees;
#[path = "suites/hostile/mod.rs"]
mod hostile;
#[path = "suites/hostile_network.rs"]
mod hostile_network;
#[path = "suites/http1.rs"]
mod http1;
#[path = "suites/isolation.rs"]
mod isolation;
#[path = "suites/jwt.rs"]
mod jwt;
#[path = "suites/layout.rs"]
mod layout;
#[path = "suites/newcomer.rs"]
mod newcomer;
#[path = "suites/parsers.rs"]
mod parsers;
#[path = "suites/presence.rs"]
mod presence;
#[path = "suites/resume.rs"]
mod resume;
#[path = "suites/shop.rs"]
mod shop;
#[path = "suites/slow_consumer.rs"]
mod slow_consumer;
#[path = "suites/socketio.rs"]
mod socketio;
#[path = "suites/token_expiry.rs"]
mod token_expiry;
#[path = "suites/track.rs"]
mod track;
