//! The `cart` run's report: what the buyers were answered, what became of
//! their carts, rates and latencies; printed as a table and written as JSON
//! like the other scenarios' (checks included).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::db::{Backlog, CartDbView, Reservations, Waited};
use super::{ActionKind, BuyerRecord, Submitted};
use crate::checks::Check;
use crate::cli::{CartSettings, ScenarioKind};
use crate::client::OrderStatus;
use crate::latency::{LatencyRecorder, LatencySummary};
use crate::report::{per_second, row, ProductInfo, ResponseTally, Responses, LABEL_WIDTH};

#[derive(Debug, Clone, Serialize)]
pub struct CartReport {
    pub scenario: ScenarioKind,
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub api_url: String,
    pub products: Vec<ProductInfo>,
    pub config: CartSettings,
    /// From releasing the first buyer to the last buyer done (decision
    /// seen, confirm or cancel answered).
    pub duration_secs: f64,
    /// From releasing the first buyer to the last `POST /v1/orders` answer.
    pub submission_secs: f64,
    /// Answers to `POST /v1/orders`.
    pub responses: Responses,
    pub carts: CartFigures,
    /// Confirm and cancel answers: `"confirm 200"`, `"cancel 409
    /// order_confirmed"`, `"confirm (late) 409 reservation_expired"`, ...
    pub actions: BTreeMap<String, u64>,
    pub throughput: CartThroughput,
    pub latency_ms: CartLatencies,
    /// The wait for the queues to drain before the checks.
    pub drain: Option<Waited<Backlog>>,
    /// `--wait-expiry`: the wait for every reservation to end.
    pub expiry: Option<ExpiryWait>,
    pub checks: Vec<Check>,
    pub passed: Option<bool>,
    pub error: Option<String>,
    pub notes: Vec<String>,
}

/// What became of the carts: the answers, the first decisions seen, and
/// the final states in PostgreSQL.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CartFigures {
    /// Buyers whose `POST /v1/orders` got an HTTP answer.
    pub answered: u64,
    /// Of those, `202` (or the `200` replay).
    pub accepted: u64,
    /// Accepted carts whose first decision the buyer saw.
    pub decided: u64,
    /// First decision seen: `reserved`.
    pub reserved: u64,
    /// Final states, from the database.
    pub confirmed: u64,
    pub cancelled: u64,
    pub expired: u64,
    /// Still `reserved` when checked.
    pub still_reserved: u64,
    pub rejected: BTreeMap<String, u64>,
    pub pending: u64,
    /// Carts sent, by number of lines.
    pub by_lines: BTreeMap<usize, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CartThroughput {
    /// `POST /v1/orders` answers per second of the submission span.
    pub answered_per_sec: f64,
    pub accepted_per_sec: f64,
    /// First decisions seen per second, release to the last one.
    pub decided_per_sec: f64,
    /// Confirms answered `200` per second of the whole run.
    pub confirmed_per_sec: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CartLatencies {
    /// The accepted `POST /v1/orders`, the attempt that was accepted.
    pub accept: LatencySummary,
    /// First decision seen minus the accept answer.
    pub decision: LatencySummary,
    /// Confirms answered `200` (before any expiry).
    pub confirm: LatencySummary,
    /// Cancels answered `200`.
    pub cancel: LatencySummary,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ExpiryWait {
    pub waited: Waited<Reservations>,
    /// The most a reservation was seen past its `reserved_until` while
    /// still `reserved` (the expirer's bound, measured every 250 ms).
    pub most_overdue_secs: f64,
}

/// The figures from the buyers' records (and the database's final states,
/// when it could be read). `released` is when the first buyer started.
pub fn figures(
    buyers: &[BuyerRecord],
    db: Option<&CartDbView>,
    released: Instant,
) -> (
    Responses,
    CartFigures,
    BTreeMap<String, u64>,
    CartThroughput,
    CartLatencies,
    Duration,
) {
    let mut tally = ResponseTally::default();
    let mut carts = CartFigures::default();
    let mut actions = BTreeMap::new();
    let (mut decision, mut confirm, mut cancel) = (
        LatencyRecorder::new(),
        LatencyRecorder::new(),
        LatencyRecorder::new(),
    );
    let mut last_answer = released;
    let mut last_decision = released;
    let mut confirmed_ok = 0u64;
    for buyer in buyers {
        *carts.by_lines.entry(buyer.lines.len()).or_default() += 1;
        tally.retries(buyer.backpressure_retries, buyer.network_retries);
        if let Some(at) = buyer.answered_at {
            last_answer = last_answer.max(at);
        }
        match &buyer.submitted {
            Submitted::Accepted {
                replayed, latency, ..
            } => tally.accepted(*replayed, *latency),
            Submitted::Refused {
                status,
                code,
                latency,
            } => tally.refused(*status, code.as_deref(), *latency),
            Submitted::Unknown { what } if what.starts_with("unreadable") => tally.unreadable(),
            Submitted::Unknown { .. } => tally.transport_failure("no answer"),
        }
        if let Some(seen) = &buyer.seen {
            carts.decided += 1;
            decision.record(seen.latency);
            if seen.status == OrderStatus::Reserved {
                carts.reserved += 1;
            }
        }
        if let Some(at) = buyer.decided_at {
            last_decision = last_decision.max(at);
        }
        for answer in &buyer.actions {
            let label = format!(
                "{}{} {}",
                answer.kind.name(),
                if answer.late { " (late)" } else { "" },
                answer.label()
            );
            *actions.entry(label).or_default() += 1;
            if answer.ok() && !answer.late {
                match answer.kind {
                    ActionKind::Confirm => {
                        confirmed_ok += 1;
                        confirm.record(answer.latency);
                    }
                    ActionKind::Cancel => cancel.record(answer.latency),
                }
            }
        }
    }
    let responses = tally.summary();
    carts.answered = responses.answered;
    carts.accepted = responses.accepted;
    if let Some(db) = db {
        for order in &db.orders {
            match order.status {
                OrderStatus::Pending => carts.pending += 1,
                OrderStatus::Reserved => carts.still_reserved += 1,
                OrderStatus::Confirmed => carts.confirmed += 1,
                OrderStatus::Cancelled => carts.cancelled += 1,
                OrderStatus::Expired => carts.expired += 1,
                OrderStatus::Rejected => {
                    let reason = order.reason.as_deref().unwrap_or("(no reason)");
                    *carts.rejected.entry(reason.to_owned()).or_default() += 1;
                }
            }
        }
    }
    let submission = last_answer.saturating_duration_since(released);
    let total = buyers
        .iter()
        .filter_map(|buyer| buyer.done_at)
        .max()
        .map_or(Duration::ZERO, |done| {
            done.saturating_duration_since(released)
        });
    let throughput = CartThroughput {
        answered_per_sec: per_second(responses.answered, submission),
        accepted_per_sec: per_second(responses.accepted, submission),
        decided_per_sec: per_second(
            carts.decided,
            last_decision.saturating_duration_since(released),
        ),
        confirmed_per_sec: per_second(confirmed_ok, total),
    };
    let latencies = CartLatencies {
        accept: tally.accept_latency.summary(),
        decision: decision.summary(),
        confirm: confirm.summary(),
        cancel: cancel.summary(),
    };
    (responses, carts, actions, throughput, latencies, submission)
}

impl CartReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let c = &self.config;
        let _ = writeln!(
            out,
            "checkline cart — run {} — {}",
            self.run_id,
            self.started_at.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        row(&mut out, "api", &self.api_url);
        row(
            &mut out,
            "products",
            format!(
                "{} with {} units each, {} limited to {} per customer",
                c.products, c.stock, c.limited_products, c.max_per_customer
            ),
        );
        row(
            &mut out,
            "buyers",
            format!(
                "{} ({} carts per customer), {} virtual users",
                c.buyers, c.carts_per_customer, c.concurrency
            ),
        );
        row(
            &mut out,
            "carts",
            format!(
                "1-{} lines of 1-{} units; {:.0}% reserve {} s, then confirm {:.0}%, \
                 cancel {:.0}%, race {:.0}%, abandon {:.0}%",
                c.max_lines,
                c.max_quantity,
                c.reserve_fraction * 100.0,
                c.reserve_secs,
                c.actions.confirm * 100.0,
                c.actions.cancel * 100.0,
                c.actions.race * 100.0,
                c.actions.abandon() * 100.0
            ),
        );
        row(
            &mut out,
            "duration",
            format!(
                "{:.3} s (submission {:.3} s)",
                self.duration_secs, self.submission_secs
            ),
        );

        let r = &self.responses;
        let _ = writeln!(out, "\nAnswers to POST /v1/orders");
        row(&mut out, "answered", r.answered);
        row(
            &mut out,
            "accepted (202)",
            format!("{} (of which replayed 200: {})", r.accepted, r.replayed),
        );
        row(&mut out, "409 sold_out", r.sold_out);
        for other in &r.other {
            let label = match &other.code {
                Some(code) => format!("{} {code}", other.status),
                None => format!("{} (no code)", other.status),
            };
            row(&mut out, &label, other.count);
        }
        if r.unreadable > 0 {
            row(&mut out, "2xx with unreadable body", r.unreadable);
        }
        for (kind, n) in &r.transport_failures {
            row(&mut out, &format!("no answer ({kind})"), n);
        }
        row(
            &mut out,
            "retries",
            format!(
                "{} (backpressure {}, network {})",
                r.retries.total, r.retries.backpressure, r.retries.network
            ),
        );

        let k = &self.carts;
        let _ = writeln!(out, "\nCarts");
        let sizes: Vec<String> = k
            .by_lines
            .iter()
            .map(|(lines, n)| format!("{lines} line(s): {n}"))
            .collect();
        row(&mut out, "sent", sizes.join(", "));
        row(
            &mut out,
            "decided (seen)",
            format!("{} of {} accepted", k.decided, k.accepted),
        );
        row(&mut out, "reserved (first decision)", k.reserved);
        row(&mut out, "confirmed (final)", k.confirmed);
        row(&mut out, "cancelled (final)", k.cancelled);
        row(&mut out, "expired (final)", k.expired);
        if k.still_reserved > 0 {
            row(&mut out, "still reserved", k.still_reserved);
        }
        if k.pending > 0 {
            row(&mut out, "still pending", k.pending);
        }
        for (reason, n) in &k.rejected {
            row(&mut out, &format!("rejected {reason}"), n);
        }
        for (label, n) in &self.actions {
            row(&mut out, label, n);
        }
        let t = &self.throughput;
        row(&mut out, "answered/s", format!("{:.1}", t.answered_per_sec));
        row(&mut out, "accepted/s", format!("{:.1}", t.accepted_per_sec));
        row(&mut out, "decided/s", format!("{:.1}", t.decided_per_sec));
        row(
            &mut out,
            "confirmed/s",
            format!("{:.1}", t.confirmed_per_sec),
        );
        if let Some(drain) = &self.drain {
            row(
                &mut out,
                "queues drained",
                if drain.done {
                    format!("yes, after {:.1} s", drain.secs)
                } else {
                    format!("NO after {:.1} s: {:?}", drain.secs, drain.last)
                },
            );
        }
        if let Some(expiry) = &self.expiry {
            row(
                &mut out,
                "reservations ended",
                format!(
                    "{} after {:.1} s; most overdue seen {:.2} s",
                    if expiry.waited.done { "all" } else { "NOT all" },
                    expiry.waited.secs,
                    expiry.most_overdue_secs
                ),
            );
        }

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
        for (label, summary) in [
            ("accept (202)", &l.accept),
            ("decision (observed)", &l.decision),
            ("confirm (200)", &l.confirm),
            ("cancel (200)", &l.cancel),
        ] {
            let [p50, p90, p99, p999, max] = summary.columns();
            let _ = writeln!(
                out,
                "  {label:<LABEL_WIDTH$} {:>8} {p50:>9} {p90:>9} {p99:>9} {p999:>9} {max:>9}",
                summary.count
            );
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self).context("serialising the report")?;
        json.push(b'\n');
        std::fs::write(path, json)
            .with_context(|| format!("writing the JSON report to {}", path.display()))
    }
}
