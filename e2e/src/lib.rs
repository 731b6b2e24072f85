//! The end-to-end test harness of checkline: what every test that runs the
//! API and workers together starts from, compiled once as a library.
//!
//! # Layout
//!
//! - [`app`]: [`TestApp`], the API in process with an optional in-process
//!   worker, on a fresh database and prefix; requests and checks the tests
//!   share, and more API instances on the same database and prefix;
//!   [`buy`], a crowd of buyers at once; [`read_events`] and
//!   [`read_events_until`] for server-sent events.
//! - [`env`]: [`env::TestEnv`], a fresh PostgreSQL database and a unique
//!   NATS and Redis prefix per test, on the servers the `CHECKLINE_*`
//!   variables name.
//! - `src/bin/worker.rs`: the worker's program, built by this package so
//!   that its tests can start workers as real processes.
//!
//! The tests themselves are one integration-test binary, `tests/e2e/`, one
//! module per subject, with `tests/e2e/process.rs` starting, signalling and
//! watching worker processes.
// A harness fails by panicking, with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod app;
pub mod env;

pub use app::{buy, read_events, read_events_until, TestApp, SECRET};
