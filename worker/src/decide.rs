//! The decision: a pure function from the products' states, the entries
//! waiting behind holds and a batch of queued entries (in queue order) to
//! their outcomes. No I/O, so it is tested exhaustively with properties; the
//! caller persists the result in one transaction, with the database's own
//! constraints as a guard.
//!
//! Entries that want units (a one-line order, a line of an order of several
//! lines) are decided at their turn in their product's queue:
//!
//! 1. behind an entry that is waiting (parked), an entry waits too: the
//!    queue's order is kept;
//! 2. a line of an order cancelled while pending takes nothing;
//! 3. an inactive product or the customer's limit refuses it;
//! 4. if the free stock covers it, it takes its units: a one-line order is
//!    decided (confirmed, or reserved), a line *holds* them (`held`) until
//!    its order settles;
//! 5. if not, but units are held by orders not yet settled (which are all
//!    earlier in the queue), it waits (is parked) for them: those units may
//!    come back, and refusing it now would let a later entry have them;
//! 6. otherwise it is refused (`sold_out`, `insufficient_stock`).
//!
//! Entries that give units (a restock, a return of a reserved order's units,
//! a settled line's hold taken for good or released) take effect at their
//! turn, and then the product's parked entries are tried again, in order,
//! until one must wait again. A product has parked entries only while it
//! has held units (rule 5), so once its holds are settled none is left.

use std::collections::{HashMap, VecDeque};

use checkline_shared::domain::RejectReason;
use uuid::Uuid;

/// An entry's place in its product's queue: the stream sequence of its
/// message and its index inside that message.
pub type Position = (u64, u32);

/// What the decision needs to know about a product, read under a row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductState {
    /// Free units.
    pub stock: i64,
    /// Units held by lines whose order has not settled.
    pub held: i64,
    pub price_cents: i64,
    pub max_per_customer: Option<i32>,
    pub active: bool,
}

/// One queued entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A one-line order; `reserve`: it becomes `reserved`, not `confirmed`.
    Order {
        order_id: Uuid,
        product_id: Uuid,
        customer_id: String,
        quantity: i32,
        reserve: bool,
    },
    /// A line of an order of several lines; `cancelled`: the order was
    /// cancelled while pending.
    Line {
        order_id: Uuid,
        line_no: i32,
        product_id: Uuid,
        customer_id: String,
        quantity: i32,
        cancelled: bool,
    },
    Restock {
        restock_id: Uuid,
        product_id: Uuid,
        quantity: i64,
    },
    /// Units of a reserved order that expired or was cancelled.
    Return {
        return_id: Uuid,
        product_id: Uuid,
        customer_id: String,
        quantity: i32,
    },
    /// A held line whose order settled: `keep` takes the units for good,
    /// otherwise they go back to stock.
    Settle {
        order_id: Uuid,
        line_no: i32,
        product_id: Uuid,
        customer_id: String,
        quantity: i32,
        keep: bool,
    },
}

impl Item {
    pub fn product_id(&self) -> Uuid {
        match self {
            Self::Order { product_id, .. }
            | Self::Line { product_id, .. }
            | Self::Restock { product_id, .. }
            | Self::Return { product_id, .. }
            | Self::Settle { product_id, .. } => *product_id,
        }
    }

    /// Wants units (is decided at its turn), as opposed to giving them.
    pub fn wants_units(&self) -> bool {
        matches!(self, Self::Order { .. } | Self::Line { .. })
    }

    /// The customer whose purchases the entry changes, if any.
    pub fn customer(&self) -> Option<&str> {
        match self {
            Self::Order { customer_id, .. }
            | Self::Line { customer_id, .. }
            | Self::Return { customer_id, .. }
            | Self::Settle { customer_id, .. } => Some(customer_id),
            Self::Restock { .. } => None,
        }
    }
}

/// An item at its place in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub position: Position,
    pub item: Item,
}

/// What happened to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Units taken: a one-line order is confirmed (or reserved), a line
    /// holds them.
    Taken {
        unit_price_cents: i64,
        total_cents: i64,
    },
    Refused(RejectReason),
    /// A line of an order cancelled while pending: it takes nothing.
    Withdrawn,
    /// A restock, return or settle entry took effect.
    Applied {
        stock_after: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub entry: Entry,
    pub outcome: Outcome,
}

/// Units per (customer, product) in the customer's held, reserved and
/// confirmed orders.
pub type Purchases = HashMap<(String, Uuid), i64>;

/// Per product, the entries waiting behind holds, in queue order.
pub type Parked = HashMap<Uuid, VecDeque<Entry>>;

/// Decides `entries` in order, updating `products`, `purchases` and
/// `parked` as it goes. Returns the entries decided (some of them parked
/// before this batch) in the order they were decided; whatever is left in
/// `parked` waits for a later batch.
pub fn decide(
    products: &mut HashMap<Uuid, ProductState>,
    purchases: &mut Purchases,
    parked: &mut Parked,
    entries: Vec<Entry>,
) -> Vec<Decision> {
    let mut decisions = Vec::with_capacity(entries.len());
    for entry in entries {
        let product_id = entry.item.product_id();
        if entry.item.wants_units() {
            if let Some(queue) = parked.get_mut(&product_id).filter(|q| !q.is_empty()) {
                queue.push_back(entry);
                continue;
            }
            match take(products, purchases, &entry.item) {
                Some(outcome) => decisions.push(Decision { entry, outcome }),
                None => parked.entry(product_id).or_default().push_back(entry),
            }
        } else {
            let outcome = give(products, purchases, &entry.item);
            decisions.push(Decision { entry, outcome });
            retry_parked(products, purchases, parked, product_id, &mut decisions);
        }
    }
    decisions
}

/// Tries a product's parked entries again, in queue order, until one must
/// wait again.
fn retry_parked(
    products: &mut HashMap<Uuid, ProductState>,
    purchases: &mut Purchases,
    parked: &mut Parked,
    product_id: Uuid,
    decisions: &mut Vec<Decision>,
) {
    let Some(queue) = parked.get_mut(&product_id) else {
        return;
    };
    while let Some(front) = queue.front() {
        let Some(outcome) = take(products, purchases, &front.item) else {
            break;
        };
        if let Some(entry) = queue.pop_front() {
            decisions.push(Decision { entry, outcome });
        }
    }
    if queue.is_empty() {
        parked.remove(&product_id);
    }
}

/// An entry that wants units, at its turn: its outcome, or `None` when it
/// must wait for units held ahead of it.
fn take(
    products: &mut HashMap<Uuid, ProductState>,
    purchases: &mut Purchases,
    item: &Item,
) -> Option<Outcome> {
    let (product_id, customer_id, quantity, holds) = match item {
        Item::Order {
            product_id,
            customer_id,
            quantity,
            ..
        } => (*product_id, customer_id, *quantity, false),
        Item::Line {
            cancelled: true, ..
        } => return Some(Outcome::Withdrawn),
        Item::Line {
            product_id,
            customer_id,
            quantity,
            ..
        } => (*product_id, customer_id, *quantity, true),
        Item::Restock { .. } | Item::Return { .. } | Item::Settle { .. } => return None,
    };
    let refused = |reason| Some(Outcome::Refused(reason));
    let Some(product) = products.get_mut(&product_id) else {
        return refused(RejectReason::ProductUnavailable);
    };
    if !product.active {
        return refused(RejectReason::ProductUnavailable);
    }
    let units = i64::from(quantity);
    let key = (customer_id.clone(), product_id);
    let bought = purchases.get(&key).copied().unwrap_or(0);
    if let Some(max) = product.max_per_customer {
        if bought + units > i64::from(max) {
            return refused(RejectReason::LimitExceeded);
        }
    }
    if product.stock < units {
        if product.held > 0 {
            return None;
        }
        return refused(if product.stock <= 0 {
            RejectReason::SoldOut
        } else {
            RejectReason::InsufficientStock
        });
    }
    let Some(total_cents) = product.price_cents.checked_mul(units) else {
        // Unreachable within the contract's limits (price ≤ 10^12, quantity
        // ≤ 10^6); refusing is safer than wrapping.
        return refused(RejectReason::ProductUnavailable);
    };
    product.stock -= units;
    if holds {
        product.held += units;
    }
    *purchases.entry(key).or_insert(0) += units;
    Some(Outcome::Taken {
        unit_price_cents: product.price_cents,
        total_cents,
    })
}

/// An entry that gives units back (or settles a hold), at its turn.
fn give(
    products: &mut HashMap<Uuid, ProductState>,
    purchases: &mut Purchases,
    item: &Item,
) -> Outcome {
    let product_id = item.product_id();
    let Some(product) = products.get_mut(&product_id) else {
        return Outcome::Applied { stock_after: 0 };
    };
    let mut give_back = |customer_id: &str, units: i64| {
        if let Some(bought) = purchases.get_mut(&(customer_id.to_owned(), product_id)) {
            *bought = (*bought - units).max(0);
        }
    };
    match item {
        Item::Restock { quantity, .. } => {
            product.stock = product.stock.saturating_add(*quantity);
        }
        Item::Return {
            customer_id,
            quantity,
            ..
        } => {
            product.stock += i64::from(*quantity);
            give_back(customer_id, i64::from(*quantity));
        }
        Item::Settle {
            customer_id,
            quantity,
            keep,
            ..
        } => {
            let units = i64::from(*quantity);
            product.held = (product.held - units).max(0);
            if !keep {
                product.stock += units;
                give_back(customer_id, units);
            }
        }
        Item::Order { .. } | Item::Line { .. } => {}
    }
    Outcome::Applied {
        stock_after: product.stock,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn product(stock: i64, max: Option<i32>) -> ProductState {
        ProductState {
            stock,
            held: 0,
            price_cents: 250,
            max_per_customer: max,
            active: true,
        }
    }

    fn at(seq: u64, item: Item) -> Entry {
        Entry {
            position: (seq, 0),
            item,
        }
    }

    fn order(product_id: Uuid, customer: &str, quantity: i32) -> Item {
        Item::Order {
            order_id: Uuid::new_v4(),
            product_id,
            customer_id: customer.into(),
            quantity,
            reserve: false,
        }
    }

    fn line(order_id: Uuid, line_no: i32, product_id: Uuid, customer: &str) -> Item {
        Item::Line {
            order_id,
            line_no,
            product_id,
            customer_id: customer.into(),
            quantity: 1,
            cancelled: false,
        }
    }

    fn settle(order_id: Uuid, line_no: i32, product_id: Uuid, customer: &str, keep: bool) -> Item {
        Item::Settle {
            order_id,
            line_no,
            product_id,
            customer_id: customer.into(),
            quantity: 1,
            keep,
        }
    }

    fn in_order(items: Vec<Item>) -> Vec<Entry> {
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| at(i as u64 + 1, item))
            .collect()
    }

    fn outcomes(decisions: &[Decision]) -> Vec<Outcome> {
        decisions.iter().map(|d| d.outcome).collect()
    }

    const TAKEN_1: Outcome = Outcome::Taken {
        unit_price_cents: 250,
        total_cents: 250,
    };

    #[test]
    fn each_rejection_reason() {
        let p = Uuid::new_v4();
        let mut products = HashMap::from([(p, product(3, Some(2)))]);
        let mut purchases = Purchases::new();
        let items = vec![
            order(p, "a", 2),
            order(p, "a", 1), // limit: a already has 2
            order(p, "b", 2), // 1 left
            order(p, "b", 1), // takes the last one
            order(p, "c", 1), // sold out
        ];
        let got = outcomes(&decide(
            &mut products,
            &mut purchases,
            &mut Parked::new(),
            in_order(items),
        ));
        use RejectReason::*;
        assert_eq!(
            got,
            vec![
                Outcome::Taken {
                    unit_price_cents: 250,
                    total_cents: 500
                },
                Outcome::Refused(LimitExceeded),
                Outcome::Refused(InsufficientStock),
                TAKEN_1,
                Outcome::Refused(SoldOut),
            ]
        );
        assert_eq!(products[&p].stock, 0);
        products.get_mut(&p).unwrap().active = false;
        let got = outcomes(&decide(
            &mut products,
            &mut purchases,
            &mut Parked::new(),
            in_order(vec![order(p, "d", 1)]),
        ));
        assert_eq!(got, vec![Outcome::Refused(ProductUnavailable)]);
    }

    #[test]
    fn restock_in_the_middle_serves_later_orders() {
        let p = Uuid::new_v4();
        let mut products = HashMap::from([(p, product(0, None))]);
        let items = vec![
            order(p, "a", 1),
            Item::Restock {
                restock_id: Uuid::new_v4(),
                product_id: p,
                quantity: 1,
            },
            order(p, "b", 1),
        ];
        let got = outcomes(&decide(
            &mut products,
            &mut Purchases::new(),
            &mut Parked::new(),
            in_order(items),
        ));
        assert_eq!(
            got,
            vec![
                Outcome::Refused(RejectReason::SoldOut),
                Outcome::Applied { stock_after: 1 },
                TAKEN_1
            ]
        );
    }

    /// The case the design exists for: a cart holds A's last unit, a later
    /// buyer of A waits instead of being refused, and gets the unit when the
    /// cart fails on another product; a buyer behind it waits behind it.
    #[test]
    fn a_buyer_behind_a_failing_cart_waits_and_gets_the_unit() {
        let a = Uuid::new_v4();
        let cart = Uuid::new_v4();
        let mut products = HashMap::from([(a, product(1, None))]);
        let mut purchases = Purchases::new();
        let mut parked = Parked::new();
        let first = decide(
            &mut products,
            &mut purchases,
            &mut parked,
            vec![
                at(1, line(cart, 0, a, "cart")),
                at(2, order(a, "later", 1)),
                at(3, order(a, "latest", 1)),
            ],
        );
        assert_eq!(outcomes(&first), vec![TAKEN_1]);
        assert_eq!((products[&a].stock, products[&a].held), (0, 1));
        assert_eq!(parked[&a].len(), 2, "both buyers wait, in order");
        // The cart failed elsewhere: its hold on A is released.
        let second = decide(
            &mut products,
            &mut purchases,
            &mut parked,
            vec![at(4, settle(cart, 0, a, "cart", false))],
        );
        assert_eq!(
            outcomes(&second),
            vec![
                Outcome::Applied { stock_after: 1 },
                TAKEN_1,
                Outcome::Refused(RejectReason::SoldOut)
            ]
        );
        assert_eq!(second[1].entry.position, (2, 0), "the earlier buyer wins");
        assert!(parked.is_empty());
        assert_eq!(purchases[&("cart".to_owned(), a)], 0);
        assert_eq!((products[&a].stock, products[&a].held), (0, 0));
    }

    #[test]
    fn a_kept_hold_refuses_the_waiting_buyers_in_order() {
        let a = Uuid::new_v4();
        let cart = Uuid::new_v4();
        let mut products = HashMap::from([(a, product(1, None))]);
        let mut parked = Parked::new();
        let mut purchases = Purchases::new();
        decide(
            &mut products,
            &mut purchases,
            &mut parked,
            vec![at(1, line(cart, 0, a, "cart")), at(2, order(a, "b", 1))],
        );
        let got = decide(
            &mut products,
            &mut purchases,
            &mut parked,
            vec![
                at(3, settle(cart, 0, a, "cart", true)),
                at(4, order(a, "c", 1)),
            ],
        );
        assert_eq!(
            outcomes(&got),
            vec![
                Outcome::Applied { stock_after: 0 },
                Outcome::Refused(RejectReason::SoldOut),
                Outcome::Refused(RejectReason::SoldOut)
            ]
        );
        assert_eq!(purchases[&("cart".to_owned(), a)], 1);
    }

    #[test]
    fn a_withdrawn_line_takes_nothing_and_returns_count() {
        let a = Uuid::new_v4();
        let mut products = HashMap::from([(a, product(1, Some(1)))]);
        let mut purchases = Purchases::new();
        let cancelled = Item::Line {
            order_id: Uuid::new_v4(),
            line_no: 0,
            product_id: a,
            customer_id: "x".into(),
            quantity: 1,
            cancelled: true,
        };
        let got = decide(
            &mut products,
            &mut purchases,
            &mut Parked::new(),
            in_order(vec![
                cancelled,
                Item::Return {
                    return_id: Uuid::new_v4(),
                    product_id: a,
                    customer_id: "y".into(),
                    quantity: 2,
                },
                order(a, "z", 1),
            ]),
        );
        assert_eq!(
            outcomes(&got),
            vec![
                Outcome::Withdrawn,
                Outcome::Applied { stock_after: 3 },
                TAKEN_1
            ]
        );
    }

    /// A small world: products, each its own queue (as if in its own
    /// partition), carts of 1-3 lines and one-line orders queued in one
    /// global order, restocks; queues processed in a random interleaving and
    /// random batch sizes, orders settled as the store does (the last line
    /// to report), settle entries appended to their products' queues.
    #[derive(Debug, Clone)]
    struct Buyer {
        products: Vec<usize>,
    }

    fn buyer() -> impl Strategy<Value = Buyer> {
        proptest::collection::btree_set(0usize..4, 1..=3).prop_map(|set| Buyer {
            products: set.into_iter().collect(),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn carts_are_all_or_nothing_and_never_deadlock(
            stocks in proptest::collection::vec(0i64..4, 4),
            buyers in proptest::collection::vec(buyer(), 1..40),
            schedule in proptest::collection::vec((0usize..4, 1usize..5), 400),
        ) {
            let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
            let mut products: HashMap<Uuid, ProductState> = ids.iter().enumerate()
                .map(|(i, id)| (*id, product(stocks[i], None))).collect();
            let mut queues: Vec<VecDeque<Entry>> = vec![VecDeque::new(); 4];
            let mut seq = 0u64;
            let mut carts: HashMap<Uuid, (usize, Vec<(i32, usize, Option<Outcome>)>)> = HashMap::new();
            let mut singles: HashMap<Uuid, (usize, Option<Outcome>)> = HashMap::new();
            for (b, buyer) in buyers.iter().enumerate() {
                let order_id = Uuid::new_v4();
                let customer = format!("b{b}");
                seq += 1;
                if buyer.products.len() == 1 {
                    let p = buyer.products[0];
                    queues[p].push_back(at(seq, order(ids[p], &customer, 1)));
                    if let Some(Entry { item: Item::Order { order_id, .. }, .. }) = queues[p].back() {
                        singles.insert(*order_id, (p, None));
                    }
                    continue;
                }
                let mut lines = Vec::new();
                for (n, p) in buyer.products.iter().enumerate() {
                    queues[*p].push_back(at(seq, line(order_id, n as i32, ids[*p], &customer)));
                    lines.push((n as i32, *p, None));
                }
                carts.insert(order_id, (b, lines));
            }
            let mut purchases = Purchases::new();
            let mut parked: Vec<Parked> = vec![Parked::new(); 4];
            let mut kept: HashMap<Uuid, bool> = HashMap::new();
            let mut steps = schedule.into_iter().cycle().take(4000);
            loop {
                let busy = queues.iter().any(|q| !q.is_empty());
                if !busy { break; }
                let Some((q, n)) = steps.next() else { break };
                let batch: Vec<Entry> = (0..n).filter_map(|_| queues[q].pop_front()).collect();
                if batch.is_empty() { continue; }
                let decisions = decide(&mut products, &mut purchases, &mut parked[q], batch);
                for d in decisions {
                    match &d.entry.item {
                        Item::Order { order_id, .. } => {
                            if let Some(single) = singles.get_mut(order_id) {
                                single.1 = Some(d.outcome);
                            }
                        }
                        Item::Line { order_id, line_no, .. } => {
                            let (_, lines) = carts.get_mut(order_id).unwrap();
                            lines[*line_no as usize].2 = Some(d.outcome);
                            if lines.iter().all(|l| l.2.is_some()) {
                                let keep = lines.iter().all(|l| matches!(l.2, Some(Outcome::Taken { .. })));
                                kept.insert(*order_id, keep);
                                for (n, p, outcome) in lines.iter() {
                                    if matches!(outcome, Some(Outcome::Taken { .. })) {
                                        seq += 1;
                                        queues[*p].push_back(at(seq, settle(*order_id, *n, ids[*p], "c", keep)));
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            // Drained: nothing waits, nothing is held, every order decided.
            prop_assert!(queues.iter().all(|q| q.is_empty()), "the schedule ran out before the queues drained");
            prop_assert!(parked.iter().all(|p| p.is_empty()), "entries left waiting: a deadlock");
            prop_assert!(singles.values().all(|(_, o)| o.is_some()));
            prop_assert_eq!(kept.len(), carts.len());
            for (i, id) in ids.iter().enumerate() {
                prop_assert_eq!(products[id].held, 0);
                prop_assert!(products[id].stock >= 0);
                // Conservation: initial = stock + units of kept carts and of
                // confirmed one-line orders.
                let cart_units: i64 = carts.iter().filter(|(o, _)| kept[*o])
                    .map(|(_, (_, lines))| lines.iter().filter(|l| l.1 == i).count() as i64).sum();
                let single_units = singles.values()
                    .filter(|(p, o)| *p == i && matches!(o, Some(Outcome::Taken { .. })))
                    .count() as i64;
                prop_assert_eq!(stocks[i], products[id].stock + cart_units + single_units);
                // Nothing refused while units were free at the end: a refusal
                // for stock means the product ran out.
                let refused = singles.values().any(|(p, o)| *p == i && matches!(o, Some(Outcome::Refused(RejectReason::SoldOut))));
                if refused {
                    prop_assert_eq!(products[id].stock, 0);
                }
            }
            // All or nothing: a kept cart has every line taken.
            for (order_id, (_, lines)) in &carts {
                let all = lines.iter().all(|l| matches!(l.2, Some(Outcome::Taken { .. })));
                prop_assert_eq!(kept[order_id], all);
            }
        }
    }
}
