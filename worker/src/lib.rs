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
//! - [`cli`]: the command line (run, or inspect dead letters).
//! - [`config`]: `CHECKLINE_*` settings of the worker.
//! - [`lease`] and [`coordinator`]: which partitions this worker runs
//!   (leases in NATS KV, fencing tokens in PostgreSQL, even spread).
//! - [`decide`]: the pure decision function, property-tested.
//! - [`store`]: the batch transaction and the stranded-order sweep queries.
//! - [`partition`]: the per-partition consumer loop.
//! - [`stream_watch`]: notices a queue stream that is gone or created anew.
//! - [`notify`]: result events after commit.
//! - [`deadletter`]: messages that can never be processed, kept for ops
//!   (read and replayed through `checkline_shared::deadletter`).
//! - [`metrics`]: the worker's Prometheus metrics.

pub mod batch_error;
pub mod carts;
pub mod cli;
pub mod config;
pub mod coordinator;
pub mod deadletter;
pub mod decide;
pub mod expiry;
pub mod lease;
pub mod metrics;
pub mod notify;
pub mod partition;
pub mod store;
pub mod stream_watch;

use std::future::Future;
use std::sync::Arc;

use checkline_shared::config::ConfigError;
use checkline_shared::infra::{self, InfraError};
use checkline_shared::queue;
use lease::Leases;

pub use config::WorkerConfig;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Infra(#[from] InfraError),
    #[error(transparent)]
    Lease(#[from] lease::LeaseError),
    #[error(transparent)]
    DeadLetter(#[from] checkline_shared::deadletter::DeadLetterError),
}

/// Connects, then runs the partitions this worker is assigned until
/// `shutdown` resolves. In-flight batches finish and leases are released
/// before it returns.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let common = &config.common;
    let client_name = format!("checkline-worker {}", config.worker_id);
    // Every session of the worker is bounded, so that a paused or vanished
    // peer holding a lock can stall nothing for longer than a lease.
    let session = config.session_settings();
    let infra = infra::connect(common, &client_name, config.db_pool_max, session).await?;
    queue::retry_at_startup(
        common.startup_timeout,
        "declaring the dead-letter stream",
        || {
            deadletter::ensure_stream(
                &infra.js,
                &infra.subjects,
                config.dead_letter_max_bytes,
                common.stream_replicas,
            )
        },
    )
    .await?;
    let partitions = common.partitions;
    let metrics = Arc::new(metrics::Metrics::default());
    if let Some(addr) = config.metrics_addr {
        let local = metrics::serve(addr, metrics.clone()).await.map_err(|e| {
            ConfigError::new(
                "CHECKLINE_WORKER_METRICS_ADDR",
                format!("cannot listen: {e}"),
            )
        })?;
        tracing::info!(%local, "worker metrics at /metrics");
    }
    let stream_seen = stream_watch::spawn(
        infra.js.clone(),
        infra.subjects.stream_name(),
        config.stream_check_interval,
        common.publish_timeout,
    );
    let (pool, client) = (infra.pool.clone(), infra.client.clone());
    let (stop_expirer, expirer_stopped) = tokio::sync::watch::channel(false);
    let expirer = tokio::spawn(
        expiry::Expirer {
            pool: infra.pool.clone(),
            publisher: infra.publisher.clone(),
            client: infra.client.clone(),
            subjects: infra.subjects.clone(),
            interval: config.expiry_interval,
            batch_max: config.expiry_batch_max,
        }
        .run(expirer_stopped),
    );
    let deps = partition::Deps {
        config: Arc::new(config),
        pool: infra.pool,
        client: infra.client,
        js: infra.js,
        publisher: infra.publisher,
        stream_seen,
        metrics,
        subjects: infra.subjects,
    };

    let leases = queue::retry_at_startup(
        deps.config.common.startup_timeout,
        "opening the lease bucket",
        || {
            Leases::open(
                &deps.js,
                &deps.subjects,
                &deps.config.worker_id,
                deps.config.lease_ttl,
                deps.config.lease_op_timeout,
                deps.config.common.stream_replicas,
            )
        },
    )
    .await?;
    tracing::info!(partitions, worker = %deps.config.worker_id, "worker started");
    coordinator::run(deps, leases, shutdown).await;
    let _ = stop_expirer.send(true);
    let _ = expirer.await;
    let _ = client.flush().await;
    pool.close().await;
    tracing::info!("worker stopped");
    Ok(())
}
