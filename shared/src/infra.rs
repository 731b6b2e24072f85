//! The start-up both binaries share: PostgreSQL connected and migrated, the
//! partitions' cursor rows, NATS connected, the queue stream declared, and
//! the publisher every queue write goes through.

use async_nats::jetstream;
use sqlx::PgPool;

use crate::config::CommonConfig;
use crate::db::{self, DbSetupError, PoolSettings, SessionSettings};
use crate::queue::{self, Publisher, QueueSetupError, StreamLimits};
use crate::subjects::Subjects;

#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error(transparent)]
    Db(#[from] DbSetupError),
    #[error(transparent)]
    Queue(#[from] QueueSetupError),
}

/// What a started binary runs on.
pub struct Infra {
    pub pool: PgPool,
    pub subjects: Subjects,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// Every queue write of the binary goes through it.
    pub publisher: Publisher,
}

/// Connects to PostgreSQL (creating and migrating the database) with a pool
/// of `db_pool_max` connections, each bounded by `session`; makes sure every
/// partition has its cursor row; connects to NATS as `client_name` (the name
/// the server's monitoring shows) and declares the queue stream. Waits up to
/// `CHECKLINE_STARTUP_TIMEOUT_MS` for each server.
pub async fn connect(
    config: &CommonConfig,
    client_name: &str,
    db_pool_max: u32,
    session: SessionSettings,
) -> Result<Infra, InfraError> {
    let pool = db::connect_and_migrate_with(
        &config.database_url,
        PoolSettings {
            max_connections: db_pool_max,
            acquire_timeout: config.db_acquire_timeout,
            startup_timeout: config.startup_timeout,
        },
        session,
    )
    .await?;
    db::ensure_partitions(&pool, config.partitions).await?;
    let subjects = Subjects::new(&config.prefix);
    let client = queue::connect(config, client_name).await?;
    let js = jetstream::new(client.clone());
    let first_sequence = db::next_queue_sequence(&pool)
        .await
        .map_err(DbSetupError::Connect)?;
    // Declared before anything is published or consumed, so that whichever
    // binary starts first creates it; the worker's partition loops declare
    // it again on every (re)start.
    queue::retry_at_startup(config.startup_timeout, "declaring the queue stream", || {
        queue::ensure_stream(
            &js,
            &subjects,
            StreamLimits::from_config(config),
            first_sequence,
        )
    })
    .await?;
    let publisher = Publisher::from_config(js.clone(), subjects.clone(), config);
    Ok(Infra {
        pool,
        subjects,
        client,
        js,
        publisher,
    })
}
