//! HTTP handlers, one module per resource.

pub mod admin;
pub mod ops;
pub mod orders;
pub mod products;
pub mod stock;
