//! Application state, the router, and the server's life cycle.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use checkline_shared::config::ConfigError;
use checkline_shared::db::SessionTimeouts;
use checkline_shared::infra::{self, Infra, InfraError};
use checkline_shared::messages::QueueMessage;
use checkline_shared::partition::Partition;
use checkline_shared::queue::{self, Publisher, StreamLimits};
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
use crate::redis::{self, cache::Cache};
use crate::requeue::{self, Requeuer};
use crate::routes;

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

impl AppState {
    /// Publishes to the product's queue and waits for JetStream's
    /// acknowledgement.
    pub async fn enqueue(
        &self,
        partition: Partition,
        message: &QueueMessage,
        request_id: Option<&str>,
    ) -> Result<(), ApiError> {
        let published = if self.config.common.faults.fail("restock_publish") {
            Err(queue::PublishError::Failed("fault point".into()))
        } else {
            self.publisher.publish(partition, message, request_id).await
        };
        match published {
            Ok(_sequence) => Ok(()),
            Err(err) => {
                self.metrics.publish_failures.inc();
                tracing::warn!(error = %err, %partition, "queue publish failed");
                Err(ApiError::Unavailable(
                    "recorded, but its queueing is not confirmed; retry with the same Idempotency-Key to follow it".into(),
                ))
            }
        }
    }
}

impl AppState {
    /// Tells every API instance (this one at once) that the restock
    /// `restock_id` of the product is on its way.
    pub async fn announce_restocking(&self, product_id: uuid::Uuid, restock_id: uuid::Uuid) {
        self.catalog.restocking(product_id, restock_id);
        let subject = self.subjects.restocking_event(product_id);
        let payload = bytes::Bytes::from(restock_id.to_string());
        if let Err(err) = self.client.publish(subject, payload).await {
            tracing::warn!(error = %err, "restock announcement not published");
        }
        let _ = self.client.flush().await;
    }
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
    Infra(#[from] InfraError),
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
        let Infra {
            pool,
            subjects,
            client,
            js,
            publisher,
        } = infra::connect(
            common,
            "checkline-api",
            config.db_pool_max,
            SessionTimeouts::default(),
        )
        .await?;
        let redis_keys = redis::Keys::new(&common.prefix);
        let cache = Cache::new(&config.redis, redis_keys.clone())?;
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
                publisher: publisher.clone(),
                subjects: subjects.clone(),
                stream_limits: StreamLimits::from_config(common),
                faults: common.faults.clone(),
                metrics: metrics.clone(),
            },
            config.requeue_queue_max,
        );
        let acceptor = Acceptor::start(accept::Deps {
            pool: pool.clone(),
            publisher: publisher.clone(),
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
        let limiter = RateLimiter::new(&config.rate, &config.redis, redis_keys, metrics.clone())?;
        let streams = StreamSlots::new(
            config.edge.sse_max_streams,
            config.edge.sse_max_streams_per_addr,
        );
        let state = Arc::new(AppState {
            config,
            pool,
            client,
            publisher,
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
