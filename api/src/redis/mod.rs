//! Redis: the connection set-up and every key the API keeps there. Redis is
//! never the source of truth; each use bounds its calls by
//! `CHECKLINE_REDIS_TIMEOUT_MS` and carries on without it.
//!
//! - [`cache`]: decided orders; every operation degrades to "miss".
//! - `crate::ratelimit`: the shared GCRA buckets, with an in-process fallback.

pub mod cache;

use std::time::Duration;

use checkline_shared::config::ConfigError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use uuid::Uuid;

use crate::config::RedisConfig;

/// Prepares a connection without connecting: the API starts (and serves,
/// more slowly) while Redis is down. Cheap to clone; all clones share one
/// multiplexed connection.
pub fn connection(config: &RedisConfig) -> Result<ConnectionManager, ConfigError> {
    let client = redis::Client::open(config.url.as_str())
        .map_err(|e| ConfigError::new("CHECKLINE_REDIS_URL", e.to_string()))?;
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.timeout.max(Duration::from_millis(250))))
        .set_response_timeout(Some(config.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, manager_config)
        .map_err(|e| ConfigError::new("CHECKLINE_REDIS_URL", e.to_string()))
}

/// Every Redis key, under the deployment prefix (`CHECKLINE_PREFIX`), so
/// that several deployments (or test runs) can share one Redis.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` must already be validated by
    /// [`checkline_shared::config::validate_prefix`].
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// A decided order's cached JSON.
    pub fn order(&self, order_id: Uuid) -> String {
        format!("{}:order:{order_id}", self.prefix)
    }

    /// The GCRA bucket of `key` (a subject or an address) in the rate
    /// limit `budget`.
    pub fn rate_bucket(&self, budget: &str, key: &str) -> String {
        format!("{}:rl:{budget}:{key}", self.prefix)
    }

    /// The retry marker of a let-through idempotent write (already hashed).
    pub fn rate_retry(&self, marker: &str) -> String {
        format!("{}:rl:retry:{marker}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_prefix() {
        let keys = Keys::new("checkline");
        assert_eq!(
            keys.order(Uuid::nil()),
            "checkline:order:00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            keys.rate_bucket("orders", "alice"),
            "checkline:rl:orders:alice"
        );
        assert_eq!(keys.rate_retry("ab12"), "checkline:rl:retry:ab12");
    }
}
