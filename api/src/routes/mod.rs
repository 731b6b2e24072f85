//! HTTP handlers, one module per resource. Each module registers its own
//! routes with their OpenAPI operations ([`utoipa_axum`]); [`router`] merges
//! them.

use std::sync::Arc;

use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub mod activity;
pub mod admin;
pub mod dead_letters;
pub mod ops;
pub mod orders;
pub mod products;
pub mod stock;

/// Every resource's routes, each registered with its OpenAPI operation.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .merge(products::router())
        .merge(stock::router())
        .merge(orders::router())
        .merge(admin::router())
        .merge(activity::router())
        .merge(dead_letters::router())
        .merge(ops::router())
}
