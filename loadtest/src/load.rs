//! The load engine: releases the buyers of one phase (closed or open loop),
//! tallies their answers, and follows the accepted orders to a decision.
//!
//! - **closed** (`--mode closed`): `concurrency` virtual users; each takes
//!   the next buyer as soon as its previous one was answered. Accept latency
//!   is the round trip of the accepted attempt.
//! - **open** (`--mode open`): buyer `i` is due at `release + i / rate`
//!   ([`crate::schedule`]), whatever the answers' latency. A buyer due while
//!   `max_in_flight` submissions are outstanding is not sent and counts as
//!   dropped. Latencies are measured from the due time, so a slow answer, a
//!   late send or a retry shows in them (no coordinated omission).
//!
//! Every buyer is a distinct customer (`buyer-<run>-<i>`) with its own token
//! and Idempotency-Key, ordering one of the phase's products (spread
//! uniformly when there are several, by a hash of the run id and the buyer's
//! index, so that checkline and the baseline take the same orders) at one of
//! the APIs (buyer `i` at API `i mod n`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::auth::{buyer_subject, TokenMinter};
use crate::buyer::{self, Answer, OrderRequest, RetryPolicy, Submission};
use crate::checks::{is_stock_reason, Agreement};
use crate::cli::{Mode, Tracking};
use crate::client::{ApiClient, ApiCounts, OrderStatus};
use crate::decisions::{self, Accepted, Decisions};
use crate::report::ResponseTally;
use crate::schedule;

/// One phase of load.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Names the buyers: `buyer-<run_id>-<i>`.
    pub run_id: String,
    pub buyers: u32,
    pub quantity: u32,
    /// Each buyer orders one of these ([`product_index`]).
    pub products: Arc<[Uuid]>,
    pub mode: Mode,
    pub retry: RetryPolicy,
    pub decision_timeout: Duration,
    /// `--same-key-to-every-api`: each buyer's first attempt goes to every
    /// API at once.
    pub same_key_to_every_api: bool,
}

/// How the phase learns the decisions of accepted orders: a [`Tracking`]
/// with what it needs.
#[derive(Clone)]
pub enum Follow {
    /// Long-poll each accepted order, at most `concurrency` at once.
    Poll { concurrency: usize },
    /// Watch PostgreSQL once the submissions are over.
    Db { pool: PgPool },
    /// The answer to the order carries its decision (the baseline).
    Synchronous,
}

impl Follow {
    pub fn tracking(&self) -> Tracking {
        match self {
            Self::Poll { .. } => Tracking::Poll,
            Self::Db { .. } => Tracking::Db,
            Self::Synchronous => Tracking::Synchronous,
        }
    }
}

/// What one phase produced.
#[derive(Debug)]
pub struct PhaseOutcome {
    pub started_at: DateTime<Utc>,
    pub tally: ResponseTally,
    /// Distinct accepted order ids, with the product each was for.
    pub accepted: HashMap<Uuid, Uuid>,
    /// Buyers whose order was accepted, per product.
    pub accepted_buyers: HashMap<Uuid, u64>,
    pub decisions: Decisions,
    /// From the release to the last buyer's final answer.
    pub submission: Duration,
    /// From the release until every decision was learnt (or the timeout).
    pub total: Duration,
    /// The span decided/s is computed over: release to last decision seen
    /// (poll, synchronous), or first `created_at` to last `decided_at` (db).
    pub deciding: Duration,
    /// Each API's order attempts during the phase, in `--api-url` order.
    pub apis: Vec<ApiCounts>,
    /// `--same-key-to-every-api`: how the APIs' answers compared.
    pub agreement: Option<Agreement>,
    pub notes: Vec<String>,
}

enum Event {
    /// A buyer's final answer; `due` is its scheduled send time (open mode).
    Answered {
        submission: Box<Submission>,
        due: Option<Instant>,
    },
    /// Due while `max_in_flight` submissions were outstanding: not sent.
    Dropped,
    /// The buyer could not even be prepared (token signing failed).
    Failed(anyhow::Error),
}

/// Runs one phase against `client`: releases the buyers, tallies their
/// answers, and learns the decisions as `follow` says.
pub async fn run_phase(
    client: &ApiClient,
    minter: &Arc<TokenMinter>,
    plan: &Plan,
    follow: &Follow,
) -> Result<PhaseOutcome> {
    anyhow::ensure!(!plan.products.is_empty(), "a phase needs a product");
    let (accepted_tx, poller) = match follow {
        Follow::Poll { concurrency } => {
            let (tx, rx) = mpsc::unbounded_channel();
            let poller = tokio::spawn(decisions::run(
                client.clone(),
                rx,
                *concurrency,
                plan.decision_timeout,
            ));
            (Some(tx), Some(poller))
        }
        Follow::Db { .. } | Follow::Synchronous => (None, None),
    };

    let counts_before = client.counts();
    let started_at = Utc::now();
    let released = Instant::now();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut drivers = JoinSet::new();
    match plan.mode {
        Mode::Closed { concurrency } => {
            let next = Arc::new(AtomicU32::new(0));
            let users = concurrency.min(usize::try_from(plan.buyers).unwrap_or(usize::MAX));
            for _ in 0..users.max(1) {
                drivers.spawn(virtual_user(
                    client.clone(),
                    Arc::clone(minter),
                    plan.clone(),
                    Arc::clone(&next),
                    events_tx.clone(),
                ));
            }
        }
        Mode::Open {
            rate,
            max_in_flight,
        } => {
            drivers.spawn(open_schedule(
                client.clone(),
                Arc::clone(minter),
                plan.clone(),
                rate,
                max_in_flight,
                events_tx.clone(),
            ));
        }
    }
    drop(events_tx);

    // The collector is a task of the runtime's workers, which send it every
    // answer: woken there, not on the thread that awaits the phase (the
    // runtime's main thread, parked: a futex wake-up and a context switch
    // per answer).
    let mut collector = Collector::new(follow, accepted_tx, plan.same_key_to_every_api);
    let collecting = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            collector.absorb(event)?;
        }
        anyhow::Ok((collector, released.elapsed()))
    });
    let (collector, submission) = collecting.await.context("the answer collector failed")??;
    while let Some(done) = drivers.join_next().await {
        done.context("a load task failed")?;
    }
    let apis = client
        .counts()
        .into_iter()
        .zip(counts_before)
        .map(|(after, before)| after.since(before))
        .collect();
    let Collector {
        tally,
        accepted,
        accepted_buyers,
        decisions: synchronous,
        agreement,
        notes,
        accepted_tx,
        ..
    } = collector;
    // Closing the channel tells the poller that no more orders will come.
    drop(accepted_tx);
    eprintln!(
        "  {} buyers answered in {:.3} s ({} accepted, {} dropped); {}",
        plan.buyers,
        submission.as_secs_f64(),
        accepted.len(),
        tally.dropped_count(),
        match follow {
            Follow::Synchronous => "decided in the answers".to_owned(),
            _ => format!(
                "waiting up to {} s for decisions ({})",
                plan.decision_timeout.as_secs(),
                follow.tracking().name()
            ),
        }
    );

    let decisions = match (follow, poller) {
        (Follow::Poll { .. }, Some(poller)) => {
            poller.await.context("the decision poller failed")??
        }
        (Follow::Db { pool }, _) => {
            decisions::watch_database(pool, &plan.products, &accepted, plan.decision_timeout)
                .await?
        }
        _ => synchronous,
    };
    let total = released.elapsed();
    let deciding = match follow {
        Follow::Db { .. } => decisions.server_span.unwrap_or(Duration::ZERO),
        _ => decisions.last_decision_at.map_or(Duration::ZERO, |last| {
            last.saturating_duration_since(released)
        }),
    };
    Ok(PhaseOutcome {
        started_at,
        tally,
        accepted,
        accepted_buyers,
        decisions,
        submission,
        total,
        deciding,
        apis,
        agreement,
        notes,
    })
}

/// One closed-loop virtual user: takes the next buyer until none is left.
async fn virtual_user(
    client: ApiClient,
    minter: Arc<TokenMinter>,
    plan: Plan,
    next: Arc<AtomicU32>,
    events: mpsc::UnboundedSender<Event>,
) {
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= plan.buyers {
            return;
        }
        let event = match prepare(&minter, &plan, index, client.home(index)) {
            Ok(request) => Event::Answered {
                submission: Box::new(
                    buyer::submit(
                        client.clone(),
                        request,
                        plan.retry,
                        plan.same_key_to_every_api,
                    )
                    .await,
                ),
                due: None,
            },
            Err(err) => Event::Failed(err),
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// The open-loop scheduler: sends buyer `i` at `release + i / rate`, unless
/// `max_in_flight` submissions are outstanding, in which case it is dropped.
async fn open_schedule(
    client: ApiClient,
    minter: Arc<TokenMinter>,
    plan: Plan,
    rate: u32,
    max_in_flight: usize,
    events: mpsc::UnboundedSender<Event>,
) {
    let gate = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let release = tokio::time::Instant::now();
    for index in 0..plan.buyers {
        let due = release + schedule::due_offset(u64::from(index), rate);
        if due > tokio::time::Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let Ok(permit) = Arc::clone(&gate).try_acquire_owned() else {
            if events.send(Event::Dropped).is_err() {
                return;
            }
            continue;
        };
        let (client, minter, plan, events) = (
            client.clone(),
            Arc::clone(&minter),
            plan.clone(),
            events.clone(),
        );
        tokio::spawn(async move {
            let home = client.home(index);
            let event = match prepare(&minter, &plan, index, home) {
                Ok(request) => Event::Answered {
                    submission: Box::new(
                        buyer::submit(client, request, plan.retry, plan.same_key_to_every_api)
                            .await,
                    ),
                    due: Some(due.into_std()),
                },
                Err(err) => Event::Failed(err),
            };
            drop(permit);
            // The collector only goes away when the run is aborted.
            let _ = events.send(event);
        });
    }
}

/// Buyer `index`'s order: its own customer id and token, a fresh key, its
/// product ([`product_index`]) and its API, `home`.
fn prepare(minter: &TokenMinter, plan: &Plan, index: u32, home: usize) -> Result<OrderRequest> {
    let customer = buyer_subject(&plan.run_id, index);
    let token = minter.customer(&customer)?;
    let product = plan.products[product_index(&plan.run_id, index, plan.products.len())];
    Ok(OrderRequest::new(
        customer,
        token,
        product,
        plan.quantity,
        home,
    ))
}

/// Which of `count` products buyer `index` of run `run_id` orders: spread
/// uniformly over the products, and a function of the run id and the index
/// alone, so that the same run against checkline and against the baseline
/// sends every buyer to the same product (the `n`-th created of each).
pub fn product_index(run_id: &str, index: u32, count: usize) -> usize {
    if count <= 1 {
        return 0;
    }
    // FNV-1a of the run id seeds SplitMix64, stepped to the buyer's index.
    let seed = run_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    let mut z = seed.wrapping_add((u64::from(index) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // Multiply-shift maps the 64-bit value onto 0..count without a modulo's bias.
    let count = u64::try_from(count).unwrap_or(u64::MAX);
    let picked = (u128::from(z) * u128::from(count)) >> 64;
    usize::try_from(picked).unwrap_or(0)
}

/// Tallies answers as they arrive and hands accepted orders on.
struct Collector {
    synchronous: bool,
    accepted_tx: Option<mpsc::UnboundedSender<Accepted>>,
    tally: ResponseTally,
    accepted: HashMap<Uuid, Uuid>,
    accepted_buyers: HashMap<Uuid, u64>,
    decisions: Decisions,
    agreement: Option<Agreement>,
    notes: Vec<String>,
    seen_unreadable: bool,
    seen_unreachable: bool,
}

impl Collector {
    fn new(
        follow: &Follow,
        accepted_tx: Option<mpsc::UnboundedSender<Accepted>>,
        fanned_out: bool,
    ) -> Self {
        Self {
            synchronous: matches!(follow, Follow::Synchronous),
            accepted_tx,
            tally: ResponseTally::default(),
            accepted: HashMap::new(),
            accepted_buyers: HashMap::new(),
            decisions: Decisions::default(),
            agreement: fanned_out.then(Agreement::default),
            notes: Vec::new(),
            seen_unreadable: false,
            seen_unreachable: false,
        }
    }

    fn absorb(&mut self, event: Event) -> Result<()> {
        let (submission, due) = match event {
            Event::Answered { submission, due } => (submission, due),
            Event::Dropped => {
                self.tally.dropped();
                return Ok(());
            }
            Event::Failed(err) => return Err(err.context("preparing a buyer")),
        };
        let submission = *submission;
        self.tally
            .retries(submission.backpressure_retries, submission.network_retries);
        // Open mode measures from the scheduled send time.
        let measured = |latency: Duration, received_at: Instant| {
            due.map_or(latency, |due| received_at.saturating_duration_since(due))
        };
        let request = submission.request;
        if let (Some(agreement), Some(fanout)) = (&mut self.agreement, &submission.fanout) {
            agreement.record(&request.customer_id, fanout);
        }
        match submission.answer {
            Answer::Accepted {
                order,
                replayed,
                latency,
                sent_at,
                received_at,
            } => {
                let latency = measured(latency, received_at);
                self.tally.accepted(replayed, latency);
                *self.accepted_buyers.entry(request.product_id).or_default() += 1;
                let new = self.accepted.insert(order.id, request.product_id).is_none();
                if self.synchronous {
                    if order.status == OrderStatus::Rejected
                        && order.reason.as_deref().is_some_and(is_stock_reason)
                    {
                        self.tally.sold_out_in_answer(latency);
                    }
                    self.decisions
                        .record_synchronous(order, latency, received_at);
                } else if new {
                    if let Some(tx) = &self.accepted_tx {
                        // A send only fails if the poller is gone, and then
                        // its error is reported when it is joined.
                        let _ = tx.send(Accepted {
                            order_id: order.id,
                            token: Arc::clone(&request.token),
                            accepted_at: received_at,
                            sent_at: due.unwrap_or(sent_at),
                            api: submission.api,
                        });
                    }
                }
            }
            Answer::Refused {
                status,
                code,
                latency,
                received_at,
            } => self
                .tally
                .refused(status, code.as_deref(), measured(latency, received_at)),
            Answer::Unreadable { status, error } => {
                if !self.seen_unreadable {
                    self.seen_unreadable = true;
                    self.notes.push(format!(
                        "first unreadable {status} answer to {}: {error}",
                        request.customer_id
                    ));
                }
                self.tally.unreadable();
            }
            Answer::Unreachable { kind, error } => {
                if !self.seen_unreachable {
                    self.seen_unreachable = true;
                    self.notes.push(format!(
                        "first buyer left without an answer ({kind}), {}: {error}",
                        request.customer_id
                    ));
                }
                self.tally.transport_failure(kind);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buyer_orders_the_same_product_index_in_every_run_of_the_plan() {
        for index in [0, 1, 7, 4_999, u32::MAX] {
            let first = product_index("9bfe8300", index, 100);
            assert!(first < 100);
            assert_eq!(product_index("9bfe8300", index, 100), first);
        }
        assert_eq!(product_index("9bfe8300", 3, 1), 0);
        assert_eq!(product_index("9bfe8300", 3, 0), 0);
        // Another run spreads its buyers differently.
        let picks = |run: &str| {
            (0..200)
                .map(|i| product_index(run, i, 100))
                .collect::<Vec<_>>()
        };
        assert_ne!(picks("9bfe8300"), picks("9bfe8301"));
    }

    #[test]
    fn buyers_spread_uniformly_over_the_products() {
        let products = 100;
        let buyers = 100_000;
        let mut counts = vec![0_u32; products];
        for index in 0..buyers {
            counts[product_index("ab12cd34", index, products)] += 1;
        }
        // 1,000 expected each; a uniform draw stays well within ±20%.
        let (min, max) = (
            counts.iter().copied().min().unwrap(),
            counts.iter().copied().max().unwrap(),
        );
        assert!(min > 800 && max < 1_200, "min {min}, max {max}");
        // Neighbouring buyers do not walk the products in order.
        let runs = (1..1_000)
            .filter(|&i| {
                product_index("ab12cd34", i, products)
                    == (product_index("ab12cd34", i - 1, products) + 1) % products
            })
            .count();
        assert!(
            runs < 50,
            "{runs} buyers followed their neighbour's product"
        );
    }
}
