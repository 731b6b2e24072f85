//! The worker's settings.

use std::time::Duration;

use checkline_shared::config::{CommonConfig, ConfigError, Env};
use checkline_shared::db::SessionSettings;

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
    /// How often a partition loop checks that the queue stream is still the
    /// one its cursor counts in (a lost and recreated stream is re-based).
    pub stream_check_interval: Duration,
    /// Longest pause between retries of a batch that failed transiently.
    pub retry_max_delay: Duration,
    /// Longest a batch's transaction may take, measured here: past it the
    /// batch is given up (its connection dropped, so nothing it did stays)
    /// and tried again. A database that stops answering without closing
    /// the connection (a primary gone, packets dropped) would otherwise hold
    /// the partition until TCP gives up, many minutes later.
    pub batch_timeout: Duration,
    /// With no message for this long, a partition counts as idle (caught up).
    pub idle_after: Duration,
    /// Most stranded items republished by one sweep of a partition.
    pub requeue_batch_max: i64,
    /// How often the expirer looks for reservations that are due: a
    /// reservation is expired at most this long (plus one expiry round)
    /// after its `reserved_until`.
    pub expiry_interval: Duration,
    /// Most reservations expired by one transaction (the expirer goes on
    /// at once while it finds full rounds).
    pub expiry_batch_max: i64,
    /// A partition lease not renewed for this long expires, and another
    /// worker takes the partition over (the failover time after a crash).
    pub lease_ttl: Duration,
    /// How often leases are renewed and the assignment re-checked.
    pub rebalance_interval: Duration,
    /// On SIGTERM, how long to wait for the batch in hand and the lease
    /// releases before exiting anyway.
    pub shutdown_timeout: Duration,
    /// Deadline of one lease operation (heartbeat, acquire, renew, release,
    /// listing the workers): NATS or PostgreSQL hanging must not stop the
    /// coordinator from renewing its other leases.
    pub lease_op_timeout: Duration,
    /// How long a partition handed over to another worker may take to stop
    /// before its task is aborted.
    pub handover_timeout: Duration,
    /// Bytes the dead-letter stream may hold. When it is full a new dead
    /// letter is refused, and its partition waits at that message.
    pub dead_letter_max_bytes: i64,
    /// PostgreSQL `statement_timeout` of the worker's sessions.
    pub db_statement_timeout: Duration,
    /// PostgreSQL `lock_timeout` of the worker's sessions: a take-over never
    /// waits on a lock for longer than this.
    pub db_lock_timeout: Duration,
    /// PostgreSQL `idle_in_transaction_session_timeout` of the worker's
    /// sessions: the transaction of a paused worker is ended (and its locks
    /// freed) this long after its last statement, before its leases expire.
    pub db_idle_in_transaction_timeout: Duration,

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
        let lease_ttl = env.millis("CHECKLINE_LEASE_TTL_MS", 6_000, 1_000, 600_000)?;
        let ttl_ms = u64::try_from(lease_ttl.as_millis()).unwrap_or(u64::MAX);
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
            stream_check_interval: env.millis(
                "CHECKLINE_STREAM_CHECK_INTERVAL_MS",
                1_000,
                100,
                60_000,
            )?,
            retry_max_delay: env.millis("CHECKLINE_RETRY_MAX_DELAY_MS", 5_000, 10, 60_000)?,
            batch_timeout: env.millis("CHECKLINE_BATCH_TIMEOUT_MS", 15_000, 100, 600_000)?,
            idle_after: env.millis("CHECKLINE_IDLE_AFTER_MS", 1_000, 10, 60_000)?,
            requeue_batch_max: env.number("CHECKLINE_REQUEUE_BATCH_MAX", 1_000, 1, 100_000)?,
            expiry_interval: env.millis("CHECKLINE_EXPIRY_INTERVAL_MS", 1_000, 50, 60_000)?,
            expiry_batch_max: env.number("CHECKLINE_EXPIRY_BATCH_MAX", 500, 1, 100_000)?,
            lease_ttl,
            rebalance_interval: env.millis("CHECKLINE_REBALANCE_INTERVAL_MS", 1_000, 50, 60_000)?,
            shutdown_timeout: env.millis(
                "CHECKLINE_WORKER_SHUTDOWN_TIMEOUT_MS",
                10_000,
                0,
                600_000,
            )?,
            lease_op_timeout: env.millis(
                "CHECKLINE_LEASE_OP_TIMEOUT_MS",
                ttl_ms / 4,
                10,
                600_000,
            )?,
            handover_timeout: env.millis(
                "CHECKLINE_HANDOVER_TIMEOUT_MS",
                ttl_ms / 2,
                10,
                600_000,
            )?,
            dead_letter_max_bytes: dead_letter_max_bytes(env)?,
            db_statement_timeout: env.millis(
                "CHECKLINE_DB_STATEMENT_TIMEOUT_MS",
                5_000,
                100,
                3_600_000,
            )?,
            db_lock_timeout: env.millis("CHECKLINE_DB_LOCK_TIMEOUT_MS", ttl_ms / 3, 10, 600_000)?,
            db_idle_in_transaction_timeout: env.millis(
                "CHECKLINE_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
                ttl_ms / 3,
                100,
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
        if config.rebalance_interval + config.lease_op_timeout * 2 >= config.lease_ttl {
            return Err(ConfigError::new(
                "CHECKLINE_LEASE_OP_TIMEOUT_MS",
                "CHECKLINE_REBALANCE_INTERVAL_MS plus twice this must be less than \
                 CHECKLINE_LEASE_TTL_MS, so that a slow renewal still lands in time",
            ));
        }
        if config.handover_timeout >= config.lease_ttl {
            return Err(ConfigError::new(
                "CHECKLINE_HANDOVER_TIMEOUT_MS",
                "must be less than CHECKLINE_LEASE_TTL_MS",
            ));
        }
        if config.db_lock_timeout >= config.lease_ttl {
            return Err(ConfigError::new(
                "CHECKLINE_DB_LOCK_TIMEOUT_MS",
                "must be less than CHECKLINE_LEASE_TTL_MS, so that a take-over is never held up \
                 longer than a lease",
            ));
        }
        if config.db_idle_in_transaction_timeout >= config.lease_ttl {
            return Err(ConfigError::new(
                "CHECKLINE_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
                "must be less than CHECKLINE_LEASE_TTL_MS, so that a paused worker's locks are \
                 gone before its leases expire",
            ));
        }
        Ok(config)
    }

    /// The bounds set on every PostgreSQL session of the worker.
    pub fn session_settings(&self) -> SessionSettings {
        SessionSettings {
            statement: Some(self.db_statement_timeout),
            lock: Some(self.db_lock_timeout),
            idle_in_transaction: Some(self.db_idle_in_transaction_timeout),
            keyed_statements_only: true,
        }
    }
}

/// `CHECKLINE_DEAD_LETTER_MAX_BYTES`, also read by the `dead-letters`
/// commands (which create the stream when it is missing).
pub fn dead_letter_max_bytes(env: &Env) -> Result<i64, ConfigError> {
    env.number(
        "CHECKLINE_DEAD_LETTER_MAX_BYTES",
        256 * 1024 * 1024,
        1024,
        i64::MAX,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&'static str, &'static str)]) -> Result<WorkerConfig, ConfigError> {
        WorkerConfig::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn timeouts_default_below_the_lease_ttl() {
        let c = config(&[]).unwrap();
        assert_eq!(c.lease_ttl, Duration::from_secs(6));
        assert_eq!(c.db_lock_timeout, Duration::from_secs(2));
        assert_eq!(c.db_idle_in_transaction_timeout, Duration::from_secs(2));
        assert_eq!(c.lease_op_timeout, Duration::from_millis(1_500));
        assert_eq!(c.handover_timeout, Duration::from_secs(3));
        // They follow a shorter TTL.
        let c = config(&[
            ("CHECKLINE_LEASE_TTL_MS", "2000"),
            ("CHECKLINE_REBALANCE_INTERVAL_MS", "200"),
        ])
        .unwrap();
        assert_eq!(c.db_idle_in_transaction_timeout, Duration::from_millis(666));
        assert_eq!(c.lease_op_timeout, Duration::from_millis(500));
    }

    #[test]
    fn timeouts_at_or_above_the_lease_ttl_are_refused() {
        for var in [
            "CHECKLINE_DB_LOCK_TIMEOUT_MS",
            "CHECKLINE_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
            "CHECKLINE_HANDOVER_TIMEOUT_MS",
            "CHECKLINE_LEASE_OP_TIMEOUT_MS",
        ] {
            let err = config(&[(var, "6000")]).unwrap_err();
            assert_eq!(err.var, var);
        }
        let err = config(&[("CHECKLINE_DEAD_LETTER_MAX_BYTES", "10")]).unwrap_err();
        assert_eq!(err.var, "CHECKLINE_DEAD_LETTER_MAX_BYTES");
    }
}
