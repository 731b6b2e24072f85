//! The Redis cache. Redis is never the source of truth: every call here is
//! bounded by a short timeout and a failure reads as a miss, so a Redis outage
//! makes checkline slower, never wrong.
//!
//! What is cached: decided orders (immutable once decided, so a cached copy
//! can never be stale).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use checkline_shared::config::ConfigError;
use checkline_shared::domain::Order;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use uuid::Uuid;

use super::Keys;
use crate::config::RedisConfig;

/// Cheap to clone; all clones share one multiplexed connection.
#[derive(Clone)]
pub struct Cache {
    manager: ConnectionManager,
    keys: Keys,
    timeout: Duration,
    order_ttl_secs: u64,
    healthy: Arc<AtomicBool>,
}

impl Cache {
    /// Prepares the connection without connecting: the process starts (and
    /// serves, more slowly) while Redis is down.
    pub fn new(config: &RedisConfig, keys: Keys) -> Result<Self, ConfigError> {
        Ok(Self {
            manager: super::connection(config)?,
            keys,
            timeout: config.timeout,
            order_ttl_secs: config.order_cache_ttl.as_secs().max(1),
            healthy: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Whether the last Redis call succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn record<T>(
        &self,
        result: Result<Result<T, redis::RedisError>, tokio::time::error::Elapsed>,
    ) -> Option<T> {
        let outcome = match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match outcome {
            Ok(value) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("redis is back");
                }
                Some(value)
            }
            Err(err) => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %err, "redis unavailable, serving from postgresql");
                }
                None
            }
        }
    }

    /// An order in a final state, if cached.
    pub async fn order(&self, id: Uuid) -> Option<Order> {
        let mut conn = self.manager.clone();
        let key = self.keys.order(id);
        let raw: Option<Option<String>> = self
            .record(tokio::time::timeout(self.timeout, conn.get::<_, Option<String>>(key)).await);
        raw.flatten()
            .and_then(|json| serde_json::from_str(&json).ok())
    }

    /// Caches orders in a final state. Pending and reserved orders are never
    /// cached: they still change.
    pub async fn put_orders(&self, orders: &[Order]) {
        let decided: Vec<&Order> = orders.iter().filter(|o| o.status.is_final()).collect();
        if decided.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for order in decided {
            if let Ok(json) = serde_json::to_string(order) {
                pipe.set_ex(self.keys.order(order.id), json, self.order_ttl_secs)
                    .ignore();
            }
        }
        let mut conn = self.manager.clone();
        self.record(tokio::time::timeout(self.timeout, pipe.query_async::<()>(&mut conn)).await);
    }

    /// Round trip to Redis, for readiness reporting.
    pub async fn ping(&self) -> bool {
        let mut conn = self.manager.clone();
        self.record(
            tokio::time::timeout(
                self.timeout,
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await,
        )
        .is_some()
    }
}
