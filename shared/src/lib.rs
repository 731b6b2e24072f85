//! Building blocks shared by the checkline api and worker.
//!
//! # Layout
//!
//! - [`config`]: reading and validating `CHECKLINE_*` environment variables.
//! - [`domain`]: newtypes that parse at the edge (customer ids, idempotency
//!   keys, quantities, ids) and the `Order` / `Product` records of the contract.
//! - [`messages`]: what travels through JetStream (queued orders and restocks)
//!   and the result events published after a decision.
//! - [`subjects`]: every NATS subject, stream name and bucket, in one place.
//! - [`db`]: PostgreSQL pool, database creation and migrations.
//! - [`pending`]: finding undecided orders without a status index (the
//!   per-partition low-water mark).
//! - [`partition`]: the queue partition number, as the database and subjects
//!   write it.
//! - [`queue`]: NATS connection, the JetStream stream definition and the
//!   [`queue::Publisher`] every queue write goes through.
//! - [`deadletter`]: reading and replaying the messages that could never be
//!   processed (the worker writes them; its CLI and the API read them).
//! - [`infra`]: the start-up both binaries share (database, partitions, NATS,
//!   queue stream, publisher).
//! - [`faults`]: fault points that tests arm to force rare interleavings.
//! - [`telemetry`] and [`shutdown`]: logging set-up and the shutdown signal;
//!   [`histogram`]: the latency histogram both binaries' `/metrics` show.

pub mod config;
pub mod db;
pub mod deadletter;
pub mod domain;
pub mod events;
pub mod faults;
pub mod histogram;
pub mod infra;
pub mod messages;
pub mod partition;
pub mod pending;
pub mod queue;
pub mod reservations;
pub mod shutdown;
pub mod stock;
pub mod subjects;
pub mod telemetry;
