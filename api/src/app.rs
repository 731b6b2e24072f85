//! The application: built from its configuration (connections, background
//! tasks, [`AppState`]), then served until shutdown (`crate::server`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use checkline_shared::config::ConfigError;
use checkline_shared::db::SessionSettings;
use checkline_shared::infra::{self, Infra, InfraError};
use checkline_shared::queue::StreamLimits;
use tokio::net::TcpListener;

use crate::accept::{self, Acceptor, Backlog};
use crate::activity::Activity;
use crate::auth::Verifier;
use crate::catalog::Catalog;
use crate::config::ApiConfig;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::product_cache::ProductCache;
use crate::ratelimit::RateLimiter;
use crate::redis::{self, cache::Cache};
use crate::requeue::{self, Requeuer};
use crate::router::router;
use crate::state::AppState;
use crate::streams::StreamSlots;

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
    /// Background tasks (result events, the activity samples, backlog
    /// measurement).
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
            SessionSettings::default(),
        )
        .await?;
        let redis_keys = redis::Keys::new(&common.prefix);
        let cache = Cache::new(&config.redis, redis_keys.clone())?;
        let catalog = Arc::new(Catalog::new(config.sold_out_ttl));
        let products = Arc::new(ProductCache::new(
            pool.clone(),
            config.catalog_fresh,
            config.catalog_max_products,
        ));
        let hub = Arc::new(Hub::default());
        let activity = Arc::new(Activity::default());
        let hub_task = tokio::spawn(hub.clone().run(
            client.clone(),
            subjects.clone(),
            catalog.clone(),
            products.clone(),
            activity.clone(),
            common.faults.clone(),
        ));
        let metrics = Arc::new(Metrics::default());
        let activity_task = tokio::spawn(activity.clone().run(
            client.clone(),
            subjects.clone(),
            metrics.clone(),
        ));
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
                requeue_after: common.requeue_after,
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
            activity,
            verifier,
            metrics,
            catalog,
            products,
            carts: crate::cart::CartAcceptor::start(acceptor.deps()),
            acceptor,
            limiter,
            streams,
            backlog,
            requeuer,
        });
        Ok(Self {
            listener,
            state,
            tasks: vec![hub_task, activity_task, backlog_task],
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
