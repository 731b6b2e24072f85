//! Learning the decision of every accepted order, three ways:
//!
//! - **poll** ([`run`]): each accepted order is handed over the moment its 202
//!   arrives; a long-poll (`GET /v1/orders/{id}?wait=10`, with the owner's
//!   token, at the API that accepted it and at the next one when a poll gets
//!   no answer) starts as soon as a slot is free, so decisions are observed while
//!   submissions are still going on. Once the submissions are over (the
//!   channel closes), the remaining polls get `timeout` to finish; whatever is
//!   still pending then is left undecided.
//! - **db** ([`watch_database`]): no HTTP at all. Once the submissions are
//!   over, PostgreSQL is asked every 100 ms how many of the run's orders are
//!   still pending, until none is or `timeout` expires; the decisions and
//!   their latencies (`decided_at - created_at`) are then read from the rows.
//! - **synchronous** ([`Decisions::record_synchronous`]): the answer to the
//!   order is its decision (the baseline).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reqwest::StatusCode;
use sqlx::PgPool;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::client::{transport_error_kind, ApiClient, Order, OrderStatus};
use crate::db;
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
/// How often `--decisions db` counts the pending orders.
pub const DB_WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// An accepted order to follow.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub order_id: Uuid,
    /// The owner's bearer token.
    pub token: Arc<str>,
    /// When the 202 (or replay 200) was received.
    pub accepted_at: Instant,
    /// When the order was sent: the accepted attempt's send, or in open mode
    /// its scheduled send time.
    pub sent_at: Instant,
    /// The API to poll first: the one that accepted the order.
    pub api: usize,
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
    /// Time the decision was known to the buyer minus time the order was
    /// sent (poll and synchronous tracking).
    pub end_to_end: LatencyRecorder,
    /// Failed polls by label (`"503 overloaded"`, `"transport timeout"`, ...).
    pub poll_errors: BTreeMap<String, u64>,
    /// Orders whose polling stopped on a non-retryable answer.
    pub abandoned: u64,
    /// Polls that got no answer and were sent again to another API.
    pub failovers: u64,
    /// The decision timeout expired with polls still running.
    pub timed_out: bool,
    /// When the last decision was observed (poll and synchronous tracking).
    pub last_decision_at: Option<Instant>,
    /// `--decisions db`: from the first `created_at` to the last `decided_at`
    /// of the decided orders (server clock).
    pub server_span: Option<Duration>,
    /// `--decisions db`: how the wait for the decisions ended.
    pub database: Option<DbWatch>,
}

/// How a `--decisions db` wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbWatch {
    /// No order of the run was pending any more before the timeout.
    pub drained: bool,
    /// Orders still pending at the last count.
    pub pending: i64,
    /// From the end of the submissions to the last count.
    pub waited: Duration,
}

impl Decisions {
    /// A decision returned in the answer to the order itself: it is known
    /// when the answer arrives, so its decision latency is the answer's
    /// latency.
    pub fn record_synchronous(&mut self, order: Order, latency: Duration, received_at: Instant) {
        if order.status == OrderStatus::Pending {
            return;
        }
        self.observed.record(latency);
        self.end_to_end.record(latency);
        if let Some(decided_at) = order.decided_at {
            self.server.record_chrono(decided_at - order.created_at);
        }
        self.note_decision_at(received_at);
        self.orders.insert(order.id, order);
    }

    fn note_decision_at(&mut self, at: Instant) {
        self.last_decision_at = Some(self.last_decision_at.map_or(at, |last| last.max(at)));
    }

    fn absorb(&mut self, outcome: PollOutcome) {
        self.failovers += u64::from(outcome.failovers);
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
                self.end_to_end.record(
                    decision
                        .observed_at
                        .saturating_duration_since(decision.sent_at),
                );
                if let Some(decided_at) = decision.order.decided_at {
                    self.server
                        .record_chrono(decided_at - decision.order.created_at);
                }
                self.note_decision_at(decision.observed_at);
                self.orders.insert(decision.order.id, decision.order);
            }
            None => self.abandoned += 1,
        }
    }
}

/// A decision observed by a long-poll.
pub struct Decision {
    pub order: Order,
    pub accepted_at: Instant,
    pub sent_at: Instant,
    pub observed_at: Instant,
}

/// How following one order ended: its decision, or none when a poll got an
/// answer that retrying cannot change; the failed polls on the way.
pub struct PollOutcome {
    pub decision: Option<Decision>,
    pub errors: Vec<String>,
    /// Polls that got no answer and were sent again to another API.
    pub failovers: u32,
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
    // The semaphore is never closed; if it were, polling without a slot is
    // still correct, merely less bounded.
    let _slot = slots.acquire_owned().await.ok();
    await_decision(&client, &order).await
}

/// Long-polls `order` until it is decided (`reserved` counts: `?wait`
/// returns at the first decision) or an answer says retrying cannot help.
/// A poll that gets no answer is sent again to the next API. Unbounded in
/// time: callers bound it.
pub async fn await_decision(client: &ApiClient, order: &Accepted) -> PollOutcome {
    let mut errors = Vec::new();
    let mut failures = 0u32;
    let mut failovers = 0u32;
    let mut api = order.api;
    loop {
        let pause = match client
            .get_order(api, &order.token, order.order_id, WAIT_SECS)
            .await
        {
            Ok(reply) if reply.status == StatusCode::OK => match reply.json::<Order>() {
                Ok(current) if current.id != order.order_id => {
                    errors.push("200 with another order's id".to_owned());
                    return PollOutcome {
                        decision: None,
                        errors,
                        failovers,
                    };
                }
                Ok(current) if current.status != OrderStatus::Pending => {
                    return PollOutcome {
                        decision: Some(Decision {
                            order: current,
                            accepted_at: order.accepted_at,
                            sent_at: order.sent_at,
                            observed_at: reply.received_at,
                        }),
                        errors,
                        failovers,
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
                    failovers,
                };
            }
            Err(err) => {
                errors.push(format!("transport {}", transport_error_kind(&err)));
                failures += 1;
                let next = client.next(api);
                if next != api {
                    failovers += 1;
                    api = next;
                }
                backoff(failures)
            }
        };
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// `--decisions db`: waits until none of `accepted`'s orders (all of
/// `product_ids`) is pending, counting every [`DB_WATCH_INTERVAL`] for at most
/// `timeout`, then reads their decisions from PostgreSQL.
pub async fn watch_database(
    pool: &PgPool,
    product_ids: &[Uuid],
    accepted: &HashMap<Uuid, Uuid>,
    timeout: Duration,
) -> Result<Decisions> {
    let started = Instant::now();
    let deadline = started + timeout;
    let watch = loop {
        let pending = if accepted.is_empty() {
            0
        } else {
            db::count_pending(pool, product_ids).await?
        };
        let now = Instant::now();
        if pending == 0 || now >= deadline {
            break DbWatch {
                drained: pending == 0,
                pending,
                waited: now.saturating_duration_since(started),
            };
        }
        tokio::time::sleep(DB_WATCH_INTERVAL.min(deadline.saturating_duration_since(now))).await;
    };

    let mut decisions = Decisions {
        timed_out: !watch.drained,
        database: Some(watch),
        ..Decisions::default()
    };
    if accepted.is_empty() {
        return Ok(decisions);
    }
    let rows = db::fetch_decisions(pool, product_ids).await?;
    let mut first_created = None;
    let mut last_decided = None;
    for order in rows {
        if !accepted.contains_key(&order.id) || order.status == OrderStatus::Pending {
            continue;
        }
        if let Some(decided_at) = order.decided_at {
            decisions
                .server
                .record_chrono(decided_at - order.created_at);
            last_decided = Some(
                last_decided.map_or(decided_at, |last: chrono::DateTime<chrono::Utc>| {
                    last.max(decided_at)
                }),
            );
            first_created = Some(
                first_created.map_or(order.created_at, |first: chrono::DateTime<chrono::Utc>| {
                    first.min(order.created_at)
                }),
            );
        }
        decisions.orders.insert(order.id, order);
    }
    if let (Some(first), Some(last)) = (first_created, last_decided) {
        decisions.server_span = Some((last - first).to_std().unwrap_or(Duration::ZERO));
    }
    Ok(decisions)
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
            rejected_product_id: None,
        };
        let mut decisions = Decisions::default();
        decisions.absorb(PollOutcome {
            decision: Some(Decision {
                order: order.clone(),
                accepted_at,
                sent_at: accepted_at - Duration::from_millis(5),
                observed_at: accepted_at + Duration::from_millis(70),
            }),
            errors: vec!["503 overloaded".into()],
            failovers: 2,
        });
        decisions.absorb(PollOutcome {
            decision: None,
            errors: vec!["404 order_not_found".into()],
            failovers: 0,
        });
        assert_eq!(decisions.orders.len(), 1);
        assert_eq!(decisions.abandoned, 1);
        assert_eq!(decisions.failovers, 2);
        assert_eq!(decisions.poll_errors["503 overloaded"], 1);
        assert_eq!(decisions.poll_errors["404 order_not_found"], 1);
        let observed = decisions.observed.summary().max_ms.unwrap();
        assert!((observed - 70.0).abs() < 0.1, "{observed}");
        let server = decisions.server.summary().max_ms.unwrap();
        assert!((server - 40.0).abs() < 0.1, "{server}");
        let end_to_end = decisions.end_to_end.summary().max_ms.unwrap();
        assert!((end_to_end - 75.0).abs() < 0.1, "{end_to_end}");
        assert_eq!(
            decisions.last_decision_at,
            Some(accepted_at + Duration::from_millis(70))
        );

        // A synchronous decision: its latency is the answer's.
        let mut sync = Decisions::default();
        let received = accepted_at + Duration::from_millis(90);
        sync.record_synchronous(
            Order {
                id: Uuid::new_v4(),
                decided_at: Some(created),
                ..order.clone()
            },
            Duration::from_millis(12),
            received,
        );
        // A pending answer is not a decision.
        sync.record_synchronous(
            Order {
                id: Uuid::new_v4(),
                status: OrderStatus::Pending,
                decided_at: None,
                ..order
            },
            Duration::from_millis(1),
            received,
        );
        assert_eq!(sync.orders.len(), 1);
        let observed = sync.observed.summary();
        assert_eq!(observed.count, 1);
        assert!((observed.max_ms.unwrap() - 12.0).abs() < 0.1);
        assert_eq!(sync.server.summary().max_ms, Some(0.0));
        assert_eq!(sync.last_decision_at, Some(received));
    }

    #[tokio::test]
    async fn a_poll_without_an_answer_goes_to_the_next_api() {
        use crate::stub_api::{dead_url, Behaviour, StubApi};

        let dead = dead_url().await;
        let live = StubApi::start(Behaviour::Refuse(409)).await;
        let client = ApiClient::new(&[dead, live.url.clone()], 4, Duration::from_secs(5)).unwrap();
        let now = Instant::now();
        let order = Accepted {
            order_id: Uuid::from_u128(11),
            token: "t".into(),
            accepted_at: now,
            sent_at: now,
            api: 0,
        };
        let outcome =
            tokio::time::timeout(Duration::from_secs(10), await_decision(&client, &order))
                .await
                .unwrap();
        let decision = outcome.decision.expect("decided through the other API");
        assert_eq!(decision.order.id, order.order_id);
        assert_eq!(decision.order.status, OrderStatus::Confirmed);
        assert_eq!(outcome.failovers, 1);
        assert_eq!(outcome.errors, ["transport connect"]);
    }
}
