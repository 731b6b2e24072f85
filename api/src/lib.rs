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
//! - [`auth`]: HS256 bearer tokens and roles.
//! - [`error`]: every error as an RFC 9457 problem with the contract's code.
//! - [`extract`]: strict parsing of bodies, headers, ids and queries.
//! - [`hub`]: result events fanned out to waiting requests.
//! - [`routes`]: the handlers.

pub mod accept;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod error;
pub mod extract;
pub mod hub;
pub mod routes;

pub use app::Application;
pub use config::ApiConfig;
