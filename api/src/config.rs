//! The API's settings.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use checkline_shared::config::{CommonConfig, ConfigError, Env};

#[derive(Clone)]
pub struct ApiConfig {
    pub common: CommonConfig,
    /// Redis, for the order cache and the shared rate limits.
    pub redis: RedisConfig,
    /// Where the HTTP server listens.
    pub http_addr: SocketAddr,
    /// HS256 key for bearer tokens. Never logged.
    pub jwt_secret: Vec<u8>,
    /// Clock skew tolerated on `exp`, in seconds.
    pub jwt_leeway_secs: u64,
    /// Largest quantity one order may ask for.
    pub order_quantity_max: i64,
    /// Most lines in one order.
    pub order_lines_max: usize,
    /// Longest `reserve_secs` an order may ask for.
    pub reserve_secs_max: i64,
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
    /// Orders and restocks waiting to be published again in the background;
    /// beyond it they are left to the worker's stranded-order sweep.
    pub requeue_queue_max: usize,
    /// How long a "sold out" seen for a product is trusted before PostgreSQL
    /// is asked again (events refresh it sooner).
    pub sold_out_ttl: Duration,
    /// How old a product read may be: served from memory while less than
    /// this has passed since its PostgreSQL read started.
    pub catalog_fresh: Duration,
    /// Products kept in memory per instance.
    pub catalog_max_products: usize,
    /// Undecided orders a partition may hold; beyond it, new orders for its
    /// products get `503 overloaded`.
    pub partition_backlog_max: i64,
    /// How often the partitions' backlogs are measured.
    pub backlog_check_interval: Duration,
    /// Keys that still verify tokens (rotation): signed before the current
    /// secret took over. Never logged.
    pub jwt_previous_secrets: Vec<Vec<u8>>,
    /// When set, tokens must carry this `iss`.
    pub jwt_issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub jwt_audience: Option<String>,
    /// Rate limits (per token subject and per client address).
    pub rate: RateConfig,
    /// Limits on connections, headers, request time and event streams.
    pub edge: EdgeConfig,
}

/// Redis, a cache only: the system stays correct without it.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    /// Upper bound on a Redis round trip before it counts as a miss.
    pub timeout: Duration,
    /// How long a decided order stays in the Redis cache.
    pub order_cache_ttl: Duration,
}

/// One budget of the GCRA limiter: a steady rate and the burst allowed on
/// top of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateQuota {
    pub per_sec: u32,
    pub burst: u32,
}

#[derive(Debug, Clone)]
pub struct RateConfig {
    /// `CHECKLINE_RATE_LIMITS=off` turns every rate limit off.
    pub enabled: bool,
    /// Per token subject: `POST /v1/orders` and every other write.
    pub orders: RateQuota,
    /// Per token subject: authenticated reads (orders, long polls, streams, stats).
    pub reads: RateQuota,
    /// Per client address: every request.
    pub addr: RateQuota,
    /// Keys the in-process limiter keeps while Redis is unreachable.
    pub local_keys_max: usize,
    /// Peers whose `X-Forwarded-For` names the client (a reverse proxy).
    pub trusted_proxies: Vec<IpAddr>,
}

#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Largest request line plus headers answered normally; beyond it `431`.
    pub header_max_bytes: usize,
    /// A client must send a request's whole head within this time (also the
    /// idle time of a kept-alive connection); else the connection is closed.
    pub header_read_timeout: Duration,
    /// How long a request may take (a long poll gets its `wait` on top;
    /// event streams are bounded by the stream cap instead).
    pub request_timeout: Duration,
    /// Open connections; beyond it new ones get `503 overloaded`.
    pub max_connections: usize,
    /// Open server-sent event streams; beyond it `503 overloaded`.
    pub sse_max_streams: usize,
    /// Open event streams per client address.
    pub sse_max_streams_per_addr: usize,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("common", &self.common)
            .field("redis", &self.redis)
            .field("http_addr", &self.http_addr)
            .field("jwt_secret", &"<redacted>")
            .field(
                "jwt_previous_secrets",
                &format_args!("<{} redacted>", self.jwt_previous_secrets.len()),
            )
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("rate", &self.rate)
            .field("edge", &self.edge)
            .finish_non_exhaustive()
    }
}

/// Shortest accepted HS256 key: RFC 7518 asks for at least the hash size.
pub const JWT_SECRET_MIN_BYTES: usize = 32;

impl ApiConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_env(env)?;
        let redis = RedisConfig::from_env(env)?;
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
            order_lines_max: env.number("CHECKLINE_ORDER_LINES_MAX", 20, 1, 100)?,
            reserve_secs_max: env.number("CHECKLINE_RESERVE_SECS_MAX", 3_600, 30, 86_400)?,
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
            requeue_queue_max: env.number("CHECKLINE_REQUEUE_QUEUE_MAX", 10_000, 1, 1_000_000)?,
            sold_out_ttl: env.millis("CHECKLINE_SOLD_OUT_TTL_MS", 1_000, 0, 60_000)?,
            catalog_fresh: env.millis("CHECKLINE_CATALOG_FRESH_MS", 250, 1, 60_000)?,
            catalog_max_products: env.number(
                "CHECKLINE_CATALOG_MAX_PRODUCTS",
                100_000,
                100,
                10_000_000,
            )?,
            partition_backlog_max: env.number(
                "CHECKLINE_PARTITION_BACKLOG_MAX",
                200_000,
                1,
                i64::MAX,
            )?,
            backlog_check_interval: env.millis("CHECKLINE_BACKLOG_CHECK_MS", 500, 10, 60_000)?,
            jwt_previous_secrets: previous_secrets(env)?,
            jwt_issuer: env.raw("CHECKLINE_JWT_ISSUER").map(|v| v.trim().to_owned()),
            jwt_audience: env
                .raw("CHECKLINE_JWT_AUDIENCE")
                .map(|v| v.trim().to_owned()),
            rate: RateConfig::from_env(env)?,
            edge: EdgeConfig::from_env(env)?,
            common,
            redis,
        })
    }
}

fn previous_secrets(env: &Env) -> Result<Vec<Vec<u8>>, ConfigError> {
    const VAR: &str = "CHECKLINE_JWT_PREVIOUS_SECRETS";
    let Some(raw) = env.raw(VAR) else {
        return Ok(Vec::new());
    };
    let secrets: Vec<Vec<u8>> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.as_bytes().to_vec())
        .collect();
    if secrets.len() > 8 {
        return Err(ConfigError::new(VAR, "at most 8 previous keys"));
    }
    if let Some(position) = secrets.iter().position(|s| s.len() < JWT_SECRET_MIN_BYTES) {
        // The position, never the key.
        return Err(ConfigError::new(
            VAR,
            format!(
                "key {} of the list is shorter than {JWT_SECRET_MIN_BYTES} bytes",
                position + 1
            ),
        ));
    }
    Ok(secrets)
}

fn quota(
    env: &Env,
    rate_var: &'static str,
    burst_var: &'static str,
    per_sec: u32,
    burst: u32,
) -> Result<RateQuota, ConfigError> {
    Ok(RateQuota {
        per_sec: env.number(rate_var, per_sec, 1, 1_000_000)?,
        burst: env.number(burst_var, burst, 1, 100_000_000)?,
    })
}

impl RedisConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let url = env.string("CHECKLINE_REDIS_URL", "redis://127.0.0.1:6379/0");
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(ConfigError::new(
                "CHECKLINE_REDIS_URL",
                "expected a redis:// URL",
            ));
        }
        Ok(Self {
            url,
            timeout: env.millis("CHECKLINE_REDIS_TIMEOUT_MS", 100, 1, 10_000)?,
            order_cache_ttl: Duration::from_secs(env.number(
                "CHECKLINE_ORDER_CACHE_TTL_SECS",
                86_400,
                1,
                30 * 86_400,
            )?),
        })
    }
}

impl RateConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        const VAR: &str = "CHECKLINE_RATE_LIMITS";
        let enabled = match env.string(VAR, "on").to_ascii_lowercase().as_str() {
            "on" | "true" | "1" | "yes" => true,
            "off" | "false" | "0" | "no" => false,
            other => {
                return Err(ConfigError::new(
                    VAR,
                    format!("expected on or off, got {other:?}"),
                ))
            }
        };
        let trusted_proxies = match env.raw("CHECKLINE_RATE_TRUSTED_PROXIES") {
            None => Vec::new(),
            Some(raw) => raw
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<IpAddr>().map_err(|_| {
                        ConfigError::new(
                            "CHECKLINE_RATE_TRUSTED_PROXIES",
                            format!("{s:?} is not an IP address"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Self {
            enabled,
            orders: quota(
                env,
                "CHECKLINE_RATE_ORDERS_PER_SEC",
                "CHECKLINE_RATE_ORDERS_BURST",
                20,
                40,
            )?,
            reads: quota(
                env,
                "CHECKLINE_RATE_READS_PER_SEC",
                "CHECKLINE_RATE_READS_BURST",
                100,
                200,
            )?,
            addr: quota(
                env,
                "CHECKLINE_RATE_ADDR_PER_SEC",
                "CHECKLINE_RATE_ADDR_BURST",
                // Storefront servers relay many customers' orders from one
                // address: the default stops a single runaway source, not a
                // storefront at full flash-sale speed. Tighten it where
                // buyers connect directly.
                20_000,
                40_000,
            )?,
            local_keys_max: env.number(
                "CHECKLINE_RATE_LOCAL_KEYS_MAX",
                100_000,
                100,
                10_000_000,
            )?,
            trusted_proxies,
        })
    }
}

impl EdgeConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            header_max_bytes: env.number(
                "CHECKLINE_HEADER_MAX_BYTES",
                8 * 1024,
                1024,
                64 * 1024,
            )?,
            header_read_timeout: env.millis(
                "CHECKLINE_HEADER_READ_TIMEOUT_MS",
                10_000,
                100,
                300_000,
            )?,
            request_timeout: env.millis("CHECKLINE_REQUEST_TIMEOUT_MS", 15_000, 100, 600_000)?,
            max_connections: env.number("CHECKLINE_MAX_CONNECTIONS", 4_096, 1, 1_000_000)?,
            sse_max_streams: env.number("CHECKLINE_SSE_MAX_STREAMS", 1_024, 1, 1_000_000)?,
            sse_max_streams_per_addr: env.number(
                "CHECKLINE_SSE_MAX_STREAMS_PER_ADDR",
                64,
                1,
                1_000_000,
            )?,
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
    fn previous_secrets_are_checked_and_never_shown() {
        let secret = "x".repeat(32);
        let old = "o".repeat(40);
        let list = format!("{old}, {}", "p".repeat(32));
        let config = ApiConfig::from_env(&Env::from_pairs([
            ("CHECKLINE_JWT_SECRET", secret.as_str()),
            ("CHECKLINE_JWT_PREVIOUS_SECRETS", list.as_str()),
        ]))
        .unwrap();
        assert_eq!(config.jwt_previous_secrets.len(), 2);
        assert!(!format!("{config:?}").contains(&old));
        let short = format!("{old},tiny");
        let err = ApiConfig::from_env(&Env::from_pairs([
            ("CHECKLINE_JWT_SECRET", secret.as_str()),
            ("CHECKLINE_JWT_PREVIOUS_SECRETS", short.as_str()),
        ]))
        .unwrap_err();
        assert_eq!(err.var, "CHECKLINE_JWT_PREVIOUS_SECRETS");
        assert!(!err.to_string().contains("tiny"));
    }

    #[test]
    fn redis_rate_and_edge_settings_name_their_variables() {
        let secret = "x".repeat(32);
        for (var, value) in [
            ("CHECKLINE_RATE_LIMITS", "sometimes"),
            ("CHECKLINE_RATE_ORDERS_PER_SEC", "0"),
            ("CHECKLINE_RATE_ADDR_BURST", "lots"),
            ("CHECKLINE_RATE_TRUSTED_PROXIES", "10.0.0.1,proxy"),
            ("CHECKLINE_HEADER_MAX_BYTES", "10"),
            ("CHECKLINE_MAX_CONNECTIONS", "0"),
            ("CHECKLINE_REQUEST_TIMEOUT_MS", "5"),
            ("CHECKLINE_REDIS_URL", "http://127.0.0.1:6379"),
            ("CHECKLINE_REDIS_TIMEOUT_MS", "0"),
            ("CHECKLINE_ORDER_CACHE_TTL_SECS", "forever"),
        ] {
            let err = ApiConfig::from_env(&Env::from_pairs([
                ("CHECKLINE_JWT_SECRET", secret.as_str()),
                (var, value),
            ]))
            .unwrap_err();
            assert_eq!(err.var, var);
        }
        let config = ApiConfig::from_env(&Env::from_pairs([
            ("CHECKLINE_JWT_SECRET", secret.as_str()),
            ("CHECKLINE_RATE_LIMITS", "off"),
            ("CHECKLINE_RATE_TRUSTED_PROXIES", "10.0.0.1, ::1"),
        ]))
        .unwrap();
        assert!(!config.rate.enabled);
        assert_eq!(config.rate.trusted_proxies.len(), 2);
        assert_eq!(
            config.rate.orders,
            RateQuota {
                per_sec: 20,
                burst: 40
            }
        );
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
