//! One buyer placing one order the way a real storefront does: a fresh
//! Idempotency-Key, honouring `Retry-After` on 429/503 and retrying transport
//! failures with the same key, a bounded number of times.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::StatusCode;
use uuid::Uuid;

use crate::client::{error_chain, ApiClient, Order};

/// Delay used when a 429/503 carries no usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
const NETWORK_BACKOFF_BASE: Duration = Duration::from_millis(100);
const NETWORK_BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (at least 1).
    pub max_attempts: u32,
    /// Upper bound on a honoured `Retry-After`.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// `Retry-After` (capped) plus up to 10% jitter, so that buyers told to
    /// come back at the same moment do not all return in the same millisecond.
    pub fn backpressure_delay(&self, retry_after: Option<Duration>) -> Duration {
        let base = retry_after
            .unwrap_or(DEFAULT_RETRY_AFTER)
            .min(self.max_retry_after);
        base + jitter(base / 10)
    }

    /// Exponential backoff with jitter for the `retry`-th transport retry.
    pub fn network_delay(&self, retry: u32) -> Duration {
        let exp = NETWORK_BACKOFF_BASE.saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        let capped = exp.min(NETWORK_BACKOFF_MAX);
        capped / 2 + jitter(capped / 2)
    }
}

fn jitter(max: Duration) -> Duration {
    let max_micros = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    if max_micros == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(rand::thread_rng().gen_range(0..=max_micros))
}

/// What a buyer asks for.
#[derive(Debug, Clone)]
pub struct OrderRequest {
    pub customer_id: String,
    pub token: Arc<str>,
    pub product_id: Uuid,
    pub quantity: u32,
    pub idempotency_key: String,
}

impl OrderRequest {
    pub fn new(customer_id: String, token: String, product_id: Uuid, quantity: u32) -> Self {
        Self {
            customer_id,
            token: token.into(),
            product_id,
            quantity,
            idempotency_key: random_key(),
        }
    }
}

/// A fresh Idempotency-Key: a random (version 4) UUID from the thread's
/// generator, not the operating system's (a system call per key).
fn random_key() -> String {
    let bytes: [u8; 16] = rand::thread_rng().gen();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The final answer a buyer got.
#[derive(Debug, Clone)]
pub enum Answer {
    /// `202` (or `200` replay): the order exists.
    Accepted {
        order: Order,
        replayed: bool,
        /// Round trip of the attempt that was accepted.
        latency: Duration,
        /// When that attempt was sent and its answer read.
        sent_at: Instant,
        received_at: Instant,
    },
    /// Any other HTTP answer (`409 sold_out` included), or a 429/503 once the
    /// attempts ran out.
    Refused {
        status: u16,
        code: Option<String>,
        latency: Duration,
        received_at: Instant,
    },
    /// A 2xx whose body is not an order: the order may exist but its id is
    /// unknown.
    Unreadable { status: u16, error: String },
    /// No HTTP answer after every attempt.
    Unreachable { kind: &'static str, error: String },
}

#[derive(Debug, Clone)]
pub struct Submission {
    pub request: OrderRequest,
    pub answer: Answer,
    pub backpressure_retries: u32,
    pub network_retries: u32,
}

/// Places `request`'s order, retrying as a storefront would.
pub async fn submit(client: ApiClient, request: OrderRequest, policy: RetryPolicy) -> Submission {
    let bytes = client.order_request(
        &request.token,
        &request.idempotency_key,
        request.product_id,
        request.quantity,
    );
    let sent = send(&client, &bytes, policy).await;
    Submission {
        request,
        answer: sent.answer,
        backpressure_retries: sent.backpressure_retries,
        network_retries: sent.network_retries,
    }
}

/// The final answer to an order request, and the retries it took.
#[derive(Debug, Clone)]
pub struct Sent {
    pub answer: Answer,
    pub backpressure_retries: u32,
    pub network_retries: u32,
}

/// Sends the order `bytes` (one key, one body: every attempt is the same
/// request), retrying 429/503 and transport failures as a storefront would.
pub async fn send(client: &ApiClient, bytes: &[u8], policy: RetryPolicy) -> Sent {
    let mut backpressure_retries = 0u32;
    let mut network_retries = 0u32;
    let mut attempt = 1u32;
    let answer = loop {
        let result = client.place_order(bytes).await;
        let may_retry = attempt < policy.max_attempts;
        attempt += 1;
        match result {
            Err(_) if may_retry => {
                network_retries += 1;
                tokio::time::sleep(policy.network_delay(network_retries)).await;
            }
            Err(err) => {
                break Answer::Unreachable {
                    kind: err.kind(),
                    error: error_chain(&err),
                }
            }
            Ok(reply) if reply.is_backpressure() && may_retry => {
                backpressure_retries += 1;
                tokio::time::sleep(policy.backpressure_delay(reply.retry_after)).await;
            }
            Ok(reply) if reply.status == StatusCode::ACCEPTED || reply.status == StatusCode::OK => {
                // Queued (checkline): a 200 is the replay of an earlier
                // attempt. Synchronous (baseline): every decision is a 200,
                // and only the header marks a replay.
                let replayed =
                    reply.replayed || (reply.status == StatusCode::OK && !client.is_synchronous());
                break match reply.json::<Order>() {
                    Ok(order) => Answer::Accepted {
                        order,
                        replayed,
                        latency: reply.latency,
                        sent_at: reply.sent_at,
                        received_at: reply.received_at,
                    },
                    Err(err) => Answer::Unreadable {
                        status: reply.status.as_u16(),
                        error: format!("{err:#}"),
                    },
                };
            }
            Ok(reply) => {
                break Answer::Refused {
                    status: reply.status.as_u16(),
                    code: reply.code(),
                    latency: reply.latency,
                    received_at: reply.received_at,
                }
            }
        }
    };
    Sent {
        answer,
        backpressure_retries,
        network_retries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            max_retry_after: Duration::from_secs(30),
        }
    }

    #[test]
    fn backpressure_delay_honours_retry_after_with_bounded_jitter() {
        for _ in 0..100 {
            let delay = policy().backpressure_delay(Some(Duration::from_secs(2)));
            assert!(delay >= Duration::from_secs(2), "{delay:?}");
            assert!(delay <= Duration::from_millis(2200), "{delay:?}");
        }
        let capped = policy().backpressure_delay(Some(Duration::from_secs(600)));
        assert!(capped <= Duration::from_secs(33), "{capped:?}");
        let default = policy().backpressure_delay(None);
        assert!(default >= DEFAULT_RETRY_AFTER, "{default:?}");
        assert_eq!(
            policy().backpressure_delay(Some(Duration::ZERO)),
            Duration::ZERO
        );
    }

    #[test]
    fn network_backoff_grows_and_is_capped() {
        for _ in 0..100 {
            let first = policy().network_delay(1);
            assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
            let late = policy().network_delay(40);
            assert!((Duration::from_secs(1)..=NETWORK_BACKOFF_MAX).contains(&late));
        }
    }

    #[test]
    fn requests_get_distinct_valid_keys() {
        let a = OrderRequest::new("c".into(), "t".into(), Uuid::nil(), 1);
        let b = OrderRequest::new("c".into(), "t".into(), Uuid::nil(), 1);
        assert_ne!(a.idempotency_key, b.idempotency_key);
        let key = Uuid::parse_str(&a.idempotency_key).unwrap();
        assert_eq!(key.get_version(), Some(uuid::Version::Random));
        assert_eq!(key.get_variant(), uuid::Variant::RFC4122);
        assert!(a
            .idempotency_key
            .bytes()
            .all(|byte| (0x21..=0x7e).contains(&byte)));
    }
}
