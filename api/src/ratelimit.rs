//! Rate limits: per token subject and per client address.
//!
//! Each budget is a GCRA (generic cell rate algorithm) bucket: a steady rate
//! and a burst on top of it, kept as one "theoretical arrival time" per key.
//! The buckets live in Redis, updated by one Lua script, so that every API
//! instance shares them and a check is a single atomic round trip. When
//! Redis does not answer within `CHECKLINE_REDIS_TIMEOUT_MS` (or failed in
//! the last second), the same algorithm runs in process, per key, with a
//! bounded number of keys: the process keeps protecting itself, limits are
//! then per instance instead of shared.
//!
//! Budgets (see `docs/security.md`):
//! - `orders`: per subject, `POST /v1/orders` and every other write. A true
//!   retry of a request that was let through in the last minute (same
//!   subject, same Idempotency-Key, same request: [`RequestFingerprint`]) is
//!   not charged again: it can never make a second order, and a storm of
//!   client retries must not lock the buyer out of the answer. The same key
//!   with another body is charged like any new request;
//! - `reads`: per subject, authenticated reads. A separate and more generous
//!   budget, so a buyer retrying an accepted order can always look it up;
//! - `addr`: per client address, every request (authenticated or not).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, Method};
use checkline_shared::config::ConfigError;
use checkline_shared::domain::CustomerId;
use redis::aio::ConnectionManager;

use crate::config::{RateConfig, RateQuota, RedisConfig};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::redis::Keys;

/// One GCRA budget in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time one request "costs": 1 s / rate.
    pub interval_us: u64,
    /// How far ahead of now the bucket may run: burst × interval.
    pub tolerance_us: u64,
}

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; the key's new theoretical arrival time.
    Allow { tat_us: u64 },
    /// Refused; the earliest time the same request would pass, from now.
    Deny { retry_after_us: u64 },
}

impl Gcra {
    pub fn new(quota: RateQuota) -> Self {
        let interval_us = (1_000_000 / u64::from(quota.per_sec.max(1))).max(1);
        Self {
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(quota.burst.max(1))),
        }
    }

    /// The algorithm itself (the Lua script below is the same, in Redis).
    pub fn check(&self, tat_us: Option<u64>, now_us: u64) -> Decision {
        let tat = tat_us.unwrap_or(now_us).max(now_us);
        let new_tat = tat.saturating_add(self.interval_us);
        let allow_at = new_tat.saturating_sub(self.tolerance_us);
        if allow_at > now_us {
            Decision::Deny {
                retry_after_us: allow_at - now_us,
            }
        } else {
            Decision::Allow { tat_us: new_tat }
        }
    }
}

/// GCRA in Redis. Redis' own clock (`TIME`) is used so that API instances
/// with skewed clocks share one timeline. The key expires when its bucket is
/// full again, so Redis holds only keys active in the last burst window.
/// With a second key (a retry marker), a request whose marker exists passes
/// uncharged, and an allowed request sets its marker for `ARGV[3]` ms.
const GCRA_LUA: &str = r"
if #KEYS > 1 and redis.call('EXISTS', KEYS[2]) == 1 then
  return {1, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
if #KEYS > 1 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
end
return {1, 0}
";

/// How long a let-through Idempotency-Key's retries pass uncharged.
pub const RETRY_WINDOW: Duration = Duration::from_secs(60);

/// Which budget a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Budget {
    Orders,
    Reads,
    Addr,
}

impl Budget {
    fn name(self) -> &'static str {
        match self {
            Self::Orders => "orders",
            Self::Reads => "reads",
            Self::Addr => "addr",
        }
    }
}

const SHARDS: usize = 16;

/// The in-process fallback: GCRA per key with a bounded key count. A key
/// whose bucket is full again carries no information and is dropped first.
pub struct LocalLimiter {
    shards: Vec<Mutex<HashMap<String, u64>>>,
    /// Retry markers: key → expiry (µs since `epoch`).
    markers: Vec<Mutex<HashMap<String, u64>>>,
    keys_per_shard: usize,
    epoch: Instant,
}

fn shard_of(key: &str) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() as usize) % SHARDS
}

/// Inserts into a bounded map whose entries at or below `now_us` are stale.
fn insert_bounded(map: &mut HashMap<String, u64>, cap: usize, key: &str, value: u64, now_us: u64) {
    if let Some(slot) = map.get_mut(key) {
        *slot = value;
        return;
    }
    if map.len() >= cap {
        map.retain(|_, v| *v > now_us);
    }
    // Still full of live keys (a spread-out flood): this key goes untracked
    // rather than letting the map grow.
    if map.len() < cap {
        map.insert(key.to_owned(), value);
    }
}

impl LocalLimiter {
    pub fn new(keys_max: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            markers: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            keys_per_shard: keys_max.div_ceil(SHARDS).max(1),
            epoch: Instant::now(),
        }
    }

    /// Like [`Self::check`], but a request whose `marker` was set by an
    /// allowed request in the last [`RETRY_WINDOW`] passes uncharged.
    pub fn check_marked(&self, gcra: Gcra, key: &str, marker: Option<&str>) -> Decision {
        let now_us = self.now_us();
        let Some(marker) = marker else {
            return self.check_at(gcra, key, now_us);
        };
        let shard = &self.markers[shard_of(marker)];
        let seen = shard
            .lock()
            .map(|m| m.get(marker).is_some_and(|expiry| *expiry > now_us))
            .unwrap_or(false);
        if seen {
            return Decision::Allow { tat_us: now_us };
        }
        let decision = self.check_at(gcra, key, now_us);
        if matches!(decision, Decision::Allow { .. }) {
            let expiry = now_us + RETRY_WINDOW.as_micros() as u64;
            let mut map = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            insert_bounded(&mut map, self.keys_per_shard, marker, expiry, now_us);
        }
        decision
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub fn check(&self, gcra: Gcra, key: &str) -> Decision {
        self.check_at(gcra, key, self.now_us())
    }

    /// `now_us`: microseconds since this limiter was made.
    pub fn check_at(&self, gcra: Gcra, key: &str, now_us: u64) -> Decision {
        let shard = &self.shards[shard_of(key)];
        let mut map = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let decision = gcra.check(map.get(key).copied(), now_us);
        if let Decision::Allow { tat_us } = decision {
            // A bucket whose time has passed is full again: the same as absent.
            insert_bounded(&mut map, self.keys_per_shard, key, tat_us, now_us);
        }
        decision
    }

    /// Keys held, over all shards.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// After a Redis failure, how long checks stay local before Redis is tried
/// again (so a slow Redis costs one timeout per second, not one per request).
const REDIS_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The limiter every request goes through.
pub struct RateLimiter {
    enabled: bool,
    orders: Gcra,
    reads: Gcra,
    addr: Gcra,
    redis: ConnectionManager,
    script: redis::Script,
    keys: Keys,
    timeout: Duration,
    local: LocalLimiter,
    /// Milliseconds since the Unix epoch before which Redis is not asked.
    redis_paused_until_ms: AtomicU64,
    redis_healthy: AtomicBool,
    trusted_proxies: Vec<IpAddr>,
    metrics: Arc<Metrics>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl RateLimiter {
    /// Prepares the Redis connection without connecting (like the cache).
    pub fn new(
        config: &RateConfig,
        redis_config: &RedisConfig,
        keys: Keys,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            enabled: config.enabled,
            orders: Gcra::new(config.orders),
            reads: Gcra::new(config.reads),
            addr: Gcra::new(config.addr),
            redis: crate::redis::connection(redis_config)?,
            script: redis::Script::new(GCRA_LUA),
            keys,
            timeout: redis_config.timeout,
            local: LocalLimiter::new(config.local_keys_max),
            redis_paused_until_ms: AtomicU64::new(0),
            redis_healthy: AtomicBool::new(true),
            trusted_proxies: config.trusted_proxies.clone(),
            metrics,
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn gcra(&self, budget: Budget) -> Gcra {
        match budget {
            Budget::Orders => self.orders,
            Budget::Reads => self.reads,
            Budget::Addr => self.addr,
        }
    }

    /// Charges one request to `key`'s `budget`. With a `retry` marker, a
    /// request whose marker an allowed request set in the last
    /// [`RETRY_WINDOW`] passes uncharged.
    pub async fn check(
        &self,
        budget: Budget,
        key: &str,
        retry: Option<&str>,
    ) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        let gcra = self.gcra(budget);
        let bucket = self.keys.rate_bucket(budget.name(), key);
        let marker = retry.map(|m| self.keys.rate_retry(m));
        let decision = match self.check_redis(gcra, &bucket, marker.as_deref()).await {
            Some(decision) => decision,
            None => {
                self.metrics.rate_local_decisions.inc();
                self.local.check_marked(gcra, &bucket, marker.as_deref())
            }
        };
        match decision {
            Decision::Allow { .. } => Ok(()),
            Decision::Deny { retry_after_us } => {
                self.metrics.rate_limited.inc();
                tracing::debug!(budget = budget.name(), "rate limited");
                Err(ApiError::RateLimited {
                    retry_after_secs: retry_after_us.div_ceil(1_000_000).max(1),
                })
            }
        }
    }

    async fn check_redis(
        &self,
        gcra: Gcra,
        bucket: &str,
        marker: Option<&str>,
    ) -> Option<Decision> {
        if unix_ms() < self.redis_paused_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        let mut conn = self.redis.clone();
        let mut invocation = self.script.key(bucket);
        if let Some(marker) = marker {
            invocation.key(marker);
        }
        invocation
            .arg(gcra.interval_us)
            .arg(gcra.tolerance_us)
            .arg(RETRY_WINDOW.as_millis() as u64);
        let result = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(i64, i64)>(&mut conn),
        )
        .await;
        match result {
            Ok(Ok((allowed, retry_after_us))) => {
                if !self.redis_healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("redis is back; rate limits are shared again");
                }
                Some(if allowed == 1 {
                    Decision::Allow { tat_us: 0 }
                } else {
                    Decision::Deny {
                        retry_after_us: u64::try_from(retry_after_us).unwrap_or(1),
                    }
                })
            }
            failure => {
                let error = match failure {
                    Ok(Err(err)) => err.to_string(),
                    _ => format!("no answer within {:?}", self.timeout),
                };
                self.redis_paused_until_ms.store(
                    unix_ms() + REDIS_RETRY_AFTER.as_millis() as u64,
                    Ordering::Relaxed,
                );
                if self.redis_healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%error, "redis unavailable; rate limits are kept in process");
                }
                None
            }
        }
    }

    /// The per-subject budget of an authenticated request: writes are
    /// charged to `orders` (true retries of a let-through request pass: same
    /// Idempotency-Key and same `fingerprint`), reads to the more generous
    /// `reads`.
    pub async fn check_subject(
        &self,
        subject: &CustomerId,
        method: &Method,
        headers: &HeaderMap,
        fingerprint: Option<&RequestFingerprint>,
    ) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        if method == Method::GET || method == Method::HEAD {
            return self.check(Budget::Reads, subject.as_str(), None).await;
        }
        // Without a fingerprint (a body that is not a valid request) there
        // is nothing a retry could be the same as: charged.
        let retry = crate::extract::idempotency_key(headers)
            .ok()
            .zip(fingerprint)
            .map(|(key, fingerprint)| retry_marker(subject, key.as_str(), &fingerprint.0));
        self.check(Budget::Orders, subject.as_str(), retry.as_deref())
            .await
    }

    /// The per-address budget, charged to every request.
    pub async fn check_addr(
        &self,
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        let key = client_key(client_addr(peer, headers, &self.trusted_proxies));
        self.check(Budget::Addr, &key, None).await
    }
}

/// What an idempotent write asks for: the request hash its order or
/// restock stores (`checkline_shared::domain::request_hash`), worked out at
/// the edge (`edge::bound`) before the caller is known, so that only a true retry
/// passes the orders budget uncharged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFingerprint(pub Vec<u8>);

impl RequestFingerprint {
    /// The fingerprint of a write on `route` with path id `id` and `body`,
    /// or `None` when the body is not a valid request of that route.
    pub fn of(route: &str, id: Option<&str>, body: &[u8]) -> Option<Self> {
        use checkline_shared::domain::{parse_id, request_hash};
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RestockBody {
            quantity: i64,
        }
        let hash = match route {
            "/v1/orders" => crate::order_request::OrderRequest::hash_of_body(body)?,
            "/v1/products/{id}/restock" => {
                let body: RestockBody = serde_json::from_slice(body).ok()?;
                let product_id = parse_id(id?)?;
                request_hash(&[
                    "restock",
                    &product_id.to_string(),
                    &body.quantity.to_string(),
                ])
            }
            _ => return None,
        };
        Some(Self(hash))
    }
}

/// The marker of a (subject, Idempotency-Key, request) triple: hashed, so a
/// key of any length makes a short Redis key and the key itself is not
/// stored.
fn retry_marker(subject: &CustomerId, key: &str, fingerprint: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(subject.as_str().as_bytes());
    hasher.update([0u8]);
    hasher.update(key.as_bytes());
    hasher.update([0u8]);
    hasher.update(fingerprint);
    hex::encode(hasher.finalize())
}

/// The client's address: the peer's, or, when the peer is a trusted proxy,
/// the nearest address in `X-Forwarded-For` that is not a trusted proxy.
/// `None` when there is no peer (in-process calls).
pub fn client_addr(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &[IpAddr],
) -> Option<IpAddr> {
    let peer = canonical(peer?.ip());
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    // Right to left: each hop appended the address it saw.
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev().take(16) {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !trusted.contains(&client) {
                    break;
                }
            }
            // A malformed hop: stop at the last address we can trust.
            Err(_) => break,
        }
    }
    Some(client)
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client a per-address limit counts: an IPv4 address as is, an IPv6
/// address by its /64 (one host usually holds a whole /64, so per-address
/// would be trivial to dodge). Every per-address limit keys by this, so
/// they always agree on who one client is.
pub fn client_net(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The bucket key of an address: see [`client_net`].
pub fn client_key(addr: Option<IpAddr>) -> String {
    match addr.map(client_net) {
        None => "local".to_owned(),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(net)) => format!("{net}/64"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn quota(per_sec: u32, burst: u32) -> Gcra {
        Gcra::new(RateQuota { per_sec, burst })
    }

    #[test]
    fn a_burst_passes_then_the_steady_rate() {
        let gcra = quota(10, 5);
        let local = LocalLimiter::new(100);
        let allowed = (0..20)
            .filter(|_| matches!(local.check_at(gcra, "k", 1_000_000), Decision::Allow { .. }))
            .count();
        assert_eq!(allowed, 5);
        match local.check_at(gcra, "k", 1_000_000) {
            Decision::Deny { retry_after_us } => assert_eq!(retry_after_us, 100_000),
            other => panic!("{other:?}"),
        }
        // One interval later, exactly one more.
        assert!(matches!(
            local.check_at(gcra, "k", 1_100_000),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            local.check_at(gcra, "k", 1_100_000),
            Decision::Deny { .. }
        ));
        // Other keys are not affected.
        assert!(matches!(
            local.check_at(gcra, "other", 1_100_000),
            Decision::Allow { .. }
        ));
    }

    #[test]
    fn retries_of_a_let_through_key_pass_uncharged() {
        let gcra = quota(1, 2);
        let local = LocalLimiter::new(100);
        let allow = |d: Decision| matches!(d, Decision::Allow { .. });
        assert!(allow(local.check_marked(gcra, "alice", Some("k1"))));
        // However many retries of k1, the budget is not touched.
        for _ in 0..50 {
            assert!(allow(local.check_marked(gcra, "alice", Some("k1"))));
        }
        assert!(allow(local.check_marked(gcra, "alice", Some("k2"))));
        // New keys are charged: the burst of 2 is used up.
        assert!(!allow(local.check_marked(gcra, "alice", Some("k3"))));
        // A refused key is not marked: its retry is charged again.
        assert!(!allow(local.check_marked(gcra, "alice", Some("k3"))));
        let alice = CustomerId::parse("alice").unwrap();
        assert_ne!(
            retry_marker(&alice, "k1", b"a"),
            retry_marker(&alice, "k2", b"a")
        );
        assert_ne!(
            retry_marker(&alice, "k1", b"a"),
            retry_marker(&alice, "k1", b"b")
        );
        assert_eq!(retry_marker(&alice, "k1", b"a").len(), 64);
    }

    #[test]
    fn fingerprints_are_the_stored_request_hashes() {
        use checkline_shared::domain::request_hash;
        let pid = "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d";
        let order = |body: &str| RequestFingerprint::of("/v1/orders", None, body.as_bytes());
        let expected = request_hash(&["order", pid, "2"]);
        let body = format!(r#"{{"product_id":"{pid}","quantity":2}}"#);
        assert_eq!(order(&body), Some(RequestFingerprint(expected.clone())));
        // Spelled differently, the same request.
        let upper = format!(
            r#"{{ "quantity": 2, "product_id": "{}" }}"#,
            pid.to_uppercase()
        );
        assert_eq!(order(&upper).map(|f| f.0), Some(expected));
        let other = format!(r#"{{"product_id":"{pid}","quantity":3}}"#);
        assert_ne!(order(&other), order(&body));
        for bad in ["", "{", "[]", r#"{"product_id":"x","quantity":1}"#] {
            assert_eq!(order(bad), None, "{bad}");
        }
        let restock =
            RequestFingerprint::of("/v1/products/{id}/restock", Some(pid), br#"{"quantity":5}"#);
        assert_eq!(
            restock,
            Some(RequestFingerprint(request_hash(&["restock", pid, "5"])))
        );
        assert_eq!(RequestFingerprint::of("/v1/products", None, b"{}"), None);
    }

    #[test]
    fn local_keys_are_bounded() {
        let gcra = quota(1, 1);
        let local = LocalLimiter::new(160);
        for i in 0..10_000 {
            local.check_at(gcra, &format!("k{i}"), 0);
        }
        assert!(local.len() <= 160, "{}", local.len());
        // Once their buckets refill, old keys make room for new ones.
        assert!(matches!(
            local.check_at(gcra, "fresh", 10_000_000),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            local.check_at(gcra, "fresh", 10_000_000),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn addresses_and_proxies() {
        let peer: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.7, 10.0.0.8".parse().unwrap());
        // Untrusted peer: its own address, whatever it claims.
        assert_eq!(
            client_addr(Some(peer), &headers, &[]),
            Some("10.0.0.9".parse().unwrap())
        );
        let trusted: Vec<IpAddr> = vec!["10.0.0.9".parse().unwrap(), "10.0.0.8".parse().unwrap()];
        assert_eq!(
            client_addr(Some(peer), &headers, &trusted),
            Some("203.0.113.7".parse().unwrap())
        );
        headers.insert("x-forwarded-for", "garbage, 198.51.100.1".parse().unwrap());
        assert_eq!(
            client_addr(Some(peer), &headers, &trusted),
            Some("198.51.100.1".parse().unwrap())
        );
        assert_eq!(
            client_key(Some("::ffff:1.2.3.4".parse().map(canonical).unwrap())),
            "1.2.3.4"
        );
        assert_eq!(
            client_key(Some("2001:db8:1:2:3:4:5:6".parse().unwrap())),
            "2001:db8:1:2::/64"
        );
        assert_eq!(client_key(None), "local");
        // The stream cap keys by the same network as the buckets.
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::2".parse().unwrap();
        assert_eq!(client_net(a), client_net(b));
        assert_eq!(client_key(Some(a)), client_key(Some(client_net(b))));
    }

    proptest! {
        /// Over any run of requests, GCRA lets through at most the burst
        /// plus the rate times the time elapsed, and a client that keeps to
        /// the rate is never refused.
        #[test]
        fn gcra_bounds_what_passes(
            per_sec in 1u32..2_000,
            burst in 1u32..100,
            gaps in proptest::collection::vec(0u64..50_000, 1..400),
        ) {
            let gcra = quota(per_sec, burst);
            let mut tat = None;
            let mut now = 0u64;
            let mut allowed = 0u64;
            for gap in &gaps {
                now += gap;
                if let Decision::Allow { tat_us } = gcra.check(tat, now) {
                    tat = Some(tat_us);
                    allowed += 1;
                }
            }
            let bound = u64::from(burst) + now / gcra.interval_us + 1;
            prop_assert!(allowed <= bound, "{allowed} > {bound}");

            let mut tat = None;
            for i in 0..200u64 {
                let decision = gcra.check(tat, i * gcra.interval_us);
                let allowed = matches!(decision, Decision::Allow { .. });
                prop_assert!(allowed, "refused at the steady rate");
                if let Decision::Allow { tat_us } = decision { tat = Some(tat_us); }
            }
        }

        #[test]
        fn client_addr_never_panics(peer in any::<[u8; 4]>(), xff in "\\PC{0,200}") {
            let mut headers = HeaderMap::new();
            if let Ok(value) = xff.parse() {
                headers.insert("x-forwarded-for", value);
            }
            let peer = SocketAddr::from((peer, 1));
            let trusted = [peer.ip()];
            let addr = client_addr(Some(peer), &headers, &trusted);
            prop_assert!(addr.is_some());
            let key = client_key(addr);
            prop_assert!(!key.is_empty() && key.len() <= 64);
        }
    }
}
