//! The course every scenario follows, against checkline and (with
//! `--baseline`) against the row-locking baseline.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use uuid::Uuid;

use super::system::SystemUnderTest;
use super::{Harness, Verdict};
use crate::baseline::{self, BaselineServer};
use crate::checks::{self, Check, ClientView, DbWatchView, Expectation, ObservedDecision, System};
use crate::cli::{BaselineSettings, Connection, Mode, ScenarioKind, ScenarioSettings, Tracking};
use crate::client::ApiClient;
use crate::load::{self, PhaseOutcome, Plan};
use crate::report::{
    compare, per_second, render_comparison, seconds, summarize_decisions, ApiFigures, Goal,
    Latencies, ProductInfo, Report, RunConfig, SellOut, Throughput,
};
use crate::schedule;

/// `sold-out-storm` is measured against this many `409 sold_out` answers per
/// second.
pub const SOLD_OUT_GOAL_PER_SEC: f64 = 40_000.0;

pub async fn run(connection: &Connection, settings: ScenarioSettings) -> Result<Verdict> {
    if let Some(path) = &settings.load.json_out {
        // Fail before the load, not after it.
        std::fs::File::create(path)
            .with_context(|| format!("--json-out {} is not writable", path.display()))?;
    }
    let run_id = new_run_id();
    let harness = Harness::connect(
        connection,
        settings.load.http_pool_size(),
        settings.load.requests.request_timeout,
    )
    .await?;

    let checkline = SystemUnderTest::checkline(&harness, &settings);
    let (mut report, checks) = execute(&checkline, &settings, &run_id).await?;
    let checks = match checks {
        Ok(checks) => checks,
        Err(err) => {
            return Err(fail(
                &settings,
                &mut report,
                err.context("checking the invariants"),
            ))
        }
    };
    let mut verdict = Verdict::from_checks(&checks);
    report.passed = Some(verdict == Verdict::Passed);
    report.checks = checks;

    if let Some(baseline) = settings.baseline {
        match run_baseline(connection, &harness, &settings, baseline, &run_id).await {
            Ok(baseline_report) => {
                let rows = compare(&report, &baseline_report);
                println!("\n{}", render_comparison(&rows, Some(baseline.pool_size)));
                if baseline_report.passed != Some(true) {
                    verdict = Verdict::Failed;
                }
                report.comparison = Some(rows);
                report.baseline = Some(Box::new(baseline_report));
            }
            Err(err) => {
                return Err(fail(
                    &settings,
                    &mut report,
                    err.context("the baseline run"),
                ))
            }
        }
    }

    if let Some(path) = &settings.load.json_out {
        report.write_json(path)?;
    }
    Ok(verdict)
}

/// Records `err` in the report, writes it if asked, and hands `err` back.
fn fail(settings: &ScenarioSettings, report: &mut Report, err: anyhow::Error) -> anyhow::Error {
    report.error = Some(format!("{err:#}"));
    if let Some(path) = &settings.load.json_out {
        if let Err(write_err) = report.write_json(path) {
            eprintln!("checkline-loadtest: {write_err:#}");
        }
    }
    err
}

/// Starts the baseline, runs the same scenario against it, and stops it.
async fn run_baseline(
    connection: &Connection,
    harness: &Harness,
    settings: &ScenarioSettings,
    baseline: BaselineSettings,
    run_id: &str,
) -> Result<Report> {
    eprintln!(
        "\nstarting the baseline (row-locking, {} connections)",
        baseline.pool_size
    );
    let server = BaselineServer::start(
        &connection.database_url,
        baseline.pool_size,
        &connection.jwt_secret,
    )
    .await?;
    let client = ApiClient::new(
        std::slice::from_ref(server.url()),
        settings.load.mode.max_outstanding(),
        settings.load.requests.request_timeout,
    )?
    .synchronous_at(baseline::ORDERS_PATH);
    let system = SystemUnderTest::baseline(&server, client, Arc::clone(&harness.minter));
    let outcome = execute(&system, settings, run_id).await;
    let first_error = server.first_error();
    let stopped = server.stop().await;
    let (mut report, checks) = outcome?;
    stopped?;
    report.config.baseline_pool = Some(baseline.pool_size);
    if let Some(error) = first_error {
        report
            .notes
            .push(format!("first database error answered 503: {error}"));
    }
    let checks = checks.context("checking the baseline's invariants")?;
    report.passed = Some(checks::all_passed(&checks));
    report.checks = checks;
    Ok(report)
}

/// One system's run: products, (sell-out,) load, report, checks. The report
/// and checks are printed; a failure to gather the checks is returned
/// alongside the report so that the report can still be written.
async fn execute(
    system: &SystemUnderTest<'_>,
    settings: &ScenarioSettings,
    run_id: &str,
) -> Result<(Report, Result<Vec<Check>>)> {
    let products = system.create_products(settings, run_id).await?;
    let ids: Arc<[Uuid]> = products.iter().map(|product| product.id).collect();
    let load = &settings.load;
    let retry = load.requests.retry();

    // The baseline is one server: nothing to fan out to.
    let fan_out = load.same_key_to_every_api && system.kind() == System::Checkline;
    let mut phases = Vec::new();
    let mut sell_out = None;
    if settings.kind == ScenarioKind::SoldOutStorm && settings.stock > 0 {
        let orders = u32::try_from(settings.stock).context("stock out of range")?;
        eprintln!(
            "{} {}: selling out {} ({} units) first",
            system.kind().name(),
            settings.kind.name(),
            products[0].sku,
            settings.stock
        );
        let plan = Plan {
            run_id: format!("{run_id}s"),
            buyers: orders,
            quantity: 1,
            products: Arc::clone(&ids),
            mode: Mode::Closed {
                concurrency: sell_out_concurrency(load.mode, orders),
            },
            retry,
            decision_timeout: load.decision_timeout,
            same_key_to_every_api: fan_out,
        };
        let phase = load::run_phase(system.client(), &system.minter, &plan, &system.follow).await?;
        let stock_after = system.stock(ids[0]).await?;
        let summary = summarize_decisions(phase.accepted.keys(), &phase.decisions.orders);
        ensure!(
            stock_after == 0,
            "the sell-out did not sell {} out: stock {stock_after} after {} orders \
             ({} accepted, {} decided); the storm needs a sold-out product",
            products[0].sku,
            orders,
            summary.accepted_orders,
            summary.decided
        );
        sell_out = Some(SellOut {
            orders,
            accepted: summary.accepted_orders,
            decided: summary.decided,
            confirmed: summary.confirmed,
            secs: seconds(phase.total),
            stock_after,
        });
        phases.push(phase);
    }

    eprintln!(
        "{} {} run {run_id}: {} buyers, {} product(s) with {} units each, {}",
        system.kind().name(),
        settings.kind.name(),
        load.buyers,
        products.len(),
        settings.stock,
        match load.mode {
            Mode::Closed { concurrency } => format!("{concurrency} virtual users"),
            Mode::Open { rate, .. } => format!("{rate} orders/s"),
        }
    );
    let plan = Plan {
        run_id: run_id.to_owned(),
        buyers: load.buyers,
        quantity: load.quantity,
        products: Arc::clone(&ids),
        mode: load.mode,
        retry,
        decision_timeout: load.decision_timeout,
        same_key_to_every_api: fan_out,
    };
    let phase = load::run_phase(system.client(), &system.minter, &plan, &system.follow).await?;
    let report = build_report(system, settings, run_id, products.clone(), &phase, sell_out);
    println!("{}", report.render());
    for note in &report.notes {
        println!("note: {note}");
    }
    phases.push(phase);

    // An open loop behind its schedule may have opened thousands of order
    // connections; the checks must not find the API's connection limit
    // taken by idle ones.
    system.client().close_idle_order_connections();
    let checks = gather_checks(system, settings, &products, &phases).await;
    if let Ok(checks) = &checks {
        println!("\n{}", checks::render(checks));
    }
    Ok((report, checks))
}

/// Virtual users of the sell-out phase: the run's concurrency (256 in open
/// mode), but no more than there are orders.
fn sell_out_concurrency(mode: Mode, orders: u32) -> usize {
    let users = match mode {
        Mode::Closed { concurrency } => concurrency,
        Mode::Open { .. } => usize::try_from(crate::cli::DEFAULT_CONCURRENCY).unwrap_or(1),
    };
    users
        .min(usize::try_from(orders).unwrap_or(usize::MAX))
        .max(1)
}

fn build_report(
    system: &SystemUnderTest<'_>,
    settings: &ScenarioSettings,
    run_id: &str,
    products: Vec<ProductInfo>,
    phase: &PhaseOutcome,
    sell_out: Option<SellOut>,
) -> Report {
    let load = &settings.load;
    let mut responses = phase.tally.summary();
    responses.retries.failovers = phase.apis.iter().map(|api| api.failovers).sum();
    let client = system.client();
    let apis = client
        .base_urls()
        .zip(&phase.apis)
        .map(|(url, counts)| ApiFigures::new(url, *counts))
        .collect();
    let mut decisions = summarize_decisions(phase.accepted.keys(), &phase.decisions.orders);
    decisions.tracking = system.follow.tracking();
    decisions.poll_errors = phase.decisions.poll_errors.clone();
    decisions.abandoned_polls = phase.decisions.abandoned;
    decisions.poll_failovers = phase.decisions.failovers;
    decisions.timed_out = phase.decisions.timed_out;
    let throughput = Throughput {
        answered_per_sec: per_second(responses.answered, phase.submission),
        accepted_per_sec: per_second(responses.accepted, phase.submission),
        decided_per_sec: per_second(decisions.decided, phase.deciding),
        sold_out_per_sec: per_second(
            responses.sold_out + responses.sold_out_in_answer,
            phase.submission,
        ),
    };
    let goal = (settings.kind == ScenarioKind::SoldOutStorm && system.kind() == System::Checkline)
        .then(|| {
            Goal::new(
                "sold_out_per_sec",
                SOLD_OUT_GOAL_PER_SEC,
                throughput.sold_out_per_sec,
            )
        });
    let (concurrency, rate, schedule_secs, max_in_flight) = match load.mode {
        Mode::Closed { concurrency } => (Some(concurrency), None, None, None),
        Mode::Open {
            rate,
            max_in_flight,
        } => (
            None,
            Some(rate),
            Some(seconds(schedule::schedule_length(
                u64::from(load.buyers),
                rate,
            ))),
            Some(max_in_flight),
        ),
    };
    Report {
        scenario: settings.kind,
        system: system.kind(),
        run_id: run_id.to_owned(),
        started_at: phase.started_at,
        api_url: client.joined_base_urls(),
        apis,
        agreement: phase.agreement.clone(),
        product: match products.as_slice() {
            [only] => Some(only.clone()),
            _ => None,
        },
        products,
        config: RunConfig {
            mode: load.mode.kind(),
            concurrency,
            rate,
            schedule_secs,
            max_in_flight,
            buyers: load.buyers,
            products: settings.products,
            stock: settings.stock,
            quantity: load.quantity,
            max_per_customer: settings.max_per_customer,
            decisions: system.follow.tracking(),
            poll_concurrency: load.poll_concurrency,
            max_attempts: load.requests.max_attempts,
            decision_timeout_secs: load.decision_timeout.as_secs(),
            request_timeout_secs: load.requests.request_timeout.as_secs(),
            baseline_pool: None,
            same_key_to_every_api: phase.agreement.is_some(),
        },
        duration_secs: seconds(phase.total),
        submission_secs: seconds(phase.submission),
        sell_out,
        responses,
        throughput,
        goal,
        decisions,
        latency_ms: Latencies {
            accept: phase.tally.accept_latency.summary(),
            sold_out: phase.tally.sold_out_latency.summary(),
            decision_observed: phase.decisions.observed.summary(),
            decision_server: phase.decisions.server.summary(),
            order_to_decision: phase.decisions.end_to_end.summary(),
        },
        checks: Vec::new(),
        passed: None,
        error: None,
        notes: phase.notes.clone(),
        baseline: None,
        comparison: None,
    }
}

/// Evaluates the checks of every product over every phase's orders; several
/// products are folded into one line per check.
async fn gather_checks(
    system: &SystemUnderTest<'_>,
    settings: &ScenarioSettings,
    products: &[ProductInfo],
    phases: &[PhaseOutcome],
) -> Result<Vec<Check>> {
    let mut accepted: HashMap<Uuid, BTreeSet<Uuid>> = HashMap::new();
    let mut buyers: HashMap<Uuid, u64> = HashMap::new();
    let mut observed: HashMap<Uuid, ObservedDecision> = HashMap::new();
    for phase in phases {
        for (order, product) in &phase.accepted {
            accepted.entry(*product).or_default().insert(*order);
        }
        for (product, n) in &phase.accepted_buyers {
            *buyers.entry(*product).or_default() += n;
        }
        if system.follow.tracking() != Tracking::Db {
            for (id, order) in &phase.decisions.orders {
                observed.insert(
                    *id,
                    ObservedDecision {
                        status: order.status,
                        reason: order.reason.clone(),
                    },
                );
            }
        }
    }
    let db_watch = db_watch_view(system, settings, phases);
    // The storm's only stock-taking orders are the sell-out's, of quantity 1.
    let quantity = match settings.kind {
        ScenarioKind::SoldOutStorm => 1,
        _ => i64::from(settings.load.quantity),
    };

    let mut per_product = Vec::with_capacity(products.len());
    for product in products {
        let ids = accepted.remove(&product.id).unwrap_or_default();
        let decisions = ids
            .iter()
            .filter_map(|id| observed.get(id).map(|seen| (*id, seen.clone())))
            .collect();
        let client = ClientView {
            accepted: ids,
            accepted_buyers: buyers.get(&product.id).copied().unwrap_or(0),
            decisions,
            db_watch,
            api_stock: 0,
        };
        let expect = Expectation {
            system: System::Checkline,
            initial_stock: i64::try_from(settings.stock).unwrap_or(i64::MAX),
            quantity,
            max_per_customer: settings.max_per_customer.map(i64::from),
        };
        let checks = system
            .product_checks(product.id, expect, client)
            .await
            .with_context(|| format!("product {}", product.sku))?;
        per_product.push((product.sku.clone(), checks));
    }
    let mut checks = match per_product.as_slice() {
        [(_, checks)] => checks.clone(),
        _ => checks::aggregate(&per_product),
    };
    let mut fanned_out = phases.iter().filter_map(|phase| phase.agreement.as_ref());
    if let Some(first) = fanned_out.next() {
        let mut agreement = first.clone();
        for other in fanned_out {
            agreement.merge(other);
        }
        // Beside the other checks of invariant 2.
        let at = checks
            .iter()
            .rposition(|check| check.invariant <= 2)
            .map_or(0, |last| last + 1);
        checks.insert(at, checks::agreement_check(&agreement));
    }
    Ok(checks)
}

/// `--decisions db`: how the waits for the decisions ended, across phases.
fn db_watch_view(
    system: &SystemUnderTest<'_>,
    settings: &ScenarioSettings,
    phases: &[PhaseOutcome],
) -> Option<DbWatchView> {
    if system.follow.tracking() != Tracking::Db {
        return None;
    }
    let watches: Vec<_> = phases
        .iter()
        .filter_map(|phase| phase.decisions.database)
        .collect();
    Some(DbWatchView {
        drained: watches.iter().all(|watch| watch.drained),
        pending: watches.iter().map(|watch| watch.pending).sum(),
        waited_secs: watches.iter().map(|watch| watch.waited.as_secs_f64()).sum(),
        timeout_secs: settings.load.decision_timeout.as_secs(),
    })
}

/// A short random run id (8 hex digits): names the buyers and the SKUs.
pub(super) fn new_run_id() -> String {
    let mut id = Uuid::new_v4().simple().to_string();
    id.truncate(8);
    id
}
