//! Invariants 1-8 of checkout 1.1 (API.md), judged from what the buyers saw
//! ([`BuyerRecord`]) and what PostgreSQL holds ([`CartDbView`]), as a pure
//! function so that each check can be shown to fail on fabricated data.
//!
//! Queue positions: a one-line order's turn is its row's
//! `(queue_sequence, queue_index)`; a line of a cart has its own in
//! `order_lines`. Units come back to a product at a stock return's or a
//! restock's `queue_sequence`, and at a released line's `settle_sequence`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use uuid::Uuid;

use super::db::{CartDbView, CartOrderRow, LineRow};
use super::{ActionAnswer, ActionKind, BuyerRecord, Intent, Submitted};
use crate::checks::{is_stock_reason, Check, QueuePos};
use crate::client::OrderStatus;

/// How many examples a failure names.
const EXAMPLES: usize = 3;

/// A product of the run, as created.
#[derive(Debug, Clone)]
pub struct ProductSetup {
    pub id: Uuid,
    pub sku: String,
    pub initial_stock: i64,
    pub max_per_customer: Option<i64>,
    /// `stock` from `GET /v1/products/{id}` after the run.
    pub api_stock: Option<i64>,
}

/// What the run set up and how it ended, beyond the records.
#[derive(Debug, Clone)]
pub struct CartExpectation {
    pub products: Vec<ProductSetup>,
    /// `--wait-expiry`: every reservation must be final.
    pub wait_expiry: bool,
    /// How long past `reserved_until` an order may still be `reserved`.
    pub expiry_bound: Duration,
}

/// Evaluates every check, in the contract's order.
pub fn evaluate(expect: &CartExpectation, buyers: &[BuyerRecord], db: &CartDbView) -> Vec<Check> {
    let world = World::new(buyers, db);
    let mut checks = Vec::new();
    stock_checks(expect, db, &mut checks);
    checks.push(one_order_per_key(db));
    checks.push(accepted_orders_exist(&world));
    checks.push(refused_requests_left_nothing(&world));
    checks.push(every_order_decided(expect, &world));
    checks.push(seen_decisions_agree(&world));
    checks.push(queue_order(expect, &world));
    checks.push(first_come_first_served(expect, &world));
    checks.push(limits_hold(expect, &world));
    checks.push(served_carts_took_every_line(&world));
    checks.push(rejected_carts_took_nothing(&world));
    checks.push(ended_reservations_returned_every_line(&world));
    checks.push(one_winner_per_reservation(&world));
    checks
}

/// The records and rows, indexed.
struct World<'a> {
    buyers: &'a [BuyerRecord],
    db: &'a CartDbView,
    orders: HashMap<Uuid, &'a CartOrderRow>,
    /// Lines of orders of several lines, by order, in line order.
    lines: HashMap<Uuid, Vec<&'a LineRow>>,
}

impl<'a> World<'a> {
    fn new(buyers: &'a [BuyerRecord], db: &'a CartDbView) -> Self {
        let orders: HashMap<Uuid, &CartOrderRow> =
            db.orders.iter().map(|order| (order.id, order)).collect();
        let mut lines: HashMap<Uuid, Vec<&LineRow>> = HashMap::new();
        for line in &db.lines {
            // A one-line order is judged by its own row.
            if orders
                .get(&line.order_id)
                .is_some_and(|order| order.line_count > 1)
            {
                lines.entry(line.order_id).or_default().push(line);
            }
        }
        for order_lines in lines.values_mut() {
            order_lines.sort_by_key(|line| line.line_no);
        }
        Self {
            buyers,
            db,
            orders,
            lines,
        }
    }

    /// Accepted buyers with their order row, if it exists.
    fn accepted(
        &self,
    ) -> impl Iterator<Item = (&'a BuyerRecord, Uuid, Option<&'a CartOrderRow>)> + '_ {
        self.buyers.iter().filter_map(|buyer| {
            buyer
                .order_id()
                .map(|id| (buyer, id, self.orders.get(&id).copied()))
        })
    }
}

fn stock_checks(expect: &CartExpectation, db: &CartDbView, out: &mut Vec<Check>) {
    let audits: HashMap<Uuid, _> = db.audits.iter().map(|a| (a.product_id, a)).collect();
    let mut missing = Vec::new();
    let mut unbalanced = Vec::new();
    let mut undrained = Vec::new();
    let mut negative = Vec::new();
    let mut api_differs = Vec::new();
    let (mut initial, mut stock, mut units) = (0i64, 0i64, 0i64);
    for product in &expect.products {
        let Some(audit) = audits.get(&product.id) else {
            missing.push(product.sku.clone());
            continue;
        };
        initial += audit.initial_stock + audit.restocked;
        stock += audit.stock;
        units += audit.confirmed_units;
        let lhs = audit.initial_stock + audit.restocked;
        let rhs = audit.stock + audit.held + audit.confirmed_units + audit.returning_units;
        if audit.balanced != Some(true)
            || lhs != rhs
            || audit.initial_stock != product.initial_stock
        {
            unbalanced.push(format!(
                "{}: initial {} (created with {}) + restocked {} vs stock {} + held {} + \
                 reserved/confirmed {} + returning {}",
                product.sku,
                audit.initial_stock,
                product.initial_stock,
                audit.restocked,
                audit.stock,
                audit.held,
                audit.confirmed_units,
                audit.returning_units
            ));
        }
        if audit.held != 0 || audit.returning_units != 0 {
            undrained.push(format!(
                "{}: held {}, returning {}",
                product.sku, audit.held, audit.returning_units
            ));
        }
        if audit.stock < 0 {
            negative.push(format!("{}: {}", product.sku, audit.stock));
        }
        if let Some(api) = product.api_stock {
            if api != audit.stock {
                api_differs.push(format!(
                    "{}: API {api}, database {}",
                    product.sku, audit.stock
                ));
            }
        }
    }
    let n = expect.products.len();
    let missing_note = if missing.is_empty() {
        String::new()
    } else {
        format!("; no stock_audit row: {}", list(&missing))
    };
    out.push(Check::new(
        1,
        "stock audit balanced per product",
        missing.is_empty() && unbalanced.is_empty() && n > 0,
        format!(
            "{} of {n} products balanced (in all: initial + restocked {initial} = stock {stock} \
             + reserved/confirmed {units} + held + returning){}{missing_note}",
            n - missing.len() - unbalanced.len(),
            failures(&unbalanced)
        ),
    ));
    out.push(Check::new(
        1,
        "drained: nothing held or returning",
        missing.is_empty() && undrained.is_empty(),
        format!(
            "{} of {n} products with held = 0 and returning_units = 0{}{missing_note}",
            n - missing.len() - undrained.len(),
            failures(&undrained)
        ),
    ));
    out.push(Check::new(
        1,
        "stock not negative",
        missing.is_empty() && negative.is_empty(),
        format!(
            "{} of {n} products with stock >= 0 (stock left in all {stock}){}{missing_note}",
            n - missing.len() - negative.len(),
            failures(&negative)
        ),
    ));
    let compared = expect
        .products
        .iter()
        .filter(|product| product.api_stock.is_some())
        .count();
    out.push(Check::new(
        1,
        "API stock matches the database",
        api_differs.is_empty() && compared == n,
        format!(
            "{} of {n} products read through the API, {} differ{}",
            compared,
            api_differs.len(),
            failures(&api_differs)
        ),
    ));
}

fn one_order_per_key(db: &CartDbView) -> Check {
    let mut keys: HashMap<(&str, &str), u32> = HashMap::new();
    for order in &db.orders {
        *keys
            .entry((&order.customer_id, &order.idempotency_key))
            .or_default() += 1;
    }
    let mut twice: Vec<String> = keys
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((customer, key), n)| format!("{customer}/{key} x{n}"))
        .collect();
    twice.sort();
    Check::new(
        2,
        "at most one order per (customer, idempotency key)",
        twice.is_empty(),
        format!(
            "{} orders, {} keys, {} on more than one order{}",
            db.orders.len(),
            keys.len(),
            twice.len(),
            failures(&twice)
        ),
    )
}

/// Every 202 has its order, with the buyer's key; and every order of the
/// run belongs to a request the buyers made.
fn accepted_orders_exist(world: &World<'_>) -> Check {
    let mut missing = Vec::new();
    let mut wrong_key = Vec::new();
    for (buyer, id, row) in world.accepted() {
        match row {
            None => missing.push(id.to_string()),
            Some(row)
                if row.customer_id != buyer.customer_id
                    || row.idempotency_key != buyer.idempotency_key =>
            {
                wrong_key.push(format!("{id} ({})", buyer.customer_id));
            }
            Some(_) => {}
        }
    }
    let requests: HashSet<(&str, &str)> = world
        .buyers
        .iter()
        .map(|buyer| (buyer.customer_id.as_str(), buyer.idempotency_key.as_str()))
        .collect();
    let strangers: Vec<String> = world
        .db
        .orders
        .iter()
        .filter(|order| {
            !requests.contains(&(order.customer_id.as_str(), order.idempotency_key.as_str()))
        })
        .map(|order| order.id.to_string())
        .collect();
    let accepted = world.accepted().count();
    let mut detail = format!(
        "{accepted} accepted carts, {} order rows; {} missing, {} under another key, \
         {} from no request of the run",
        world.db.orders.len(),
        missing.len(),
        wrong_key.len(),
        strangers.len()
    );
    for (label, ids) in [
        ("missing", &missing),
        ("another key", &wrong_key),
        ("no request", &strangers),
    ] {
        if !ids.is_empty() {
            let _ = write!(detail, "; {label}: {}", list(ids));
        }
    }
    Check::new(
        2,
        "every accepted cart has its order, and no other order exists",
        missing.is_empty() && wrong_key.is_empty() && strangers.is_empty(),
        detail,
    )
}

/// Invariant 6: a request answered 4xx left no order (hence moved no stock;
/// the audit covers the stock).
fn refused_requests_left_nothing(world: &World<'_>) -> Check {
    let by_key: HashMap<(&str, &str), Uuid> = world
        .db
        .orders
        .iter()
        .map(|order| {
            (
                (order.customer_id.as_str(), order.idempotency_key.as_str()),
                order.id,
            )
        })
        .collect();
    let mut refused = 0usize;
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut leftovers = Vec::new();
    for buyer in world.buyers {
        let Submitted::Refused { status, code, .. } = &buyer.submitted else {
            continue;
        };
        if !(400..500).contains(status) {
            continue;
        }
        refused += 1;
        *codes
            .entry(format!(
                "{status} {}",
                code.as_deref().unwrap_or("(no code)")
            ))
            .or_default() += 1;
        if let Some(id) = by_key.get(&(buyer.customer_id.as_str(), buyer.idempotency_key.as_str()))
        {
            leftovers.push(format!(
                "{id} after {status} {}",
                code.as_deref().unwrap_or("")
            ));
        }
    }
    let codes: Vec<String> = codes.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    Check::new(
        6,
        "no order for a request answered 4xx",
        leftovers.is_empty(),
        format!(
            "{refused} requests answered 4xx ({}), {} left an order{}",
            if codes.is_empty() {
                "none".to_owned()
            } else {
                codes.join(", ")
            },
            leftovers.len(),
            failures(&leftovers)
        ),
    )
}

fn every_order_decided(expect: &CartExpectation, world: &World<'_>) -> Check {
    let bound = chrono::TimeDelta::from_std(expect.expiry_bound).unwrap_or(chrono::TimeDelta::MAX);
    let (mut pending, mut missing, mut open, mut overdue) =
        (Vec::new(), 0usize, Vec::new(), Vec::new());
    let mut statuses: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, id, row) in world.accepted() {
        let Some(row) = row else {
            missing += 1;
            continue;
        };
        *statuses.entry(row.status.as_str()).or_default() += 1;
        match row.status {
            OrderStatus::Pending => pending.push(id.to_string()),
            status if status.is_final() => {}
            _ if expect.wait_expiry => open.push(id.to_string()),
            _ => match row.reserved_until {
                Some(until) if until + bound > world.db.now => {}
                Some(until) => overdue.push(format!(
                    "{id} ({:.1} s past reserved_until)",
                    (world.db.now - until).as_seconds_f64()
                )),
                None => overdue.push(format!("{id} (no reserved_until)")),
            },
        }
    }
    let statuses: Vec<String> = statuses.iter().map(|(s, n)| format!("{s} {n}")).collect();
    let mut detail = format!(
        "{} accepted: {}; {} pending, {missing} missing",
        world.accepted().count(),
        statuses.join(", "),
        pending.len()
    );
    if expect.wait_expiry {
        let _ = write!(
            detail,
            ", {} still reserved after the expiry wait",
            open.len()
        );
    } else {
        let _ = write!(
            detail,
            ", {} reserved beyond reserved_until + {} s",
            overdue.len(),
            expect.expiry_bound.as_secs()
        );
    }
    for (label, ids) in [
        ("pending", &pending),
        ("reserved", &open),
        ("overdue", &overdue),
    ] {
        if !ids.is_empty() {
            let _ = write!(detail, "; {label}: {}", list(ids));
        }
    }
    Check::new(
        3,
        "every accepted cart decided, reservations final or open in time",
        pending.is_empty() && missing == 0 && open.is_empty() && overdue.is_empty(),
        detail,
    )
}

/// Each buyer learned a decision, of the kind its cart asked for, and the
/// database went on from it.
fn seen_decisions_agree(world: &World<'_>) -> Check {
    let mut unseen = Vec::new();
    let mut wrong_kind = Vec::new();
    let mut disagree = Vec::new();
    for (buyer, id, row) in world.accepted() {
        let Some(seen) = &buyer.seen else {
            unseen.push(id.to_string());
            continue;
        };
        let expected_kinds: &[OrderStatus] = if buyer.intent.reserves() {
            &[OrderStatus::Reserved, OrderStatus::Rejected]
        } else {
            &[OrderStatus::Confirmed, OrderStatus::Rejected]
        };
        if !expected_kinds.contains(&seen.status) {
            wrong_kind.push(format!(
                "{id} {} {}",
                if buyer.intent.reserves() {
                    "reserve"
                } else {
                    "buy"
                },
                seen.status.as_str()
            ));
        }
        let Some(row) = row else { continue };
        let agrees = match seen.status {
            OrderStatus::Reserved => matches!(
                row.status,
                OrderStatus::Reserved
                    | OrderStatus::Confirmed
                    | OrderStatus::Cancelled
                    | OrderStatus::Expired
            ),
            OrderStatus::Rejected => {
                row.status == OrderStatus::Rejected
                    && row.reason == seen.reason
                    && (row.line_count == 1 || row.rejected_product_id == seen.rejected_product_id)
            }
            status => row.status == status,
        };
        if !agrees {
            disagree.push(format!(
                "{id}: saw {}{}, database {}{}",
                seen.status.as_str(),
                seen.reason
                    .as_deref()
                    .map(|r| format!("/{r}"))
                    .unwrap_or_default(),
                row.status.as_str(),
                row.reason
                    .as_deref()
                    .map(|r| format!("/{r}"))
                    .unwrap_or_default()
            ));
        }
    }
    let mut detail = format!(
        "{} accepted, {} decisions seen; {} never seen, {} of the wrong kind, {} disagree",
        world.accepted().count(),
        world.accepted().count() - unseen.len(),
        unseen.len(),
        wrong_kind.len(),
        disagree.len()
    );
    for (label, items) in [
        ("unseen", &unseen),
        ("wrong kind", &wrong_kind),
        ("disagree", &disagree),
    ] {
        if !items.is_empty() {
            let _ = write!(detail, "; {label}: {}", list(items));
        }
    }
    Check::new(
        3,
        "every buyer saw its decision, and the database agrees",
        unseen.is_empty() && wrong_kind.is_empty() && disagree.is_empty(),
        detail,
    )
}

/// One product's queue: who took units or was refused at which turn, and
/// when units came back.
#[derive(Default)]
struct Queue {
    /// (turn, units) of entries that took units at their turn.
    takes: Vec<(QueuePos, i64)>,
    /// (turn, units asked, reason, what) of refusals for lack of stock.
    refusals: Vec<(QueuePos, i64, String, String)>,
    /// (queue_sequence, units) of units given back or added.
    returns: Vec<(i64, i64)>,
    /// Entries that took or were refused without a recorded turn.
    unplaced: Vec<String>,
    /// Some entry is a line of a cart, or of more than one unit.
    beyond_single_units: bool,
    entries: usize,
}

impl Queue {
    fn entry(
        &mut self,
        position: Option<QueuePos>,
        quantity: i64,
        took: bool,
        refused: Option<&str>,
        what: String,
    ) {
        self.entries += 1;
        self.beyond_single_units |= quantity != 1;
        if !took && refused.is_none() {
            return;
        }
        let Some(position) = position else {
            self.unplaced.push(what);
            return;
        };
        if took {
            self.takes.push((position, quantity));
        }
        if let Some(reason) = refused {
            self.refusals
                .push((position, quantity, reason.to_owned(), what));
        }
    }
}

/// Builds every product's queue from the rows.
fn queues(world: &World<'_>) -> HashMap<Uuid, Queue> {
    let mut queues: HashMap<Uuid, Queue> = HashMap::new();
    for order in &world.db.orders {
        if order.line_count != 1 {
            continue;
        }
        let (Some(product), Some(quantity)) = (order.product_id, order.quantity) else {
            continue;
        };
        // A reservation cancelled or expired took its units at its turn
        // (and gave them back with a stock return).
        let took = matches!(
            order.status,
            OrderStatus::Reserved | OrderStatus::Confirmed | OrderStatus::Expired
        ) || (order.status == OrderStatus::Cancelled && order.reserved_until.is_some());
        let refused = (order.status == OrderStatus::Rejected)
            .then_some(order.reason.as_deref())
            .flatten()
            .filter(|reason| is_stock_reason(reason));
        let position = order
            .queue_sequence
            .map(|sequence| QueuePos::new(sequence, order.queue_index));
        queues.entry(product).or_default().entry(
            position,
            quantity,
            took,
            refused,
            format!("order {}", order.id),
        );
    }
    for lines in world.lines.values() {
        for line in lines {
            let took = matches!(line.state.as_str(), "held" | "keep" | "taken" | "release")
                || (line.state == "released" && line.settle_sequence.is_some());
            let refused = (line.state == "failed")
                .then_some(line.reason.as_deref())
                .flatten()
                .filter(|reason| is_stock_reason(reason));
            let position = line
                .queue_sequence
                .map(|sequence| QueuePos::new(sequence, line.queue_index));
            let queue = queues.entry(line.product_id).or_default();
            queue.beyond_single_units = true;
            queue.entry(
                position,
                line.quantity,
                took,
                refused,
                format!("order {} line {}", line.order_id, line.line_no),
            );
            if line.state == "released" {
                if let Some(sequence) = line.settle_sequence {
                    queue.returns.push((sequence, line.quantity));
                }
            }
        }
    }
    for ret in &world.db.returns {
        let queue = queues.entry(ret.product_id).or_default();
        match (ret.applied, ret.queue_sequence) {
            (true, Some(sequence)) => queue.returns.push((sequence, ret.quantity)),
            (true, None) => queue.unplaced.push(format!(
                "stock return of order {} applied without a turn",
                ret.order_id
            )),
            // Not back yet: it gives nothing to anyone.
            (false, _) => {}
        }
    }
    for restock in &world.db.restocks {
        let queue = queues.entry(restock.product_id).or_default();
        if let Some(sequence) = restock.queue_sequence {
            queue.returns.push((sequence, restock.quantity));
        }
    }
    queues
}

/// Invariant 4: an entry refused for lack of stock at its turn `p` found
/// no free units (`sold_out`) or fewer than it asked (`insufficient_stock`:
/// at most quantity - 1); so entries after `p` can only have taken those
/// few units plus what came back after `p`.
fn queue_order(expect: &CartExpectation, world: &World<'_>) -> Check {
    let queues = queues(world);
    let mut violations = Vec::new();
    let mut unplaced = Vec::new();
    let (mut refusals, mut takes) = (0usize, 0usize);
    for product in &expect.products {
        let Some(queue) = queues.get(&product.id) else {
            continue;
        };
        refusals += queue.refusals.len();
        takes += queue.takes.len();
        unplaced.extend(
            queue
                .unplaced
                .iter()
                .map(|what| format!("{}: {what}", product.sku)),
        );
        let mut takes_sorted = queue.takes.clone();
        takes_sorted.sort();
        let mut returns_sorted = queue.returns.clone();
        returns_sorted.sort();
        for (position, quantity, reason, what) in &queue.refusals {
            let taken_after: i64 = takes_sorted
                .iter()
                .filter(|(turn, _)| turn > position)
                .map(|(_, units)| units)
                .sum();
            let returned_after: i64 = returns_sorted
                .iter()
                .filter(|(sequence, _)| *sequence > position.sequence)
                .map(|(_, units)| units)
                .sum();
            let free_at_turn = if reason == "insufficient_stock" {
                quantity - 1
            } else {
                0
            };
            if taken_after > returned_after + free_at_turn {
                violations.push(format!(
                    "{}: {what} refused {reason} at {position}, yet {taken_after} units were taken \
                     after it with {returned_after} come back after it (+{free_at_turn} free)",
                    product.sku
                ));
            }
        }
    }
    let mut detail = format!(
        "{refusals} stock refusals against {takes} entries that took units; {} violations, \
         {} entries without a turn",
        violations.len(),
        unplaced.len()
    );
    for (label, items) in [("violations", &violations), ("without a turn", &unplaced)] {
        if !items.is_empty() {
            let _ = write!(detail, "; {label}: {}", list(items));
        }
    }
    Check::new(
        4,
        "units go in queue order: nothing taken after a refusal but what came back",
        violations.is_empty() && unplaced.is_empty(),
        detail,
    )
}

/// Invariant 4's v1 form, on every product whose entries are all one-line
/// orders of one unit with nothing given back: the entries that took units
/// are exactly the first `stock` in queue order (limits and reused keys
/// aside, which refuse for other reasons).
fn first_come_first_served(expect: &CartExpectation, world: &World<'_>) -> Check {
    let queues = queues(world);
    let mut applicable = 0usize;
    let mut violations = Vec::new();
    for product in &expect.products {
        let Some(queue) = queues.get(&product.id) else {
            continue;
        };
        if queue.beyond_single_units || !queue.returns.is_empty() || queue.entries == 0 {
            continue;
        }
        applicable += 1;
        let last_take = queue.takes.iter().map(|(turn, _)| *turn).max();
        let first_refusal = queue.refusals.iter().map(|(turn, ..)| *turn).min();
        let taken: i64 = queue.takes.iter().map(|(_, units)| units).sum();
        if let (Some(last), Some(first)) = (last_take, first_refusal) {
            if last > first {
                violations.push(format!(
                    "{}: a unit taken at {last}, after a stock refusal at {first}",
                    product.sku
                ));
            }
        }
        if first_refusal.is_some() && taken != product.initial_stock {
            violations.push(format!(
                "{}: refused for stock with {taken} of {} units taken",
                product.sku, product.initial_stock
            ));
        }
    }
    let detail = if applicable == 0 {
        format!(
            "no product of {} had only one-unit one-line orders and no returns (nothing to compare)",
            expect.products.len()
        )
    } else {
        format!(
            "{applicable} of {} products with only one-unit one-line orders and no returns; \
             {} violations{}",
            expect.products.len(),
            violations.len(),
            failures(&violations)
        )
    };
    Check::new(
        4,
        "one-unit one-line orders without returns: the first stock served",
        violations.is_empty(),
        detail,
    )
}

/// Invariant 5: Σ quantity of a customer's reserved and confirmed orders of
/// a product stays within its limit.
fn limits_hold(expect: &CartExpectation, world: &World<'_>) -> Check {
    let limits: HashMap<Uuid, (i64, &str)> = expect
        .products
        .iter()
        .filter_map(|p| {
            p.max_per_customer
                .map(|limit| (p.id, (limit, p.sku.as_str())))
        })
        .collect();
    let mut held: HashMap<(&str, Uuid), i64> = HashMap::new();
    for order in &world.db.orders {
        if !matches!(order.status, OrderStatus::Reserved | OrderStatus::Confirmed) {
            continue;
        }
        if order.line_count == 1 {
            if let (Some(product), Some(quantity)) = (order.product_id, order.quantity) {
                *held.entry((&order.customer_id, product)).or_default() += quantity;
            }
        } else if let Some(lines) = world.lines.get(&order.id) {
            for line in lines {
                *held
                    .entry((&order.customer_id, line.product_id))
                    .or_default() += line.quantity;
            }
        }
    }
    let mut over = Vec::new();
    let mut highest = 0i64;
    let mut pairs = 0usize;
    for ((customer, product), units) in &held {
        let Some((limit, sku)) = limits.get(product) else {
            continue;
        };
        pairs += 1;
        highest = highest.max(*units);
        if units > limit {
            over.push(format!("{customer} on {sku}: {units} > {limit}"));
        }
    }
    over.sort();
    Check::new(
        5,
        "reserved + confirmed units per (customer, product) within the limit",
        over.is_empty(),
        if limits.is_empty() {
            "no product has a limit (nothing to compare)".to_owned()
        } else {
            format!(
                "{} limited products, {pairs} (customer, product) pairs holding units, \
                 highest {highest}; {} over{}",
                limits.len(),
                over.len(),
                failures(&over)
            )
        },
    )
}

/// Invariant 7: a cart confirmed or reserved has taken every line.
fn served_carts_took_every_line(world: &World<'_>) -> Check {
    let mut carts = 0usize;
    let mut bad = Vec::new();
    for order in &world.db.orders {
        if order.line_count <= 1
            || !matches!(order.status, OrderStatus::Reserved | OrderStatus::Confirmed)
        {
            continue;
        }
        carts += 1;
        let lines = world.lines.get(&order.id).map(Vec::as_slice).unwrap_or(&[]);
        let taken = lines.iter().filter(|line| line.state == "taken").count();
        if usize::try_from(order.line_count).ok() != Some(lines.len()) || taken != lines.len() {
            let states: Vec<&str> = lines.iter().map(|line| line.state.as_str()).collect();
            bad.push(format!(
                "{} {} with {} lines: [{}]",
                order.id,
                order.status.as_str(),
                order.line_count,
                states.join(", ")
            ));
        }
    }
    Check::new(
        7,
        "confirmed and reserved carts took every line",
        bad.is_empty(),
        format!(
            "{carts} confirmed or reserved carts of several lines, {} not fully taken{}",
            bad.len(),
            failures(&bad)
        ),
    )
}

/// Invariant 7: a rejected cart holds nothing, and names its first failing
/// line.
fn rejected_carts_took_nothing(world: &World<'_>) -> Check {
    let mut carts = 0usize;
    let mut bad = Vec::new();
    for order in &world.db.orders {
        if order.line_count <= 1 || order.status != OrderStatus::Rejected {
            continue;
        }
        carts += 1;
        let lines = world.lines.get(&order.id).map(Vec::as_slice).unwrap_or(&[]);
        let holding: Vec<String> = lines
            .iter()
            .filter(|line| !matches!(line.state.as_str(), "released" | "failed" | "queued"))
            .map(|line| format!("line {} {}", line.line_no, line.state))
            .collect();
        if !holding.is_empty() {
            bad.push(format!("{} still has {}", order.id, holding.join(", ")));
            continue;
        }
        let first_failed = lines.iter().find(|line| line.state == "failed");
        match first_failed {
            None if order.reason.as_deref() == Some("idempotency_key_reused") => {}
            None => bad.push(format!("{} rejected with no failed line", order.id)),
            Some(line)
                if order.rejected_product_id != Some(line.product_id)
                    || order.reason != line.reason =>
            {
                bad.push(format!(
                    "{}: rejected_product_id {:?} reason {:?}, first failed line {} is {} ({:?})",
                    order.id,
                    order.rejected_product_id,
                    order.reason,
                    line.line_no,
                    line.product_id,
                    line.reason
                ));
            }
            Some(_) => {}
        }
    }
    Check::new(
        7,
        "rejected carts took nothing and name their first failing line",
        bad.is_empty(),
        format!(
            "{carts} rejected carts of several lines, {} wrong{}",
            bad.len(),
            failures(&bad)
        ),
    )
}

/// Invariant 7 (and 1): a reservation that expired or was cancelled gave
/// every line's units back, once.
fn ended_reservations_returned_every_line(world: &World<'_>) -> Check {
    let mut returns: HashMap<(Uuid, Uuid), Vec<(i64, bool)>> = HashMap::new();
    for ret in &world.db.returns {
        returns
            .entry((ret.order_id, ret.product_id))
            .or_default()
            .push((ret.quantity, ret.applied));
    }
    let mut ended = 0usize;
    let mut bad = Vec::new();
    for order in &world.db.orders {
        let after_reserve = order.status == OrderStatus::Expired
            || (order.status == OrderStatus::Cancelled && order.reserved_until.is_some());
        if !after_reserve {
            continue;
        }
        ended += 1;
        let lines: Vec<(Uuid, i64)> = if order.line_count == 1 {
            order.product_id.zip(order.quantity).into_iter().collect()
        } else {
            world
                .lines
                .get(&order.id)
                .map(|lines| lines.iter().map(|l| (l.product_id, l.quantity)).collect())
                .unwrap_or_default()
        };
        if i64::try_from(lines.len()).ok() != Some(order.line_count) {
            bad.push(format!(
                "{}: {} lines found of {}",
                order.id,
                lines.len(),
                order.line_count
            ));
            continue;
        }
        for (product, quantity) in lines {
            match returns.get(&(order.id, product)).map(Vec::as_slice) {
                Some([(units, true)]) if *units == quantity => {}
                Some(found) => bad.push(format!(
                    "{} {} product {product}: returns {found:?} for {quantity} units",
                    order.id,
                    order.status.as_str()
                )),
                None => bad.push(format!(
                    "{} {} product {product}: no stock return",
                    order.id,
                    order.status.as_str()
                )),
            }
        }
    }
    // A return for an order that is not over would give units twice.
    let over: HashSet<Uuid> = world
        .db
        .orders
        .iter()
        .filter(|o| matches!(o.status, OrderStatus::Expired | OrderStatus::Cancelled))
        .map(|o| o.id)
        .collect();
    let run_orders: HashSet<Uuid> = world.db.orders.iter().map(|o| o.id).collect();
    for ret in &world.db.returns {
        if run_orders.contains(&ret.order_id) && !over.contains(&ret.order_id) {
            bad.push(format!(
                "a stock return for order {} which is not over",
                ret.order_id
            ));
        }
    }
    Check::new(
        7,
        "expired and cancelled reservations returned every line once",
        bad.is_empty(),
        format!(
            "{ended} reservations expired or cancelled, {} problems{}",
            bad.len(),
            failures(&bad)
        ),
    )
}

/// Invariant 8: one of confirm, cancel and expiry takes effect, and the
/// client is told which.
fn one_winner_per_reservation(world: &World<'_>) -> Check {
    let mut reserved = 0usize;
    let mut raced = 0usize;
    let mut late = 0usize;
    let mut bad = Vec::new();
    for (buyer, id, row) in world.accepted() {
        if !buyer.was_reserved() {
            if !buyer.actions.is_empty() {
                bad.push(format!("{id}: acted on without a reservation"));
            }
            continue;
        }
        reserved += 1;
        if buyer.intent == Intent::Race {
            raced += 1;
        }
        late += buyer.actions.iter().filter(|a| a.late).count();
        let Some(row) = row else { continue };
        let final_status = row.status;
        let confirmed_ok = buyer.answers(ActionKind::Confirm).any(|a| a.ok());
        let cancelled_ok = buyer.answers(ActionKind::Cancel).any(|a| a.ok());
        let unanswered = |kind| buyer.answers(kind).any(ActionAnswer::outcome_unknown);
        let mut problems = Vec::new();
        if confirmed_ok && cancelled_ok {
            problems.push("confirm and cancel both answered 200".to_owned());
        }
        if confirmed_ok && final_status != OrderStatus::Confirmed {
            problems.push(format!(
                "confirm answered 200, order {}",
                final_status.as_str()
            ));
        }
        if cancelled_ok && final_status != OrderStatus::Cancelled {
            problems.push(format!(
                "cancel answered 200, order {}",
                final_status.as_str()
            ));
        }
        if final_status == OrderStatus::Confirmed
            && !confirmed_ok
            && !unanswered(ActionKind::Confirm)
        {
            problems.push("confirmed, yet no confirm answered 200".to_owned());
        }
        if final_status == OrderStatus::Cancelled
            && !cancelled_ok
            && !unanswered(ActionKind::Cancel)
        {
            problems.push("cancelled, yet no cancel answered 200".to_owned());
        }
        for answer in &buyer.actions {
            if answer.late && answer.ok() {
                problems.push("a confirm after the expiry answered 200".to_owned());
            }
            if answer.ok() {
                if let Some(status) = answer.order_status {
                    let expected = match answer.kind {
                        ActionKind::Confirm => OrderStatus::Confirmed,
                        ActionKind::Cancel => OrderStatus::Cancelled,
                    };
                    if status != expected {
                        problems.push(format!(
                            "{} answered 200 with {}",
                            answer.kind.name(),
                            status.as_str()
                        ));
                    }
                }
                continue;
            }
            // A refusal names the winner; it must be the final state.
            let winner = match answer.code.as_deref() {
                Some("order_confirmed") => Some(OrderStatus::Confirmed),
                Some("order_cancelled") => Some(OrderStatus::Cancelled),
                Some("reservation_expired") => Some(OrderStatus::Expired),
                _ => None,
            };
            match winner {
                Some(winner) if winner != final_status => problems.push(format!(
                    "{} answered {}, order {}",
                    answer.kind.name(),
                    answer.label(),
                    final_status.as_str()
                )),
                Some(_) => {}
                None if !answer.outcome_unknown() => problems.push(format!(
                    "{} answered {}",
                    answer.kind.name(),
                    answer.label()
                )),
                None => {}
            }
        }
        if matches!(buyer.intent, Intent::Abandon | Intent::Buy)
            && matches!(
                final_status,
                OrderStatus::Confirmed | OrderStatus::Cancelled
            )
        {
            problems.push(format!("abandoned, yet {}", final_status.as_str()));
        }
        if !problems.is_empty() {
            bad.push(format!("{id}: {}", problems.join("; ")));
        }
    }
    Check::new(
        8,
        "one of confirm, cancel and expiry per reservation, as the client was told",
        bad.is_empty(),
        format!(
            "{reserved} reservations ({raced} with confirm and cancel raced, {late} late confirms \
             after expiry); {} wrong{}",
            bad.len(),
            failures(&bad)
        ),
    )
}

/// `"; e.g. a, b, c and 4 more"`, or nothing.
fn failures(items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!("; e.g. {}", list(items))
    }
}

fn list(items: &[String]) -> String {
    let mut text = items
        .iter()
        .take(EXAMPLES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > EXAMPLES {
        let _ = write!(text, " and {} more", items.len() - EXAMPLES);
    }
    text
}
