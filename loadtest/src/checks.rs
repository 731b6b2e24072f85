//! Invariant checks, as a pure function of figures gathered from the load
//! generator, the API and PostgreSQL (see [`crate::db`] for the queries).
//!
//! The numbering follows the contract's invariants (API.md):
//! 1. stock is conserved and never negative;
//! 2. one order per (customer, idempotency key), a distinct order for every
//!    accepted buyer, and orders only for accepted requests;
//! 3. every accepted order is decided, exactly once;
//! 4. orders are decided in queue order (first come, first served): an
//!    order's place in the queue is `(queue_sequence, queue_index)`, the
//!    stream sequence of its message and its position inside the message;
//! 5. the per-customer limit holds.
//!
//! The same evaluation serves the baseline (the row-locking comparison), minus
//! what it has no equivalent for: there is no queue (no FIFO audit) and no
//! separate read API (no API-stock comparison).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use serde::Serialize;
use uuid::Uuid;

use crate::buyer::{Fanout, FanoutAnswer};
use crate::client::OrderStatus;

/// Rejection reasons caused by the stock level (as opposed to limits, an
/// inactive product or a reused key).
const STOCK_REASONS: [&str; 2] = ["sold_out", "insufficient_stock"];

/// Whether a rejection `reason` is about the stock level.
pub fn is_stock_reason(reason: &str) -> bool {
    STOCK_REASONS.contains(&reason)
}
/// How many example ids a failure detail names.
const EXAMPLES: usize = 3;

/// One check's verdict, with the figures behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The contract invariant this check belongs to (1–5).
    pub invariant: u8,
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Check {
    pub fn new(invariant: u8, name: &str, passed: bool, detail: String) -> Self {
        Self {
            invariant,
            name: name.to_owned(),
            passed,
            detail,
        }
    }
}

/// Which implementation the figures come from (the report's `system`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// checkline: every check.
    #[default]
    Checkline,
    /// The row-locking baseline: no queue to audit, no API stock to compare.
    Baseline,
}

impl System {
    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Checkline => "checkline",
            Self::Baseline => "baseline",
        }
    }
}

/// What the scenario set up, hence what the outcome must be.
#[derive(Debug, Clone)]
pub struct Expectation {
    pub system: System,
    pub initial_stock: i64,
    /// Quantity of every order that can take stock (all buyers order the
    /// same amount).
    pub quantity: i64,
    pub max_per_customer: Option<i64>,
}

/// A decision as the buyer observed it through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedDecision {
    pub status: OrderStatus,
    pub reason: Option<String>,
}

/// `--same-key-to-every-api`: how the APIs' answers to the same first
/// attempt (same customer, key and body, sent to every API at once)
/// compared. API.md: identical requests, however concurrent, get one order,
/// so every 2xx must name the same order id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Agreement {
    /// Buyers whose first attempt went to every API.
    pub buyers: u64,
    /// Of those, answered 2xx with an order by every API.
    pub accepted_by_every_api: u64,
    /// Of those, whose 2xx answers named different orders (or one named
    /// none: an unreadable 2xx).
    pub disagreements: u64,
    /// The first few disagreements: the customer, then each API's answer.
    pub examples: Vec<String>,
}

impl Agreement {
    /// Counts one buyer's fanned-out first attempt.
    pub fn record(&mut self, customer_id: &str, fanout: &Fanout) {
        self.buyers += 1;
        if fanout.all_accepted() {
            self.accepted_by_every_api += 1;
        }
        if fanout.agrees() {
            return;
        }
        self.disagreements += 1;
        if self.examples.len() < EXAMPLES {
            let answers: Vec<String> = fanout
                .answers
                .iter()
                .map(|answer| match answer {
                    FanoutAnswer::Order(id) => id.to_string(),
                    FanoutAnswer::Unreadable(status) => format!("{status} without an order"),
                    FanoutAnswer::Status(status) => status.to_string(),
                    FanoutAnswer::NoAnswer => "no answer".to_owned(),
                })
                .collect();
            self.examples
                .push(format!("{customer_id}: {}", answers.join(" / ")));
        }
    }

    /// Adds `other`'s buyers (another phase of the same run).
    pub fn merge(&mut self, other: &Self) {
        self.buyers += other.buyers;
        self.accepted_by_every_api += other.accepted_by_every_api;
        self.disagreements += other.disagreements;
        for example in &other.examples {
            if self.examples.len() < EXAMPLES {
                self.examples.push(example.clone());
            }
        }
    }
}

/// Invariant 2 across APIs: every API that answered a buyer's fanned-out
/// attempt 2xx named the same order.
pub fn agreement_check(agreement: &Agreement) -> Check {
    let mut detail = format!(
        "{} first attempts sent to every API, {} accepted by every API",
        agreement.buyers, agreement.accepted_by_every_api
    );
    if agreement.disagreements == 0 {
        detail.push_str("; every 2xx named the same order");
    } else {
        let _ = write!(
            detail,
            "; {} answered with different orders, e.g. {}",
            agreement.disagreements,
            agreement.examples.join("; ")
        );
    }
    Check::new(
        2,
        "every API names the same order for one key",
        agreement.disagreements == 0,
        detail,
    )
}

/// What the load generator saw, plus the stock the API reports.
#[derive(Debug, Clone, Default)]
pub struct ClientView {
    /// Distinct order ids answered 202 (or replayed with 200).
    pub accepted: BTreeSet<Uuid>,
    /// Buyers whose order was accepted; each is a distinct customer with its
    /// own key, so each must have got a different order id.
    pub accepted_buyers: u64,
    /// Decisions observed through the API (polling, or the synchronous
    /// answer); unused when they were learnt from the database.
    pub decisions: HashMap<Uuid, ObservedDecision>,
    /// `--decisions db`: how the wait for the decisions ended; `None` when
    /// they were observed through the API (poll, or the synchronous answer).
    pub db_watch: Option<DbWatchView>,
    /// `stock` from `GET /v1/products/{id}`.
    pub api_stock: i64,
}

/// `--decisions db`, over every phase: whether the pending count reached
/// zero within the timeout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbWatchView {
    pub drained: bool,
    pub pending: i64,
    pub waited_secs: f64,
    pub timeout_secs: u64,
}

/// The product's row of the `stock_audit` view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockAudit {
    pub initial_stock: i64,
    pub restocked: i64,
    pub stock: i64,
    pub confirmed_units: i64,
    pub balanced: Option<bool>,
}

/// A (customer, idempotency key) pair found on more than one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    pub customer_id: String,
    pub idempotency_key: String,
    pub count: i64,
}

/// One `orders` row of the product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub id: Uuid,
    pub status: OrderStatus,
    pub reason: Option<String>,
    pub quantity: i64,
    pub queue_sequence: Option<i64>,
    pub queue_index: Option<i64>,
}

impl OrderRow {
    /// The order's place in its product's queue, if it has one.
    pub fn queue_position(&self) -> Option<QueuePos> {
        self.queue_sequence
            .map(|sequence| QueuePos::new(sequence, self.queue_index))
    }

    #[cfg(test)]
    fn is_stock_rejection(&self) -> bool {
        self.status == OrderStatus::Rejected && self.reason.as_deref().is_some_and(is_stock_reason)
    }
}

/// A place in a product's queue: `(queue_sequence, queue_index)`, compared
/// lexicographically (the field order makes the derived `Ord` do that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueuePos {
    /// Stream sequence of the message that carried the order.
    pub sequence: i64,
    /// Position inside that message; a single-order message's NULL index
    /// counts as 0.
    pub index: i64,
}

impl QueuePos {
    pub fn new(sequence: i64, index: Option<i64>) -> Self {
        Self {
            sequence,
            index: index.unwrap_or(0),
        }
    }
}

impl std::fmt::Display for QueuePos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({}, {})", self.sequence, self.index)
    }
}

/// The two queue positions first-come first-served is judged on, read from
/// PostgreSQL with `ORDER BY queue_sequence, queue_index ... LIMIT 1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FifoBoundary {
    /// The latest confirmed order's position.
    pub last_confirmed: Option<QueuePos>,
    /// The earliest position of an order rejected for stock reasons.
    pub first_stock_rejection: Option<QueuePos>,
}

impl FifoBoundary {
    /// First-come first-served holds when every confirmed order comes before
    /// every stock rejection; vacuous when either set is empty.
    pub fn holds(&self) -> bool {
        match (self.last_confirmed, self.first_stock_rejection) {
            (Some(confirmed), Some(rejected)) => confirmed < rejected,
            _ => true,
        }
    }

    /// The same boundary computed from the rows (what the two queries return).
    #[cfg(test)]
    pub fn from_rows(rows: &[OrderRow]) -> Self {
        Self {
            last_confirmed: rows
                .iter()
                .filter(|row| row.status == OrderStatus::Confirmed)
                .filter_map(OrderRow::queue_position)
                .max(),
            first_stock_rejection: rows
                .iter()
                .filter(|row| row.is_stock_rejection())
                .filter_map(OrderRow::queue_position)
                .min(),
        }
    }
}

/// Confirmed quantity of one customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerTotal {
    pub customer_id: String,
    pub confirmed_quantity: i64,
}

/// What PostgreSQL holds for the product.
#[derive(Debug, Clone, Default)]
pub struct DbView {
    pub audit: Option<StockAudit>,
    pub duplicate_keys: Vec<DuplicateKey>,
    pub orders: Vec<OrderRow>,
    pub confirmed_per_customer: Vec<CustomerTotal>,
    pub fifo: FifoBoundary,
}

/// Evaluates every check. The per-customer limit check is included only when
/// the product has a limit; the FIFO checks and the API stock comparison only
/// for checkline.
pub fn evaluate(expect: &Expectation, client: &ClientView, db: &DbView) -> Vec<Check> {
    let mut checks = Vec::new();
    stock_checks(expect, client, db, &mut checks);
    idempotency_checks(client, db, &mut checks);
    decision_checks(client, db, &mut checks);
    if expect.system == System::Checkline {
        fifo_checks(db, &mut checks);
    }
    if let Some(limit) = expect.max_per_customer {
        checks.push(limit_check(limit, db));
    }
    checks
}

/// Folds the checks of several products (`(label, checks)`, same checks in
/// the same order for each) into one check per name: it passes when it
/// passed for every product, and its detail names the failing products.
pub fn aggregate(per_product: &[(String, Vec<Check>)]) -> Vec<Check> {
    let mut names: Vec<(u8, &str)> = Vec::new();
    for (_, checks) in per_product {
        for check in checks {
            if !names.iter().any(|(_, name)| *name == check.name) {
                names.push((check.invariant, &check.name));
            }
        }
    }
    let total = per_product.len();
    names
        .into_iter()
        .map(|(invariant, name)| {
            let outcomes: Vec<(&str, &Check)> = per_product
                .iter()
                .filter_map(|(label, checks)| {
                    checks
                        .iter()
                        .find(|check| check.name == name)
                        .map(|check| (label.as_str(), check))
                })
                .collect();
            let failed: Vec<&(&str, &Check)> =
                outcomes.iter().filter(|(_, check)| !check.passed).collect();
            let detail = if let Some((label, first)) = failed.first() {
                let mut detail = format!(
                    "failed for {} of {total} products: {label}: {}",
                    failed.len(),
                    first.detail
                );
                let others: Vec<&str> = failed
                    .iter()
                    .skip(1)
                    .take(EXAMPLES)
                    .map(|(label, _)| *label)
                    .collect();
                if !others.is_empty() {
                    let _ = write!(detail, "; also {}", others.join(", "));
                    if failed.len() > 1 + others.len() {
                        let _ = write!(detail, " and {} more", failed.len() - 1 - others.len());
                    }
                }
                detail
            } else if let Some((label, first)) = outcomes.first() {
                format!(
                    "passed for all {} of {total} products (e.g. {label}: {})",
                    outcomes.len(),
                    first.detail
                )
            } else {
                format!("no product had this check (of {total})")
            };
            Check::new(
                invariant,
                name,
                failed.is_empty() && outcomes.len() == total && total > 0,
                detail,
            )
        })
        .collect()
}

/// True when there are checks and all of them passed.
pub fn all_passed(checks: &[Check]) -> bool {
    !checks.is_empty() && checks.iter().all(|check| check.passed)
}

/// The checks as `PASS`/`FAIL` lines, with a closing verdict.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::from("Invariant checks\n");
    for check in checks {
        let _ = writeln!(
            out,
            "  {} [{}] {}: {}",
            if check.passed { "PASS" } else { "FAIL" },
            check.invariant,
            check.name,
            check.detail
        );
    }
    let failed = checks.iter().filter(|check| !check.passed).count();
    if all_passed(checks) {
        let _ = writeln!(out, "Result: PASS (all {} checks passed)", checks.len());
    } else {
        let _ = writeln!(
            out,
            "Result: FAIL ({failed} of {} checks failed)",
            checks.len()
        );
    }
    out
}

fn confirmed_units(db: &DbView) -> i64 {
    db.orders
        .iter()
        .filter(|row| row.status == OrderStatus::Confirmed)
        .map(|row| row.quantity)
        .sum()
}

fn stock_checks(expect: &Expectation, client: &ClientView, db: &DbView, out: &mut Vec<Check>) {
    let compare_api = expect.system == System::Checkline;
    let Some(audit) = &db.audit else {
        let missing = || "the product has no row in stock_audit".to_owned();
        out.push(Check::new(1, "stock audit balanced", false, missing()));
        out.push(Check::new(1, "stock not negative", false, missing()));
        if compare_api {
            out.push(Check::new(
                1,
                "API stock matches the database",
                false,
                missing(),
            ));
        }
        out.push(Check::new(
            1,
            "stock = initial stock - confirmed units",
            false,
            missing(),
        ));
        out.push(confirmed_count_check(expect, client, db));
        return;
    };

    let lhs = audit.initial_stock + audit.restocked;
    let rhs = audit.stock + audit.confirmed_units;
    out.push(Check::new(
        1,
        "stock audit balanced",
        audit.balanced == Some(true),
        format!(
            "initial {} + restocked {} {} stock {} + confirmed units {} (balanced = {})",
            audit.initial_stock,
            audit.restocked,
            if lhs == rhs { "=" } else { "!=" },
            audit.stock,
            audit.confirmed_units,
            audit
                .balanced
                .map_or_else(|| "null".to_owned(), |b| b.to_string()),
        ),
    ));

    out.push(Check::new(
        1,
        "stock not negative",
        audit.stock >= 0,
        format!("stock {}", audit.stock),
    ));

    if compare_api {
        out.push(Check::new(
            1,
            "API stock matches the database",
            client.api_stock == audit.stock,
            format!("API {}, database {}", client.api_stock, audit.stock),
        ));
    }

    let units = confirmed_units(db);
    let expected_stock = expect.initial_stock - units;
    out.push(Check::new(
        1,
        "stock = initial stock - confirmed units",
        audit.initial_stock == expect.initial_stock
            && audit.restocked == 0
            && audit.stock == expected_stock,
        format!(
            "stock {}, expected {} - {units} = {expected_stock} (initial stock recorded {}, restocked {})",
            audit.stock, expect.initial_stock, audit.initial_stock, audit.restocked
        ),
    ));

    out.push(confirmed_count_check(expect, client, db));
}

/// With distinct buyers placing one order each of the same quantity and no
/// restock, first come first served confirms exactly the first
/// `initial_stock / quantity` accepted orders (none if the quantity exceeds
/// the per-customer limit).
fn confirmed_count_check(expect: &Expectation, client: &ClientView, db: &DbView) -> Check {
    let accepted = to_i64(client.accepted.len());
    let confirmed = to_i64(
        db.orders
            .iter()
            .filter(|row| row.status == OrderStatus::Confirmed)
            .count(),
    );
    let quantity = expect.quantity.max(1);
    let over_limit = expect
        .max_per_customer
        .is_some_and(|limit| quantity > limit);
    let (expected, why) = if over_limit {
        (
            0,
            format!(
                "every order's quantity {quantity} exceeds the per-customer limit {}",
                expect.max_per_customer.unwrap_or_default()
            ),
        )
    } else {
        let fits = expect.initial_stock / quantity;
        let expected = fits.min(accepted);
        let formula = if quantity == 1 {
            format!("min(stock {}, accepted {accepted})", expect.initial_stock)
        } else {
            format!(
                "min(stock {} / quantity {quantity}, accepted {accepted})",
                expect.initial_stock
            )
        };
        (expected, formula)
    };
    Check::new(
        1,
        "confirmed orders = first-come share of the stock",
        confirmed == expected,
        format!("confirmed {confirmed}, expected {expected} = {why}"),
    )
}

fn idempotency_checks(client: &ClientView, db: &DbView, out: &mut Vec<Check>) {
    let duplicates = &db.duplicate_keys;
    let detail = if duplicates.is_empty() {
        "no (customer, idempotency key) on more than one order".to_owned()
    } else {
        format!(
            "{} keys on more than one order, e.g. {}",
            duplicates.len(),
            duplicates
                .iter()
                .take(EXAMPLES)
                .map(|d| format!("{}/{} x{}", d.customer_id, d.idempotency_key, d.count))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    out.push(Check::new(
        2,
        "one order per idempotency key",
        duplicates.is_empty(),
        detail,
    ));

    let distinct = u64::try_from(client.accepted.len()).unwrap_or(u64::MAX);
    out.push(Check::new(
        2,
        "a distinct order for every accepted buyer",
        distinct == client.accepted_buyers,
        format!(
            "{} buyers accepted, {distinct} distinct order ids",
            client.accepted_buyers
        ),
    ));

    let in_db: BTreeSet<Uuid> = db.orders.iter().map(|row| row.id).collect();
    let missing: Vec<Uuid> = client.accepted.difference(&in_db).copied().collect();
    let unexpected: Vec<Uuid> = in_db.difference(&client.accepted).copied().collect();
    let mut detail = format!(
        "{} order rows, {} accepted order ids",
        db.orders.len(),
        client.accepted.len()
    );
    if !missing.is_empty() {
        let _ = write!(
            detail,
            "; accepted but not in the database: {}",
            examples(&missing)
        );
    }
    if !unexpected.is_empty() {
        let _ = write!(
            detail,
            "; in the database but never accepted: {}",
            examples(&unexpected)
        );
    }
    out.push(Check::new(
        2,
        "order rows = accepted orders",
        db.orders.len() == client.accepted.len() && missing.is_empty() && unexpected.is_empty(),
        detail,
    ));
}

fn decision_checks(client: &ClientView, db: &DbView, out: &mut Vec<Check>) {
    let mut rows_by_id: HashMap<Uuid, Vec<&OrderRow>> = HashMap::new();
    for row in &db.orders {
        rows_by_id.entry(row.id).or_default().push(row);
    }

    let (mut decided, mut pending, mut missing, mut duplicated) = (0usize, 0usize, 0usize, 0usize);
    let mut bad = Vec::new();
    for id in &client.accepted {
        match rows_by_id.get(id).map(Vec::as_slice) {
            None | Some([]) => {
                missing += 1;
                bad.push(*id);
            }
            Some([row]) if row.status == OrderStatus::Pending => {
                pending += 1;
                bad.push(*id);
            }
            Some([_]) => decided += 1,
            Some(_) => {
                duplicated += 1;
                bad.push(*id);
            }
        }
    }
    let mut detail = format!(
        "{} accepted: {decided} decided, {pending} pending, {missing} missing, {duplicated} duplicated",
        client.accepted.len()
    );
    if !bad.is_empty() {
        let _ = write!(detail, "; e.g. {}", examples(&bad));
    }
    out.push(Check::new(
        3,
        "every accepted order decided exactly once",
        bad.is_empty(),
        detail,
    ));

    if let Some(DbWatchView {
        drained,
        pending,
        waited_secs,
        timeout_secs,
    }) = client.db_watch
    {
        let detail = if drained {
            format!("no order pending after {waited_secs:.1} s (PostgreSQL watched every 100 ms)")
        } else {
            format!(
                "{pending} orders still pending when the {timeout_secs} s decision timeout expired"
            )
        };
        out.push(Check::new(
            3,
            "every accepted order decided within the timeout",
            drained,
            detail,
        ));
        return;
    }

    let unobserved: Vec<Uuid> = client
        .accepted
        .iter()
        .filter(|id| !client.decisions.contains_key(id))
        .copied()
        .collect();
    let mut detail = format!(
        "{} of {} accepted orders seen decided",
        client.accepted.len() - unobserved.len(),
        client.accepted.len()
    );
    if !unobserved.is_empty() {
        let _ = write!(detail, "; never seen decided: {}", examples(&unobserved));
    }
    out.push(Check::new(
        3,
        "every buyer learned the decision in time",
        unobserved.is_empty(),
        detail,
    ));

    let mut disagreements = Vec::new();
    for (id, seen) in &client.decisions {
        let agrees = match rows_by_id.get(id).map(Vec::as_slice) {
            Some([row]) => row.status == seen.status && row.reason == seen.reason,
            _ => false,
        };
        if !agrees {
            disagreements.push(*id);
        }
    }
    disagreements.sort_unstable();
    let mut detail = format!(
        "{} observed decisions, {} differ from the database",
        client.decisions.len(),
        disagreements.len()
    );
    if let Some(first) = disagreements.first() {
        let api = client.decisions.get(first).map(describe_decision);
        let database = rows_by_id
            .get(first)
            .and_then(|rows| rows.first())
            .map(|row| describe_status(row.status, row.reason.as_deref()));
        let _ = write!(
            detail,
            "; e.g. {first}: API said {}, database has {}",
            api.unwrap_or_else(|| "nothing".to_owned()),
            database.unwrap_or_else(|| "no row".to_owned())
        );
    }
    out.push(Check::new(
        3,
        "observed decisions match the database",
        disagreements.is_empty(),
        detail,
    ));
}

fn fifo_checks(db: &DbView, out: &mut Vec<Check>) {
    let decided: Vec<&OrderRow> = db
        .orders
        .iter()
        .filter(|row| row.status != OrderStatus::Pending)
        .collect();
    let unsequenced: Vec<Uuid> = decided
        .iter()
        .filter(|row| row.queue_sequence.is_none())
        .map(|row| row.id)
        .collect();
    let mut detail = format!(
        "{} of {} decided orders without queue_sequence",
        unsequenced.len(),
        decided.len()
    );
    if !unsequenced.is_empty() {
        let _ = write!(detail, "; e.g. {}", examples(&unsequenced));
    }
    out.push(Check::new(
        4,
        "queue_sequence set on every decided order",
        unsequenced.is_empty(),
        detail,
    ));

    let boundary = db.fifo;
    let (passed, detail) = match (boundary.last_confirmed, boundary.first_stock_rejection) {
        (Some(last_confirmed), Some(first_rejected)) => {
            let late = decided
                .iter()
                .filter(|row| row.status == OrderStatus::Confirmed)
                .filter_map(|row| row.queue_position())
                .filter(|position| *position > first_rejected)
                .count();
            let mut detail = format!(
                "(queue_sequence, queue_index): last confirmed at {last_confirmed}, \
                 first stock rejection at {first_rejected}"
            );
            if late > 0 {
                let _ = write!(detail, "; {late} confirmed after the first stock rejection");
            }
            (boundary.holds(), detail)
        }
        (confirmed, rejected) => (
            true,
            format!(
                "nothing to compare: {} confirmed and {} stock-rejected orders with a queue position",
                if confirmed.is_some() { "some" } else { "no" },
                if rejected.is_some() { "some" } else { "no" },
            ),
        ),
    };
    out.push(Check::new(
        4,
        "confirmed orders precede stock rejections (FIFO)",
        passed,
        detail,
    ));
}

fn limit_check(limit: i64, db: &DbView) -> Check {
    let over: Vec<&CustomerTotal> = db
        .confirmed_per_customer
        .iter()
        .filter(|total| total.confirmed_quantity > limit)
        .collect();
    let highest = db
        .confirmed_per_customer
        .iter()
        .map(|total| total.confirmed_quantity)
        .max()
        .unwrap_or(0);
    let mut detail = format!(
        "highest confirmed quantity per customer {highest}, limit {limit}; {} customers over",
        over.len()
    );
    if !over.is_empty() {
        let names: Vec<String> = over
            .iter()
            .take(EXAMPLES)
            .map(|total| format!("{} ({})", total.customer_id, total.confirmed_quantity))
            .collect();
        let _ = write!(detail, ", e.g. {}", names.join(", "));
    }
    Check::new(
        5,
        "confirmed quantity per customer within the limit",
        over.is_empty(),
        detail,
    )
}

fn describe_status(status: OrderStatus, reason: Option<&str>) -> String {
    let status = status.as_str();
    match reason {
        Some(reason) => format!("{status}/{reason}"),
        None => status.to_owned(),
    }
}

fn describe_decision(decision: &ObservedDecision) -> String {
    describe_status(decision.status, decision.reason.as_deref())
}

fn examples(ids: &[Uuid]) -> String {
    let mut text = ids
        .iter()
        .take(EXAMPLES)
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > EXAMPLES {
        let _ = write!(text, " and {} more", ids.len() - EXAMPLES);
    }
    text
}

fn to_i64(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A consistent world: `accepted` buyers with distinct ids in queue order,
    /// quantity 1, the first `stock` confirmed and the rest sold out.
    struct World {
        expect: Expectation,
        client: ClientView,
        db: DbView,
        derive_fifo: bool,
    }

    fn healthy(stock: i64, accepted: usize) -> World {
        let mut client = ClientView::default();
        let mut db = DbView::default();
        let mut confirmed = 0i64;
        for seq in 0..accepted {
            let id = Uuid::from_u128(seq as u128 + 1);
            let (status, reason) = if confirmed < stock {
                confirmed += 1;
                (OrderStatus::Confirmed, None)
            } else {
                (OrderStatus::Rejected, Some("sold_out".to_owned()))
            };
            client.accepted.insert(id);
            client.accepted_buyers += 1;
            client.decisions.insert(
                id,
                ObservedDecision {
                    status,
                    reason: reason.clone(),
                },
            );
            db.orders.push(OrderRow {
                id,
                status,
                reason,
                quantity: 1,
                queue_sequence: Some(100 + seq as i64),
                queue_index: None,
            });
            if status == OrderStatus::Confirmed {
                db.confirmed_per_customer.push(CustomerTotal {
                    customer_id: format!("buyer-run-{seq}"),
                    confirmed_quantity: 1,
                });
            }
        }
        client.api_stock = stock - confirmed;
        db.audit = Some(StockAudit {
            initial_stock: stock,
            restocked: 0,
            stock: stock - confirmed,
            confirmed_units: confirmed,
            balanced: Some(true),
        });
        World {
            expect: Expectation {
                system: System::Checkline,
                initial_stock: stock,
                quantity: 1,
                max_per_customer: None,
            },
            client,
            db,
            derive_fifo: true,
        }
    }

    impl World {
        /// Evaluates the checks; unless told otherwise, the FIFO boundary is
        /// what the boundary queries would return for the rows.
        fn checks(&self) -> Vec<Check> {
            let mut db = self.db.clone();
            if self.derive_fifo {
                db.fifo = FifoBoundary::from_rows(&db.orders);
            }
            evaluate(&self.expect, &self.client, &db)
        }

        fn failed(&self) -> Vec<String> {
            self.checks()
                .into_iter()
                .filter(|check| !check.passed)
                .map(|check| check.name)
                .collect()
        }
    }

    fn by_name<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks
            .iter()
            .find(|check| check.name == name)
            .unwrap_or_else(|| panic!("no check named {name:?}"))
    }

    #[test]
    fn a_healthy_sale_passes_everything() {
        for (stock, accepted) in [(100, 2000), (100, 40), (0, 10), (5, 5), (3, 0)] {
            let world = healthy(stock, accepted);
            let checks = world.checks();
            assert!(all_passed(&checks), "{stock}/{accepted}: {checks:#?}");
            assert_eq!(checks.len(), 13, "no limit check without a limit");
        }
    }

    #[test]
    fn confirmed_count_is_the_first_come_share() {
        let world = healthy(100, 40);
        let checks = world.checks();
        let check = by_name(&checks, "confirmed orders = first-come share of the stock");
        assert_eq!(
            check.detail,
            "confirmed 40, expected 40 = min(stock 100, accepted 40)"
        );

        // One more confirmation than stock allows (and the stock figures
        // adjusted so only this check can notice).
        let mut world = healthy(10, 20);
        let row = world
            .db
            .orders
            .iter_mut()
            .find(|row| row.status == OrderStatus::Rejected)
            .unwrap();
        row.status = OrderStatus::Confirmed;
        row.reason = None;
        let id = row.id;
        world.client.decisions.get_mut(&id).unwrap().status = OrderStatus::Confirmed;
        world.client.decisions.get_mut(&id).unwrap().reason = None;
        let failed = world.failed();
        assert!(failed.contains(&"confirmed orders = first-come share of the stock".to_owned()));
        assert!(failed.contains(&"stock = initial stock - confirmed units".to_owned()));
    }

    #[test]
    fn larger_quantities_and_limits_change_the_expectation() {
        // Quantity 3 out of 10: three orders fit.
        let mut world = healthy(10, 0);
        world.expect.quantity = 3;
        for seq in 0..5i64 {
            let id = Uuid::from_u128(seq as u128 + 1);
            let (status, reason) = if seq < 3 {
                (OrderStatus::Confirmed, None)
            } else {
                (OrderStatus::Rejected, Some("insufficient_stock".to_owned()))
            };
            world.client.accepted.insert(id);
            world.client.accepted_buyers += 1;
            world.client.decisions.insert(
                id,
                ObservedDecision {
                    status,
                    reason: reason.clone(),
                },
            );
            world.db.orders.push(OrderRow {
                id,
                status,
                reason,
                quantity: 3,
                queue_sequence: Some(seq),
                queue_index: None,
            });
        }
        world.db.audit = Some(StockAudit {
            initial_stock: 10,
            restocked: 0,
            stock: 1,
            confirmed_units: 9,
            balanced: Some(true),
        });
        world.client.api_stock = 1;
        assert!(all_passed(&world.checks()), "{:#?}", world.checks());

        // A limit below the quantity: nothing may be confirmed.
        world.expect.max_per_customer = Some(2);
        let checks = world.checks();
        let check = by_name(&checks, "confirmed orders = first-come share of the stock");
        assert!(!check.passed);
        assert!(
            check.detail.contains("exceeds the per-customer limit 2"),
            "{}",
            check.detail
        );
    }

    #[test]
    fn stock_problems_are_reported() {
        let mut world = healthy(10, 20);
        world.client.api_stock = 3;
        let audit = world.db.audit.as_mut().unwrap();
        audit.balanced = Some(false);
        audit.stock = -1;
        let failed = world.failed();
        for name in [
            "stock audit balanced",
            "stock not negative",
            "API stock matches the database",
            "stock = initial stock - confirmed units",
        ] {
            assert!(failed.contains(&name.to_owned()), "{name}: {failed:?}");
        }
        let checks = world.checks();
        assert_eq!(
            by_name(&checks, "API stock matches the database").detail,
            "API 3, database -1"
        );
        assert!(by_name(&checks, "stock audit balanced")
            .detail
            .contains("!="));

        world.db.audit = None;
        let checks = world.checks();
        assert!(!all_passed(&checks));
        assert_eq!(checks.iter().filter(|c| c.invariant == 1).count(), 5);
    }

    #[test]
    fn restocks_are_unexpected_in_a_flash_sale() {
        let mut world = healthy(10, 20);
        let audit = world.db.audit.as_mut().unwrap();
        audit.restocked = 5;
        audit.stock += 5;
        world.client.api_stock += 5;
        assert_eq!(world.failed(), ["stock = initial stock - confirmed units"]);
    }

    #[test]
    fn duplicate_keys_and_stray_orders_fail_invariant_2() {
        let mut world = healthy(10, 20);
        world.db.duplicate_keys.push(DuplicateKey {
            customer_id: "buyer-run-1".into(),
            idempotency_key: "k".into(),
            count: 2,
        });
        // An order the API refused to us but created anyway.
        world.db.orders.push(OrderRow {
            id: Uuid::from_u128(999),
            status: OrderStatus::Rejected,
            reason: Some("sold_out".into()),
            quantity: 1,
            queue_sequence: Some(10_000),
            queue_index: None,
        });
        assert_eq!(
            world.failed(),
            [
                "one order per idempotency key",
                "order rows = accepted orders"
            ]
        );
        let checks = world.checks();
        let rows = by_name(&checks, "order rows = accepted orders");
        assert!(
            rows.detail.contains("21 order rows, 20 accepted order ids"),
            "{}",
            rows.detail
        );
        assert!(rows
            .detail
            .contains("never accepted: 00000000-0000-0000-0000-0000000003e7"));
    }

    #[test]
    fn lost_and_undecided_orders_fail_invariant_3() {
        let mut world = healthy(10, 20);
        let lost = Uuid::from_u128(5);
        world.db.orders.retain(|row| row.id != lost);
        world.db.orders[0].status = OrderStatus::Pending;
        world.db.orders[0].reason = None;
        let checks = world.checks();
        let decided = by_name(&checks, "every accepted order decided exactly once");
        assert!(!decided.passed);
        assert!(
            decided
                .detail
                .starts_with("20 accepted: 18 decided, 1 pending, 1 missing, 0 duplicated"),
            "{}",
            decided.detail
        );
        let matches = by_name(&checks, "observed decisions match the database");
        assert!(!matches.passed);
        assert!(matches.detail.contains("2 differ"), "{}", matches.detail);
    }

    #[test]
    fn duplicated_rows_and_unobserved_decisions() {
        let mut world = healthy(10, 20);
        let copy = world.db.orders[3].clone();
        world.db.orders.push(copy);
        let unseen = Uuid::from_u128(7);
        world.client.decisions.remove(&unseen);
        let checks = world.checks();
        assert!(
            by_name(&checks, "every accepted order decided exactly once")
                .detail
                .contains("1 duplicated")
        );
        let learned = by_name(&checks, "every buyer learned the decision in time");
        assert!(!learned.passed);
        assert!(learned
            .detail
            .starts_with("19 of 20 accepted orders seen decided"));
    }

    #[test]
    fn one_order_id_for_two_buyers_fails_invariant_2() {
        let mut world = healthy(10, 20);
        world.client.accepted_buyers += 1;
        assert_eq!(
            world.failed(),
            ["a distinct order for every accepted buyer"]
        );
        let checks = world.checks();
        assert_eq!(
            by_name(&checks, "a distinct order for every accepted buyer").detail,
            "21 buyers accepted, 20 distinct order ids"
        );
    }

    #[test]
    fn decisions_that_disagree_with_the_database() {
        let mut world = healthy(10, 20);
        let id = Uuid::from_u128(15);
        world.client.decisions.insert(
            id,
            ObservedDecision {
                status: OrderStatus::Confirmed,
                reason: None,
            },
        );
        assert_eq!(world.failed(), ["observed decisions match the database"]);
        let checks = world.checks();
        assert!(by_name(&checks, "observed decisions match the database")
            .detail
            .contains("API said confirmed, database has rejected/sold_out"));
    }

    #[test]
    fn fifo_violations_fail_invariant_4() {
        let mut world = healthy(10, 20);
        // Swap the queue positions of the last confirmed and first rejected.
        world.db.orders[9].queue_sequence = Some(110);
        world.db.orders[10].queue_sequence = Some(109);
        let checks = world.checks();
        let fifo = by_name(&checks, "confirmed orders precede stock rejections (FIFO)");
        assert!(!fifo.passed);
        assert!(
            fifo.detail
                .contains("last confirmed at (110, 0), first stock rejection at (109, 0)"),
            "{}",
            fifo.detail
        );
        assert!(fifo.detail.contains("1 confirmed after"));

        let mut world = healthy(10, 20);
        world.db.orders[4].queue_sequence = None;
        assert_eq!(
            world.failed(),
            ["queue_sequence set on every decided order"]
        );

        // Rejections for other reasons do not count against FIFO.
        let mut world = healthy(10, 20);
        world.db.orders[10].reason = Some("limit_exceeded".into());
        world.db.orders[10].queue_sequence = Some(1);
        world
            .client
            .decisions
            .get_mut(&world.db.orders[10].id)
            .unwrap()
            .reason = Some("limit_exceeded".into());
        assert!(!world
            .failed()
            .contains(&"confirmed orders precede stock rejections (FIFO)".to_owned()));
    }

    #[test]
    fn queue_positions_compare_as_tuples() {
        let pos = |sequence, index| QueuePos::new(sequence, index);
        assert!(pos(5, Some(3)) < pos(5, Some(4)));
        assert!(pos(5, Some(999)) < pos(6, Some(0)));
        assert!(pos(6, None) < pos(6, Some(1)), "a NULL index counts as 0");
        assert_eq!(pos(6, None), pos(6, Some(0)));
        assert_eq!(pos(7, Some(2)).to_string(), "(7, 2)");

        let boundary = |confirmed, rejected| FifoBoundary {
            last_confirmed: confirmed,
            first_stock_rejection: rejected,
        };
        // Same message: confirmed at index 3, rejection at index 4.
        assert!(boundary(Some(pos(5, Some(3))), Some(pos(5, Some(4)))).holds());
        // Same message, the other way round.
        assert!(!boundary(Some(pos(5, Some(4))), Some(pos(5, Some(3)))).holds());
        // Earlier message with a larger index still comes first.
        assert!(boundary(Some(pos(5, Some(900))), Some(pos(6, Some(0)))).holds());
        assert!(!boundary(Some(pos(6, Some(0))), Some(pos(5, Some(900)))).holds());
        // Equal positions (a NULL index is 0) mean two orders claim the same
        // place: not "before", so a violation.
        assert!(!boundary(Some(pos(6, None)), Some(pos(6, Some(0)))).holds());
        assert!(boundary(None, Some(pos(1, None))).holds());
        assert!(boundary(Some(pos(1, None)), None).holds());
        assert!(boundary(None, None).holds());
    }

    #[test]
    fn fifo_within_one_message_uses_queue_index() {
        // Twenty orders in two messages of ten: (100, 0..9) and (101, 0..9);
        // the first ten are confirmed.
        let mut world = healthy(10, 20);
        for (i, row) in world.db.orders.iter_mut().enumerate() {
            row.queue_sequence = Some(100 + (i / 10) as i64);
            row.queue_index = Some((i % 10) as i64);
        }
        assert!(world.failed().is_empty(), "{:#?}", world.checks());

        // One message holding all twenty: still FIFO by index.
        let mut world = healthy(10, 20);
        for (i, row) in world.db.orders.iter_mut().enumerate() {
            row.queue_sequence = Some(100);
            row.queue_index = Some(i as i64);
        }
        assert!(world.failed().is_empty(), "{:#?}", world.checks());

        // Inside that message, a rejection placed before the last confirmed
        // order breaks FIFO even though the sequences are equal.
        world.db.orders[9].queue_index = Some(10);
        world.db.orders[10].queue_index = Some(9);
        assert_eq!(
            world.failed(),
            ["confirmed orders precede stock rejections (FIFO)"]
        );
        let checks = world.checks();
        let fifo = by_name(&checks, "confirmed orders precede stock rejections (FIFO)");
        assert!(
            fifo.detail
                .contains("last confirmed at (100, 10), first stock rejection at (100, 9)"),
            "{}",
            fifo.detail
        );
    }

    #[test]
    fn fifo_verdict_comes_from_the_boundary_queries() {
        // The rows are in order, but the boundary queries report otherwise:
        // the verdict follows the queries.
        let mut world = healthy(10, 20);
        world.derive_fifo = false;
        world.db.fifo = FifoBoundary {
            last_confirmed: Some(QueuePos::new(120, Some(1))),
            first_stock_rejection: Some(QueuePos::new(120, Some(0))),
        };
        assert_eq!(
            world.failed(),
            ["confirmed orders precede stock rejections (FIFO)"]
        );
        world.db.fifo = FifoBoundary::default();
        let checks = world.checks();
        let fifo = by_name(&checks, "confirmed orders precede stock rejections (FIFO)");
        assert!(fifo.passed);
        assert!(
            fifo.detail.starts_with("nothing to compare"),
            "{}",
            fifo.detail
        );
    }

    #[test]
    fn database_tracking_replaces_the_observation_checks() {
        let mut world = healthy(10, 20);
        world.client.decisions.clear();
        world.client.db_watch = Some(DbWatchView {
            drained: true,
            pending: 0,
            waited_secs: 0.3,
            timeout_secs: 60,
        });
        let checks = world.checks();
        assert!(all_passed(&checks), "{checks:#?}");
        assert_eq!(checks.len(), 12);
        let names: Vec<&str> = checks.iter().map(|check| check.name.as_str()).collect();
        assert!(names.contains(&"every accepted order decided within the timeout"));
        assert!(!names.contains(&"every buyer learned the decision in time"));
        assert!(!names.contains(&"observed decisions match the database"));

        world.client.db_watch = Some(DbWatchView {
            drained: false,
            pending: 4,
            waited_secs: 60.0,
            timeout_secs: 60,
        });
        let checks = world.checks();
        let timely = by_name(&checks, "every accepted order decided within the timeout");
        assert!(!timely.passed);
        assert_eq!(
            timely.detail,
            "4 orders still pending when the 60 s decision timeout expired"
        );
    }

    #[test]
    fn baseline_skips_queue_and_api_checks() {
        let mut world = healthy(10, 20);
        world.expect.system = System::Baseline;
        for row in &mut world.db.orders {
            row.queue_sequence = None;
        }
        world.client.api_stock = -99;
        let checks = world.checks();
        assert!(all_passed(&checks), "{checks:#?}");
        assert_eq!(checks.len(), 10);
        assert!(checks.iter().all(|check| check.invariant != 4));

        // Invariant 1 still bites.
        world.db.audit.as_mut().unwrap().balanced = Some(false);
        assert_eq!(world.failed(), ["stock audit balanced"]);
    }

    #[test]
    fn products_are_aggregated_per_check() {
        let good = healthy(10, 20).checks();
        let mut bad_world = healthy(10, 20);
        bad_world.client.api_stock = 3;
        let bad = bad_world.checks();

        let all_good: Vec<(String, Vec<Check>)> = (0..3)
            .map(|i| (format!("LOAD-X-{i}"), good.clone()))
            .collect();
        let folded = aggregate(&all_good);
        assert_eq!(folded.len(), good.len());
        assert!(all_passed(&folded));
        assert!(folded[0]
            .detail
            .starts_with("passed for all 3 of 3 products (e.g. LOAD-X-0: "));

        let mixed: Vec<(String, Vec<Check>)> = (0..6)
            .map(|i| {
                let checks = if i % 2 == 1 {
                    bad.clone()
                } else {
                    good.clone()
                };
                (format!("LOAD-X-{i}"), checks)
            })
            .collect();
        let folded = aggregate(&mixed);
        let api = by_name(&folded, "API stock matches the database");
        assert!(!api.passed);
        assert_eq!(
            api.detail,
            "failed for 3 of 6 products: LOAD-X-1: API 3, database 0; also LOAD-X-3, LOAD-X-5"
        );
        assert_eq!(folded.iter().filter(|check| !check.passed).count(), 1);

        let many_bad: Vec<(String, Vec<Check>)> =
            (0..10).map(|i| (format!("P{i}"), bad.clone())).collect();
        let api = aggregate(&many_bad)
            .into_iter()
            .find(|check| check.name == "API stock matches the database")
            .unwrap();
        assert!(
            api.detail.ends_with("also P1, P2, P3 and 6 more"),
            "{}",
            api.detail
        );

        // A product missing a check fails it.
        let mut partial = all_good.clone();
        partial[1]
            .1
            .retain(|check| check.name != "stock not negative");
        let folded = aggregate(&partial);
        assert!(!by_name(&folded, "stock not negative").passed);
        assert!(aggregate(&[]).is_empty());
    }

    #[test]
    fn per_customer_limit_is_checked_when_set() {
        let mut world = healthy(10, 20);
        world.expect.max_per_customer = Some(1);
        let checks = world.checks();
        assert_eq!(checks.len(), 14);
        assert!(all_passed(&checks));

        world.db.confirmed_per_customer.push(CustomerTotal {
            customer_id: "greedy".into(),
            confirmed_quantity: 2,
        });
        let checks = world.checks();
        let limit = by_name(&checks, "confirmed quantity per customer within the limit");
        assert_eq!(limit.invariant, 5);
        assert!(!limit.passed);
        assert_eq!(
            limit.detail,
            "highest confirmed quantity per customer 2, limit 1; 1 customers over, e.g. greedy (2)"
        );
    }

    #[test]
    fn rendering() {
        let world = healthy(1, 2);
        let text = render(&world.checks());
        assert!(text.starts_with("Invariant checks\n"));
        assert!(text.contains("  PASS [1] stock audit balanced: initial 1 + restocked 0 = stock 0 + confirmed units 1 (balanced = true)\n"));
        assert!(
            text.ends_with("Result: PASS (all 13 checks passed)\n"),
            "{text}"
        );

        let mut world = healthy(1, 2);
        world.client.api_stock = 7;
        let text = render(&world.checks());
        assert!(text.contains("  FAIL [1] API stock matches the database: API 7, database 0\n"));
        assert!(
            text.ends_with("Result: FAIL (1 of 13 checks failed)\n"),
            "{text}"
        );

        assert!(!all_passed(&[]));
        assert!(render(&[]).ends_with("Result: FAIL (0 of 0 checks failed)\n"));
    }

    #[test]
    fn example_lists_are_bounded() {
        let ids: Vec<Uuid> = (1..=5u128).map(Uuid::from_u128).collect();
        let text = examples(&ids);
        assert!(text.ends_with(" and 2 more"), "{text}");
        assert_eq!(text.matches(", ").count(), 2);
    }

    fn fanout(answers: &[FanoutAnswer]) -> Fanout {
        Fanout {
            answers: answers.to_vec(),
        }
    }

    #[test]
    fn apis_that_name_the_same_order_agree() {
        let id = Uuid::from_u128(7);
        let mut agreement = Agreement::default();
        agreement.record("buyer-run-0", &fanout(&[FanoutAnswer::Order(id); 2]));
        // A 409 or no answer beside a 2xx names no other order.
        agreement.record(
            "buyer-run-1",
            &fanout(&[FanoutAnswer::Order(id), FanoutAnswer::Status(409)]),
        );
        agreement.record(
            "buyer-run-2",
            &fanout(&[FanoutAnswer::NoAnswer, FanoutAnswer::Status(503)]),
        );
        assert_eq!(agreement.buyers, 3);
        assert_eq!(agreement.accepted_by_every_api, 1);
        assert_eq!(agreement.disagreements, 0);
        let check = agreement_check(&agreement);
        assert!(check.passed, "{check:?}");
        assert_eq!(check.invariant, 2);
        assert_eq!(
            check.detail,
            "3 first attempts sent to every API, 1 accepted by every API; \
             every 2xx named the same order"
        );
    }

    #[test]
    fn two_order_ids_for_one_key_fail_invariant_2() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut agreement = Agreement::default();
        agreement.record("buyer-run-0", &fanout(&[FanoutAnswer::Order(a); 2]));
        agreement.record(
            "buyer-run-1",
            &fanout(&[FanoutAnswer::Order(a), FanoutAnswer::Order(b)]),
        );
        let check = agreement_check(&agreement);
        assert!(!check.passed);
        assert_eq!(agreement.disagreements, 1);
        assert!(
            check.detail.ends_with(
                "1 answered with different orders, e.g. buyer-run-1: \
                 00000000-0000-0000-0000-000000000001 / 00000000-0000-0000-0000-000000000002"
            ),
            "{}",
            check.detail
        );

        // A 2xx without an order cannot be shown to agree.
        let mut unreadable = Agreement::default();
        unreadable.record(
            "buyer-run-2",
            &fanout(&[FanoutAnswer::Order(a), FanoutAnswer::Unreadable(202)]),
        );
        assert!(!agreement_check(&unreadable).passed);
        assert!(unreadable.examples[0].ends_with("/ 202 without an order"));

        // Phases add up, and a failure in one fails the run.
        let mut run = Agreement::default();
        run.merge(&unreadable);
        run.merge(&agreement);
        assert_eq!((run.buyers, run.disagreements), (3, 2));
        assert_eq!(run.examples.len(), 2);
        assert!(!agreement_check(&run).passed);
    }
}
