//! The checkline worker: decides queued orders.
//!
//! It consumes the JetStream queue partition by partition (one loop per
//! partition, strictly in queue order), decides each ready batch of orders in
//! memory against the product's locked row, writes every effect in one
//! PostgreSQL transaction that also advances the partition's cursor, then
//! publishes the results (core NATS events for the API instances).
//!
//! # Layout
//!
//! - [`config`]: `CHECKLINE_*` settings of the worker.
//! - [`decide`]: the pure decision function, property-tested.
//! - [`store`]: the batch transaction and the stranded-order sweep queries.
//! - [`partition`]: the per-partition consumer loop.
//! - [`notify`]: result events after commit.

pub mod config;
pub mod decide;
pub mod notify;
pub mod partition;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use checkline_shared::config::ConfigError;
use checkline_shared::db::{self, DbSetupError, PoolSettings};
use checkline_shared::queue::{self, QueueSetupError, StreamLimits};
use checkline_shared::subjects::Subjects;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use config::WorkerConfig;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbSetupError),
    #[error(transparent)]
    Queue(#[from] QueueSetupError),
}

/// Connects, then runs every partition until `shutdown` resolves. In-flight
/// batches finish before it returns.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
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
    let client = queue::connect(common, &format!("checkline-worker {}", config.worker_id)).await?;
    let js = async_nats::jetstream::new(client.clone());
    let stream = queue::ensure_stream(&js, &subjects, StreamLimits::from_config(common)).await?;
    let partitions = common.partitions;
    let deps = partition::Deps {
        config: Arc::new(config),
        pool: pool.clone(),
        client: client.clone(),
        js,
        stream,
        subjects,
    };

    tracing::info!(partitions, worker = %deps.config.worker_id, "worker started");
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for p in 0..partitions {
        tasks.spawn(partition::run(deps.clone(), p, stopped.clone()));
    }
    shutdown.await;
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    let _ = client.flush().await;
    pool.close().await;
    tracing::info!("worker stopped");
    Ok(())
}
