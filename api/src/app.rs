//! Application state, the router, and the server's life cycle.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use checkline_shared::cache::Cache;
use checkline_shared::config::ConfigError;
use checkline_shared::db::{self, DbSetupError, PoolSettings};
use checkline_shared::queue::{self, QueueSetupError, StreamLimits};
use checkline_shared::subjects::Subjects;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::accept::{self, Acceptor, Backlog};
use crate::auth::Verifier;
use crate::catalog::Catalog;
use crate::config::ApiConfig;
use crate::edge::{self, StreamSlots};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::requeue::{self, Requeuer};
use crate::routes;

/// Everything a handler may need.
pub struct AppState {
    pub config: ApiConfig,
    pub pool: PgPool,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub cache: Cache,
    pub subjects: Subjects,
    pub hub: Arc<Hub>,
    pub verifier: Verifier,
    pub metrics: Arc<Metrics>,
    pub catalog: Arc<Catalog>,
    pub acceptor: Acceptor,
    pub limiter: RateLimiter,
    pub streams: Arc<StreamSlots>,
    /// Undecided orders per partition, for backpressure and `/metrics`.
    pub backlog: Arc<Backlog>,
    /// Publishes again, in the background, what may not be in the queue.
    pub requeuer: Requeuer,
}

/// Every route, registered with its OpenAPI operation: the router and the
/// document (`crate::openapi`) come from this one list, so the router cannot
/// serve a route the document does not describe.
pub fn api_router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(routes::products::list, routes::products::create))
        .routes(routes!(routes::products::get, routes::products::patch))
        .routes(routes!(routes::products::restock))
        .routes(routes!(routes::stock::events))
        .routes(routes!(routes::orders::list, routes::orders::create))
        .routes(routes!(routes::orders::get))
        .routes(routes!(routes::orders::events))
        .routes(routes!(routes::admin::stats))
        .routes(routes!(routes::ops::healthz))
        .routes(routes!(routes::ops::readyz))
        .routes(routes!(routes::ops::metrics))
        .routes(routes!(routes::ops::openapi))
}

/// The router, with its middleware.
///
/// From the outside in: request id and tracing (so every answer, refusals
/// included, carries `x-request-id`); `edge::admit` (431 for oversized
/// heads, the per-address rate limit); the body limit; then, on matched
/// routes only, `edge::bound` (the request time limit, the event stream
/// cap, the fingerprint of an idempotent write for the rate limit's retry
/// exemption, and axum's own extractor rejections turned into problem
/// documents). The per-subject rate limit is charged where the caller is
/// known (`auth::Caller`).
pub fn router(state: Arc<AppState>) -> Router {
    let body_max = state.config.body_max_bytes;
    let (routes, _openapi) = api_router().split_for_parts();
    routes
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), edge::bound))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_max))
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge::admit))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
                    let request_id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), request_id)
                }))
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
        .with_state(state)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiSetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbSetupError),
    #[error(transparent)]
    Queue(#[from] QueueSetupError),
    #[error("CHECKLINE_HTTP_ADDR: cannot listen: {0}")]
    Bind(#[source] std::io::Error),
}

/// A built API, bound to its address, ready to run.
pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    /// Background tasks (result events, backlog measurement).
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Application {
    pub async fn build(config: ApiConfig) -> Result<Self, ApiSetupError> {
        let common = &config.common;
        let pool = db::connect_and_migrate(
            &common.database_url,
            PoolSettings {
                max_connections: config.db_pool_max,
                acquire_timeout: common.db_acquire_timeout,
                startup_timeout: common.startup_timeout,
            },
        )
        .await?;
        db::ensure_partitions(&pool, common.partitions).await?;
        let subjects = Subjects::new(&common.prefix);
        let client = queue::connect(common, "checkline-api").await?;
        let js = async_nats::jetstream::new(client.clone());
        let first_sequence = db::next_queue_sequence(&pool)
            .await
            .map_err(DbSetupError::Connect)?;
        queue::ensure_stream(
            &js,
            &subjects,
            StreamLimits::from_config(common),
            first_sequence,
        )
        .await?;
        let cache = Cache::new(
            &common.redis_url,
            subjects.clone(),
            common.redis_timeout,
            common.order_cache_ttl,
        )?;
        let catalog = Arc::new(Catalog::new(config.sold_out_ttl));
        let hub = Arc::new(Hub::default());
        let hub_task = tokio::spawn(hub.clone().run(
            client.clone(),
            subjects.clone(),
            catalog.clone(),
        ));
        let metrics = Arc::new(Metrics::default());
        let backlog = Arc::new(Backlog::new(
            common.partitions,
            config.partition_backlog_max,
        ));
        let backlog_task = tokio::spawn(
            backlog
                .clone()
                .monitor(pool.clone(), config.backlog_check_interval),
        );
        let requeuer = Requeuer::start(
            requeue::Deps {
                pool: pool.clone(),
                js: js.clone(),
                subjects: subjects.clone(),
                stream_limits: StreamLimits::from_config(common),
                publish_timeout: common.publish_timeout,
                faults: common.faults.clone(),
                metrics: metrics.clone(),
            },
            config.requeue_queue_max,
        );
        let acceptor = Acceptor::start(accept::Deps {
            pool: pool.clone(),
            js: js.clone(),
            subjects: subjects.clone(),
            catalog: catalog.clone(),
            metrics: metrics.clone(),
            backlog: backlog.clone(),
            requeuer: requeuer.clone(),
            config: config.clone(),
        });
        let listener = TcpListener::bind(config.http_addr)
            .await
            .map_err(ApiSetupError::Bind)?;
        let verifier = Verifier::with_options(
            &config.jwt_secret,
            &config.jwt_previous_secrets,
            config.jwt_leeway_secs,
            config.jwt_issuer.as_deref(),
            config.jwt_audience.as_deref(),
        );
        let limiter = RateLimiter::new(
            &config.rate,
            &common.redis_url,
            &common.prefix,
            common.redis_timeout,
            metrics.clone(),
        )?;
        let streams = StreamSlots::new(
            config.edge.sse_max_streams,
            config.edge.sse_max_streams_per_addr,
        );
        let state = Arc::new(AppState {
            config,
            pool,
            client,
            js,
            cache,
            subjects,
            hub,
            verifier,
            metrics,
            catalog,
            acceptor,
            limiter,
            streams,
            backlog,
            requeuer,
        });
        Ok(Self {
            listener,
            state,
            tasks: vec![hub_task, backlog_task],
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish
    /// for a bounded time (`crate::server`).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "api listening");
        let grace = self.state.config.shutdown_grace;
        let app = router(self.state.clone());
        crate::server::serve(
            self.listener,
            app,
            self.state.config.edge.clone(),
            self.state.metrics.clone(),
            shutdown,
            grace,
        )
        .await;
        for task in &self.tasks {
            task.abort();
        }
        self.state.pool.close().await;
        tracing::info!("api stopped");
        Ok(())
    }
}
