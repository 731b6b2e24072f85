//! Every test that runs the API and workers together, in one binary (one
//! link of the whole stack), against the real PostgreSQL, NATS JetStream and
//! Redis named by the `CHECKLINE_*` variables. The harness is the
//! `checkline_e2e` library.
// A test fails by panicking, with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod activity;
mod audit;
mod catalog;
mod checkout;
mod checkout_load;
mod contract;
mod crash;
mod deadletter;
mod edge;
mod events;
mod interleavings;
mod liveness;
mod loadtest_apis;
mod low_water;
mod nats_servers;
mod openapi;
mod orders;
mod process;
mod scaling;
