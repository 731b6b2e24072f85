//! The run report: tallies built while the load runs, the JSON document and
//! the human-readable table.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::checks::Check;
use crate::client::{Order, OrderStatus};
use crate::latency::{LatencyRecorder, LatencySummary};

/// The whole report; serialised as-is for `--json-out`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub api_url: String,
    pub product: ProductInfo,
    pub config: SaleConfig,
    /// From releasing the first buyer to the last decision observed (or the
    /// decision timeout).
    pub duration_secs: f64,
    /// From releasing the first buyer to the last buyer's final answer.
    pub submission_secs: f64,
    pub responses: Responses,
    pub throughput: Throughput,
    pub decisions: DecisionSummary,
    pub latency_ms: Latencies,
    pub checks: Vec<Check>,
    /// `true` when every check passed; `null` when the checks could not run.
    pub passed: Option<bool>,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
    /// Diagnostics worth a look (first transport error, and the like).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProductInfo {
    pub id: Uuid,
    pub sku: String,
    pub partition: i64,
    pub initial_stock: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SaleConfig {
    pub buyers: u32,
    pub stock: u64,
    pub quantity: u32,
    pub max_per_customer: Option<u32>,
    pub concurrency: usize,
    pub poll_concurrency: usize,
    pub max_attempts: u32,
    pub decision_timeout_secs: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Responses {
    /// Buyers whose order was accepted (`202`, or a `200` replay).
    pub accepted: u64,
    /// Of those, how many got the `200` replay of an earlier attempt.
    pub replayed: u64,
    /// Buyers answered `409 sold_out` at once.
    pub sold_out: u64,
    /// Every other final HTTP answer, by status and problem code.
    pub other: Vec<StatusCount>,
    /// 2xx answers whose body was not an order.
    pub unreadable: u64,
    /// Buyers left without any HTTP answer, by transport error kind.
    pub transport_failures: BTreeMap<String, u64>,
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
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Throughput {
    /// Accepted orders per second of the submission phase.
    pub accepted_per_sec: f64,
    /// Decisions observed per second, from the release of the buyers to the
    /// last decision.
    pub decided_per_sec: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DecisionSummary {
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
    /// The decision timeout expired before every order was seen decided.
    pub timed_out: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latencies {
    /// Round trip of the `POST /v1/orders` attempt that was accepted.
    pub accept: LatencySummary,
    /// Round trip of the `409 sold_out` answers.
    pub sold_out: LatencySummary,
    /// Decision observed minus 202 received, as seen by the buyer.
    pub decision_observed: LatencySummary,
    /// `decided_at - created_at` from the server's timestamps.
    pub decision_server: LatencySummary,
}

/// Counts final answers as buyers finish.
#[derive(Debug, Default)]
pub struct ResponseTally {
    accepted: u64,
    replayed: u64,
    sold_out: u64,
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
        self.accepted += 1;
        if replayed {
            self.replayed += 1;
        }
        self.accept_latency.record(latency);
    }

    pub fn refused(&mut self, status: u16, code: Option<&str>, latency: Duration) {
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

    pub fn unreadable(&mut self) {
        self.unreadable += 1;
    }

    pub fn transport_failure(&mut self, kind: &str) {
        *self.transport.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn retries(&mut self, backpressure: u32, network: u32) {
        self.backpressure_retries += u64::from(backpressure);
        self.network_retries += u64::from(network);
    }

    pub fn accepted_count(&self) -> u64 {
        self.accepted
    }

    pub fn summary(&self) -> Responses {
        Responses {
            accepted: self.accepted,
            replayed: self.replayed,
            sold_out: self.sold_out,
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
            retries: Retries {
                total: self.backpressure_retries + self.network_retries,
                backpressure: self.backpressure_retries,
                network: self.network_retries,
            },
        }
    }
}

/// Summarises the decisions observed for the `accepted` order ids.
pub fn summarize_decisions(
    accepted: &BTreeSet<Uuid>,
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

impl Report {
    /// The load part of the report as a table (checks are printed apart).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let c = &self.config;
        let r = &self.responses;
        let d = &self.decisions;
        let limit = c
            .max_per_customer
            .map_or_else(|| "none".to_owned(), |m| m.to_string());

        let _ = writeln!(
            out,
            "checkline {} — run {} — {}",
            self.scenario,
            self.run_id,
            self.started_at.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        row(&mut out, "api", &self.api_url);
        row(
            &mut out,
            "product",
            format!(
                "{} ({}, partition {})",
                self.product.id, self.product.sku, self.product.partition
            ),
        );
        row(&mut out, "buyers", c.buyers);
        row(&mut out, "stock", c.stock);
        row(&mut out, "quantity per order", c.quantity);
        row(&mut out, "max per customer", limit);
        row(
            &mut out,
            "concurrency",
            format!(
                "{} submissions, {} polls",
                c.concurrency, c.poll_concurrency
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

        let _ = writeln!(out, "\nResponses");
        row(
            &mut out,
            "accepted (202)",
            format!("{} (of which replayed 200: {})", r.accepted, r.replayed),
        );
        row(&mut out, "sold out at once (409)", r.sold_out);
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
        row(
            &mut out,
            "accepted/s",
            format!("{:.1}", self.throughput.accepted_per_sec),
        );
        row(
            &mut out,
            "decided/s",
            format!("{:.1}", self.throughput.decided_per_sec),
        );

        let _ = writeln!(out, "\nDecisions");
        row(
            &mut out,
            "decided",
            format!("{} of {} accepted orders", d.decided, d.accepted_orders),
        );
        if d.undecided > 0 || d.timed_out {
            row(
                &mut out,
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
        row(&mut out, "confirmed", d.confirmed);
        for (reason, n) in &d.rejected {
            row(&mut out, &format!("rejected {reason}"), n);
        }
        for (error, n) in &d.poll_errors {
            row(&mut out, &format!("poll error {error}"), n);
        }
        if d.abandoned_polls > 0 {
            row(&mut out, "polls abandoned", d.abandoned_polls);
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
            ("sold out (409)", &l.sold_out),
            ("decision (observed)", &l.decision_observed),
            ("decision (server)", &l.decision_server),
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

/// Width of the label column of the table.
const LABEL_WIDTH: usize = 27;

fn row(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "  {label:<LABEL_WIDTH$} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(status: OrderStatus, reason: Option<&str>) -> Order {
        let now = Utc::now();
        Order {
            id: Uuid::new_v4(),
            status,
            reason: reason.map(str::to_owned),
            created_at: now,
            decided_at: (status != OrderStatus::Pending).then_some(now),
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
        tally.retries(3, 1);
        tally.retries(0, 2);

        let responses = tally.summary();
        assert_eq!(responses.accepted, 2);
        assert_eq!(tally.accepted_count(), 2);
        assert_eq!(responses.replayed, 1);
        assert_eq!(responses.sold_out, 2);
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
                network: 3
            }
        );
        assert_eq!(tally.accept_latency.summary().count, 2);
        assert_eq!(tally.sold_out_latency.summary().count, 2);
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

        let summary = summarize_decisions(&accepted, &decided);
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

    fn sample_report() -> Report {
        let mut tally = ResponseTally::default();
        tally.accepted(false, Duration::from_millis(4));
        tally.refused(409, Some("sold_out"), Duration::from_millis(1));
        tally.refused(503, Some("overloaded"), Duration::from_millis(1));
        tally.retries(2, 0);
        Report {
            scenario: "flash-sale",
            run_id: "ab12cd34".into(),
            started_at: Utc::now(),
            api_url: "http://127.0.0.1:8080".into(),
            product: ProductInfo {
                id: Uuid::nil(),
                sku: "LOAD-AB12CD34".into(),
                partition: 3,
                initial_stock: 1,
            },
            config: SaleConfig {
                buyers: 3,
                stock: 1,
                quantity: 1,
                max_per_customer: None,
                concurrency: 2,
                poll_concurrency: 4,
                max_attempts: 10,
                decision_timeout_secs: 60,
            },
            duration_secs: 1.5,
            submission_secs: 0.5,
            responses: tally.summary(),
            throughput: Throughput {
                accepted_per_sec: 2.0,
                decided_per_sec: 0.7,
            },
            decisions: DecisionSummary {
                accepted_orders: 1,
                decided: 1,
                confirmed: 1,
                ..DecisionSummary::default()
            },
            latency_ms: Latencies {
                accept: tally.accept_latency.summary(),
                ..Latencies::default()
            },
            checks: Vec::new(),
            passed: None,
            error: None,
            notes: Vec::new(),
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
            "accepted (202)          1 (of which replayed 200: 0)",
            "sold out at once (409)  1",
            "503 overloaded          1",
            "retries                 2 (backpressure 2, network 0)",
            "decided                 1 of 1 accepted orders",
            "confirmed               1",
            "p99.9",
            "accept (202)                 1      4.00",
            "decision (server)            0         -",
        ] {
            assert!(
                flat_table.contains(&flat(needle)),
                "missing {needle:?} in\n{table}"
            );
        }
        assert!(!table.contains("undecided"));
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
        assert_eq!(widths.len(), 5, "{table}");
        assert!(
            widths.iter().all(|&w| w == widths[0]),
            "{widths:?}\n{table}"
        );
    }

    #[test]
    fn json_shape() {
        let json = serde_json::to_value(sample_report()).unwrap();
        assert_eq!(json["scenario"], "flash-sale");
        assert_eq!(json["config"]["max_per_customer"], serde_json::Value::Null);
        assert_eq!(json["responses"]["other"][0]["status"], 503);
        assert_eq!(json["responses"]["other"][0]["code"], "overloaded");
        assert_eq!(json["responses"]["retries"]["total"], 2);
        assert_eq!(json["latency_ms"]["accept"]["count"], 1);
        let p50 = json["latency_ms"]["accept"]["p50_ms"].as_f64().unwrap();
        assert!((4.0..4.01).contains(&p50), "{p50}");
        assert!(json["latency_ms"]["decision_server"]["p99_ms"].is_null());
        assert!(json["passed"].is_null());
        assert!(json["checks"].as_array().unwrap().is_empty());
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
