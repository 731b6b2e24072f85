//! The checkline HTTP API.
//!
//! It accepts orders (writing a pending row to PostgreSQL, then publishing it
//! to the product's JetStream subject and answering 202 once JetStream has it
//! on disk), serves products, orders and stats from PostgreSQL (decided
//! orders through the Redis cache, products from memory within a bound), and pushes decisions to waiting clients
//! from the workers' result events.
//!
//! # Layout
//!
//! Each module uses only modules listed before it, so the crate reads in one
//! direction, from the building blocks to the application.
//!
//! What the state holds, and what that is built on:
//! - [`error`]: every error as an RFC 9457 problem, its code from one table.
//! - [`config`]: the API's `CHECKLINE_*` settings.
//! - [`metrics`]: the counters behind `GET /metrics`.
//! - [`extract`]: strict parsing of bodies, headers, ids and queries.
//! - [`auth`]: HS256 bearer tokens (key rotation, `iss`/`aud`) and roles.
//! - [`db`]: rows only the API reads (a product, one order).
//! - [`redis`]: the Redis connection set-up, every Redis key, the order cache.
//! - [`ratelimit`]: GCRA rate limits in Redis, with an in-process fallback.
//! - [`streams`]: the cap on open event streams.
//! - [`catalog`]: what the accept path knows about products (partition, sold
//!   out), and the read of a product.
//! - [`product_cache`]: product reads from memory, never older than
//!   `CHECKLINE_CATALOG_FRESH_MS`.
//! - [`activity`]: accepted and decided orders per second, for the whole
//!   deployment, from the events every instance receives.
//! - [`hub`]: result events fanned out to waiting requests and streams.
//! - [`requeue`]: publishing again, in the background, what may not be queued.
//! - [`accept`]: the batched accept path (group commit of orders).
//! - [`openapi`]: what the OpenAPI document shares (problem responses,
//!   schemas, security), which the handlers' annotations refer to.
//!
//! The state, and what works on it:
//! - [`state`]: `AppState`, what every handler shares.
//! - [`edge`]: request limits (header size, per-address rate, time, streams)
//!   and the authenticated caller.
//! - [`restock`]: a restock's steps: idempotency, insert, announce, enqueue.
//!
//! HTTP, from the handlers out:
//! - [`routes`]: the handlers, and each resource's routes.
//! - [`pages`]: the storefront and the operations console, embedded files
//!   served under a strict content security policy.
//! - [`router`]: every route with its middleware, and the OpenAPI 3.1
//!   document built from the same list.
//! - [`server`]: the accept loop: connection cap, header read timeout,
//!   graceful shutdown.
//! - [`app`]: `Application`: build from the configuration, run until stopped.
//! - [`fuzzing`]: the request parsing as one entry point, for fuzzers.

pub mod accept;
pub mod activity;
pub mod app;
pub mod auth;
pub mod cart;
pub mod catalog;
pub mod config;
pub mod db;
pub mod edge;
pub mod error;
pub mod extract;
pub mod fuzzing;
pub mod hub;
pub mod metrics;
pub mod openapi;
pub mod order_request;
pub mod pages;
pub mod product_cache;
pub mod ratelimit;
pub mod redis;
pub mod requeue;
pub mod restock;
pub mod router;
pub mod routes;
pub mod server;
pub mod state;
pub mod streams;

pub use app::Application;
pub use config::ApiConfig;
