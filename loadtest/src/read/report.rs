//! The `read` run's report: reads per second and their latency by call,
//! the orders offered and accepted beside them, the clocks, and the
//! freshness figures; printed as a table and written as JSON like the
//! other scenarios' (checks included).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::db::ClockSkew;
use super::timeline::Freshness;
use super::{ReadKind, ReadRecord, ReaderOutcome};
use crate::checks::Check;
use crate::cli::{ReadSettings, ScenarioKind};
use crate::latency::{LatencyRecorder, LatencySummary};
use crate::report::{per_second, row, DecisionSummary, ProductInfo, Responses, LABEL_WIDTH};

#[derive(Debug, Clone, Serialize)]
pub struct ReadReport {
    pub scenario: ScenarioKind,
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub api_url: String,
    /// The product read and ordered.
    pub product: ProductInfo,
    /// Products created beside it, so that its list page is full.
    pub other_products: u32,
    /// The cursor of the list page that holds the product (`null`: the
    /// first page).
    pub page_cursor: Option<String>,
    pub config: ReadSettings,
    /// The load's span: from the release to the last reader done or the
    /// last order answered, whichever is later.
    pub duration_secs: f64,
    /// From the release to the last reader done.
    pub reading_secs: f64,
    pub reads: ReadFigures,
    /// `null` with `--reads-only`.
    pub orders: Option<OrderFigures>,
    pub clock: ClockFigures,
    /// `null` with `--orders-only`.
    pub freshness: Option<Freshness>,
    pub checks: Vec<Check>,
    pub passed: Option<bool>,
    pub error: Option<String>,
    pub notes: Vec<String>,
}

/// Reads of each call, and those left without an answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReadFigures {
    /// `GET /v1/products/{id}`.
    pub product: CallFigures,
    /// `GET /v1/products?limit=50`, the page with the product.
    pub list: CallFigures,
    /// Reads left without an HTTP answer, by transport error kind.
    pub no_answer: BTreeMap<String, u64>,
}

/// One call's answered reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CallFigures {
    /// Reads answered (any status).
    pub answered: u64,
    /// Answered reads per second of the reading span.
    pub per_sec: f64,
    /// `200` answers that did not show the product (an unreadable body, or
    /// a page without it).
    pub without_product: u64,
    /// Answers other than 2xx, by status.
    pub non_2xx: BTreeMap<u16, u64>,
    pub latency_ms: LatencySummary,
}

/// The orders sent beside the reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OrderFigures {
    /// Orders on the schedule.
    pub offered: u32,
    pub offered_per_sec: f64,
    /// From the release to the last order's final answer.
    pub submission_secs: f64,
    pub responses: Responses,
    pub accepted_per_sec: f64,
    pub decisions: DecisionSummary,
    /// The accepted `POST`, from its scheduled send time to the answer.
    pub accept_latency_ms: LatencySummary,
}

/// The generator's clock against PostgreSQL's, before and after the load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ClockFigures {
    pub start: ClockSkew,
    pub end: Option<ClockSkew>,
    /// The allowance each read's window was widened by on either side.
    pub eps_ms: f64,
}

/// The figures of every reader's reads over `reading`.
pub fn read_figures(readers: &[ReaderOutcome], reading: Duration) -> ReadFigures {
    let mut product = CallTally::default();
    let mut list = CallTally::default();
    let mut no_answer = BTreeMap::new();
    for reader in readers {
        for read in &reader.records {
            match read.kind {
                ReadKind::Product => product.add(read),
                ReadKind::List => list.add(read),
            }
        }
        for (kind, n) in &reader.no_answer {
            *no_answer.entry((*kind).to_owned()).or_default() += n;
        }
    }
    ReadFigures {
        product: product.figures(reading),
        list: list.figures(reading),
        no_answer,
    }
}

#[derive(Default)]
struct CallTally {
    answered: u64,
    without_product: u64,
    non_2xx: BTreeMap<u16, u64>,
    latency: LatencyRecorder,
}

impl CallTally {
    fn add(&mut self, read: &ReadRecord) {
        self.answered += 1;
        self.latency.record_micros(u64::from(read.latency_us));
        if !read.is_success() {
            *self.non_2xx.entry(read.status).or_default() += 1;
        } else if read.shown().is_none() {
            self.without_product += 1;
        }
    }

    fn figures(&self, reading: Duration) -> CallFigures {
        CallFigures {
            answered: self.answered,
            per_sec: per_second(self.answered, reading),
            without_product: self.without_product,
            non_2xx: self.non_2xx.clone(),
            latency_ms: self.latency.summary(),
        }
    }
}

impl ReadReport {
    /// The load part of the report as a table (checks are printed apart).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let c = &self.config;
        let _ = writeln!(
            out,
            "checkline read — run {} — {}",
            self.run_id,
            self.started_at.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        row(&mut out, "api", &self.api_url);
        row(
            &mut out,
            "product",
            format!(
                "{} ({}, stock {}), {} other products",
                self.product.id, self.product.sku, self.product.initial_stock, self.other_products
            ),
        );
        row(
            &mut out,
            "list page",
            self.page_cursor.as_deref().map_or_else(
                || "the first".to_owned(),
                |cursor| format!("after {cursor}"),
            ),
        );
        row(&mut out, "readers", c.readers);
        let orders = c.order_rate.map_or_else(
            || "none (--reads-only)".to_owned(),
            |rate| {
                format!(
                    "{rate}/s open loop, quantity 1, at most {} in flight",
                    c.max_in_flight
                )
            },
        );
        row(&mut out, "orders", orders);
        row(
            &mut out,
            "duration",
            format!(
                "{} s (reading {:.3} s)",
                c.duration.as_secs(),
                self.reading_secs
            ),
        );
        row(
            &mut out,
            "freshness bound",
            format!("{} ms", c.fresh.as_millis()),
        );
        self.render_reads(&mut out);
        self.render_orders(&mut out);
        self.render_freshness(&mut out);
        out
    }

    fn render_reads(&self, out: &mut String) {
        if self.config.readers == 0 {
            return;
        }
        let r = &self.reads;
        let _ = writeln!(out, "\nReads");
        for (label, call) in [("product", &r.product), ("list", &r.list)] {
            row(
                out,
                &format!("{label} reads/s"),
                format!("{:.1} ({} answered)", call.per_sec, call.answered),
            );
            for (status, n) in &call.non_2xx {
                row(out, &format!("{label} {status}"), n);
            }
            if call.without_product > 0 {
                row(
                    out,
                    &format!("{label} 200 without it"),
                    call.without_product,
                );
            }
        }
        for (kind, n) in &r.no_answer {
            row(out, &format!("no answer ({kind})"), n);
        }
    }

    fn render_orders(&self, out: &mut String) {
        let Some(o) = &self.orders else {
            return;
        };
        let _ = writeln!(out, "\nOrders");
        row(
            out,
            "offered",
            format!("{} ({:.1}/s)", o.offered, o.offered_per_sec),
        );
        row(
            out,
            "accepted (202)",
            format!(
                "{} ({:.1}/s over {:.3} s)",
                o.responses.accepted, o.accepted_per_sec, o.submission_secs
            ),
        );
        for other in &o.responses.other {
            let label = match &other.code {
                Some(code) => format!("{} {code}", other.status),
                None => format!("{} (no code)", other.status),
            };
            row(out, &label, other.count);
        }
        for (kind, n) in &o.responses.transport_failures {
            row(out, &format!("no answer ({kind})"), n);
        }
        row(out, "dropped (in-flight cap)", o.responses.dropped);
        let d = &o.decisions;
        row(
            out,
            "decided",
            format!(
                "{} of {} ({} confirmed{})",
                d.decided,
                d.accepted_orders,
                d.confirmed,
                if d.timed_out {
                    ", decision timeout expired"
                } else {
                    ""
                }
            ),
        );
    }

    fn render_freshness(&self, out: &mut String) {
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
        let mut rows = Vec::new();
        if self.config.readers > 0 {
            rows.push(("product read", &self.reads.product.latency_ms));
            rows.push(("list read", &self.reads.list.latency_ms));
        }
        if let Some(orders) = &self.orders {
            rows.push(("order accept (202)", &orders.accept_latency_ms));
        }
        for (label, summary) in rows {
            let [p50, p90, p99, p999, max] = summary.columns();
            let _ = writeln!(
                out,
                "  {label:<LABEL_WIDTH$} {:>8} {p50:>9} {p90:>9} {p99:>9} {p999:>9} {max:>9}",
                summary.count
            );
        }

        let clock = &self.clock;
        let _ = writeln!(out, "\nFreshness");
        let describe = |skew: &ClockSkew| {
            format!(
                "PostgreSQL {:+.3} ms, round trip {:.3} ms",
                skew.offset_ms, skew.round_trip_ms
            )
        };
        row(out, "clock at start", describe(&clock.start));
        if let Some(end) = &clock.end {
            row(out, "clock at end", describe(end));
        }
        row(out, "eps", format!("{:.3} ms", clock.eps_ms));
        let Some(f) = &self.freshness else {
            row(out, "reads checked", "none (--orders-only)");
            return;
        };
        row(
            out,
            "reads checked",
            format!("{} against {} stock changes", f.checked, f.timeline_changes),
        );
        row(out, "fresh", f.fresh);
        row(out, "stale (older than bound)", f.stale);
        row(out, "impossible", f.impossible);
        row(out, "ahead of the timeline", f.ahead);
        row(out, "updated_at behind", f.updated_at_behind);
        row(
            out,
            "lagging (not current)",
            format!("{} (worst lag {:.1} ms)", f.lagging, f.worst_lag_ms),
        );
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self).context("serialising the report")?;
        json.push(b'\n');
        std::fs::write(path, json)
            .with_context(|| format!("writing the JSON report to {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::Shown;

    #[test]
    fn reads_are_counted_by_call() {
        let shown = Some(Shown {
            stock: 5,
            updated_us: 1,
        });
        let record =
            |kind, status, shown| ReadRecord::new(kind, 0, Duration::from_millis(2), status, shown);
        let reader = ReaderOutcome {
            records: vec![
                record(ReadKind::Product, 200, shown),
                record(ReadKind::Product, 503, None),
                record(ReadKind::List, 200, shown),
                record(ReadKind::List, 200, None),
            ],
            no_answer: [("connect", 2)].into_iter().collect(),
            first_error: None,
        };
        let figures = read_figures(&[reader], Duration::from_secs(2));
        assert_eq!(figures.product.answered, 2);
        assert_eq!(figures.product.per_sec, 1.0);
        assert_eq!(figures.product.non_2xx.get(&503), Some(&1));
        assert_eq!(figures.product.without_product, 0);
        assert_eq!(figures.list.without_product, 1);
        assert_eq!(figures.list.latency_ms.count, 2);
        assert_eq!(figures.no_answer.get("connect"), Some(&2));
    }
}
