//! The checkline HTTP API.
//!
//! It accepts orders (writing a pending row to PostgreSQL, then publishing it
//! to the product's JetStream subject and answering 202 once JetStream has it
//! on disk), serves products, orders and stats from PostgreSQL (decided
//! orders through the Redis cache), and pushes decisions to waiting clients
//! from the workers' result events.
//!
//! # Layout
//!
//! - [`accept`]: the batched accept path (group commit of orders).
//! - [`app`]: state, router, server life cycle.
//! - [`catalog`]: what the accept path knows about products (partition, sold out).
//! - [`config`]: the API's `CHECKLINE_*` settings.
//! - [`auth`]: HS256 bearer tokens (key rotation, `iss`/`aud`) and roles.
//! - [`edge`]: request limits: header size, per-address rate, time, streams.
//! - [`error`]: every error as an RFC 9457 problem with the contract's code.
//! - [`extract`]: strict parsing of bodies, headers, ids and queries.
//! - [`fuzzing`]: the request parsing as one entry point, for fuzzers.
//! - [`hub`]: result events fanned out to waiting requests.
//! - [`metrics`]: the counters behind `GET /metrics`.
//! - [`openapi`]: the OpenAPI 3.1 document, generated from the handlers.
//! - [`ratelimit`]: GCRA rate limits in Redis, with an in-process fallback.
//! - [`requeue`]: publishing again, in the background, what may not be queued.
//! - [`restock`]: a restock's steps: idempotency, insert, announce, enqueue.
//! - [`routes`]: the handlers.
//! - [`server`]: the accept loop: connection cap, header read timeout,
//!   graceful shutdown.

pub mod accept;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod edge;
pub mod error;
pub mod extract;
pub mod fuzzing;
pub mod hub;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod requeue;
pub mod restock;
pub mod routes;
pub mod server;

pub use app::Application;
pub use config::ApiConfig;
