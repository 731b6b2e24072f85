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
use super::replay::{self, Event, Got, Kind};
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
    /// `reserved` from the same answer (units in other carts).
    pub api_reserved: Option<i64>,
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
    checks.push(queue_replayed(expect, &world));
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
    let mut reserved_differs = Vec::new();
    let reserved = reserved_units(db);
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
            // The contract's `reserved`: held units and reserved orders'.
            let expected = audit.held + reserved.get(&product.id).copied().unwrap_or(0);
            if product.api_reserved != Some(expected) {
                reserved_differs.push(format!(
                    "{}: API {:?}, database {expected}",
                    product.sku, product.api_reserved
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
    out.push(Check::new(
        1,
        "API reserved = held + units of reserved orders",
        reserved_differs.is_empty() && compared == n,
        format!(
            "{} of {n} products read through the API, {} differ (reserved in all {}){}",
            compared,
            reserved_differs.len(),
            reserved.values().sum::<i64>(),
            failures(&reserved_differs)
        ),
    ));
}

/// Units of `reserved` orders per product.
fn reserved_units(db: &CartDbView) -> HashMap<Uuid, i64> {
    let mut units: HashMap<Uuid, i64> = HashMap::new();
    let reserved: HashSet<Uuid> = db
        .orders
        .iter()
        .filter(|order| order.status == OrderStatus::Reserved && order.line_count > 1)
        .map(|order| order.id)
        .collect();
    for order in &db.orders {
        if order.status == OrderStatus::Reserved && order.line_count == 1 {
            if let (Some(product), Some(quantity)) = (order.product_id, order.quantity) {
                *units.entry(product).or_default() += quantity;
            }
        }
    }
    for line in &db.lines {
        if reserved.contains(&line.order_id) {
            *units.entry(line.product_id).or_default() += line.quantity;
        }
    }
    units
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

/// Invariant 4 by [`replay`]: each product's queue run again with the
/// rules from its initial stock. Every entry must have got what the rules
/// give it at its turn, nothing be left waiting or held, and the stock end
/// where the database says.
fn queue_replayed(expect: &CartExpectation, world: &World<'_>) -> Check {
    let mut events = replay_events(world);
    let stocks: HashMap<Uuid, i64> = world
        .db
        .audits
        .iter()
        .map(|audit| (audit.product_id, audit.stock))
        .collect();
    let (mut entries, mut waited, mut gives, mut took, mut refused) = (0, 0, 0, 0, 0);
    let mut bad = Vec::new();
    for product in &expect.products {
        let events = events.remove(&product.id).unwrap_or_default();
        for event in &events {
            match &event.kind {
                Kind::Wants { got: Got::Took, .. } => took += 1,
                Kind::Wants {
                    got: Got::NoStock { .. },
                    ..
                } => refused += 1,
                _ => {}
            }
        }
        let out = replay::replay(product.initial_stock, events);
        entries += out.entries;
        waited += out.waited;
        gives += out.gives;
        let sku = &product.sku;
        bad.extend(out.mismatches.iter().map(|m| format!("{sku}: {m}")));
        if !out.left_waiting.is_empty() {
            bad.push(format!("{sku}: left waiting: {}", list(&out.left_waiting)));
        }
        if out.held != 0 {
            bad.push(format!("{sku}: {} units still held at the end", out.held));
        }
        match stocks.get(&product.id) {
            Some(&stock) if stock == out.stock => {}
            Some(&stock) => bad.push(format!(
                "{sku}: stock {stock} in the database, {} by the rules",
                out.stock
            )),
            None => bad.push(format!("{sku}: no stock_audit row")),
        }
    }
    Check::new(
        4,
        "queue replayed by the rules: every entry got what its turn gives it",
        bad.is_empty(),
        format!(
            "{entries} entries replayed over {} products ({took} took units, {refused} refused \
             for stock, {waited} waited behind holds) with {gives} settle, return and restock \
             entries; {} departures from the rules{}",
            expect.products.len(),
            bad.len(),
            failures(&bad)
        ),
    )
}

/// Every product's queue entries, as PostgreSQL recorded them: one-line
/// orders and lines with a turn, settle entries of held lines, applied
/// returns and restocks.
fn replay_events(world: &World<'_>) -> HashMap<Uuid, Vec<Event>> {
    let mut events: HashMap<Uuid, Vec<Event>> = HashMap::new();
    for order in &world.db.orders {
        let (1, Some(product), Some(quantity), Some(sequence)) = (
            order.line_count,
            order.product_id,
            order.quantity,
            order.queue_sequence,
        ) else {
            continue;
        };
        let got = if order.total_cents.is_some() {
            Got::Took
        } else if order.status == OrderStatus::Pending {
            Got::Waiting
        } else {
            refusal(
                order.reason.as_deref(),
                order.status == OrderStatus::Cancelled,
            )
        };
        events.entry(product).or_default().push(Event {
            position: (sequence, order.queue_index.unwrap_or(0)),
            kind: Kind::Wants {
                quantity,
                holds: false,
                got,
            },
            what: format!("order {}", order.id),
        });
    }
    for lines in world.lines.values() {
        for line in lines {
            let queue = events.entry(line.product_id).or_default();
            let what = format!("order {} line {}", line.order_id, line.line_no);
            if let Some(sequence) = line.queue_sequence {
                let got = if line.unit_price_cents.is_some() {
                    Got::Took
                } else if line.state == "parked" {
                    Got::Waiting
                } else {
                    let cancelled = world
                        .orders
                        .get(&line.order_id)
                        .is_some_and(|order| order.status == OrderStatus::Cancelled);
                    refusal(line.reason.as_deref(), cancelled)
                };
                queue.push(Event {
                    position: (sequence, line.queue_index.unwrap_or(0)),
                    kind: Kind::Wants {
                        quantity: line.quantity,
                        holds: true,
                        got,
                    },
                    what: what.clone(),
                });
            }
            if let Some(sequence) = line.settle_sequence {
                queue.push(Event {
                    position: (sequence, 0),
                    kind: Kind::Settle {
                        quantity: line.quantity,
                        keep: line.state == "taken",
                    },
                    what: format!("settle of {what}"),
                });
            }
        }
    }
    for ret in &world.db.returns {
        if let (true, Some(sequence)) = (ret.applied, ret.queue_sequence) {
            events.entry(ret.product_id).or_default().push(Event {
                position: (sequence, 0),
                kind: Kind::Back {
                    quantity: ret.quantity,
                },
                what: format!("stock return of order {}", ret.order_id),
            });
        }
    }
    for restock in &world.db.restocks {
        if let Some(sequence) = restock.queue_sequence {
            events.entry(restock.product_id).or_default().push(Event {
                position: (sequence, 0),
                kind: Kind::Back {
                    quantity: restock.quantity,
                },
                what: format!("restock at {sequence}"),
            });
        }
    }
    events
}

/// An entry that took nothing: refused for stock, or for what needs none
/// (the limit, an inactive product, withdrawn with its cancelled order).
fn refusal(reason: Option<&str>, cancelled: bool) -> Got {
    match reason {
        Some(reason) if is_stock_reason(reason) => Got::NoStock {
            reason: Some(reason.to_owned()),
        },
        Some(_) => Got::Refused,
        None if cancelled => Got::Refused,
        None => Got::NoStock { reason: None },
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cart::db::{AuditRow, ReturnRow};
    use crate::cart::{ActionAnswer, Seen};
    use crate::client::CartLine;
    use chrono::{DateTime, Utc};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const PRODUCTS: u128 = 4;
    const PRICE: i64 = 100;

    fn product(n: u128) -> Uuid {
        Uuid::from_u128(n + 1)
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// A correct system, simulated: carts decided one after the other in
    /// queue order, all or nothing, limits per customer, reservations
    /// confirmed, cancelled, raced or left to expire (their units coming
    /// back at a later turn).
    struct Sim {
        expect: CartExpectation,
        buyers: Vec<BuyerRecord>,
        db: CartDbView,
        stock: HashMap<Uuid, i64>,
        holding: HashMap<(String, Uuid), i64>,
        sequence: i64,
    }

    impl Sim {
        fn new(stock: i64, limit: Option<i64>) -> Self {
            let products: Vec<ProductSetup> = (0..PRODUCTS)
                .map(|n| ProductSetup {
                    id: product(n),
                    sku: format!("P{n}"),
                    initial_stock: stock,
                    // The first product is limited.
                    max_per_customer: if n == 0 { limit } else { None },
                    api_stock: None,
                    api_reserved: None,
                })
                .collect();
            Self {
                stock: products.iter().map(|p| (p.id, stock)).collect(),
                expect: CartExpectation {
                    products,
                    wait_expiry: true,
                    expiry_bound: Duration::from_secs(5),
                },
                buyers: Vec::new(),
                db: CartDbView {
                    now: now(),
                    ..CartDbView::default()
                },
                holding: HashMap::new(),
                sequence: 100,
            }
        }

        fn next_sequence(&mut self) -> i64 {
            self.sequence += 1;
            self.sequence
        }

        fn limit(&self, id: Uuid) -> Option<i64> {
            self.expect
                .products
                .iter()
                .find(|p| p.id == id)
                .and_then(|p| p.max_per_customer)
        }

        /// A buyer answered `409 sold_out` at the door.
        fn turned_away(&mut self, customer: &str) {
            let index = u32::try_from(self.buyers.len()).unwrap();
            self.buyers.push(BuyerRecord {
                index,
                customer_id: customer.to_owned(),
                idempotency_key: format!("key-{index}"),
                lines: vec![CartLine {
                    product_id: product(0),
                    quantity: 1,
                }],
                intent: Intent::Buy,
                submitted: Submitted::Refused {
                    status: 409,
                    code: Some("sold_out".into()),
                    latency: Duration::from_millis(1),
                },
                backpressure_retries: 0,
                network_retries: 0,
                seen: None,
                poll_errors: Vec::new(),
                actions: Vec::new(),
                answered_at: None,
                decided_at: None,
                done_at: None,
            });
        }

        /// One cart through the queue; returns its order id.
        fn cart(&mut self, customer: &str, lines: &[(u128, i64)], intent: Intent) -> Uuid {
            let sequence = self.next_sequence();
            let index = u32::try_from(self.buyers.len()).unwrap();
            let id = Uuid::from_u128(0xC000 + u128::from(index));
            // Each line's turn.
            let mut outcomes = Vec::new();
            for &(n, quantity) in lines {
                let pid = product(n);
                let over_limit = self.limit(pid).is_some_and(|limit| {
                    self.holding
                        .get(&(customer.to_owned(), pid))
                        .copied()
                        .unwrap_or(0)
                        + quantity
                        > limit
                });
                let free = self.stock[&pid];
                let reason = if over_limit {
                    Some("limit_exceeded")
                } else if free == 0 {
                    Some("sold_out")
                } else if free < quantity {
                    Some("insufficient_stock")
                } else {
                    *self.stock.get_mut(&pid).unwrap() -= quantity;
                    None
                };
                outcomes.push((pid, quantity, reason));
            }
            let failed = outcomes
                .iter()
                .find(|(_, _, reason)| reason.is_some())
                .copied();
            let status = match (failed, intent.reserves()) {
                (Some(_), _) => OrderStatus::Rejected,
                (None, true) => OrderStatus::Reserved,
                (None, false) => OrderStatus::Confirmed,
            };
            // A cart's holds are kept or released at a later turn.
            let settle = (lines.len() > 1).then(|| self.next_sequence());
            for (line_no, &(pid, quantity, reason)) in outcomes.iter().enumerate() {
                if failed.is_some() && reason.is_none() {
                    *self.stock.get_mut(&pid).unwrap() += quantity;
                }
                if failed.is_none() {
                    *self.holding.entry((customer.to_owned(), pid)).or_default() += quantity;
                }
                if lines.len() > 1 {
                    self.db.lines.push(LineRow {
                        order_id: id,
                        line_no: line_no as i64,
                        product_id: pid,
                        quantity,
                        state: match (failed, reason) {
                            (_, Some(_)) => "failed",
                            (Some(_), None) => "released",
                            (None, None) => "taken",
                        }
                        .to_owned(),
                        reason: reason.map(str::to_owned),
                        unit_price_cents: reason.is_none().then_some(PRICE),
                        queue_sequence: Some(sequence),
                        queue_index: Some(line_no as i64),
                        settle_sequence: if reason.is_none() { settle } else { None },
                    });
                }
            }
            let one = lines.len() == 1;
            self.db.orders.push(CartOrderRow {
                id,
                customer_id: customer.to_owned(),
                idempotency_key: format!("key-{index}"),
                status,
                reason: failed.and_then(|(_, _, reason)| reason.map(str::to_owned)),
                product_id: one.then(|| product(lines[0].0)),
                quantity: one.then_some(lines[0].1),
                line_count: lines.len() as i64,
                total_cents: failed
                    .is_none()
                    .then(|| PRICE * lines.iter().map(|&(_, q)| q).sum::<i64>()),
                queue_sequence: one.then_some(sequence),
                queue_index: None,
                rejected_product_id: failed.map(|(pid, ..)| pid),
                reserve_secs: intent.reserves().then_some(30),
                reserved_until: (status == OrderStatus::Reserved)
                    .then(|| now() - chrono::TimeDelta::seconds(20)),
            });
            self.buyers.push(BuyerRecord {
                index,
                customer_id: customer.to_owned(),
                idempotency_key: format!("key-{index}"),
                lines: lines
                    .iter()
                    .map(|&(n, quantity)| CartLine {
                        product_id: product(n),
                        quantity: u32::try_from(quantity).unwrap(),
                    })
                    .collect(),
                intent,
                submitted: Submitted::Accepted {
                    order_id: id,
                    replayed: false,
                    latency: Duration::from_millis(2),
                },
                backpressure_retries: 0,
                network_retries: 0,
                seen: Some(Seen {
                    status,
                    reason: failed.and_then(|(_, _, reason)| reason.map(str::to_owned)),
                    rejected_product_id: failed.map(|(pid, ..)| pid),
                    latency: Duration::from_millis(5),
                }),
                poll_errors: Vec::new(),
                actions: Vec::new(),
                answered_at: None,
                decided_at: None,
                done_at: None,
            });
            if status == OrderStatus::Reserved {
                self.settle_reservation(id, intent);
            }
            id
        }

        /// What the buyer does with its reservation, and its effect.
        fn settle_reservation(&mut self, id: Uuid, intent: Intent) {
            let answer = |kind, status: u16, code: Option<&str>, late| ActionAnswer {
                kind,
                status: Some(status),
                code: code.map(str::to_owned),
                order_status: match (status, kind) {
                    (200, ActionKind::Confirm) => Some(OrderStatus::Confirmed),
                    (200, ActionKind::Cancel) => Some(OrderStatus::Cancelled),
                    _ => None,
                },
                latency: Duration::from_millis(3),
                late,
            };
            let (status, actions) = match intent {
                Intent::Confirm => (
                    OrderStatus::Confirmed,
                    vec![answer(ActionKind::Confirm, 200, None, false)],
                ),
                Intent::Race => (
                    OrderStatus::Confirmed,
                    vec![
                        answer(ActionKind::Confirm, 200, None, false),
                        answer(ActionKind::Cancel, 409, Some("order_confirmed"), false),
                    ],
                ),
                Intent::Cancel => (
                    OrderStatus::Cancelled,
                    vec![answer(ActionKind::Cancel, 200, None, false)],
                ),
                Intent::Abandon => (
                    OrderStatus::Expired,
                    vec![answer(
                        ActionKind::Confirm,
                        409,
                        Some("reservation_expired"),
                        true,
                    )],
                ),
                Intent::Buy => unreachable!("a purchase reserves nothing"),
            };
            let buyer = self.buyers.last_mut().unwrap();
            buyer.actions = actions;
            let customer = buyer.customer_id.clone();
            let lines: Vec<(Uuid, i64)> = buyer
                .lines
                .iter()
                .map(|line| (line.product_id, i64::from(line.quantity)))
                .collect();
            self.db.orders.last_mut().unwrap().status = status;
            if matches!(status, OrderStatus::Cancelled | OrderStatus::Expired) {
                let sequence = self.next_sequence();
                for (pid, quantity) in lines {
                    *self.stock.get_mut(&pid).unwrap() += quantity;
                    *self.holding.get_mut(&(customer.clone(), pid)).unwrap() -= quantity;
                    self.db.returns.push(ReturnRow {
                        order_id: id,
                        product_id: pid,
                        quantity,
                        applied: true,
                        queue_sequence: Some(sequence),
                    });
                }
            }
        }

        /// The audit rows and the API's stock, as a correct system ends.
        fn finish(mut self) -> World2 {
            for setup in &mut self.expect.products {
                let stock = self.stock[&setup.id];
                setup.api_stock = Some(stock);
                setup.api_reserved = Some(0);
                self.db.audits.push(AuditRow {
                    product_id: setup.id,
                    initial_stock: setup.initial_stock,
                    restocked: 0,
                    stock,
                    held: 0,
                    confirmed_units: setup.initial_stock - stock,
                    returning_units: 0,
                    balanced: Some(true),
                });
            }
            World2 {
                expect: self.expect,
                buyers: self.buyers,
                db: self.db,
            }
        }
    }

    /// A finished world, to evaluate and then break.
    struct World2 {
        expect: CartExpectation,
        buyers: Vec<BuyerRecord>,
        db: CartDbView,
    }

    impl World2 {
        fn checks(&self) -> Vec<Check> {
            evaluate(&self.expect, &self.buyers, &self.db)
        }

        fn failed(&self) -> Vec<String> {
            self.checks()
                .into_iter()
                .filter(|check| !check.passed)
                .map(|check| check.name)
                .collect()
        }

        fn assert_fails(&self, name: &str) {
            let failed = self.failed();
            assert!(
                failed.iter().any(|failed| failed == name),
                "{name:?} should fail; failed: {failed:?}\n{:#?}",
                self.checks()
            );
        }

        fn order_mut(&mut self, id: Uuid) -> &mut CartOrderRow {
            self.db.orders.iter_mut().find(|o| o.id == id).unwrap()
        }

        fn buyer_mut(&mut self, id: Uuid) -> &mut BuyerRecord {
            self.buyers
                .iter_mut()
                .find(|b| b.order_id() == Some(id))
                .unwrap()
        }
    }

    /// A random healthy run: carts of 1-3 lines of 1-2 units, every intent.
    fn random_world(seed: u64, buyers: usize) -> World2 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sim = Sim::new(12, Some(2));
        for i in 0..buyers {
            let customer = format!("c{}", i / 8);
            if rng.gen_bool(0.05) {
                sim.turned_away(&customer);
                continue;
            }
            let count = rng.gen_range(1..=3);
            let picks = rand::seq::index::sample(&mut rng, PRODUCTS as usize, count);
            let lines: Vec<(u128, i64)> = picks
                .into_iter()
                .map(|n| (n as u128, rng.gen_range(1..=2)))
                .collect();
            let intent = [
                Intent::Buy,
                Intent::Buy,
                Intent::Confirm,
                Intent::Cancel,
                Intent::Race,
                Intent::Abandon,
            ][rng.gen_range(0..6)];
            sim.cart(&customer, &lines, intent);
        }
        sim.finish()
    }

    const ALL: [&str; 18] = [
        "stock audit balanced per product",
        "drained: nothing held or returning",
        "stock not negative",
        "API stock matches the database",
        "API reserved = held + units of reserved orders",
        "at most one order per (customer, idempotency key)",
        "every accepted cart has its order, and no other order exists",
        "no order for a request answered 4xx",
        "every accepted cart decided, reservations final or open in time",
        "every buyer saw its decision, and the database agrees",
        "units go in queue order: nothing taken after a refusal but what came back",
        "queue replayed by the rules: every entry got what its turn gives it",
        "one-unit one-line orders without returns: the first stock served",
        "reserved + confirmed units per (customer, product) within the limit",
        "confirmed and reserved carts took every line",
        "rejected carts took nothing and name their first failing line",
        "expired and cancelled reservations returned every line once",
        "one of confirm, cancel and expiry per reservation, as the client was told",
    ];

    #[test]
    fn a_correct_run_passes_every_check() {
        for seed in 0..20 {
            let world = random_world(seed, 120);
            let checks = world.checks();
            let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names, ALL);
            assert!(
                crate::checks::all_passed(&checks),
                "seed {seed}: {checks:#?}"
            );
        }
        // The random runs exercise what the checks look at.
        let world = random_world(7, 400);
        let statuses: HashSet<OrderStatus> = world.db.orders.iter().map(|o| o.status).collect();
        for status in [
            OrderStatus::Confirmed,
            OrderStatus::Rejected,
            OrderStatus::Cancelled,
            OrderStatus::Expired,
        ] {
            assert!(statuses.contains(&status), "{status:?}");
        }
        assert!(world.db.lines.iter().any(|l| l.state == "released"));
        assert!(world
            .db
            .orders
            .iter()
            .any(|o| o.reason.as_deref() == Some("limit_exceeded")));
    }

    #[test]
    fn stock_figures_that_do_not_add_up_fail() {
        let mut world = random_world(1, 100);
        world.db.audits[1].balanced = Some(false);
        world.assert_fails("stock audit balanced per product");

        let mut world = random_world(1, 100);
        // The view says balanced, but its own figures do not add up.
        world.db.audits[2].stock += 1;
        world.expect.products[2].api_stock = Some(world.db.audits[2].stock);
        world.assert_fails("stock audit balanced per product");

        let mut world = random_world(1, 100);
        world.db.audits[0].held = 2;
        world.db.audits[0].confirmed_units -= 2;
        world.expect.products[0].api_reserved = Some(2);
        assert_eq!(world.failed(), ["drained: nothing held or returning"]);

        let mut world = random_world(1, 100);
        world.db.audits[3].stock = -1;
        world.assert_fails("stock not negative");

        let mut world = random_world(1, 100);
        world.expect.products[0].api_stock = Some(99);
        assert_eq!(world.failed(), ["API stock matches the database"]);
        world.expect.products[0].api_stock = None;
        assert_eq!(world.failed(), [ALL[3], ALL[4]]);

        // The API counts units in other carts that no reserved order holds.
        let mut world = random_world(1, 100);
        world.expect.products[1].api_reserved = Some(1);
        assert_eq!(world.failed(), [ALL[4]]);
        world.expect.products[1].api_reserved = None;
        assert_eq!(world.failed(), [ALL[4]]);

        let mut world = random_world(1, 100);
        world.db.audits.pop();
        world.assert_fails("stock audit balanced per product");
    }

    #[test]
    fn orders_that_should_not_exist_fail() {
        let mut world = random_world(2, 100);
        let mut twin = world.db.orders[0].clone();
        twin.id = Uuid::from_u128(0xDEAD);
        world.db.orders.push(twin);
        world.assert_fails("at most one order per (customer, idempotency key)");

        // An order for a request answered 409 sold_out at the door.
        let mut world = random_world(2, 100);
        let refused = world
            .buyers
            .iter()
            .find(|b| matches!(b.submitted, Submitted::Refused { .. }))
            .unwrap()
            .clone();
        let mut ghost = world.db.orders[0].clone();
        ghost.id = Uuid::from_u128(0xBEEF);
        ghost.customer_id = refused.customer_id;
        ghost.idempotency_key = refused.idempotency_key;
        ghost.status = OrderStatus::Rejected;
        ghost.total_cents = None;
        ghost.queue_sequence = None;
        world.db.orders.push(ghost);
        assert_eq!(world.failed(), ["no order for a request answered 4xx"]);

        // An order under a key no buyer of the run sent.
        let mut world = random_world(2, 100);
        let mut stranger = world.db.orders[0].clone();
        stranger.id = Uuid::from_u128(0xF00D);
        stranger.idempotency_key = "never-sent".into();
        stranger.status = OrderStatus::Rejected;
        world.db.orders.push(stranger);
        world.assert_fails("every accepted cart has its order, and no other order exists");

        // An accepted cart whose order is gone.
        let mut world = random_world(2, 100);
        let id = world.buyers.iter().find_map(BuyerRecord::order_id).unwrap();
        world.db.orders.retain(|o| o.id != id);
        world.db.lines.retain(|l| l.order_id != id);
        world.db.returns.retain(|r| r.order_id != id);
        world.assert_fails("every accepted cart has its order, and no other order exists");
        world.assert_fails("every accepted cart decided, reservations final or open in time");
    }

    #[test]
    fn undecided_and_overdue_orders_fail() {
        let mut world = random_world(3, 60);
        let id = world.db.orders[5].id;
        world.order_mut(id).status = OrderStatus::Pending;
        world.assert_fails("every accepted cart decided, reservations final or open in time");

        // Still reserved: wrong after --wait-expiry, fine within its time
        // otherwise, wrong once overdue beyond the bound.
        let mut sim = Sim::new(5, None);
        let id = sim.cart("c", &[(0, 1), (1, 1)], Intent::Abandon);
        let mut world = sim.finish();
        world.buyer_mut(id).actions.clear();
        world.db.returns.clear();
        let order = world.order_mut(id);
        order.status = OrderStatus::Reserved;
        order.reserved_until = Some(now() + chrono::TimeDelta::seconds(10));
        for audit in &mut world.db.audits {
            if audit.product_id == product(0) || audit.product_id == product(1) {
                audit.stock -= 1;
                audit.confirmed_units += 1;
            }
        }
        for setup in &mut world.expect.products {
            setup.api_stock = world
                .db
                .audits
                .iter()
                .find(|a| a.product_id == setup.id)
                .map(|a| a.stock);
            if setup.id == product(0) || setup.id == product(1) {
                setup.api_reserved = Some(1);
            }
        }
        world.assert_fails("every accepted cart decided, reservations final or open in time");
        world.expect.wait_expiry = false;
        assert!(world.failed().is_empty(), "{:#?}", world.checks());
        world.order_mut(id).reserved_until = Some(now() - chrono::TimeDelta::seconds(6));
        assert_eq!(
            world.failed(),
            ["every accepted cart decided, reservations final or open in time"]
        );
    }

    #[test]
    fn decisions_the_buyer_did_not_see_fail() {
        let mut world = random_world(4, 60);
        let id = world
            .buyers
            .iter()
            .filter(|b| b.intent == Intent::Buy)
            .find_map(BuyerRecord::order_id)
            .unwrap();
        world.buyer_mut(id).seen = None;
        assert_eq!(
            world.failed(),
            ["every buyer saw its decision, and the database agrees"]
        );

        // Told "rejected", yet confirmed in the database.
        let mut world = random_world(4, 60);
        let id = world
            .db
            .orders
            .iter()
            .find(|o| o.status == OrderStatus::Confirmed)
            .unwrap()
            .id;
        let seen = world.buyer_mut(id).seen.as_mut().unwrap();
        seen.status = OrderStatus::Rejected;
        seen.reason = Some("sold_out".into());
        world.assert_fails("every buyer saw its decision, and the database agrees");

        // A purchase without reserve_secs decided `reserved`.
        let mut world = random_world(4, 60);
        let buyer = world
            .buyers
            .iter_mut()
            .find(|b| b.intent == Intent::Buy && b.seen.is_some())
            .unwrap();
        buyer.seen.as_mut().unwrap().status = OrderStatus::Reserved;
        world.assert_fails("every buyer saw its decision, and the database agrees");
    }

    #[test]
    fn units_out_of_queue_order_fail() {
        // Product 0 (3 units): a cart takes 2, a one-unit order the last;
        // then one is refused sold_out, and one after it is served anyway.
        let mut sim = Sim::new(3, None);
        sim.cart("a", &[(0, 2), (1, 1)], Intent::Buy);
        sim.cart("b", &[(0, 1)], Intent::Buy);
        let refused = sim.cart("c", &[(0, 1)], Intent::Buy);
        let jumped = sim.cart("d", &[(0, 1)], Intent::Buy);
        let world = sim.finish();
        assert!(world.failed().is_empty(), "{:#?}", world.checks());
        let mut broken = world;
        {
            let order = broken.order_mut(jumped);
            order.status = OrderStatus::Confirmed;
            order.reason = None;
            order.rejected_product_id = None;
            order.total_cents = Some(PRICE);
        }
        let seen = broken.buyer_mut(jumped).seen.as_mut().unwrap();
        seen.status = OrderStatus::Confirmed;
        seen.reason = None;
        let checks = broken.checks();
        let check = checks.iter().find(|c| c.name == ALL[10]).unwrap();
        assert!(!check.passed);
        assert!(
            check.detail.contains(&refused.to_string()),
            "{}",
            check.detail
        );
        broken.assert_fails(ALL[11]);

        // The same with a unit given back after the refusal: allowed.
        let mut sim = Sim::new(1, None);
        let held = sim.cart("a", &[(0, 1)], Intent::Confirm);
        sim.cart("b", &[(0, 1)], Intent::Buy);
        let world = sim.finish();
        assert!(world.failed().is_empty(), "{held}: {:#?}", world.checks());
        let mut sim = Sim::new(1, None);
        sim.cart("a", &[(0, 1), (1, 1)], Intent::Cancel);
        sim.cart("b", &[(0, 1)], Intent::Buy);
        let world = sim.finish();
        assert!(world.failed().is_empty(), "{:#?}", world.checks());
        assert!(world
            .db
            .orders
            .iter()
            .all(|o| o.status != OrderStatus::Rejected || o.line_count > 1));

        // insufficient_stock leaves up to quantity - 1 units to later
        // entries: 1 unit left, a 2-unit order refused, a 1-unit one served.
        let mut sim = Sim::new(3, None);
        sim.cart("a", &[(0, 2)], Intent::Buy);
        let refused = sim.cart("b", &[(0, 2)], Intent::Buy);
        sim.cart("c", &[(0, 1)], Intent::Buy);
        let world = sim.finish();
        assert_eq!(
            world
                .db
                .orders
                .iter()
                .find(|o| o.id == refused)
                .unwrap()
                .reason
                .as_deref(),
            Some("insufficient_stock")
        );
        assert!(world.failed().is_empty(), "{:#?}", world.checks());
        // ... but a sold_out refusal leaves none.
        let mut world = world;
        world.order_mut(refused).reason = Some("sold_out".into());
        world.buyer_mut(refused).seen.as_mut().unwrap().reason = Some("sold_out".into());
        world.assert_fails(ALL[10]);

        // A line that took units without a recorded turn.
        let mut world = random_world(5, 80);
        let line = world
            .db
            .lines
            .iter_mut()
            .find(|l| l.state == "taken")
            .unwrap();
        line.queue_sequence = None;
        world.assert_fails(ALL[10]);
    }

    /// Product 0 has 1 unit. A cart holds it and fails on product 1 (sold
    /// out first); its release comes after a buyer of product 0 had its turn.
    /// `b_took`: the buyer waited and got the unit, as the rules say; else it
    /// was refused `sold_out` and the unit came back to nobody.
    fn refused_behind_a_hold(b_took: bool) -> World2 {
        let mut sim = Sim::new(1, None);
        sim.cart("z", &[(1, 1)], Intent::Buy);
        let cart = sim.cart("a", &[(0, 1), (1, 1)], Intent::Buy);
        let buyer = sim.cart("b", &[(0, 1)], Intent::Buy);
        let mut world = sim.finish();
        assert_eq!(world.order_mut(cart).status, OrderStatus::Rejected);
        let buyer_turn = world.order_mut(buyer).queue_sequence.unwrap();
        let hold = world
            .db
            .lines
            .iter_mut()
            .find(|l| l.order_id == cart && l.product_id == product(0))
            .unwrap();
        assert_eq!(hold.state, "released");
        hold.settle_sequence = Some(buyer_turn + 1);
        if !b_took {
            let order = world.order_mut(buyer);
            order.status = OrderStatus::Rejected;
            order.reason = Some("sold_out".into());
            order.rejected_product_id = Some(product(0));
            order.total_cents = None;
            let seen = world.buyer_mut(buyer).seen.as_mut().unwrap();
            seen.status = OrderStatus::Rejected;
            seen.reason = Some("sold_out".into());
            seen.rejected_product_id = Some(product(0));
            // The unit is back in stock: the audit still balances.
            let audit = &mut world.db.audits[0];
            assert_eq!(audit.product_id, product(0));
            audit.stock = 1;
            audit.confirmed_units = 0;
            world.expect.products[0].api_stock = Some(1);
        }
        world
    }

    #[test]
    fn a_buyer_refused_while_units_were_only_held_fails_the_replay() {
        let waited = refused_behind_a_hold(true);
        let checks = waited.checks();
        assert!(crate::checks::all_passed(&checks), "{checks:#?}");
        let replayed = checks.iter().find(|c| c.name == ALL[11]).unwrap();
        assert!(
            replayed
                .detail
                .starts_with("4 entries replayed over 4 products (3 took units, 1 refused for stock, 1 waited behind holds) with 1 settle"),
            "{}",
            replayed.detail
        );

        // Refused instead: every other check passes (nothing was taken
        // after the refusal, one unit came back after it), the replay
        // does not.
        let refused = refused_behind_a_hold(false);
        assert_eq!(refused.failed(), [ALL[11]]);
        let checks = refused.checks();
        let detail = &checks.iter().find(|c| c.name == ALL[11]).unwrap().detail;
        assert!(
            detail.contains("refused sold_out, the rules give took")
                && detail.contains("P0: stock 1 in the database, 0 by the rules"),
            "{detail}"
        );
    }

    #[test]
    fn one_unit_orders_out_of_turn_fail_the_first_come_check() {
        let mut sim = Sim::new(2, None);
        let ids: Vec<Uuid> = (0..5)
            .map(|i| sim.cart(&format!("c{i}"), &[(0, 1)], Intent::Buy))
            .collect();
        let mut world = sim.finish();
        let checks = world.checks();
        let fcfs = checks.iter().find(|c| c.name == ALL[12]).unwrap();
        assert!(
            fcfs.passed && fcfs.detail.starts_with("1 of 4 products"),
            "{fcfs:?}"
        );
        // The third buyer confirmed instead of the second: the stock figures
        // still add up.
        for (id, status) in [
            (ids[1], OrderStatus::Rejected),
            (ids[2], OrderStatus::Confirmed),
        ] {
            let reason = (status == OrderStatus::Rejected).then(|| "sold_out".to_owned());
            let order = world.order_mut(id);
            order.status = status;
            order.reason = reason.clone();
            order.total_cents = (status == OrderStatus::Confirmed).then_some(PRICE);
            let seen = world.buyer_mut(id).seen.as_mut().unwrap();
            seen.status = status;
            seen.reason = reason;
        }
        let failed = world.failed();
        assert!(failed.contains(&ALL[12].to_owned()), "{failed:?}");
        assert!(failed.contains(&ALL[10].to_owned()), "{failed:?}");
        assert!(failed.contains(&ALL[11].to_owned()), "{failed:?}");
        assert!(!failed.contains(&ALL[0].to_owned()), "{failed:?}");
    }

    #[test]
    fn a_customer_over_the_limit_fails() {
        let mut sim = Sim::new(10, Some(2));
        sim.cart("c", &[(0, 2)], Intent::Buy);
        let second = sim.cart("c", &[(0, 1), (1, 1)], Intent::Buy);
        let mut world = sim.finish();
        assert_eq!(
            world
                .db
                .orders
                .iter()
                .find(|o| o.id == second)
                .unwrap()
                .reason
                .as_deref(),
            Some("limit_exceeded")
        );
        assert!(world.failed().is_empty(), "{:#?}", world.checks());
        // The limit let through: 3 units of product 0 for one customer.
        let order = world.order_mut(second);
        order.status = OrderStatus::Confirmed;
        order.reason = None;
        order.rejected_product_id = None;
        for line in world.db.lines.iter_mut().filter(|l| l.order_id == second) {
            line.state = "taken".into();
            line.reason = None;
            line.settle_sequence = None;
        }
        world.assert_fails(ALL[13]);
        // A cancelled order gives its units back to the limit.
        let mut sim = Sim::new(10, Some(2));
        sim.cart("c", &[(0, 2)], Intent::Cancel);
        sim.cart("c", &[(0, 2)], Intent::Buy);
        let world = sim.finish();
        assert!(world.failed().is_empty(), "{:#?}", world.checks());
    }

    #[test]
    fn half_served_carts_fail() {
        let mut sim = Sim::new(1, None);
        let served = sim.cart("a", &[(0, 1), (1, 1), (2, 1)], Intent::Buy);
        let rejected = sim.cart("b", &[(3, 1), (0, 1)], Intent::Buy);
        let world = sim.finish();
        assert!(world.failed().is_empty(), "{:#?}", world.checks());

        // A confirmed cart with a line that never took its units.
        let mut broken = World2 {
            expect: world.expect.clone(),
            buyers: world.buyers.clone(),
            db: world.db.clone(),
        };
        broken
            .db
            .lines
            .iter_mut()
            .find(|l| l.order_id == served && l.line_no == 2)
            .unwrap()
            .state = "failed".into();
        broken.assert_fails(ALL[14]);
        // A line missing altogether.
        let mut broken = World2 {
            expect: world.expect.clone(),
            buyers: world.buyers.clone(),
            db: world.db.clone(),
        };
        broken
            .db
            .lines
            .retain(|l| !(l.order_id == served && l.line_no == 1));
        broken.assert_fails(ALL[14]);

        // A rejected cart still holding a line.
        let mut broken = World2 {
            expect: world.expect.clone(),
            buyers: world.buyers.clone(),
            db: world.db.clone(),
        };
        let line = broken
            .db
            .lines
            .iter_mut()
            .find(|l| l.order_id == rejected && l.state == "released")
            .unwrap();
        line.state = "taken".into();
        broken.assert_fails(ALL[15]);
        // ... or naming the wrong product.
        let mut broken = World2 {
            expect: world.expect,
            buyers: world.buyers,
            db: world.db,
        };
        broken.order_mut(rejected).rejected_product_id = Some(product(3));
        broken
            .buyer_mut(rejected)
            .seen
            .as_mut()
            .unwrap()
            .rejected_product_id = Some(product(3));
        assert_eq!(broken.failed(), [ALL[15]]);
    }

    #[test]
    fn reservations_that_kept_their_units_fail() {
        let mut sim = Sim::new(4, None);
        let expired = sim.cart("a", &[(0, 1), (1, 2)], Intent::Abandon);
        let cancelled = sim.cart("b", &[(2, 1)], Intent::Cancel);
        let world = sim.finish();
        assert!(world.failed().is_empty(), "{:#?}", world.checks());

        for (id, product_n) in [(expired, 1), (cancelled, 2)] {
            let mut broken = World2 {
                expect: world.expect.clone(),
                buyers: world.buyers.clone(),
                db: world.db.clone(),
            };
            broken
                .db
                .returns
                .retain(|r| !(r.order_id == id && r.product_id == product(product_n)));
            broken.assert_fails(ALL[16]);
        }
        // Returned twice.
        let mut broken = World2 {
            expect: world.expect.clone(),
            buyers: world.buyers.clone(),
            db: world.db.clone(),
        };
        let again = broken.db.returns[0].clone();
        broken.db.returns.push(again);
        broken.assert_fails(ALL[16]);
        // Not applied yet.
        let mut broken = World2 {
            expect: world.expect.clone(),
            buyers: world.buyers.clone(),
            db: world.db.clone(),
        };
        broken.db.returns[0].applied = false;
        broken.assert_fails(ALL[16]);
        // A return for an order that was confirmed.
        let mut broken = World2 {
            expect: world.expect,
            buyers: world.buyers,
            db: world.db,
        };
        broken.db.returns[0].order_id = Uuid::from_u128(0xC000 + 7);
        let mut confirmed = broken.db.orders[0].clone();
        confirmed.id = Uuid::from_u128(0xC000 + 7);
        confirmed.status = OrderStatus::Confirmed;
        confirmed.line_count = 1;
        confirmed.product_id = Some(product(0));
        confirmed.quantity = Some(1);
        confirmed.idempotency_key = "key-0".into();
        broken.db.orders.push(confirmed);
        broken.assert_fails(ALL[16]);
    }

    #[test]
    fn two_winners_or_an_undone_expiry_fail() {
        let mut sim = Sim::new(5, None);
        let raced = sim.cart("a", &[(0, 1), (1, 1)], Intent::Race);
        let expired = sim.cart("b", &[(2, 1)], Intent::Abandon);
        let cancelled = sim.cart("c", &[(3, 1)], Intent::Cancel);
        let world = sim.finish();
        assert!(world.failed().is_empty(), "{:#?}", world.checks());
        let clone = |w: &World2| World2 {
            expect: w.expect.clone(),
            buyers: w.buyers.clone(),
            db: w.db.clone(),
        };

        // Both confirm and cancel answered 200.
        let mut broken = clone(&world);
        let cancel = &mut broken.buyer_mut(raced).actions[1];
        cancel.status = Some(200);
        cancel.code = None;
        assert_eq!(broken.failed(), [ALL[17]]);

        // Confirm answered 200, yet the order was cancelled.
        let mut broken = clone(&world);
        let buyer = broken.buyer_mut(cancelled);
        buyer.actions[0].kind = ActionKind::Confirm;
        buyer.actions[0].order_status = Some(OrderStatus::Confirmed);
        broken.assert_fails(ALL[17]);

        // A confirm after the expiry answered 200.
        let mut broken = clone(&world);
        let late = &mut broken.buyer_mut(expired).actions[0];
        late.status = Some(200);
        late.code = None;
        broken.assert_fails(ALL[17]);

        // The client was told "expired", but the order ended confirmed.
        let mut broken = clone(&world);
        broken.order_mut(expired).status = OrderStatus::Confirmed;
        broken.assert_fails(ALL[17]);

        // A 429 once the attempts ran out says nothing: not a failure.
        let mut unknown = clone(&world);
        let cancel = &mut unknown.buyer_mut(raced).actions[1];
        cancel.status = Some(429);
        cancel.code = Some("rate_limited".into());
        assert!(unknown.failed().is_empty(), "{:#?}", unknown.checks());
    }
}
