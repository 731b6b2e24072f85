//! The API's settings.

use std::net::SocketAddr;
use std::time::Duration;

use checkline_shared::config::{CommonConfig, ConfigError, Env};

#[derive(Clone)]
pub struct ApiConfig {
    pub common: CommonConfig,
    /// Where the HTTP server listens.
    pub http_addr: SocketAddr,
    /// HS256 key for bearer tokens. Never logged.
    pub jwt_secret: Vec<u8>,
    /// Clock skew tolerated on `exp`, in seconds.
    pub jwt_leeway_secs: u64,
    /// Largest quantity one order may ask for.
    pub order_quantity_max: i64,
    /// How long a restock request waits to answer 200 before answering 202.
    pub restock_wait: Duration,
    /// While waiting on a decision, how often PostgreSQL is re-read in case a
    /// result event was missed.
    pub wait_poll_interval: Duration,
    /// Longest `?wait=` accepted, in seconds.
    pub wait_max_secs: u64,
    pub db_pool_max: u32,
    /// Comment line sent on idle server-sent event streams.
    pub sse_keepalive: Duration,
    /// Least time between two stock events on one stream (coalescing).
    pub stock_event_interval: Duration,
    /// Largest request body, in bytes (413 beyond).
    pub body_max_bytes: usize,
    /// After a shutdown signal, how long open requests (long polls, event
    /// streams) may run before the server stops anyway.
    pub shutdown_grace: Duration,
    /// Without events, how often a stock stream re-reads PostgreSQL.
    pub stock_refresh: Duration,
    /// Most orders accepted together (one database round trip, one queue
    /// message per product).
    pub accept_batch_max: usize,
    /// Accept batches in flight at once; while all are busy, new requests
    /// gather into the next batch.
    pub accept_pipelines: usize,
    /// Orders waiting for a batch; beyond it, `503 overloaded`.
    pub accept_queue_max: usize,
    /// How long a "sold out" seen for a product is trusted before PostgreSQL
    /// is asked again (events refresh it sooner).
    pub sold_out_ttl: Duration,
    /// Undecided orders a partition may hold; beyond it, new orders for its
    /// products get `503 overloaded`.
    pub partition_backlog_max: i64,
    /// How often the partitions' backlogs are measured.
    pub backlog_check_interval: Duration,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("common", &self.common)
            .field("http_addr", &self.http_addr)
            .field("jwt_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Shortest accepted HS256 key: RFC 7518 asks for at least the hash size.
pub const JWT_SECRET_MIN_BYTES: usize = 32;

impl ApiConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(env)?;
        let http_addr = env
            .string("CHECKLINE_HTTP_ADDR", "127.0.0.1:8080")
            .parse()
            .map_err(|_| {
                ConfigError::new(
                    "CHECKLINE_HTTP_ADDR",
                    "expected host:port, e.g. 127.0.0.1:8080",
                )
            })?;
        let jwt_secret = env
            .raw("CHECKLINE_JWT_SECRET")
            .ok_or_else(|| {
                ConfigError::new(
                    "CHECKLINE_JWT_SECRET",
                    "required (an HS256 key of at least 32 bytes)",
                )
            })?
            .as_bytes()
            .to_vec();
        if jwt_secret.len() < JWT_SECRET_MIN_BYTES {
            return Err(ConfigError::new(
                "CHECKLINE_JWT_SECRET",
                format!("must be at least {JWT_SECRET_MIN_BYTES} bytes"),
            ));
        }
        Ok(Self {
            http_addr,
            jwt_secret,
            jwt_leeway_secs: env.number("CHECKLINE_JWT_LEEWAY_SECS", 5, 0, 30)?,
            order_quantity_max: env.number("CHECKLINE_ORDER_QUANTITY_MAX", 100, 1, 1_000_000)?,
            restock_wait: env.millis("CHECKLINE_RESTOCK_WAIT_MS", 5_000, 0, 60_000)?,
            wait_poll_interval: env.millis("CHECKLINE_WAIT_POLL_MS", 1_000, 10, 60_000)?,
            wait_max_secs: env.number("CHECKLINE_WAIT_MAX_SECS", 30, 0, 300)?,
            db_pool_max: env.number("CHECKLINE_API_DB_POOL_MAX", 32, 1, 1024)?,
            sse_keepalive: Duration::from_secs(env.number(
                "CHECKLINE_SSE_KEEPALIVE_SECS",
                15,
                1,
                300,
            )?),
            stock_event_interval: env.millis(
                "CHECKLINE_STOCK_EVENT_INTERVAL_MS",
                250,
                0,
                60_000,
            )?,
            body_max_bytes: env.number("CHECKLINE_BODY_MAX_BYTES", 16 * 1024, 256, 1024 * 1024)?,
            shutdown_grace: env.millis("CHECKLINE_SHUTDOWN_GRACE_MS", 10_000, 0, 600_000)?,
            stock_refresh: env.millis("CHECKLINE_STOCK_REFRESH_MS", 5_000, 100, 600_000)?,
            accept_batch_max: env.number("CHECKLINE_ACCEPT_BATCH_MAX", 512, 1, 4096)?,
            accept_pipelines: env.number("CHECKLINE_ACCEPT_PIPELINES", 4, 1, 64)?,
            accept_queue_max: env.number("CHECKLINE_ACCEPT_QUEUE_MAX", 20_000, 1, 1_000_000)?,
            sold_out_ttl: env.millis("CHECKLINE_SOLD_OUT_TTL_MS", 1_000, 0, 60_000)?,
            partition_backlog_max: env.number(
                "CHECKLINE_PARTITION_BACKLOG_MAX",
                200_000,
                1,
                i64::MAX,
            )?,
            backlog_check_interval: env.millis("CHECKLINE_BACKLOG_CHECK_MS", 500, 10, 60_000)?,
            common,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_required_and_long_enough() {
        let err = ApiConfig::from_env(&Env::from_pairs([])).unwrap_err();
        assert_eq!(err.var, "CHECKLINE_JWT_SECRET");
        let err =
            ApiConfig::from_env(&Env::from_pairs([("CHECKLINE_JWT_SECRET", "short")])).unwrap_err();
        assert_eq!(err.var, "CHECKLINE_JWT_SECRET");
        let secret = "x".repeat(32);
        let config = ApiConfig::from_env(&Env::from_pairs([(
            "CHECKLINE_JWT_SECRET",
            secret.as_str(),
        )]))
        .unwrap();
        assert!(!format!("{config:?}").contains(&secret));
    }

    #[test]
    fn bad_address_names_the_variable() {
        let secret = "x".repeat(32);
        let err = ApiConfig::from_env(&Env::from_pairs([
            ("CHECKLINE_JWT_SECRET", secret.as_str()),
            ("CHECKLINE_HTTP_ADDR", "nowhere"),
        ]))
        .unwrap_err();
        assert_eq!(err.var, "CHECKLINE_HTTP_ADDR");
    }
}
