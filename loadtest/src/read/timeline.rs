//! The product's stock over time, as PostgreSQL recorded it, and the
//! freshness judgement of every read against it (pure: no I/O).
//!
//! The timeline starts at the product's initial stock and steps at every
//! change: an order takes its units at its `decided_at`, a restock and a
//! stock return give units back at their `applied_at`. Changes at the same
//! instant are one step (one transaction; no reader can see between them).
//!
//! A read sent at `s` and answered at `r` that showed stock `v` is fresh if
//! the timeline had `v` at some instant of `[s - bound - eps, r + eps]`,
//! where `eps` covers the clock difference between the generator and
//! PostgreSQL. Its lag is how long before `s` the value it showed stopped
//! being the stock (0 while it still was).
//!
//! All instants are microseconds since the Unix epoch (UTC): PostgreSQL's
//! own resolution.

use std::collections::HashMap;

use serde::Serialize;

use super::ReadRecord;
use crate::checks::Check;

/// The number the freshness check goes by in the checks' list: the
/// contract numbers its invariants 1-8, and the catalogue's freshness
/// bound comes after them.
pub const FRESHNESS_CHECK: u8 = 9;
/// How many example reads a failure detail names.
const EXAMPLES: usize = 3;

/// One change of the stock: `delta` units at `at_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockChange {
    pub at_us: i64,
    pub delta: i64,
}

/// An interval `[from_us, until_us)` during which the stock was one value;
/// the first starts at `i64::MIN`, the last never ends (`i64::MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    from_us: i64,
    until_us: i64,
}

/// The stock as a step function of time.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// `(instant, stock from then on)`, by instant; the first is the initial
    /// stock at `i64::MIN`.
    steps: Vec<(i64, i64)>,
    /// Where each value was the stock, in time order.
    spans: HashMap<i64, Vec<Span>>,
}

/// The window a read is judged on, and when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadWindow {
    pub sent_us: i64,
    pub received_us: i64,
}

/// How a read compares with the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// The value was the stock inside the window; `lag_us` is how long
    /// before the send it stopped being the stock (0 if it still was).
    Fresh { lag_us: i64 },
    /// The value had stopped being the stock more than bound + eps before
    /// the send.
    Stale { lag_us: i64 },
    /// The value became the stock only after the answer (+ eps): the clocks
    /// differ by more than eps, or the timeline misses a change.
    Ahead,
    /// The stock never had this value.
    Impossible,
}

impl Timeline {
    /// The timeline from `initial` stock and every change, in any order.
    pub fn new(initial: i64, changes: impl IntoIterator<Item = StockChange>) -> Self {
        let mut changes: Vec<StockChange> = changes.into_iter().collect();
        changes.sort_by_key(|change| change.at_us);
        let mut steps = vec![(i64::MIN, initial)];
        let mut stock = initial;
        for change in changes {
            stock += change.delta;
            match steps.last_mut() {
                // One transaction, one step.
                Some(last) if last.0 == change.at_us => last.1 = stock,
                _ => steps.push((change.at_us, stock)),
            }
        }
        let mut spans: HashMap<i64, Vec<Span>> = HashMap::new();
        for (at, window) in steps.iter().enumerate() {
            let until_us = steps.get(at + 1).map_or(i64::MAX, |next| next.0);
            spans.entry(window.1).or_default().push(Span {
                from_us: window.0,
                until_us,
            });
        }
        Self { steps, spans }
    }

    /// The stock at `at_us` (a change at exactly `at_us` has happened).
    #[cfg(test)]
    pub fn stock_at(&self, at_us: i64) -> i64 {
        let after = self.steps.partition_point(|step| step.0 <= at_us);
        // steps[0] is at i64::MIN, so `after` is at least 1.
        self.steps[after.saturating_sub(1)].1
    }

    /// The stock after the last change.
    pub fn final_stock(&self) -> i64 {
        self.steps.last().map_or(0, |step| step.1)
    }

    /// Changes (steps after the initial stock).
    pub fn changes(&self) -> usize {
        self.steps.len() - 1
    }

    /// When the stock last changed at or before `at_us` (`i64::MIN` if never).
    pub fn last_change_at_or_before(&self, at_us: i64) -> i64 {
        let after = self.steps.partition_point(|step| step.0 <= at_us);
        self.steps[after.saturating_sub(1)].0
    }

    /// Judges a read of `shown` stock in `read`, with the bound and the
    /// clock allowance `eps_us`.
    pub fn judge(&self, shown: i64, read: ReadWindow, bound_us: i64, eps_us: i64) -> Judgement {
        let Some(spans) = self.spans.get(&shown) else {
            return Judgement::Impossible;
        };
        let earliest = read.sent_us.saturating_sub(bound_us).saturating_sub(eps_us);
        let latest = read.received_us.saturating_add(eps_us);
        // The last span of the value that had begun by the end of the
        // window ends latest of those: if it does not reach into the
        // window, none does.
        let begun = spans.partition_point(|span| span.from_us <= latest);
        let Some(span) = begun.checked_sub(1).map(|at| spans[at]) else {
            return Judgement::Ahead;
        };
        let lag_us = read.sent_us.saturating_sub(span.until_us).max(0);
        if span.until_us >= earliest {
            Judgement::Fresh { lag_us }
        } else {
            Judgement::Stale { lag_us }
        }
    }
}

/// How the run's reads compare with the timeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Freshness {
    /// The bound checked.
    pub bound_ms: u64,
    /// The clock allowance on either side of each read's window.
    pub eps_ms: f64,
    /// Reads that showed the product (a `200` with it), all judged.
    pub checked: u64,
    pub fresh: u64,
    /// Showed a stock that had stopped being the stock more than bound +
    /// eps before the read was sent.
    pub stale: u64,
    /// Showed a stock that came only after the answer (+ eps).
    pub ahead: u64,
    /// Showed a stock the product never had.
    pub impossible: u64,
    /// Showed an `updated_at` older than a change that was due in the
    /// read's window (the row, not only the stock, must be fresh).
    pub updated_at_behind: u64,
    /// Reads that showed a stock that was no longer current when sent.
    pub lagging: u64,
    /// The largest lag of any read, in ms.
    pub worst_lag_ms: f64,
    /// Steps of the timeline (transactions that moved the stock).
    pub timeline_changes: u64,
    /// The timeline's last stock, and PostgreSQL's: they must agree, or the
    /// timeline misses a change and cannot judge.
    pub timeline_final_stock: i64,
    pub database_stock: i64,
    /// The first few failed reads.
    pub examples: Vec<String>,
}

/// Judges every read that showed the product.
pub fn evaluate<'a>(
    timeline: &Timeline,
    database_stock: i64,
    reads: impl IntoIterator<Item = &'a ReadRecord>,
    bound_us: i64,
    eps_us: i64,
) -> Freshness {
    let mut figures = Freshness {
        bound_ms: u64::try_from(bound_us / 1000).unwrap_or(0),
        eps_ms: eps_us as f64 / 1000.0,
        timeline_changes: u64::try_from(timeline.changes()).unwrap_or(u64::MAX),
        timeline_final_stock: timeline.final_stock(),
        database_stock,
        ..Freshness::default()
    };
    let mut worst_lag_us = 0;
    for read in reads {
        let Some(shown) = read.shown() else {
            continue;
        };
        figures.checked += 1;
        let window = ReadWindow {
            sent_us: read.sent_us,
            received_us: read.received_us(),
        };
        let judgement = timeline.judge(shown.stock, window, bound_us, eps_us);
        let failed = match judgement {
            Judgement::Fresh { lag_us } | Judgement::Stale { lag_us } => {
                worst_lag_us = worst_lag_us.max(lag_us);
                if lag_us > 0 {
                    figures.lagging += 1;
                }
                if matches!(judgement, Judgement::Stale { .. }) {
                    figures.stale += 1;
                    Some(format!("stale by {:.1} ms", lag_us as f64 / 1000.0))
                } else {
                    figures.fresh += 1;
                    None
                }
            }
            Judgement::Ahead => {
                figures.ahead += 1;
                Some("ahead of the timeline".to_owned())
            }
            Judgement::Impossible => {
                figures.impossible += 1;
                Some("a stock the product never had".to_owned())
            }
        };
        let due =
            timeline.last_change_at_or_before(window.sent_us.saturating_sub(bound_us + eps_us));
        let behind = shown.updated_us < due;
        if behind {
            figures.updated_at_behind += 1;
        }
        let failed = failed.or_else(|| behind.then(|| "updated_at behind".to_owned()));
        if let Some(why) = failed {
            if figures.examples.len() < EXAMPLES {
                figures.examples.push(format!(
                    "{:?} read sent at {} showed stock {}: {why}",
                    read.kind,
                    format_us(read.sent_us),
                    shown.stock
                ));
            }
        }
    }
    figures.worst_lag_ms = worst_lag_us as f64 / 1000.0;
    figures
}

impl Freshness {
    /// Every read was judged fresh against a timeline that ends where
    /// PostgreSQL's stock is.
    pub fn passed(&self) -> bool {
        self.stale == 0
            && self.ahead == 0
            && self.impossible == 0
            && self.updated_at_behind == 0
            && self.timeline_final_stock == self.database_stock
    }
}

/// The freshness check of a run whose reads were judged.
pub fn freshness_check(figures: &Freshness) -> Check {
    let mut detail = format!(
        "{} reads checked against {} stock changes (bound {} ms, eps {:.3} ms): {} stale, \
         {} impossible, {} ahead, {} with updated_at behind; worst lag {:.1} ms",
        figures.checked,
        figures.timeline_changes,
        figures.bound_ms,
        figures.eps_ms,
        figures.stale,
        figures.impossible,
        figures.ahead,
        figures.updated_at_behind,
        figures.worst_lag_ms
    );
    if figures.timeline_final_stock != figures.database_stock {
        detail.push_str(&format!(
            "; the timeline ends at stock {} but PostgreSQL has {}: a change is missing",
            figures.timeline_final_stock, figures.database_stock
        ));
    }
    if !figures.examples.is_empty() {
        detail.push_str(&format!("; e.g. {}", figures.examples.join("; ")));
    }
    Check::new(
        FRESHNESS_CHECK,
        "product reads within the freshness bound",
        figures.passed(),
        detail,
    )
}

/// Microseconds since the epoch as an RFC 3339 instant.
fn format_us(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or_else(
        || us.to_string(),
        |at| at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::{ReadKind, Shown};

    const MS: i64 = 1000;
    const BOUND: i64 = 250 * MS;
    const EPS: i64 = MS;

    /// 100 units; orders take 1 at 1 s, 2 s (two in one transaction) and 3 s.
    fn timeline() -> Timeline {
        let take = |at_ms: i64| StockChange {
            at_us: at_ms * MS,
            delta: -1,
        };
        Timeline::new(100, [take(3000), take(1000), take(2000), take(2000)])
    }

    fn read(sent_ms: i64, received_ms: i64) -> ReadWindow {
        ReadWindow {
            sent_us: sent_ms * MS,
            received_us: received_ms * MS,
        }
    }

    #[test]
    fn the_timeline_steps_at_each_transaction() {
        let t = timeline();
        assert_eq!(t.changes(), 3, "the two changes at 2 s are one step");
        assert_eq!(t.stock_at(0), 100);
        assert_eq!(t.stock_at(1000 * MS - 1), 100);
        assert_eq!(t.stock_at(1000 * MS), 99);
        assert_eq!(t.stock_at(2500 * MS), 97);
        assert_eq!(t.final_stock(), 96);
        assert_eq!(t.last_change_at_or_before(2500 * MS), 2000 * MS);
        assert_eq!(t.last_change_at_or_before(10), i64::MIN);
    }

    #[test]
    fn a_current_value_is_fresh_with_no_lag() {
        let t = timeline();
        assert_eq!(
            t.judge(99, read(1500, 1502), BOUND, EPS),
            Judgement::Fresh { lag_us: 0 }
        );
        assert_eq!(
            t.judge(96, read(9000, 9001), BOUND, EPS),
            Judgement::Fresh { lag_us: 0 }
        );
    }

    #[test]
    fn a_value_older_than_the_bound_is_stale() {
        let t = timeline();
        // 99 ended at 2 s; sent 2.4 s: 400 ms behind.
        assert_eq!(
            t.judge(99, read(2400, 2401), BOUND, EPS),
            Judgement::Stale { lag_us: 400 * MS }
        );
        // The initial stock, long after the first order.
        assert!(matches!(
            t.judge(100, read(5000, 5001), BOUND, EPS),
            Judgement::Stale { .. }
        ));
    }

    #[test]
    fn a_read_exactly_at_the_edge_is_fresh_and_one_microsecond_later_stale() {
        let t = timeline();
        // 99 ended at 2000 ms; the window starts at sent - bound - eps.
        let edge = ReadWindow {
            sent_us: 2000 * MS + BOUND + EPS,
            received_us: 2000 * MS + BOUND + EPS + 5 * MS,
        };
        assert_eq!(
            t.judge(99, edge, BOUND, EPS),
            Judgement::Fresh {
                lag_us: BOUND + EPS
            }
        );
        let past = ReadWindow {
            sent_us: edge.sent_us + 1,
            received_us: edge.received_us + 1,
        };
        assert_eq!(
            t.judge(99, past, BOUND, EPS),
            Judgement::Stale {
                lag_us: BOUND + EPS + 1
            }
        );
    }

    #[test]
    fn a_read_during_a_change_may_show_either_side() {
        let t = timeline();
        // In flight from 2999 ms to 3001 ms, across the change at 3 s.
        for shown in [97, 96] {
            assert!(
                matches!(
                    t.judge(shown, read(2999, 3001), 0, 0),
                    Judgement::Fresh { .. }
                ),
                "{shown}"
            );
        }
        // A value that only comes later is ahead of the clock allowance.
        assert_eq!(t.judge(96, read(2990, 2995), 0, EPS), Judgement::Ahead);
        // ... and fresh once eps covers the gap.
        assert!(matches!(
            t.judge(96, read(2990, 2995), 0, 5 * MS),
            Judgement::Fresh { lag_us: 0 }
        ));
    }

    #[test]
    fn a_value_the_stock_never_had_is_impossible() {
        let t = timeline();
        // 98 was skipped: the two orders at 2 s were one transaction.
        assert_eq!(
            t.judge(98, read(2000, 2001), BOUND, EPS),
            Judgement::Impossible
        );
        assert_eq!(
            t.judge(-1, read(2000, 2001), BOUND, EPS),
            Judgement::Impossible
        );
        assert_eq!(t.judge(101, read(0, 1), BOUND, EPS), Judgement::Impossible);
    }

    #[test]
    fn a_value_the_stock_comes_back_to_is_judged_by_its_latest_span() {
        // 10, 9 at 1 s, back to 10 at 2 s (a return), 9 again at 3 s.
        let t = Timeline::new(
            10,
            [
                StockChange {
                    at_us: 1000 * MS,
                    delta: -1,
                },
                StockChange {
                    at_us: 2000 * MS,
                    delta: 1,
                },
                StockChange {
                    at_us: 3000 * MS,
                    delta: -1,
                },
            ],
        );
        assert_eq!(
            t.judge(10, read(2500, 2501), BOUND, EPS),
            Judgement::Fresh { lag_us: 0 }
        );
        // 9 ended at 2 s (the return); 100 ms behind is within the bound.
        assert_eq!(
            t.judge(9, read(2100, 2101), BOUND, EPS),
            Judgement::Fresh { lag_us: 100 * MS }
        );
        // Once the stock is 9 again, a 9 is current.
        assert_eq!(
            t.judge(9, read(3100, 3101), BOUND, EPS),
            Judgement::Fresh { lag_us: 0 }
        );
    }

    fn record(sent_ms: i64, stock: i64, updated_ms: i64) -> ReadRecord {
        ReadRecord::new(
            ReadKind::Product,
            sent_ms * MS,
            std::time::Duration::from_millis(2),
            200,
            Some(Shown {
                stock,
                updated_us: updated_ms * MS,
            }),
        )
    }

    #[test]
    fn fresh_reads_pass_the_check() {
        let t = timeline();
        let reads = [
            record(500, 100, 0),
            record(1100, 99, 1000),
            // 99 ended at 2 s: 200 ms behind, within the bound.
            record(2200, 99, 1000),
            record(9000, 96, 3000),
            ReadRecord::new(
                ReadKind::List,
                9000 * MS,
                std::time::Duration::ZERO,
                503,
                None,
            ),
        ];
        let figures = evaluate(&t, 96, &reads, BOUND, EPS);
        assert_eq!(
            (figures.checked, figures.fresh),
            (4, 4),
            "the 503 showed nothing"
        );
        assert_eq!(figures.lagging, 1);
        assert_eq!(figures.worst_lag_ms, 200.0);
        assert_eq!(figures.timeline_changes, 3);
        let check = freshness_check(&figures);
        assert!(check.passed, "{}", check.detail);
        assert_eq!(check.invariant, FRESHNESS_CHECK);
    }

    #[test]
    fn stale_impossible_and_behind_reads_fail_the_check() {
        let t = timeline();
        let reads = [
            record(2400, 99, 1000),
            record(2400, 98, 2000),
            // The right stock, but a row version older than a change due.
            record(3400, 96, 2000),
        ];
        let figures = evaluate(&t, 96, &reads, BOUND, EPS);
        // The stale read's row is behind too.
        assert_eq!(
            (figures.stale, figures.impossible, figures.updated_at_behind),
            (1, 1, 2)
        );
        assert_eq!(figures.worst_lag_ms, 400.0);
        assert_eq!(figures.examples.len(), 3);
        let check = freshness_check(&figures);
        assert!(!check.passed);
        assert!(check.detail.contains("1 stale"), "{}", check.detail);
        assert!(
            check.detail.contains("stale by 400.0 ms"),
            "{}",
            check.detail
        );
    }

    #[test]
    fn a_timeline_that_misses_a_change_cannot_judge() {
        let figures = evaluate(&timeline(), 95, &[record(9000, 96, 3000)], BOUND, EPS);
        assert_eq!(figures.fresh, 1);
        let check = freshness_check(&figures);
        assert!(!check.passed);
        assert!(
            check.detail.contains("a change is missing"),
            "{}",
            check.detail
        );
    }
}
