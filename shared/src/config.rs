//! Configuration from `CHECKLINE_*` environment variables.
//!
//! Every setting has a default and a validated range; a bad value stops the
//! process at start-up with an error that names the variable.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::faults::Faults;

/// A setting that could not be used, with the variable that holds it.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(var: &'static str, message: impl Into<String>) -> Self {
        Self {
            var,
            message: message.into(),
        }
    }
}

/// Where settings are read from: the process environment, or a map in tests.
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// Snapshot of the process environment (only `CHECKLINE_*` variables).
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars()
                .filter(|(k, _)| k.starts_with("CHECKLINE_"))
                .collect(),
        }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// The raw value, `None` when unset or empty.
    pub fn raw(&self, var: &str) -> Option<&str> {
        self.vars
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    pub fn string(&self, var: &'static str, default: &str) -> String {
        self.raw(var).unwrap_or(default).trim().to_owned()
    }

    /// A number within `min..=max`.
    pub fn number<T>(&self, var: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Copy,
    {
        let value = match self.raw(var) {
            None => default,
            Some(raw) => raw.trim().parse::<T>().map_err(|_| {
                ConfigError::new(var, format!("expected a whole number, got {raw:?}"))
            })?,
        };
        if value < min || value > max {
            return Err(ConfigError::new(
                var,
                format!("{value} is out of range {min}..={max}"),
            ));
        }
        Ok(value)
    }

    /// A duration in milliseconds within `min_ms..=max_ms`.
    pub fn millis(
        &self,
        var: &'static str,
        default_ms: u64,
        min_ms: u64,
        max_ms: u64,
    ) -> Result<Duration, ConfigError> {
        self.number(var, default_ms, min_ms, max_ms)
            .map(Duration::from_millis)
    }

    pub fn boolean(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(var).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => Ok(true),
            Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => Ok(false),
            Some(v) => Err(ConfigError::new(
                var,
                format!("expected true or false, got {v:?}"),
            )),
        }
    }
}

/// Settings both binaries need: where the dependencies are and how the queue is cut.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// PostgreSQL, the source of truth. The database is created if missing.
    pub database_url: String,
    /// NATS with JetStream (2.12 or newer): `CHECKLINE_NATS_URL` as given,
    /// one URL or several separated by commas, passed on as is to the
    /// processes a test or a script starts.
    pub nats_url: String,
    /// The same servers, parsed. A client connects to any of them, learns
    /// the rest of a cluster from the server it reached, and reconnects to
    /// another one when its server goes away.
    pub nats_servers: Vec<async_nats::ServerAddr>,
    /// Replicas of every JetStream stream and bucket checkline creates (the
    /// queue, the dead letters, the leases): 1 on a single server, 3 in a
    /// three-node cluster, where an acknowledged publish is on two disks.
    pub stream_replicas: usize,
    /// Namespace of NATS subjects, the stream name and the API's Redis keys,
    /// so that several deployments (or test runs) can share one NATS and one
    /// Redis.
    pub prefix: String,
    /// Number of queue partitions. Fixed for the life of a deployment: every
    /// product is assigned one at creation.
    pub partitions: u32,
    /// How long a binary waits at start-up for PostgreSQL and NATS.
    pub startup_timeout: Duration,
    /// Bytes the queue stream may hold; past it new orders are refused (503),
    /// accepted ones are never dropped.
    pub stream_max_bytes: i64,
    /// JetStream's `Nats-Msg-Id` deduplication window.
    pub duplicate_window: Duration,
    /// How long a queue publish may wait for JetStream's acknowledgement.
    pub publish_timeout: Duration,
    /// Messages written to the queue as one atomic JetStream batch (one
    /// stored write, one acknowledgement). JetStream refuses batches above
    /// 1,000 messages; 1 publishes every message on its own.
    pub queue_batch_max: usize,
    /// How long a request may wait for a free PostgreSQL connection.
    pub db_acquire_timeout: Duration,
    /// A pending order older than this is taken as possibly never queued: the
    /// worker's sweep (in a caught-up partition) and a retry of its key
    /// publish it again. Must exceed the publish timeout.
    pub requeue_after: Duration,
    /// Fault points armed for tests (`CHECKLINE_FAULTS`, debug builds only).
    pub faults: Arc<Faults>,
}

pub const PARTITIONS_MAX: u32 = 1024;
/// JetStream's own limit on a stream's replicas.
pub const STREAM_REPLICAS_MAX: usize = 5;

/// `CHECKLINE_NATS_URL`: one `nats://host:port`, or several separated by
/// commas (the servers of a cluster; any one reachable is enough to start).
pub fn parse_nats_urls(raw: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    raw.split(',')
        .map(str::trim)
        .map(|url| {
            if url.is_empty() {
                return Err(format!("{raw:?} has an empty entry; expected nats://host:port, or several separated by commas"));
            }
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("{url:?} is not a NATS URL ({e}); expected nats://host:port, or several separated by commas"))
        })
        .collect()
}

impl CommonConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let prefix = env.string("CHECKLINE_PREFIX", "checkline");
        validate_prefix(&prefix).map_err(|m| ConfigError::new("CHECKLINE_PREFIX", m))?;
        let database_url = env.string(
            "CHECKLINE_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/checkline",
        );
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError::new(
                "CHECKLINE_DATABASE_URL",
                "expected a postgres:// URL",
            ));
        }
        let nats_url = env.string("CHECKLINE_NATS_URL", "nats://127.0.0.1:4250");
        let nats_servers =
            parse_nats_urls(&nats_url).map_err(|m| ConfigError::new("CHECKLINE_NATS_URL", m))?;
        Ok(Self {
            database_url,
            nats_url,
            nats_servers,
            stream_replicas: env.number("CHECKLINE_STREAM_REPLICAS", 1, 1, STREAM_REPLICAS_MAX)?,
            prefix,
            partitions: env.number("CHECKLINE_PARTITIONS", 8, 1, PARTITIONS_MAX)?,
            startup_timeout: env.millis("CHECKLINE_STARTUP_TIMEOUT_MS", 30_000, 0, 600_000)?,
            stream_max_bytes: env.number(
                "CHECKLINE_STREAM_MAX_BYTES",
                4 * 1024 * 1024 * 1024,
                1024 * 1024,
                i64::MAX,
            )?,
            duplicate_window: Duration::from_secs(env.number(
                "CHECKLINE_DUPLICATE_WINDOW_SECS",
                120,
                1,
                86_400,
            )?),
            publish_timeout: env.millis("CHECKLINE_PUBLISH_TIMEOUT_MS", 5_000, 10, 60_000)?,
            queue_batch_max: env.number("CHECKLINE_QUEUE_BATCH_MAX", 1_000, 1, 1_000)?,
            db_acquire_timeout: env.millis(
                "CHECKLINE_DB_ACQUIRE_TIMEOUT_MS",
                5_000,
                10,
                120_000,
            )?,
            requeue_after: env.millis("CHECKLINE_REQUEUE_AFTER_MS", 15_000, 1_000, 86_400_000)?,
            faults: Arc::new(Faults::parse(env.raw(Faults::VAR))?),
        })
        .and_then(|config: Self| {
            if config.requeue_after <= config.publish_timeout {
                return Err(ConfigError::new(
                    "CHECKLINE_REQUEUE_AFTER_MS",
                    "must be longer than CHECKLINE_PUBLISH_TIMEOUT_MS",
                ));
            }
            Ok(config)
        })
    }
}

/// The prefix goes into NATS subjects and a stream name: lowercase letters,
/// digits and `_` only, starting with a letter, at most 32 characters.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 32
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{prefix:?} must be 1-32 characters of a-z, 0-9 and _, starting with a letter"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_unset() {
        let config = CommonConfig::from_env(&Env::from_pairs([])).unwrap();
        assert_eq!(config.partitions, 8);
        assert_eq!(config.prefix, "checkline");
        assert_eq!(config.nats_url, "nats://127.0.0.1:4250");
        assert_eq!(config.nats_servers.len(), 1);
        assert_eq!(config.stream_replicas, 1);
    }

    #[test]
    fn nats_url_takes_a_list_of_servers() {
        let config = CommonConfig::from_env(&Env::from_pairs([(
            "CHECKLINE_NATS_URL",
            "nats://127.0.0.1:4261, nats://127.0.0.1:4262,nats://10.0.0.3:4222",
        )]))
        .unwrap();
        let ports: Vec<u16> = config.nats_servers.iter().map(|s| s.port()).collect();
        assert_eq!(ports, [4261, 4262, 4222]);
        assert_eq!(config.nats_servers[2].host(), "10.0.0.3");
        for bad in [
            "nats://a:1,,nats://b:2",
            "nats://a:1,",
            "http://[::1",
            "nats://a:1,:::",
        ] {
            let err = CommonConfig::from_env(&Env::from_pairs([("CHECKLINE_NATS_URL", bad)]))
                .unwrap_err();
            assert_eq!(err.var, "CHECKLINE_NATS_URL", "{bad}");
        }
    }

    #[test]
    fn stream_replicas_are_bounded_by_jetstream() {
        let config =
            CommonConfig::from_env(&Env::from_pairs([("CHECKLINE_STREAM_REPLICAS", "3")])).unwrap();
        assert_eq!(config.stream_replicas, 3);
        for bad in ["0", "6", "three"] {
            let err =
                CommonConfig::from_env(&Env::from_pairs([("CHECKLINE_STREAM_REPLICAS", bad)]))
                    .unwrap_err();
            assert_eq!(err.var, "CHECKLINE_STREAM_REPLICAS", "{bad}");
        }
    }

    #[test]
    fn errors_name_the_variable() {
        let err =
            CommonConfig::from_env(&Env::from_pairs([("CHECKLINE_PARTITIONS", "0")])).unwrap_err();
        assert_eq!(err.var, "CHECKLINE_PARTITIONS");
        let err = CommonConfig::from_env(&Env::from_pairs([("CHECKLINE_PARTITIONS", "lots")]))
            .unwrap_err();
        assert!(err.to_string().starts_with("CHECKLINE_PARTITIONS: "));
        let err =
            CommonConfig::from_env(&Env::from_pairs([("CHECKLINE_PREFIX", "a.b")])).unwrap_err();
        assert_eq!(err.var, "CHECKLINE_PREFIX");
    }

    #[test]
    fn booleans_parse_common_spellings() {
        let env = Env::from_pairs([("CHECKLINE_X", "yes"), ("CHECKLINE_Y", "maybe")]);
        assert!(env.boolean("CHECKLINE_X", false).unwrap());
        assert!(env.boolean("CHECKLINE_Y", false).is_err());
        assert!(!env.boolean("CHECKLINE_Z", false).unwrap());
    }
}
