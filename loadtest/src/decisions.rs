//! Learning the decision of every accepted order.
//!
//! Each accepted order is handed to [`run`] the moment its 202 arrives; a
//! long-poll (`GET /v1/orders/{id}?wait=10`, with the owner's token) starts as
//! soon as a slot is free, so decisions are observed while submissions are
//! still going on. Once the submissions are over (the channel closes), the
//! remaining polls get `timeout` to finish; whatever is still pending then is
//! left undecided.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reqwest::StatusCode;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::client::{transport_error_kind, ApiClient, Order, OrderStatus};
use crate::latency::LatencyRecorder;

/// `wait` of each long-poll, in seconds.
const WAIT_SECS: u64 = 10;
/// A pending answer that came back faster than this is treated as the server
/// ignoring `wait`, and the next poll is delayed to avoid a busy loop.
const MIN_PENDING_ROUND_TRIP: Duration = Duration::from_millis(500);
const PENDING_PAUSE: Duration = Duration::from_millis(200);
const ERROR_BACKOFF_BASE: Duration = Duration::from_millis(200);
const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(5);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// An accepted order to follow.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub order_id: Uuid,
    /// The owner's bearer token.
    pub token: Arc<str>,
    /// When the 202 (or replay 200) was received.
    pub accepted_at: Instant,
}

/// Everything the polls learned.
#[derive(Debug, Default)]
pub struct Decisions {
    /// Decided orders as the API reported them.
    pub orders: HashMap<Uuid, Order>,
    /// Time the decision was observed minus time the 202 was received.
    pub observed: LatencyRecorder,
    /// `decided_at - created_at` from the server's timestamps.
    pub server: LatencyRecorder,
    /// Failed polls by label (`"503 overloaded"`, `"transport timeout"`, ...).
    pub poll_errors: BTreeMap<String, u64>,
    /// Orders whose polling stopped on a non-retryable answer.
    pub abandoned: u64,
    /// The decision timeout expired with polls still running.
    pub timed_out: bool,
    /// When the last decision was observed.
    pub last_decision_at: Option<Instant>,
}

impl Decisions {
    fn absorb(&mut self, outcome: PollOutcome) {
        for error in outcome.errors {
            *self.poll_errors.entry(error).or_default() += 1;
        }
        match outcome.decision {
            Some(decision) => {
                self.observed.record(
                    decision
                        .observed_at
                        .saturating_duration_since(decision.accepted_at),
                );
                if let Some(decided_at) = decision.order.decided_at {
                    self.server
                        .record_chrono(decided_at - decision.order.created_at);
                }
                self.last_decision_at = Some(
                    self.last_decision_at
                        .map_or(decision.observed_at, |last| last.max(decision.observed_at)),
                );
                self.orders.insert(decision.order.id, decision.order);
            }
            None => self.abandoned += 1,
        }
    }
}

struct Decision {
    order: Order,
    accepted_at: Instant,
    observed_at: Instant,
}

struct PollOutcome {
    decision: Option<Decision>,
    errors: Vec<String>,
}

/// Follows every order received on `accepted` until decided; see the module
/// documentation for the timing rules.
pub async fn run(
    client: ApiClient,
    mut accepted: mpsc::UnboundedReceiver<Accepted>,
    concurrency: usize,
    timeout: Duration,
) -> Result<Decisions> {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut polls = JoinSet::new();
    let mut decisions = Decisions::default();

    // While buyers are being served: start polls as orders arrive and collect
    // the ones that finish.
    loop {
        tokio::select! {
            next = accepted.recv() => match next {
                Some(order) => {
                    polls.spawn(follow(client.clone(), order, Arc::clone(&slots)));
                }
                None => break,
            },
            Some(done) = polls.join_next(), if !polls.is_empty() => {
                decisions.absorb(done.context("a decision poll task failed")?);
            }
        }
    }

    // Every buyer has been answered: bounded wait for the rest.
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, polls.join_next()).await {
            Ok(Some(done)) => decisions.absorb(done.context("a decision poll task failed")?),
            Ok(None) => break,
            Err(_elapsed) => {
                decisions.timed_out = true;
                polls.abort_all();
                while let Some(done) = polls.join_next().await {
                    // Polls that completed between the deadline and the abort
                    // still count; aborted ones leave their order undecided.
                    if let Ok(outcome) = done {
                        decisions.absorb(outcome);
                    }
                }
                break;
            }
        }
    }
    Ok(decisions)
}

async fn follow(client: ApiClient, order: Accepted, slots: Arc<Semaphore>) -> PollOutcome {
    let mut errors = Vec::new();
    // The semaphore is never closed; if it were, polling without a slot is
    // still correct, merely less bounded.
    let _slot = slots.acquire_owned().await.ok();
    let mut failures = 0u32;
    loop {
        let pause = match client
            .get_order(&order.token, order.order_id, WAIT_SECS)
            .await
        {
            Ok(reply) if reply.status == StatusCode::OK => match reply.json::<Order>() {
                Ok(current) if current.id != order.order_id => {
                    errors.push("200 with another order's id".to_owned());
                    return PollOutcome {
                        decision: None,
                        errors,
                    };
                }
                Ok(current) if current.status != OrderStatus::Pending => {
                    return PollOutcome {
                        decision: Some(Decision {
                            order: current,
                            accepted_at: order.accepted_at,
                            observed_at: reply.received_at,
                        }),
                        errors,
                    };
                }
                Ok(_pending) => {
                    failures = 0;
                    if reply.latency < MIN_PENDING_ROUND_TRIP {
                        PENDING_PAUSE
                    } else {
                        Duration::ZERO
                    }
                }
                Err(_) => {
                    errors.push("200 with an unreadable order".to_owned());
                    failures += 1;
                    backoff(failures)
                }
            },
            Ok(reply) if reply.is_backpressure() => {
                errors.push(status_label(reply.status, reply.code()));
                failures += 1;
                reply
                    .retry_after
                    .map_or_else(|| backoff(failures), |after| after.min(MAX_RETRY_AFTER))
            }
            Ok(reply) if reply.status.is_server_error() => {
                errors.push(status_label(reply.status, reply.code()));
                failures += 1;
                backoff(failures)
            }
            Ok(reply) => {
                // 4xx: retrying the same request cannot help.
                errors.push(status_label(reply.status, reply.code()));
                return PollOutcome {
                    decision: None,
                    errors,
                };
            }
            Err(err) => {
                errors.push(format!("transport {}", transport_error_kind(&err)));
                failures += 1;
                backoff(failures)
            }
        };
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

fn backoff(failures: u32) -> Duration {
    ERROR_BACKOFF_BASE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(ERROR_BACKOFF_MAX)
}

/// `"404 order_not_found"`, or just the status when there is no code.
pub fn status_label(status: StatusCode, code: Option<String>) -> String {
    match code {
        Some(code) => format!("{} {code}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(5), Duration::from_millis(3200));
        assert_eq!(backoff(6), ERROR_BACKOFF_MAX);
        assert_eq!(backoff(1000), ERROR_BACKOFF_MAX);
    }

    #[test]
    fn labels() {
        assert_eq!(
            status_label(StatusCode::NOT_FOUND, Some("order_not_found".into())),
            "404 order_not_found"
        );
        assert_eq!(status_label(StatusCode::BAD_GATEWAY, None), "502");
    }

    #[test]
    fn absorbing_outcomes() {
        let created = chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let accepted_at = Instant::now();
        let order = Order {
            id: Uuid::new_v4(),
            status: OrderStatus::Confirmed,
            reason: None,
            created_at: created,
            decided_at: Some(created + chrono::TimeDelta::milliseconds(40)),
        };
        let mut decisions = Decisions::default();
        decisions.absorb(PollOutcome {
            decision: Some(Decision {
                order: order.clone(),
                accepted_at,
                observed_at: accepted_at + Duration::from_millis(70),
            }),
            errors: vec!["503 overloaded".into()],
        });
        decisions.absorb(PollOutcome {
            decision: None,
            errors: vec!["404 order_not_found".into()],
        });
        assert_eq!(decisions.orders.len(), 1);
        assert_eq!(decisions.abandoned, 1);
        assert_eq!(decisions.poll_errors["503 overloaded"], 1);
        assert_eq!(decisions.poll_errors["404 order_not_found"], 1);
        let observed = decisions.observed.summary().max_ms.unwrap();
        assert!((observed - 70.0).abs() < 0.1, "{observed}");
        let server = decisions.server.summary().max_ms.unwrap();
        assert!((server - 40.0).abs() < 0.1, "{server}");
        assert_eq!(
            decisions.last_decision_at,
            Some(accepted_at + Duration::from_millis(70))
        );
    }
}
