//! The end-to-end test harness of checkline: what every test that runs the
//! API and workers together starts from, compiled once as a library.
//!
//! # Layout
//!
//! - [`app`]: [`TestApp`], the API in process with an optional in-process
//!   worker, on a fresh database and prefix; requests and checks the tests
//!   share; [`buy`], a crowd of buyers at once; [`read_events`] for
//!   server-sent events.
//! - [`process`]: workers as real processes (the `checkline-worker` binary),
//!   signalled like an operator would, and who owns which partition.
//!
//! The tests themselves are one integration-test binary, `tests/e2e/`, one
//! module per subject.
// A harness fails by panicking, with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod app;
pub mod process;

pub use app::{buy, read_events, TestApp, SECRET};
