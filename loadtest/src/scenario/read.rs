//! The `read` scenario's course: create the product (stock that outlasts
//! the run) and enough others to fill its list page, find that page,
//! compare clocks with PostgreSQL, then for `--duration-secs` let the
//! readers read while the open loop orders; wait for every accepted order's
//! decision, rebuild the product's stock timeline from PostgreSQL, judge
//! every read against the freshness bound, check invariants 1-5 on the
//! product, report.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use chrono::{SecondsFormat, Utc};
use futures::{stream, StreamExt, TryStreamExt};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::system::{SystemUnderTest, Target, PRICE_CENTS};
use super::{Harness, Verdict};
use crate::checks::{self, Check, ClientView, DbWatchView, Expectation, ObservedDecision, System};
use crate::cli::{Connection, Mode, ReadSettings, ScenarioKind, Tracking};
use crate::client::NewProduct;
use crate::load::{self, Follow, PhaseOutcome, Plan};
use crate::read::db::{fetch_history, measure_clock_skew};
use crate::read::report::{read_figures, ClockFigures, OrderFigures, ReadReport};
use crate::read::timeline::{self, Timeline};
use crate::read::{self, ReadTarget, ReaderOutcome, LIST_LIMIT};
use crate::report::{per_second, seconds, summarize_decisions, ProductInfo};
use crate::schedule;

/// Product creations in flight at once.
const CREATE_CONCURRENCY: usize = 8;
/// Stock of each product created beside the one read.
const OTHER_STOCK: u64 = 1;

pub async fn run(connection: &Connection, settings: ReadSettings) -> Result<Verdict> {
    if let Some(path) = &settings.json_out {
        std::fs::File::create(path)
            .with_context(|| format!("--json-out {} is not writable", path.display()))?;
    }
    let run_id = super::runner::new_run_id();
    let harness = Harness::connect(
        connection,
        settings.http_pool_size(),
        settings.requests.request_timeout,
    )
    .await?;
    let (product, others) = create_products(&harness, &settings, &run_id).await?;
    let page_cursor = if settings.readers > 0 {
        read::locate_page(&harness.client, product.id).await?
    } else {
        None
    };
    let clock_start = measure_clock_skew(&harness.pool).await?;
    eprintln!(
        "read run {run_id}: {} readers, {}, {} s; product {} with {} units",
        settings.readers,
        settings
            .order_rate
            .map_or_else(|| "no orders".to_owned(), |rate| format!("{rate} orders/s")),
        settings.duration.as_secs(),
        product.sku,
        settings.stock
    );

    let started_at = Utc::now();
    let released = Instant::now();
    let target = ReadTarget {
        product: product.id,
        page_cursor: page_cursor.clone(),
    };
    let readers = release_readers(&harness, &settings, target, released);
    let orders = run_orders(&harness, &settings, &run_id, product.id);
    let (readers, orders) = tokio::join!(readers, orders);
    let (readers, reading) = readers?;
    let phase = orders?;
    eprintln!(
        "  {} reads in {:.3} s",
        readers.iter().map(|r| r.records.len()).sum::<usize>(),
        reading.as_secs_f64()
    );

    let clock_end = measure_clock_skew(&harness.pool).await?;
    let clock = clock_start.wider(clock_end);
    let eps_us = clock.eps_us();
    let mut notes = Vec::new();
    if let Some(error) = readers.iter().find_map(|r| r.first_error.as_ref()) {
        notes.push(format!("first read left without an answer: {error}"));
    }
    if let Some(phase) = &phase {
        notes.extend(phase.notes.iter().cloned());
    }
    let freshness = if settings.readers > 0 {
        let history = fetch_history(&harness.pool, product.id).await?;
        let timeline = Timeline::new(history.initial_stock, history.changes);
        let bound_us = i64::try_from(settings.fresh.as_micros()).unwrap_or(i64::MAX);
        Some(timeline::evaluate(
            &timeline,
            history.stock,
            readers.iter().flat_map(|reader| &reader.records),
            bound_us,
            eps_us,
        ))
    } else {
        None
    };
    let mut report = ReadReport {
        scenario: ScenarioKind::Read,
        run_id: run_id.clone(),
        started_at,
        api_url: harness.client.joined_base_urls(),
        product: product.clone(),
        other_products: u32::try_from(others).unwrap_or(u32::MAX),
        page_cursor,
        config: settings.clone(),
        duration_secs: seconds(
            phase
                .as_ref()
                .map_or(reading, |phase| reading.max(phase.submission)),
        ),
        reading_secs: seconds(reading),
        reads: read_figures(&readers, reading),
        orders: phase.as_ref().map(|phase| order_figures(&settings, phase)),
        clock: ClockFigures {
            start: clock_start,
            end: Some(clock_end),
            eps_ms: eps_us as f64 / 1000.0,
        },
        freshness,
        checks: Vec::new(),
        passed: None,
        error: None,
        notes,
    };
    // The readers' records are judged; the memory can go.
    drop(readers);
    println!("{}", report.render());
    for note in &report.notes {
        println!("note: {note}");
    }

    harness.client.close_idle_order_connections();
    let mut checks = match product_checks(&harness, &settings, &product, phase.as_ref()).await {
        Ok(checks) => checks,
        Err(err) => {
            report.error = Some(format!("{err:#}"));
            if let Some(path) = &settings.json_out {
                report.write_json(path)?;
            }
            return Err(err.context("checking the invariants"));
        }
    };
    if let Some(freshness) = &report.freshness {
        checks.push(timeline::freshness_check(freshness));
    }
    println!("\n{}", checks::render(&checks));
    let verdict = Verdict::from_checks(&checks);
    report.passed = Some(verdict == Verdict::Passed);
    report.checks = checks;
    if let Some(path) = &settings.json_out {
        report.write_json(path)?;
    }
    Ok(verdict)
}

/// Creates `LOAD-<RUN>`, the product read and ordered, then `LOAD-<RUN>-<i>`
/// for the rest of its list page (created after it, so they follow it in
/// the list's id order).
async fn create_products(
    harness: &Harness,
    settings: &ReadSettings,
    run_id: &str,
) -> Result<(ProductInfo, usize)> {
    let name = format!(
        "read {}",
        Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
    );
    let run = run_id.to_uppercase();
    let body = |sku: String, stock: u64| NewProduct {
        sku,
        name: name.clone(),
        price_cents: PRICE_CENTS,
        stock,
        max_per_customer: None,
    };
    let created = harness
        .create_product(&body(format!("LOAD-{run}"), settings.stock))
        .await?;
    ensure!(
        u64::try_from(created.stock).ok() == Some(settings.stock),
        "the API created product {} with stock {}, not the requested {}",
        created.id,
        created.stock,
        settings.stock
    );
    let product = ProductInfo {
        id: created.id,
        sku: created.sku,
        partition: Some(created.partition),
        initial_stock: created.stock,
    };
    let others = LIST_LIMIT - 1;
    stream::iter(0..others)
        .map(|index| {
            let new = body(format!("LOAD-{run}-{index}"), OTHER_STOCK);
            async move { harness.create_product(&new).await }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok((product, usize::try_from(others).unwrap_or(0)))
}

/// The readers, spread over the APIs, reading until `released` + the
/// run's duration; what each did, and the span from the release to the
/// last one done.
async fn release_readers(
    harness: &Harness,
    settings: &ReadSettings,
    target: ReadTarget,
    released: Instant,
) -> Result<(Vec<ReaderOutcome>, Duration)> {
    let deadline = released + settings.duration;
    let mut readers = JoinSet::new();
    for index in 0..settings.readers {
        let api = harness
            .client
            .home(u32::try_from(index).unwrap_or(u32::MAX));
        // Half the readers start with the product, half with the page.
        readers.spawn(read::read_until(
            harness.client.clone(),
            api,
            target.clone(),
            deadline,
            index % 2 == 0,
        ));
    }
    let mut outcomes = Vec::with_capacity(settings.readers);
    while let Some(done) = readers.join_next().await {
        outcomes.push(done.context("a reader failed")?);
    }
    Ok((outcomes, released.elapsed()))
}

/// The open-loop orders on the product (none with `--reads-only`), their
/// decisions awaited.
async fn run_orders(
    harness: &Harness,
    settings: &ReadSettings,
    run_id: &str,
    product: Uuid,
) -> Result<Option<PhaseOutcome>> {
    let Some(rate) = settings.order_rate else {
        return Ok(None);
    };
    let plan = Plan {
        run_id: run_id.to_owned(),
        buyers: settings.orders,
        quantity: 1,
        products: Arc::from([product]),
        mode: Mode::Open {
            rate,
            max_in_flight: settings.max_in_flight,
        },
        retry: settings.requests.retry(),
        decision_timeout: settings.decision_timeout,
        same_key_to_every_api: false,
    };
    let follow = follow(harness, settings);
    load::run_phase(&harness.client, &harness.minter, &plan, &follow)
        .await
        .map(Some)
}

fn follow(harness: &Harness, settings: &ReadSettings) -> Follow {
    match settings.decisions {
        Tracking::Poll => Follow::Poll {
            concurrency: settings.poll_concurrency,
        },
        Tracking::Db | Tracking::Synchronous => Follow::Db {
            pool: harness.pool.clone(),
        },
    }
}

fn order_figures(settings: &ReadSettings, phase: &PhaseOutcome) -> OrderFigures {
    let responses = phase.tally.summary();
    let mut decisions = summarize_decisions(phase.accepted.keys(), &phase.decisions.orders);
    decisions.tracking = settings.decisions;
    decisions.timed_out = phase.decisions.timed_out;
    let rate = settings.order_rate.unwrap_or(1);
    let schedule = schedule::schedule_length(u64::from(settings.orders), rate);
    OrderFigures {
        offered: settings.orders,
        offered_per_sec: per_second(u64::from(settings.orders), schedule),
        submission_secs: seconds(phase.submission),
        accepted_per_sec: per_second(responses.accepted, phase.submission),
        responses,
        decisions,
        accept_latency_ms: phase.tally.accept_latency.summary(),
    }
}

/// Invariants 1-5 on the product, over the run's orders (none with
/// `--reads-only`).
async fn product_checks(
    harness: &Harness,
    settings: &ReadSettings,
    product: &ProductInfo,
    phase: Option<&PhaseOutcome>,
) -> Result<Vec<Check>> {
    let system = SystemUnderTest {
        target: Target::Checkline(harness),
        minter: Arc::clone(&harness.minter),
        follow: follow(harness, settings),
    };
    let mut client = ClientView::default();
    if let Some(phase) = phase {
        client.accepted = phase.accepted.keys().copied().collect::<BTreeSet<_>>();
        client.accepted_buyers = phase.accepted_buyers.values().sum();
        match settings.decisions {
            Tracking::Db | Tracking::Synchronous => {
                client.db_watch = phase.decisions.database.map(|watch| DbWatchView {
                    drained: watch.drained,
                    pending: watch.pending,
                    waited_secs: watch.waited.as_secs_f64(),
                    timeout_secs: settings.decision_timeout.as_secs(),
                });
            }
            Tracking::Poll => {
                client.decisions = phase
                    .decisions
                    .orders
                    .iter()
                    .map(|(id, order)| {
                        (
                            *id,
                            ObservedDecision {
                                status: order.status,
                                reason: order.reason.clone(),
                            },
                        )
                    })
                    .collect();
            }
        }
    } else if settings.decisions != Tracking::Poll {
        // No orders: nothing was waited for, and nothing is pending.
        client.db_watch = Some(DbWatchView {
            drained: true,
            pending: 0,
            waited_secs: 0.0,
            timeout_secs: settings.decision_timeout.as_secs(),
        });
    }
    let expect = Expectation {
        system: System::Checkline,
        initial_stock: product.initial_stock,
        quantity: 1,
        max_per_customer: None,
    };
    system
        .product_checks(product.id, expect, client)
        .await
        .with_context(|| format!("product {}", product.sku))
}
