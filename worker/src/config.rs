//! The worker's settings.

use std::time::Duration;

use checkline_shared::config::{CommonConfig, ConfigError, Env};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub common: CommonConfig,
    /// Names this worker in `partition_cursors.owner` and in logs.
    pub worker_id: String,
    /// Most queued messages decided in one transaction.
    pub batch_max: usize,
    /// PostgreSQL connections (one per busy partition is enough).
    pub db_pool_max: u32,
    /// How often decided messages are purged from the stream.
    pub purge_interval: Duration,
    /// Longest pause between retries of a batch that failed transiently.
    pub retry_max_delay: Duration,
    /// With no message for this long, a partition counts as idle (caught up).
    pub idle_after: Duration,
    /// Most stranded items republished by one sweep of a partition.
    pub requeue_batch_max: i64,
    /// A partition lease not renewed for this long expires, and another
    /// worker takes the partition over (the failover time after a crash).
    pub lease_ttl: Duration,
    /// How often leases are renewed and the assignment re-checked.
    pub rebalance_interval: Duration,
    /// On SIGTERM, how long to wait for the batch in hand and the lease
    /// releases before exiting anyway.
    pub shutdown_timeout: Duration,
    /// Where `/metrics` is served; `None` (the variable empty) turns it off.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl WorkerConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(env)?;
        // Host name and pid: unique across containers (where the pid is often 1)
        // and across processes on one host.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "worker".into());
        // Worker ids are NATS key-value keys: letters, digits, `_` and `-`.
        let host: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .take(48)
            .collect();
        let default_id = format!("{host}-{}", std::process::id());
        let worker_id = env.string("CHECKLINE_WORKER_ID", &default_id);
        let valid = (1..=64).contains(&worker_id.len())
            && worker_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(ConfigError::new(
                "CHECKLINE_WORKER_ID",
                "1-64 characters of A-Z, a-z, 0-9, _ and -",
            ));
        }
        let config = Self {
            worker_id,
            batch_max: env.number("CHECKLINE_BATCH_MAX", 1000, 1, 10_000)?,
            db_pool_max: env.number(
                "CHECKLINE_WORKER_DB_POOL_MAX",
                common.partitions.clamp(2, 16) + 2,
                1,
                512,
            )?,
            purge_interval: env.millis("CHECKLINE_PURGE_INTERVAL_MS", 5_000, 100, 3_600_000)?,
            retry_max_delay: env.millis("CHECKLINE_RETRY_MAX_DELAY_MS", 5_000, 10, 60_000)?,
            idle_after: env.millis("CHECKLINE_IDLE_AFTER_MS", 1_000, 10, 60_000)?,
            requeue_batch_max: env.number("CHECKLINE_REQUEUE_BATCH_MAX", 1_000, 1, 100_000)?,
            lease_ttl: env.millis("CHECKLINE_LEASE_TTL_MS", 6_000, 1_000, 600_000)?,
            rebalance_interval: env.millis("CHECKLINE_REBALANCE_INTERVAL_MS", 1_000, 50, 60_000)?,
            shutdown_timeout: env.millis(
                "CHECKLINE_WORKER_SHUTDOWN_TIMEOUT_MS",
                10_000,
                0,
                600_000,
            )?,
            metrics_addr: match env.raw("CHECKLINE_WORKER_METRICS_ADDR") {
                None => None,
                Some(raw) => Some(raw.trim().parse().map_err(|_| {
                    ConfigError::new(
                        "CHECKLINE_WORKER_METRICS_ADDR",
                        "expected host:port, e.g. 127.0.0.1:9101",
                    )
                })?),
            },
            common,
        };
        if config.rebalance_interval * 2 >= config.lease_ttl {
            return Err(ConfigError::new(
                "CHECKLINE_REBALANCE_INTERVAL_MS",
                "must be less than half of CHECKLINE_LEASE_TTL_MS, so that leases are renewed in time",
            ));
        }
        Ok(config)
    }
}
