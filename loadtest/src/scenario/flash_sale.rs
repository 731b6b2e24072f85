//! The flash sale: a fresh product with `stock` units, `buyers` distinct
//! customers each ordering `quantity` at once (at most `concurrency` in
//! flight), every accepted order followed to its decision, then the
//! invariants checked.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use chrono::{SecondsFormat, Utc};
use futures::{stream, StreamExt};
use reqwest::StatusCode;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Harness, Verdict};
use crate::auth::buyer_subject;
use crate::buyer::{self, Answer, OrderRequest, RetryPolicy};
use crate::checks::{self, ClientView, Expectation, ObservedDecision};
use crate::cli::{Connection, FlashSaleSettings};
use crate::client::{NewProduct, Product};
use crate::db;
use crate::decisions::{self, Accepted, Decisions};
use crate::report::{
    per_second, seconds, summarize_decisions, Latencies, ProductInfo, Report, ResponseTally,
    SaleConfig, Throughput,
};

const SCENARIO: &str = "flash-sale";
const PRICE_CENTS: i64 = 1000;

/// What the load phase produced.
struct Load {
    started_at: chrono::DateTime<Utc>,
    tally: ResponseTally,
    /// Distinct accepted order ids.
    accepted: BTreeSet<Uuid>,
    decisions: Decisions,
    submission: Duration,
    total: Duration,
    /// Time from the release of the buyers to the last decision observed.
    deciding: Duration,
    notes: Vec<String>,
}

pub async fn run(connection: &Connection, settings: FlashSaleSettings) -> Result<Verdict> {
    if let Some(path) = &settings.json_out {
        // Fail before the load, not after it.
        std::fs::File::create(path)
            .with_context(|| format!("--json-out {} is not writable", path.display()))?;
    }
    let run_id = new_run_id();
    let harness = Harness::connect(
        connection,
        settings.concurrency + settings.poll_concurrency,
        settings.request_timeout,
    )
    .await?;

    let product = harness
        .create_product(&NewProduct {
            sku: format!("LOAD-{}", run_id.to_uppercase()),
            name: format!(
                "Flash sale {}",
                Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
            price_cents: PRICE_CENTS,
            stock: settings.stock,
            max_per_customer: settings.max_per_customer,
        })
        .await?;
    ensure!(
        u64::try_from(product.stock).ok() == Some(settings.stock)
            && product.max_per_customer == settings.max_per_customer.map(i64::from),
        "the API created product {} with stock {} and max_per_customer {:?}, \
         not the requested {} and {:?}",
        product.id,
        product.stock,
        product.max_per_customer,
        settings.stock,
        settings.max_per_customer
    );
    eprintln!(
        "run {run_id}: {} buyers for {} units of {} ({}), {} in flight",
        settings.buyers, settings.stock, product.sku, product.id, settings.concurrency
    );

    let load = drive(&harness, &settings, &product, &run_id).await?;
    let mut report = build_report(&run_id, &harness, &settings, &product, &load);
    println!("{}", report.render());
    for note in &report.notes {
        println!("note: {note}");
    }

    match check(&harness, &settings, &product, &load).await {
        Ok(checks) => {
            println!("\n{}", checks::render(&checks));
            let verdict = Verdict::from_checks(&checks);
            report.passed = Some(verdict == Verdict::Passed);
            report.checks = checks;
            if let Some(path) = &settings.json_out {
                report.write_json(path)?;
            }
            Ok(verdict)
        }
        Err(err) => {
            let err = err.context("checking the invariants");
            report.error = Some(format!("{err:#}"));
            if let Some(path) = &settings.json_out {
                if let Err(write_err) = report.write_json(path) {
                    eprintln!("checkline-loadtest: {write_err:#}");
                }
            }
            Err(err)
        }
    }
}

/// A short random run id (8 hex digits): names the buyers and the SKU.
fn new_run_id() -> String {
    let mut id = Uuid::new_v4().simple().to_string();
    id.truncate(8);
    id
}

/// Releases the buyers and follows their orders to a decision.
async fn drive(
    harness: &Harness,
    settings: &FlashSaleSettings,
    product: &Product,
    run_id: &str,
) -> Result<Load> {
    let client = &harness.client;
    let (accepted_tx, accepted_rx) = mpsc::unbounded_channel();
    let poller = tokio::spawn(decisions::run(
        client.clone(),
        accepted_rx,
        settings.poll_concurrency,
        settings.decision_timeout,
    ));
    let policy = RetryPolicy {
        max_attempts: settings.max_attempts,
        max_retry_after: settings.max_retry_after,
    };

    let started_at = Utc::now();
    let released = Instant::now();
    let mut submissions = stream::iter(0..settings.buyers)
        .map(|index| {
            let customer = buyer_subject(run_id, index);
            let spawned = harness.minter.customer(&customer).map(|token| {
                let request = OrderRequest::new(customer, token, product.id, settings.quantity);
                tokio::spawn(buyer::submit(client.clone(), request, policy))
            });
            async move { spawned?.await.context("a buyer task failed") }
        })
        .buffer_unordered(settings.concurrency);

    let mut tally = ResponseTally::default();
    let mut accepted = BTreeSet::new();
    let mut notes = Vec::new();
    let (mut seen_unreadable, mut seen_unreachable) = (false, false);
    while let Some(submission) = submissions.next().await {
        let submission = submission?;
        tally.retries(submission.backpressure_retries, submission.network_retries);
        match submission.answer {
            Answer::Accepted {
                order,
                replayed,
                latency,
                received_at,
            } => {
                tally.accepted(replayed, latency);
                if accepted.insert(order.id) {
                    // A send only fails if the poller is gone, and then its
                    // error is reported when it is joined below.
                    let _ = accepted_tx.send(Accepted {
                        order_id: order.id,
                        token: submission.request.token.clone(),
                        accepted_at: received_at,
                    });
                }
            }
            Answer::Refused {
                status,
                code,
                latency,
            } => tally.refused(status, code.as_deref(), latency),
            Answer::Unreadable { status, error } => {
                if !seen_unreadable {
                    seen_unreadable = true;
                    notes.push(format!(
                        "first unreadable {status} answer to {}: {error}",
                        submission.request.customer_id
                    ));
                }
                tally.unreadable();
            }
            Answer::Unreachable { kind, error } => {
                if !seen_unreachable {
                    seen_unreachable = true;
                    notes.push(format!(
                        "first buyer left without an answer ({kind}), {}: {error}",
                        submission.request.customer_id
                    ));
                }
                tally.transport_failure(kind);
            }
        }
    }
    let submission = released.elapsed();
    drop(accepted_tx);
    eprintln!(
        "all {} buyers answered in {:.3} s ({} accepted); waiting up to {} s for decisions",
        settings.buyers,
        submission.as_secs_f64(),
        accepted.len(),
        settings.decision_timeout.as_secs()
    );

    let decisions = poller.await.context("the decision poller failed")??;
    let total = released.elapsed();
    let deciding = decisions.last_decision_at.map_or(Duration::ZERO, |last| {
        last.saturating_duration_since(released)
    });
    Ok(Load {
        started_at,
        tally,
        accepted,
        decisions,
        submission,
        total,
        deciding,
        notes,
    })
}

fn build_report(
    run_id: &str,
    harness: &Harness,
    settings: &FlashSaleSettings,
    product: &Product,
    load: &Load,
) -> Report {
    let responses = load.tally.summary();
    let mut decisions = summarize_decisions(&load.accepted, &load.decisions.orders);
    decisions.poll_errors = load.decisions.poll_errors.clone();
    decisions.abandoned_polls = load.decisions.abandoned;
    decisions.timed_out = load.decisions.timed_out;
    Report {
        scenario: SCENARIO,
        run_id: run_id.to_owned(),
        started_at: load.started_at,
        api_url: harness.client.base_url().to_owned(),
        product: ProductInfo {
            id: product.id,
            sku: product.sku.clone(),
            partition: product.partition,
            initial_stock: product.stock,
        },
        config: SaleConfig {
            buyers: settings.buyers,
            stock: settings.stock,
            quantity: settings.quantity,
            max_per_customer: settings.max_per_customer,
            concurrency: settings.concurrency,
            poll_concurrency: settings.poll_concurrency,
            max_attempts: settings.max_attempts,
            decision_timeout_secs: settings.decision_timeout.as_secs(),
        },
        duration_secs: seconds(load.total),
        submission_secs: seconds(load.submission),
        throughput: Throughput {
            accepted_per_sec: per_second(responses.accepted, load.submission),
            decided_per_sec: per_second(decisions.decided, load.deciding),
        },
        responses,
        decisions,
        latency_ms: Latencies {
            accept: load.tally.accept_latency.summary(),
            sold_out: load.tally.sold_out_latency.summary(),
            decision_observed: load.decisions.observed.summary(),
            decision_server: load.decisions.server.summary(),
        },
        checks: Vec::new(),
        passed: None,
        error: None,
        notes: load.notes.clone(),
    }
}

/// Gathers the API's and the database's figures and evaluates the checks.
async fn check(
    harness: &Harness,
    settings: &FlashSaleSettings,
    product: &Product,
    load: &Load,
) -> Result<Vec<checks::Check>> {
    let reply = harness
        .client
        .get_product(product.id)
        .await
        .with_context(|| format!("GET /v1/products/{}", product.id))?;
    ensure!(
        reply.status == StatusCode::OK,
        "GET /v1/products/{} answered {}",
        product.id,
        reply.describe_with_body()
    );
    let api_product: Product = reply.json()?;
    let db = db::fetch_view(&harness.pool, product.id).await?;

    let client = ClientView {
        accepted: load.accepted.clone(),
        accepted_buyers: load.tally.accepted_count(),
        decisions: load
            .decisions
            .orders
            .iter()
            .map(|(id, order)| {
                (
                    *id,
                    ObservedDecision {
                        status: order.status.as_str().to_owned(),
                        reason: order.reason.clone(),
                    },
                )
            })
            .collect(),
        api_stock: api_product.stock,
    };
    let expect = Expectation {
        initial_stock: i64::try_from(settings.stock).unwrap_or(i64::MAX),
        quantity: i64::from(settings.quantity),
        max_per_customer: settings.max_per_customer.map(i64::from),
    };
    Ok(checks::evaluate(&expect, &client, &db))
}
