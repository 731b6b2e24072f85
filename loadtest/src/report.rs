//! The run report: tallies built while the load runs, the JSON document and
//! the human-readable table.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::checks::{Agreement, Check, System};
use crate::cli::{ModeKind, ScenarioKind, Tracking};
use crate::client::{ApiCounts, Order, OrderStatus};
use crate::latency::{LatencyRecorder, LatencySummary};

/// The whole report; serialised as-is for `--json-out`. With `--baseline`,
/// the baseline's report is nested under `baseline` (same shape) and the
/// side-by-side figures are in `comparison`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: ScenarioKind,
    /// `checkline`, or `baseline` for the row-locking comparison.
    pub system: System,
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    /// Base URL the orders were sent to; several APIs are joined by commas,
    /// as `--api-url` takes them.
    pub api_url: String,
    /// Every API, in `--api-url` order, with the order attempts it got.
    pub apis: Vec<ApiFigures>,
    /// `--same-key-to-every-api`: how the APIs' answers to the same first
    /// attempt compared.
    pub agreement: Option<Agreement>,
    /// The product under load; `null` when there are several.
    pub product: Option<ProductInfo>,
    /// Every product created for the run.
    pub products: Vec<ProductInfo>,
    pub config: RunConfig,
    /// From releasing the first buyer to the last decision learnt (or the
    /// decision timeout).
    pub duration_secs: f64,
    /// From releasing the first buyer to the last buyer's final answer.
    pub submission_secs: f64,
    /// `sold-out-storm`: the phase that sold the product out first.
    pub sell_out: Option<SellOut>,
    pub responses: Responses,
    pub throughput: Throughput,
    /// A figure the scenario is measured against (`sold-out-storm`).
    pub goal: Option<Goal>,
    pub decisions: DecisionSummary,
    pub latency_ms: Latencies,
    pub checks: Vec<Check>,
    /// `true` when every check passed; `null` when the checks could not run.
    pub passed: Option<bool>,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
    /// Diagnostics worth a look (first transport error, and the like).
    pub notes: Vec<String>,
    /// `--baseline`: the same load against the row-locking implementation.
    pub baseline: Option<Box<Report>>,
    /// `--baseline`: checkline and baseline figures side by side.
    pub comparison: Option<Vec<ComparisonRow>>,
}

/// One API's order attempts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApiFigures {
    pub url: String,
    /// Order requests sent to it (retries and fanned-out attempts included).
    pub attempts: u64,
    /// Of those, answered 2xx with an order (accepted, or replayed).
    pub accepted: u64,
    /// Of those, left without an HTTP answer.
    pub no_answer: u64,
    /// Attempts that got no answer here and were sent again to another API.
    pub failed_over: u64,
}

impl ApiFigures {
    pub fn new(url: &str, counts: ApiCounts) -> Self {
        Self {
            url: url.to_owned(),
            attempts: counts.attempts,
            accepted: counts.accepted,
            no_answer: counts.no_answer,
            failed_over: counts.failovers,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProductInfo {
    pub id: Uuid,
    pub sku: String,
    /// Queue partition (checkline); `null` for the baseline.
    pub partition: Option<i64>,
    pub initial_stock: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// `closed` or `open`.
    pub mode: ModeKind,
    /// Closed mode: virtual users.
    pub concurrency: Option<usize>,
    /// Open mode: orders started per second.
    pub rate: Option<u32>,
    /// Open mode: length of the arrival schedule (buyers / rate).
    pub schedule_secs: Option<f64>,
    /// Open mode: cap on outstanding submissions.
    pub max_in_flight: Option<usize>,
    pub buyers: u32,
    pub products: u32,
    /// Initial stock of each product.
    pub stock: u64,
    pub quantity: u32,
    pub max_per_customer: Option<u32>,
    /// `poll`, `db`, or `synchronous` (the baseline).
    pub decisions: Tracking,
    pub poll_concurrency: usize,
    pub max_attempts: u32,
    pub decision_timeout_secs: u64,
    pub request_timeout_secs: u64,
    /// The baseline's PostgreSQL pool size (baseline reports only).
    pub baseline_pool: Option<u32>,
    /// `--same-key-to-every-api`.
    pub same_key_to_every_api: bool,
}

/// `sold-out-storm`: the orders that sold the product out before the storm.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SellOut {
    pub orders: u32,
    pub accepted: u64,
    pub decided: u64,
    pub confirmed: u64,
    pub secs: f64,
    /// Stock once their decisions were in: 0 when sold out.
    pub stock_after: i64,
}

/// A throughput figure the scenario is measured against.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Goal {
    /// The `throughput` field it applies to.
    pub figure: &'static str,
    pub target: f64,
    pub achieved: f64,
    pub reached: bool,
}

impl Goal {
    pub fn new(figure: &'static str, target: f64, achieved: f64) -> Self {
        Self {
            figure,
            target,
            achieved,
            reached: achieved >= target,
        }
    }

    /// Achieved as a percentage of the target, to 0.1.
    pub fn percent(&self) -> f64 {
        if self.target <= 0.0 {
            return 100.0;
        }
        (self.achieved / self.target * 1000.0).round() / 10.0
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Responses {
    /// Buyers who got a final HTTP answer (of any kind).
    pub answered: u64,
    /// Buyers whose order was accepted (`202`, or a `200` replay); for the
    /// baseline, answered `200` with the order and its decision.
    pub accepted: u64,
    /// Of those, how many got the `200` replay of an earlier attempt.
    pub replayed: u64,
    /// Buyers answered `409 sold_out` at once.
    pub sold_out: u64,
    /// Baseline: accepted answers whose decision was a stock rejection (the
    /// synchronous equivalent of `409 sold_out`). Always 0 for checkline.
    pub sold_out_in_answer: u64,
    /// Every other final HTTP answer, by status and problem code.
    pub other: Vec<StatusCount>,
    /// 2xx answers whose body was not an order.
    pub unreadable: u64,
    /// Buyers left without any HTTP answer, by transport error kind.
    pub transport_failures: BTreeMap<String, u64>,
    /// Open mode: buyers not sent because `max_in_flight` submissions were
    /// outstanding when they were due.
    pub dropped: u64,
    pub retries: Retries,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusCount {
    pub status: u16,
    pub code: Option<String>,
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Retries {
    pub total: u64,
    /// After a 429/503 (honouring `Retry-After`).
    pub backpressure: u64,
    /// After a transport error.
    pub network: u64,
    /// Of those, sent to another API than the one that gave no answer.
    pub failovers: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Throughput {
    /// Final answers per second of the submission phase.
    pub answered_per_sec: f64,
    /// Accepted orders per second of the submission phase.
    pub accepted_per_sec: f64,
    /// Decisions per second: from the release to the last decision seen
    /// (poll, synchronous), or from the first `created_at` to the last
    /// `decided_at` (db).
    pub decided_per_sec: f64,
    /// Buyers told "sold out" in the answer (`409 sold_out`, or a synchronous
    /// stock rejection) per second of the submission phase.
    pub sold_out_per_sec: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DecisionSummary {
    /// How decisions were learnt: `poll`, `db` or `synchronous`.
    pub tracking: Tracking,
    /// Distinct order ids accepted.
    pub accepted_orders: u64,
    pub decided: u64,
    pub undecided: u64,
    pub confirmed: u64,
    /// Rejected orders by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Failed decision polls by status/code or transport error.
    pub poll_errors: BTreeMap<String, u64>,
    /// Polls abandoned on a non-retryable answer.
    pub abandoned_polls: u64,
    /// Polls that got no answer and were sent again to another API.
    pub poll_failovers: u64,
    /// The decision timeout expired before every order was seen decided.
    pub timed_out: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latencies {
    /// The accepted `POST`: round trip of the accepted attempt (closed mode),
    /// or from its scheduled send time to the answer (open mode).
    pub accept: LatencySummary,
    /// The `409 sold_out` answers (and the baseline's synchronous stock
    /// rejections), measured the same way.
    pub sold_out: LatencySummary,
    /// Decision seen minus accept answer received (poll); the answer's
    /// latency (synchronous).
    pub decision_observed: LatencySummary,
    /// `decided_at - created_at` from the server's timestamps.
    pub decision_server: LatencySummary,
    /// Decision seen minus order sent (its scheduled time in open mode):
    /// what the buyer waited in all (poll, synchronous).
    pub order_to_decision: LatencySummary,
}

/// One figure of checkline and of the baseline, side by side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComparisonRow {
    pub figure: &'static str,
    pub checkline: Option<f64>,
    pub baseline: Option<f64>,
    /// checkline ÷ baseline, to three significant digits; `null` when either
    /// is missing or the baseline's is 0.
    pub ratio: Option<f64>,
}

/// Counts final answers as buyers finish.
#[derive(Debug, Default)]
pub struct ResponseTally {
    answered: u64,
    accepted: u64,
    replayed: u64,
    sold_out: u64,
    sold_out_in_answer: u64,
    dropped: u64,
    other: BTreeMap<(u16, Option<String>), u64>,
    unreadable: u64,
    transport: BTreeMap<String, u64>,
    backpressure_retries: u64,
    network_retries: u64,
    pub accept_latency: LatencyRecorder,
    pub sold_out_latency: LatencyRecorder,
}

impl ResponseTally {
    pub fn accepted(&mut self, replayed: bool, latency: Duration) {
        self.answered += 1;
        self.accepted += 1;
        if replayed {
            self.replayed += 1;
        }
        self.accept_latency.record(latency);
    }

    pub fn refused(&mut self, status: u16, code: Option<&str>, latency: Duration) {
        self.answered += 1;
        if status == 409 && code == Some("sold_out") {
            self.sold_out += 1;
            self.sold_out_latency.record(latency);
        } else {
            *self
                .other
                .entry((status, code.map(str::to_owned)))
                .or_default() += 1;
        }
    }

    /// An accepted answer (already counted) whose synchronous decision is a
    /// stock rejection: the buyer was told "sold out" in the answer.
    pub fn sold_out_in_answer(&mut self, latency: Duration) {
        self.sold_out_in_answer += 1;
        self.sold_out_latency.record(latency);
    }

    pub fn unreadable(&mut self) {
        self.answered += 1;
        self.unreadable += 1;
    }

    /// Open mode: a buyer not sent because the in-flight cap was reached.
    pub fn dropped(&mut self) {
        self.dropped += 1;
    }

    pub fn dropped_count(&self) -> u64 {
        self.dropped
    }

    pub fn transport_failure(&mut self, kind: &str) {
        *self.transport.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn retries(&mut self, backpressure: u32, network: u32) {
        self.backpressure_retries += u64::from(backpressure);
        self.network_retries += u64::from(network);
    }

    pub fn summary(&self) -> Responses {
        Responses {
            answered: self.answered,
            accepted: self.accepted,
            replayed: self.replayed,
            sold_out: self.sold_out,
            sold_out_in_answer: self.sold_out_in_answer,
            other: self
                .other
                .iter()
                .map(|((status, code), count)| StatusCount {
                    status: *status,
                    code: code.clone(),
                    count: *count,
                })
                .collect(),
            unreadable: self.unreadable,
            transport_failures: self.transport.clone(),
            dropped: self.dropped,
            retries: Retries {
                total: self.backpressure_retries + self.network_retries,
                backpressure: self.backpressure_retries,
                network: self.network_retries,
                failovers: 0,
            },
        }
    }
}

/// Summarises the decisions observed for the `accepted` order ids.
pub fn summarize_decisions<'a>(
    accepted: impl ExactSizeIterator<Item = &'a Uuid>,
    decided: &HashMap<Uuid, Order>,
) -> DecisionSummary {
    let mut summary = DecisionSummary {
        accepted_orders: count(accepted.len()),
        ..DecisionSummary::default()
    };
    for id in accepted {
        match decided.get(id) {
            Some(order) => {
                summary.decided += 1;
                match order.status {
                    OrderStatus::Confirmed => summary.confirmed += 1,
                    OrderStatus::Rejected => {
                        let reason = order.reason.as_deref().unwrap_or("(no reason)");
                        *summary.rejected.entry(reason.to_owned()).or_default() += 1;
                    }
                    OrderStatus::Pending => summary.undecided += 1,
                    // The v1 scenarios reserve nothing; a cart run has its
                    // own figures (crate::cart::report).
                    OrderStatus::Reserved | OrderStatus::Cancelled | OrderStatus::Expired => {}
                }
            }
            None => summary.undecided += 1,
        }
    }
    summary
}

/// `events / elapsed`, 0 when nothing elapsed; rounded to 0.1.
pub fn per_second(events: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    // Exact for any count below 2^53.
    ((events as f64 / secs) * 10.0).round() / 10.0
}

/// Seconds rounded to the millisecond.
pub fn seconds(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1000.0).round() / 1000.0
}

pub fn count(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// `checkline ÷ baseline` to three significant digits; `None` when either
/// figure is missing, not finite, or the baseline's is not positive.
pub fn ratio(checkline: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    let (checkline, baseline) = (checkline?, baseline?);
    if !checkline.is_finite() || !baseline.is_finite() || baseline <= 0.0 {
        return None;
    }
    Some(significant(checkline / baseline, 3))
}

/// `value` rounded to `digits` significant digits.
fn significant(value: f64, digits: i32) -> f64 {
    if value == 0.0 || !value.is_finite() {
        return value;
    }
    let magnitude = value.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits - 1 - magnitude);
    (value * scale).round() / scale
}

/// The figures compared between checkline and the baseline. Rows where
/// neither side has a non-zero figure are left out.
pub fn compare(checkline: &Report, baseline: &Report) -> Vec<ComparisonRow> {
    type Figure = fn(&Report) -> Option<f64>;
    let figures: [(&'static str, Figure); 12] = [
        ("answered/s", |r| Some(r.throughput.answered_per_sec)),
        ("accepted/s", |r| Some(r.throughput.accepted_per_sec)),
        ("decided/s", |r| Some(r.throughput.decided_per_sec)),
        ("sold out/s", |r| Some(r.throughput.sold_out_per_sec)),
        ("accept p50 (ms)", |r| r.latency_ms.accept.p50_ms),
        ("accept p99 (ms)", |r| r.latency_ms.accept.p99_ms),
        ("decision p50 (ms)", |r| r.decision_latency().p50_ms),
        ("decision p99 (ms)", |r| r.decision_latency().p99_ms),
        ("order to decision p50 (ms)", |r| {
            r.latency_ms.order_to_decision.p50_ms
        }),
        ("order to decision p99 (ms)", |r| {
            r.latency_ms.order_to_decision.p99_ms
        }),
        ("sold out p50 (ms)", |r| r.latency_ms.sold_out.p50_ms),
        ("sold out p99 (ms)", |r| r.latency_ms.sold_out.p99_ms),
    ];
    figures
        .into_iter()
        .filter_map(|(figure, get)| {
            let (c, b) = (get(checkline), get(baseline));
            let present = |v: Option<f64>| v.is_some_and(|v| v != 0.0);
            (present(c) || present(b)).then(|| ComparisonRow {
                figure,
                checkline: c,
                baseline: b,
                ratio: ratio(c, b),
            })
        })
        .collect()
}

/// The comparison as a table.
pub fn render_comparison(rows: &[ComparisonRow], baseline_pool: Option<u32>) -> String {
    let mut out = String::new();
    let pool = baseline_pool.map_or_else(String::new, |n| format!(", {n} connections"));
    let _ = writeln!(
        out,
        "checkline vs baseline (row-locking transaction per order{pool})"
    );
    let _ = writeln!(
        out,
        "  {:<LABEL_WIDTH$} {:>12} {:>12} {:>8}",
        "figure", "checkline", "baseline", "ratio"
    );
    let figure = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    for row in rows {
        let ratio = row
            .ratio
            .map_or_else(|| "-".to_owned(), |r| format!("{r}x"));
        let _ = writeln!(
            out,
            "  {:<LABEL_WIDTH$} {:>12} {:>12} {:>8}",
            row.figure,
            figure(row.checkline),
            figure(row.baseline),
            ratio
        );
    }
    let _ = writeln!(
        out,
        "  ratio = checkline / baseline: above 1 is better for /s figures, below 1 for latencies"
    );
    out
}

impl Report {
    /// The decision latency of the run: seen through the API (poll), from
    /// the server's timestamps (db), or the answer's (synchronous).
    pub fn decision_latency(&self) -> &LatencySummary {
        if self.decisions.tracking == Tracking::Db {
            &self.latency_ms.decision_server
        } else {
            &self.latency_ms.decision_observed
        }
    }

    /// The load part of the report as a table (checks are printed apart),
    /// one section after the other.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_setup(&mut out);
        self.render_sell_out(&mut out);
        self.render_responses(&mut out);
        self.render_apis(&mut out);
        self.render_decisions(&mut out);
        self.render_latencies(&mut out);
        out
    }

    /// Whether the figures are the baseline's, whose rows are labelled for
    /// its synchronous answers.
    fn is_baseline(&self) -> bool {
        self.system == System::Baseline
    }

    /// The title line, and what was run: products, load, how decisions were
    /// learnt, how long it took.
    fn render_setup(&self, out: &mut String) {
        let c = &self.config;
        let _ = writeln!(
            out,
            "{} {} — run {} — {}",
            self.system.name(),
            self.scenario.name(),
            self.run_id,
            self.started_at.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        row(out, "api", &self.api_url);
        match (&self.product, self.products.as_slice()) {
            (Some(product), _) => row(out, "product", describe_product(product)),
            (None, [first, .., last]) => row(
                out,
                "products",
                format!("{} ({} … {})", self.products.len(), first.sku, last.sku),
            ),
            (None, _) => row(out, "products", self.products.len()),
        }
        row(out, "buyers", c.buyers);
        if c.products > 1 {
            row(out, "stock", format!("{} per product", c.stock));
        } else {
            row(out, "stock", c.stock);
        }
        row(out, "quantity per order", c.quantity);
        let limit = c
            .max_per_customer
            .map_or_else(|| "none".to_owned(), |m| m.to_string());
        row(out, "max per customer", limit);
        let load = match (c.concurrency, c.rate) {
            (_, Some(rate)) => format!(
                "open: {rate} orders/s for {:.3} s, at most {} in flight",
                c.schedule_secs.unwrap_or_default(),
                c.max_in_flight.unwrap_or_default()
            ),
            (Some(users), None) => format!("closed: {users} virtual users"),
            (None, None) => c.mode.name().to_owned(),
        };
        row(out, "load", load);
        let tracking = match self.decisions.tracking {
            Tracking::Poll => format!("poll: up to {} long-polls at once", c.poll_concurrency),
            Tracking::Db => "db: PostgreSQL watched every 100 ms".to_owned(),
            Tracking::Synchronous => "synchronous: in the answer".to_owned(),
        };
        row(out, "decisions", tracking);
        if let Some(pool) = c.baseline_pool {
            row(out, "baseline pool", format!("{pool} connections"));
        }
        row(
            out,
            "duration",
            format!(
                "{:.3} s (submission {:.3} s)",
                self.duration_secs, self.submission_secs
            ),
        );
    }

    /// `sold-out-storm`: the phase that sold the product out.
    fn render_sell_out(&self, out: &mut String) {
        let Some(sell_out) = &self.sell_out else {
            return;
        };
        let _ = writeln!(out, "\nSell-out (before the storm)");
        row(
            out,
            "orders",
            format!(
                "{} ({} accepted, {} decided, {} confirmed) in {:.3} s",
                sell_out.orders,
                sell_out.accepted,
                sell_out.decided,
                sell_out.confirmed,
                sell_out.secs
            ),
        );
        row(out, "stock after", sell_out.stock_after);
    }

    /// The buyers' final answers, retries, throughput and the goal.
    fn render_responses(&self, out: &mut String) {
        let r = &self.responses;
        let t = &self.throughput;
        let baseline = self.is_baseline();
        let _ = writeln!(out, "\nResponses");
        row(out, "answered", r.answered);
        row(
            out,
            if baseline {
                "decided in the answer (200)"
            } else {
                "accepted (202)"
            },
            format!("{} (of which replayed 200: {})", r.accepted, r.replayed),
        );
        row(out, "sold out at once (409)", r.sold_out);
        if baseline {
            row(out, "sold out in the answer (200)", r.sold_out_in_answer);
        }
        for other in &r.other {
            let label = match &other.code {
                Some(code) => format!("{} {code}", other.status),
                None => format!("{} (no code)", other.status),
            };
            row(out, &label, other.count);
        }
        if r.unreadable > 0 {
            row(out, "2xx with unreadable body", r.unreadable);
        }
        for (kind, n) in &r.transport_failures {
            row(out, &format!("no answer ({kind})"), n);
        }
        if self.config.rate.is_some() || r.dropped > 0 {
            row(out, "dropped (in-flight cap)", r.dropped);
        }
        let failovers = if self.apis.len() > 1 {
            format!(", of which {} on another API", r.retries.failovers)
        } else {
            String::new()
        };
        row(
            out,
            "retries",
            format!(
                "{} (backpressure {}, network {}{failovers})",
                r.retries.total, r.retries.backpressure, r.retries.network
            ),
        );
        row(out, "answered/s", format!("{:.1}", t.answered_per_sec));
        row(out, "accepted/s", format!("{:.1}", t.accepted_per_sec));
        row(out, "decided/s", format!("{:.1}", t.decided_per_sec));
        row(out, "sold out/s", format!("{:.1}", t.sold_out_per_sec));
        if let Some(goal) = &self.goal {
            row(
                out,
                "goal",
                format!(
                    "{} {:.0}: {} ({:.1}%)",
                    goal.figure,
                    goal.target,
                    if goal.reached {
                        "reached"
                    } else {
                        "not reached"
                    },
                    goal.percent()
                ),
            );
        }
    }

    /// Several APIs: each one's order attempts, and with
    /// `--same-key-to-every-api` how their answers compared.
    fn render_apis(&self, out: &mut String) {
        if self.apis.len() < 2 && self.agreement.is_none() {
            return;
        }
        let _ = writeln!(
            out,
            "\n{:<width$}{:>9} {:>9} {:>9} {:>11}",
            "Order attempts by API",
            "attempts",
            "accepted",
            "no answer",
            "failed over",
            width = LABEL_WIDTH + 3
        );
        for api in &self.apis {
            let _ = writeln!(
                out,
                "  {:<LABEL_WIDTH$} {:>9} {:>9} {:>9} {:>11}",
                api.url, api.attempts, api.accepted, api.no_answer, api.failed_over
            );
        }
        if let Some(agreement) = &self.agreement {
            row(
                out,
                "same key to every API",
                format!(
                    "{} buyers, {} accepted by every API, {} with different orders",
                    agreement.buyers, agreement.accepted_by_every_api, agreement.disagreements
                ),
            );
        }
    }

    /// The decisions of the accepted orders, and failed polls.
    fn render_decisions(&self, out: &mut String) {
        let d = &self.decisions;
        let _ = writeln!(out, "\nDecisions ({})", d.tracking.name());
        row(
            out,
            "decided",
            format!("{} of {} accepted orders", d.decided, d.accepted_orders),
        );
        if d.undecided > 0 || d.timed_out {
            row(
                out,
                "undecided",
                format!(
                    "{}{}",
                    d.undecided,
                    if d.timed_out {
                        " (decision timeout expired)"
                    } else {
                        ""
                    }
                ),
            );
        }
        row(out, "confirmed", d.confirmed);
        for (reason, n) in &d.rejected {
            row(out, &format!("rejected {reason}"), n);
        }
        for (error, n) in &d.poll_errors {
            row(out, &format!("poll error {error}"), n);
        }
        if d.abandoned_polls > 0 {
            row(out, "polls abandoned", d.abandoned_polls);
        }
        if d.poll_failovers > 0 {
            row(out, "polls sent to another API", d.poll_failovers);
        }
    }

    /// The latency table: one row per histogram.
    fn render_latencies(&self, out: &mut String) {
        let baseline = self.is_baseline();
        let _ = writeln!(
            out,
            "\n{:<width$}{:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "Latency (ms)",
            "count",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            width = LABEL_WIDTH + 3
        );
        let l = &self.latency_ms;
        // (checkline's label, the baseline's, figures)
        for (label, baseline_label, summary) in [
            ("accept (202)", "answer (200)", &l.accept),
            ("sold out (409)", "sold out (200)", &l.sold_out),
            (
                "decision (observed)",
                "decision (= answer)",
                &l.decision_observed,
            ),
            ("decision (server)", "decision (server)", &l.decision_server),
            (
                "order to decision",
                "order to decision",
                &l.order_to_decision,
            ),
        ] {
            let label = if baseline { baseline_label } else { label };
            let [p50, p90, p99, p999, max] = summary.columns();
            let _ = writeln!(
                out,
                "  {label:<LABEL_WIDTH$} {:>8} {p50:>9} {p90:>9} {p99:>9} {p999:>9} {max:>9}",
                summary.count
            );
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self).context("serialising the report")?;
        json.push(b'\n');
        std::fs::write(path, json)
            .with_context(|| format!("writing the JSON report to {}", path.display()))
    }
}

fn describe_product(product: &ProductInfo) -> String {
    match product.partition {
        Some(partition) => format!("{} ({}, partition {partition})", product.id, product.sku),
        None => format!("{} ({})", product.id, product.sku),
    }
}

/// Width of the label column of the table.
pub const LABEL_WIDTH: usize = 27;

pub fn row(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "  {label:<LABEL_WIDTH$} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn order(status: OrderStatus, reason: Option<&str>) -> Order {
        let now = Utc::now();
        Order {
            id: Uuid::new_v4(),
            status,
            reason: reason.map(str::to_owned),
            created_at: now,
            decided_at: (status != OrderStatus::Pending).then_some(now),
            rejected_product_id: None,
        }
    }

    #[test]
    fn tally_sorts_answers() {
        let mut tally = ResponseTally::default();
        tally.accepted(false, Duration::from_millis(5));
        tally.accepted(true, Duration::from_millis(7));
        tally.refused(409, Some("sold_out"), Duration::from_millis(1));
        tally.refused(409, Some("sold_out"), Duration::from_millis(2));
        tally.refused(503, Some("overloaded"), Duration::from_millis(1));
        tally.refused(409, None, Duration::from_millis(1));
        tally.refused(500, None, Duration::from_millis(1));
        tally.refused(500, None, Duration::from_millis(1));
        tally.unreadable();
        tally.transport_failure("connect");
        tally.dropped();
        tally.retries(3, 1);
        tally.retries(0, 2);

        let responses = tally.summary();
        assert_eq!(
            responses.answered, 9,
            "dropped and unreachable are not answers"
        );
        assert_eq!(responses.accepted, 2);
        assert_eq!(responses.replayed, 1);
        assert_eq!(responses.sold_out, 2);
        assert_eq!(responses.sold_out_in_answer, 0);
        assert_eq!(responses.dropped, 1);
        assert_eq!(tally.dropped_count(), 1);
        assert_eq!(
            responses.other,
            vec![
                StatusCount {
                    status: 409,
                    code: None,
                    count: 1
                },
                StatusCount {
                    status: 500,
                    code: None,
                    count: 2
                },
                StatusCount {
                    status: 503,
                    code: Some("overloaded".into()),
                    count: 1
                },
            ]
        );
        assert_eq!(responses.unreadable, 1);
        assert_eq!(responses.transport_failures["connect"], 1);
        assert_eq!(
            responses.retries,
            Retries {
                total: 6,
                backpressure: 3,
                network: 3,
                failovers: 0
            }
        );
        assert_eq!(tally.accept_latency.summary().count, 2);
        assert_eq!(tally.sold_out_latency.summary().count, 2);

        // A synchronous stock rejection: accepted (it has an order) and told
        // sold out in the answer.
        tally.accepted(false, Duration::from_millis(3));
        tally.sold_out_in_answer(Duration::from_millis(3));
        let responses = tally.summary();
        assert_eq!(responses.answered, 10);
        assert_eq!(responses.sold_out_in_answer, 1);
        assert_eq!(tally.sold_out_latency.summary().count, 3);
    }

    #[test]
    fn decisions_are_summarised_over_accepted_ids() {
        let confirmed = order(OrderStatus::Confirmed, None);
        let sold_out = order(OrderStatus::Rejected, Some("sold_out"));
        let pending = order(OrderStatus::Pending, None);
        let never_seen = Uuid::new_v4();
        let not_ours = order(OrderStatus::Confirmed, None);

        let accepted: BTreeSet<Uuid> = [confirmed.id, sold_out.id, pending.id, never_seen]
            .into_iter()
            .collect();
        let decided: HashMap<Uuid, Order> = [confirmed, sold_out, pending, not_ours]
            .into_iter()
            .map(|o| (o.id, o))
            .collect();

        let summary = summarize_decisions(accepted.iter(), &decided);
        assert_eq!(summary.accepted_orders, 4);
        assert_eq!(summary.decided, 3);
        assert_eq!(summary.undecided, 2);
        assert_eq!(summary.confirmed, 1);
        assert_eq!(summary.rejected.get("sold_out"), Some(&1));
        assert_eq!(summary.rejected.len(), 1);
    }

    #[test]
    fn rates_and_seconds() {
        assert_eq!(per_second(100, Duration::from_secs(4)), 25.0);
        assert_eq!(per_second(1, Duration::from_secs(3)), 0.3);
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
        assert_eq!(seconds(Duration::from_micros(1_234_567)), 1.235);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(300.0), Some(100.0)), Some(3.0));
        assert_eq!(ratio(Some(1.0), Some(3.0)), Some(0.333));
        assert_eq!(ratio(Some(2.0), Some(3.0)), Some(0.667));
        assert_eq!(ratio(Some(2419.8), Some(859.4)), Some(2.82));
        assert_eq!(ratio(Some(12_345.0), Some(10.0)), Some(1230.0));
        // Small ratios keep their digits instead of rounding to 0.
        assert_eq!(ratio(Some(3.89), Some(1753.09)), Some(0.00222));
        assert_eq!(ratio(Some(0.0), Some(5.0)), Some(0.0));
        assert_eq!(ratio(Some(5.0), Some(0.0)), None, "no division by zero");
        assert_eq!(ratio(Some(5.0), Some(-1.0)), None);
        assert_eq!(ratio(None, Some(5.0)), None);
        assert_eq!(ratio(Some(5.0), None), None);
        assert_eq!(ratio(Some(f64::NAN), Some(5.0)), None);
        assert_eq!(ratio(Some(5.0), Some(f64::INFINITY)), None);
    }

    #[test]
    fn goals() {
        let goal = Goal::new("sold_out_per_sec", 40_000.0, 12_345.0);
        assert!(!goal.reached);
        assert_eq!(goal.percent(), 30.9);
        let goal = Goal::new("sold_out_per_sec", 40_000.0, 40_000.0);
        assert!(goal.reached);
        assert_eq!(goal.percent(), 100.0);
        assert_eq!(Goal::new("x", 0.0, 1.0).percent(), 100.0);
    }

    fn sample_report() -> Report {
        let mut tally = ResponseTally::default();
        tally.accepted(false, Duration::from_millis(4));
        tally.refused(409, Some("sold_out"), Duration::from_millis(1));
        tally.refused(503, Some("overloaded"), Duration::from_millis(1));
        tally.retries(2, 0);
        let product = ProductInfo {
            id: Uuid::nil(),
            sku: "LOAD-AB12CD34".into(),
            partition: Some(3),
            initial_stock: 1,
        };
        Report {
            scenario: ScenarioKind::FlashSale,
            system: System::Checkline,
            run_id: "ab12cd34".into(),
            started_at: Utc::now(),
            api_url: "http://127.0.0.1:8080".into(),
            apis: vec![ApiFigures {
                url: "http://127.0.0.1:8080".into(),
                attempts: 5,
                accepted: 1,
                no_answer: 0,
                failed_over: 0,
            }],
            agreement: None,
            product: Some(product.clone()),
            products: vec![product],
            config: RunConfig {
                mode: ModeKind::Closed,
                concurrency: Some(2),
                rate: None,
                schedule_secs: None,
                max_in_flight: None,
                buyers: 3,
                products: 1,
                stock: 1,
                quantity: 1,
                max_per_customer: None,
                decisions: Tracking::Poll,
                poll_concurrency: 4,
                max_attempts: 10,
                decision_timeout_secs: 60,
                request_timeout_secs: 30,
                baseline_pool: None,
                same_key_to_every_api: false,
            },
            duration_secs: 1.5,
            submission_secs: 0.5,
            sell_out: None,
            responses: tally.summary(),
            throughput: Throughput {
                answered_per_sec: 6.0,
                accepted_per_sec: 2.0,
                decided_per_sec: 0.7,
                sold_out_per_sec: 2.0,
            },
            goal: None,
            decisions: DecisionSummary {
                tracking: Tracking::Poll,
                accepted_orders: 1,
                decided: 1,
                confirmed: 1,
                ..DecisionSummary::default()
            },
            latency_ms: Latencies {
                accept: tally.accept_latency.summary(),
                sold_out: tally.sold_out_latency.summary(),
                ..Latencies::default()
            },
            checks: Vec::new(),
            passed: None,
            error: None,
            notes: Vec::new(),
            baseline: None,
            comparison: None,
        }
    }

    fn flat(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn table_lists_every_figure() {
        let table = sample_report().render();
        let flat_table = flat(&table);
        for needle in [
            "checkline flash-sale — run ab12cd34",
            "LOAD-AB12CD34, partition 3",
            "buyers                  3",
            "max per customer        none",
            "load                    closed: 2 virtual users",
            "decisions               poll: up to 4 long-polls at once",
            "answered                3",
            "accepted (202)          1 (of which replayed 200: 0)",
            "sold out at once (409)  1",
            "503 overloaded          1",
            "retries                 2 (backpressure 2, network 0)",
            "answered/s              6.0",
            "sold out/s              2.0",
            "Decisions (poll)",
            "decided                 1 of 1 accepted orders",
            "confirmed               1",
            "p99.9",
            "accept (202)                 1      4.00",
            "decision (server)            0         -",
            "order to decision            0         -",
        ] {
            assert!(
                flat_table.contains(&flat(needle)),
                "missing {needle:?} in\n{table}"
            );
        }
        assert!(!table.contains("undecided"));
        assert!(!table.contains("dropped"), "closed mode drops nothing");
        assert!(!table.contains("Sell-out"));
        assert!(!table.contains("goal"));
        // Labels longer than the column still leave a gap before the value.
        let mut report = sample_report();
        report
            .decisions
            .rejected
            .insert("idempotency_key_reused".into(), 7);
        assert!(report
            .render()
            .contains("  rejected idempotency_key_reused 7\n"));
        // Columns line up: every latency row is as wide as the header.
        let widths: Vec<usize> = table
            .lines()
            .skip_while(|line| !line.starts_with("Latency"))
            .map(|line| line.len())
            .collect();
        assert_eq!(widths.len(), 6, "{table}");
        assert!(
            widths.iter().all(|&w| w == widths[0]),
            "{widths:?}\n{table}"
        );
    }

    #[test]
    fn table_shows_open_mode_storms_and_many_products() {
        let mut report = sample_report();
        report.scenario = ScenarioKind::SoldOutStorm;
        report.config.mode = ModeKind::Open;
        report.config.concurrency = None;
        report.config.rate = Some(40_000);
        report.config.schedule_secs = Some(2.0);
        report.config.max_in_flight = Some(10_000);
        report.config.decisions = Tracking::Db;
        report.decisions.tracking = Tracking::Db;
        report.responses.dropped = 17;
        report.sell_out = Some(SellOut {
            orders: 10,
            accepted: 10,
            decided: 10,
            confirmed: 10,
            secs: 0.25,
            stock_after: 0,
        });
        report.goal = Some(Goal::new("sold_out_per_sec", 40_000.0, 10_000.0));
        let table = flat(&report.render());
        for needle in [
            "load open: 40000 orders/s for 2.000 s, at most 10000 in flight",
            "decisions db: PostgreSQL watched every 100 ms",
            "dropped (in-flight cap) 17",
            "Sell-out (before the storm)",
            "orders 10 (10 accepted, 10 decided, 10 confirmed) in 0.250 s",
            "stock after 0",
            "goal sold_out_per_sec 40000: not reached (25.0%)",
            "Decisions (db)",
        ] {
            assert!(table.contains(needle), "missing {needle:?} in\n{table}");
        }

        let mut report = sample_report();
        report.product = None;
        report.products = (0..3)
            .map(|i| ProductInfo {
                id: Uuid::from_u128(i),
                sku: format!("LOAD-X-{i}"),
                partition: Some(0),
                initial_stock: 5,
            })
            .collect();
        report.config.products = 3;
        report.config.stock = 5;
        let table = flat(&report.render());
        assert!(
            table.contains("products 3 (LOAD-X-0 … LOAD-X-2)"),
            "{table}"
        );
        assert!(table.contains("stock 5 per product"), "{table}");
    }

    #[test]
    fn baseline_table_names_synchronous_answers() {
        let mut report = sample_report();
        report.system = System::Baseline;
        report.product.as_mut().unwrap().partition = None;
        report.config.decisions = Tracking::Synchronous;
        report.config.baseline_pool = Some(32);
        report.decisions.tracking = Tracking::Synchronous;
        report.responses.sold_out_in_answer = 5;
        let table = flat(&report.render());
        for needle in [
            "baseline flash-sale — run ab12cd34",
            "00000000-0000-0000-0000-000000000000 (LOAD-AB12CD34)",
            "decisions synchronous: in the answer",
            "baseline pool 32 connections",
            "decided in the answer (200) 1",
            "sold out in the answer (200) 5",
            "answer (200) 1 4.00",
            "decision (= answer)",
        ] {
            assert!(table.contains(needle), "missing {needle:?} in\n{table}");
        }
    }

    #[test]
    fn comparison_rows_and_table() {
        let checkline = sample_report();
        let mut baseline = sample_report();
        baseline.system = System::Baseline;
        baseline.throughput.accepted_per_sec = 0.5;
        baseline.throughput.decided_per_sec = 0.0;
        baseline.latency_ms.accept.p50_ms = Some(8.0);
        baseline.latency_ms.accept.p99_ms = Some(16.0);

        let rows = compare(&checkline, &baseline);
        let get = |figure: &str| rows.iter().find(|row| row.figure == figure).cloned();
        let accepted = get("accepted/s").unwrap();
        assert_eq!(accepted.checkline, Some(2.0));
        assert_eq!(accepted.baseline, Some(0.5));
        assert_eq!(accepted.ratio, Some(4.0));
        let decided = get("decided/s").unwrap();
        assert_eq!(decided.ratio, None, "baseline 0: no ratio");
        let p50 = get("accept p50 (ms)").unwrap();
        assert_eq!(p50.ratio, Some(0.5));
        // Figures neither side has are left out.
        assert!(get("order to decision p50 (ms)").is_none());
        assert!(get("decision p50 (ms)").is_none());

        let table = render_comparison(&rows, Some(32));
        assert!(table.starts_with(
            "checkline vs baseline (row-locking transaction per order, 32 connections)\n"
        ));
        assert!(flat(&table).contains("accepted/s 2.00 0.50 4x"), "{table}");
        assert!(flat(&table).contains("decided/s 0.70 0.00 -"), "{table}");

        // db tracking compares the server-side decision latency.
        let mut db = sample_report();
        db.decisions.tracking = Tracking::Db;
        db.latency_ms.decision_server.p50_ms = Some(42.0);
        assert_eq!(db.decision_latency().p50_ms, Some(42.0));
        assert_eq!(sample_report().decision_latency().p50_ms, None);
    }

    #[test]
    fn json_shape() {
        let mut report = sample_report();
        let baseline = sample_report();
        report.comparison = Some(compare(&report, &baseline));
        report.baseline = Some(Box::new(baseline));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["scenario"], "flash-sale");
        assert_eq!(json["system"], "checkline");
        assert_eq!(json["product"]["partition"], 3);
        assert_eq!(json["products"].as_array().unwrap().len(), 1);
        assert_eq!(json["config"]["max_per_customer"], serde_json::Value::Null);
        assert_eq!(json["config"]["mode"], "closed");
        assert_eq!(json["config"]["concurrency"], 2);
        assert!(json["config"]["rate"].is_null());
        assert_eq!(json["config"]["decisions"], "poll");
        assert_eq!(json["responses"]["answered"], 3);
        assert_eq!(json["responses"]["dropped"], 0);
        assert_eq!(json["responses"]["other"][0]["status"], 503);
        assert_eq!(json["responses"]["other"][0]["code"], "overloaded");
        assert_eq!(json["responses"]["retries"]["total"], 2);
        assert_eq!(json["throughput"]["sold_out_per_sec"], 2.0);
        assert_eq!(json["decisions"]["tracking"], "poll");
        assert_eq!(json["latency_ms"]["accept"]["count"], 1);
        let p50 = json["latency_ms"]["accept"]["p50_ms"].as_f64().unwrap();
        assert!((4.0..4.01).contains(&p50), "{p50}");
        assert!(json["latency_ms"]["decision_server"]["p99_ms"].is_null());
        assert!(json["latency_ms"]["order_to_decision"]["p99_ms"].is_null());
        assert!(json["sell_out"].is_null());
        assert!(json["goal"].is_null());
        assert!(json["passed"].is_null());
        assert!(json["checks"].as_array().unwrap().is_empty());
        assert_eq!(json["baseline"]["system"], "checkline");
        assert!(json["baseline"]["baseline"].is_null());
        assert_eq!(json["comparison"][0]["figure"], "answered/s");
        assert_eq!(json["comparison"][0]["ratio"], 1.0);
    }

    #[test]
    fn several_apis_are_listed_with_their_attempts() {
        let mut report = sample_report();
        // One API: no section, and the retries row as before.
        assert!(!report.render().contains("Order attempts by API"));

        report.api_url = "http://127.0.0.1:8080,http://127.0.0.1:8081".into();
        report.apis = vec![
            ApiFigures::new(
                "http://127.0.0.1:8080",
                ApiCounts {
                    attempts: 40,
                    accepted: 12,
                    no_answer: 3,
                    failovers: 3,
                },
            ),
            ApiFigures::new(
                "http://127.0.0.1:8081",
                ApiCounts {
                    attempts: 45,
                    accepted: 20,
                    no_answer: 0,
                    failovers: 0,
                },
            ),
        ];
        report.responses.retries.network = 3;
        report.responses.retries.failovers = 3;
        report.decisions.poll_failovers = 2;
        report.config.same_key_to_every_api = true;
        report.agreement = Some(Agreement {
            buyers: 20,
            accepted_by_every_api: 9,
            disagreements: 0,
            examples: Vec::new(),
        });
        let table = report.render();
        let flat_table = flat(&table);
        for needle in [
            "api http://127.0.0.1:8080,http://127.0.0.1:8081",
            "retries 2 (backpressure 2, network 3, of which 3 on another API)",
            "Order attempts by API attempts accepted no answer failed over",
            "http://127.0.0.1:8080 40 12 3 3",
            "http://127.0.0.1:8081 45 20 0 0",
            "same key to every API 20 buyers, 9 accepted by every API, 0 with different orders",
            "polls sent to another API 2",
        ] {
            assert!(
                flat_table.contains(needle),
                "missing {needle:?} in\n{table}"
            );
        }

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["api_url"],
            "http://127.0.0.1:8080,http://127.0.0.1:8081"
        );
        assert_eq!(json["apis"][0]["url"], "http://127.0.0.1:8080");
        assert_eq!(json["apis"][0]["accepted"], 12);
        assert_eq!(json["apis"][0]["failed_over"], 3);
        assert_eq!(json["apis"][1]["attempts"], 45);
        assert_eq!(json["responses"]["retries"]["failovers"], 3);
        assert_eq!(json["decisions"]["poll_failovers"], 2);
        assert_eq!(json["config"]["same_key_to_every_api"], true);
        assert_eq!(json["agreement"]["accepted_by_every_api"], 9);
        assert_eq!(json["agreement"]["disagreements"], 0);
        assert!(serde_json::to_value(sample_report()).unwrap()["agreement"].is_null());
    }

    #[test]
    fn names_in_the_text_are_the_json_values() {
        fn json(value: impl Serialize) -> serde_json::Value {
            serde_json::to_value(value).unwrap()
        }
        let mut pairs = Vec::new();
        for kind in [
            ScenarioKind::FlashSale,
            ScenarioKind::HotProduct,
            ScenarioKind::ManyProducts,
            ScenarioKind::SoldOutStorm,
        ] {
            pairs.push((kind.name(), json(kind)));
        }
        for system in [System::Checkline, System::Baseline] {
            pairs.push((system.name(), json(system)));
        }
        for mode in [ModeKind::Closed, ModeKind::Open] {
            pairs.push((mode.name(), json(mode)));
        }
        for tracking in [Tracking::Poll, Tracking::Db, Tracking::Synchronous] {
            pairs.push((tracking.name(), json(tracking)));
        }
        for (name, value) in pairs {
            assert_eq!(value, name);
        }
    }

    #[test]
    fn json_is_written_to_a_file() {
        let path = std::env::temp_dir().join(format!("checkline-report-{}.json", Uuid::new_v4()));
        sample_report().write_json(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["run_id"], "ab12cd34");
    }
}
