//! What every handler shares: the application state, built once by
//! `crate::app::Application::build`.

use std::sync::Arc;

use checkline_shared::queue::Publisher;
use checkline_shared::subjects::Subjects;
use sqlx::PgPool;

use crate::accept::{Acceptor, Backlog};
use crate::activity::Activity;
use crate::auth::Verifier;
use crate::catalog::Catalog;
use crate::config::ApiConfig;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::product_cache::ProductCache;
use crate::ratelimit::RateLimiter;
use crate::redis::cache::Cache;
use crate::requeue::Requeuer;
use crate::streams::StreamSlots;

/// Everything a handler may need.
pub struct AppState {
    pub config: ApiConfig,
    pub pool: PgPool,
    pub client: async_nats::Client,
    /// Every queue write of this process goes through it.
    pub publisher: Publisher,
    pub cache: Cache,
    pub subjects: Subjects,
    pub hub: Arc<Hub>,
    /// Accepted and decided orders per second, for the deployment.
    pub activity: Arc<Activity>,
    pub verifier: Verifier,
    pub metrics: Arc<Metrics>,
    pub catalog: Arc<Catalog>,
    /// Product reads, served from memory within `CHECKLINE_CATALOG_FRESH_MS`.
    pub products: Arc<ProductCache>,
    pub acceptor: Acceptor,
    /// Orders of several lines, batched like the acceptor's.
    pub carts: crate::cart::CartAcceptor,
    pub limiter: RateLimiter,
    pub streams: Arc<StreamSlots>,
    /// Undecided orders per partition, for backpressure and `/metrics`.
    pub backlog: Arc<Backlog>,
    /// Publishes again, in the background, what may not be in the queue.
    pub requeuer: Requeuer,
}
