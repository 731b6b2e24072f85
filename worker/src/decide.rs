//! The decision: a pure function from a product's state and a batch of queued
//! items (in queue order) to their outcomes. No I/O, so it is tested
//! exhaustively with properties; the caller persists the result in one
//! transaction, with the database's own conditional decrement as a guard.

use std::collections::HashMap;

use checkline_shared::domain::RejectReason;
use uuid::Uuid;

/// What the decision needs to know about a product, read under a row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductState {
    pub stock: i64,
    pub price_cents: i64,
    pub max_per_customer: Option<i32>,
    pub active: bool,
}

/// One queued item, in queue order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Order {
        order_id: Uuid,
        product_id: Uuid,
        customer_id: String,
        quantity: i32,
    },
    Restock {
        restock_id: Uuid,
        product_id: Uuid,
        quantity: i64,
    },
}

/// What happened to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Confirmed {
        unit_price_cents: i64,
        total_cents: i64,
    },
    Rejected(RejectReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Order {
        order_id: Uuid,
        product_id: Uuid,
        customer_id: String,
        quantity: i32,
        outcome: Outcome,
    },
    Restock {
        restock_id: Uuid,
        product_id: Uuid,
        quantity: i64,
        stock_after: i64,
    },
}

/// Confirmed units so far, per (customer, product).
pub type Purchases = HashMap<(String, Uuid), i64>;

/// Decides `items` in order, updating `products` and `purchases` as it goes.
///
/// Checks, in this order: the product is active; the customer stays within
/// `max_per_customer`; stock covers the quantity (`sold_out` when stock is 0,
/// `insufficient_stock` when it is positive but short). An item whose product
/// is missing from `products` is rejected as unavailable.
pub fn decide(
    products: &mut HashMap<Uuid, ProductState>,
    purchases: &mut Purchases,
    items: &[Item],
) -> Vec<Decision> {
    items
        .iter()
        .map(|item| match item {
            Item::Order {
                order_id,
                product_id,
                customer_id,
                quantity,
            } => {
                let outcome =
                    decide_order(products, purchases, *product_id, customer_id, *quantity);
                Decision::Order {
                    order_id: *order_id,
                    product_id: *product_id,
                    customer_id: customer_id.clone(),
                    quantity: *quantity,
                    outcome,
                }
            }
            Item::Restock {
                restock_id,
                product_id,
                quantity,
            } => {
                let stock_after = match products.get_mut(product_id) {
                    Some(product) => {
                        product.stock = product.stock.saturating_add(*quantity);
                        product.stock
                    }
                    None => 0,
                };
                Decision::Restock {
                    restock_id: *restock_id,
                    product_id: *product_id,
                    quantity: *quantity,
                    stock_after,
                }
            }
        })
        .collect()
}

fn decide_order(
    products: &mut HashMap<Uuid, ProductState>,
    purchases: &mut Purchases,
    product_id: Uuid,
    customer_id: &str,
    quantity: i32,
) -> Outcome {
    let Some(product) = products.get_mut(&product_id) else {
        return Outcome::Rejected(RejectReason::ProductUnavailable);
    };
    if !product.active {
        return Outcome::Rejected(RejectReason::ProductUnavailable);
    }
    let quantity_units = i64::from(quantity);
    let bought = purchases
        .get(&(customer_id.to_owned(), product_id))
        .copied()
        .unwrap_or(0);
    if let Some(max) = product.max_per_customer {
        if bought + quantity_units > i64::from(max) {
            return Outcome::Rejected(RejectReason::LimitExceeded);
        }
    }
    if product.stock <= 0 {
        return Outcome::Rejected(RejectReason::SoldOut);
    }
    if product.stock < quantity_units {
        return Outcome::Rejected(RejectReason::InsufficientStock);
    }
    let Some(total_cents) = product.price_cents.checked_mul(quantity_units) else {
        // Unreachable within the contract's limits (price ≤ 10^12, quantity
        // ≤ 10^6); refusing is safer than wrapping.
        return Outcome::Rejected(RejectReason::ProductUnavailable);
    };
    product.stock -= quantity_units;
    *purchases
        .entry((customer_id.to_owned(), product_id))
        .or_insert(0) += quantity_units;
    Outcome::Confirmed {
        unit_price_cents: product.price_cents,
        total_cents,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn product(stock: i64, max: Option<i32>) -> ProductState {
        ProductState {
            stock,
            price_cents: 250,
            max_per_customer: max,
            active: true,
        }
    }

    fn order(product_id: Uuid, customer: &str, quantity: i32) -> Item {
        Item::Order {
            order_id: Uuid::new_v4(),
            product_id,
            customer_id: customer.into(),
            quantity,
        }
    }

    fn outcomes(decisions: &[Decision]) -> Vec<Outcome> {
        decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Order { outcome, .. } => Some(*outcome),
                Decision::Restock { .. } => None,
            })
            .collect()
    }

    #[test]
    fn each_rejection_reason() {
        let p = Uuid::new_v4();
        let mut products = HashMap::from([(p, product(3, Some(2)))]);
        let mut purchases = Purchases::new();
        let items = [
            order(p, "a", 2),
            order(p, "a", 1), // limit: a already has 2
            order(p, "b", 2), // 1 left
            order(p, "b", 1), // takes the last one
            order(p, "c", 1), // sold out
        ];
        let got = outcomes(&decide(&mut products, &mut purchases, &items));
        use RejectReason::*;
        assert_eq!(
            got,
            vec![
                Outcome::Confirmed {
                    unit_price_cents: 250,
                    total_cents: 500
                },
                Outcome::Rejected(LimitExceeded),
                Outcome::Rejected(InsufficientStock),
                Outcome::Confirmed {
                    unit_price_cents: 250,
                    total_cents: 250
                },
                Outcome::Rejected(SoldOut),
            ]
        );
        assert_eq!(products[&p].stock, 0);
        products.get_mut(&p).unwrap().active = false;
        let got = outcomes(&decide(&mut products, &mut purchases, &[order(p, "d", 1)]));
        assert_eq!(got, vec![Outcome::Rejected(ProductUnavailable)]);
    }

    #[test]
    fn restock_in_the_middle_serves_later_orders() {
        let p = Uuid::new_v4();
        let mut products = HashMap::from([(p, product(0, None))]);
        let items = [
            order(p, "a", 1),
            Item::Restock {
                restock_id: Uuid::new_v4(),
                product_id: p,
                quantity: 1,
            },
            order(p, "b", 1),
        ];
        let decisions = decide(&mut products, &mut Purchases::new(), &items);
        assert!(matches!(
            decisions[1],
            Decision::Restock { stock_after: 1, .. }
        ));
        let got = outcomes(&decisions);
        assert_eq!(got[0], Outcome::Rejected(RejectReason::SoldOut));
        assert!(matches!(got[1], Outcome::Confirmed { .. }));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Order {
            product: usize,
            customer: u8,
            quantity: i32,
        },
        Restock {
            product: usize,
            quantity: i64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0usize..3, 0u8..6, 1i32..5).prop_map(|(product, customer, quantity)| Op::Order { product, customer, quantity }),
            1 => (0usize..3, 1i64..4).prop_map(|(product, quantity)| Op::Restock { product, quantity }),
        ]
    }

    proptest! {
        /// Random batches of orders, quantities, limits and restocks: never
        /// oversold, stock conserved, limits held, and first-come first-served.
        #[test]
        fn invariants_hold(
            stocks in proptest::collection::vec(0i64..10, 3),
            limits in proptest::collection::vec(proptest::option::of(1i32..5), 3),
            actives in proptest::collection::vec(proptest::bool::weighted(0.9), 3),
            ops in proptest::collection::vec(op(), 0..80),
            split in 0usize..80,
        ) {
            let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
            let initial: HashMap<Uuid, ProductState> = ids.iter().enumerate().map(|(i, id)| {
                (*id, ProductState { stock: stocks[i], price_cents: 100, max_per_customer: limits[i], active: actives[i] })
            }).collect();
            let items: Vec<Item> = ops.iter().map(|op| match op {
                Op::Order { product, customer, quantity } => order(ids[*product], &format!("c{customer}"), *quantity),
                Op::Restock { product, quantity } => Item::Restock { restock_id: Uuid::new_v4(), product_id: ids[*product], quantity: *quantity },
            }).collect();

            // Deciding in two batches gives the same outcomes as in one.
            let mut products = initial.clone();
            let mut purchases = Purchases::new();
            let whole = decide(&mut products, &mut purchases, &items);
            let cut = split.min(items.len());
            let mut products2 = initial.clone();
            let mut purchases2 = Purchases::new();
            let mut parts = decide(&mut products2, &mut purchases2, &items[..cut]);
            parts.extend(decide(&mut products2, &mut purchases2, &items[cut..]));
            prop_assert_eq!(&whole, &parts);
            prop_assert_eq!(&products, &products2);

            for (i, id) in ids.iter().enumerate() {
                let restocked: i64 = whole.iter().filter_map(|d| match d {
                    Decision::Restock { product_id, quantity, .. } if product_id == id => Some(*quantity),
                    _ => None,
                }).sum();
                let confirmed: i64 = whole.iter().filter_map(|d| match d {
                    Decision::Order { product_id, quantity, outcome: Outcome::Confirmed { .. }, .. } if product_id == id => Some(i64::from(*quantity)),
                    _ => None,
                }).sum();
                // Conservation (invariant 1) and never negative.
                prop_assert!(products[id].stock >= 0);
                prop_assert_eq!(stocks[i] + restocked, products[id].stock + confirmed);
                // Per-customer limits (invariant 5).
                if let Some(max) = limits[i] {
                    for c in 0..6u8 {
                        let bought: i64 = whole.iter().filter_map(|d| match d {
                            Decision::Order { product_id, customer_id, quantity, outcome: Outcome::Confirmed { .. }, .. }
                                if product_id == id && *customer_id == format!("c{c}") => Some(i64::from(*quantity)),
                            _ => None,
                        }).sum();
                        prop_assert!(bought <= i64::from(max));
                    }
                }
            }

            // FIFO: replaying the decisions one by one, a stock rejection only
            // happens when the stock at that point really could not serve it,
            // and a confirmation only when it could.
            let mut stock: HashMap<Uuid, i64> = initial.iter().map(|(k, v)| (*k, v.stock)).collect();
            for d in &whole {
                match d {
                    Decision::Restock { product_id, quantity, stock_after, .. } => {
                        *stock.get_mut(product_id).unwrap() += quantity;
                        prop_assert_eq!(stock[product_id], *stock_after);
                    }
                    Decision::Order { product_id, quantity, outcome, .. } => {
                        let s = stock[product_id];
                        match outcome {
                            Outcome::Confirmed { total_cents, .. } => {
                                prop_assert!(s >= i64::from(*quantity));
                                prop_assert_eq!(*total_cents, 100 * i64::from(*quantity));
                                *stock.get_mut(product_id).unwrap() -= i64::from(*quantity);
                            }
                            Outcome::Rejected(RejectReason::SoldOut) => prop_assert_eq!(s, 0),
                            Outcome::Rejected(RejectReason::InsufficientStock) => prop_assert!(s > 0 && s < i64::from(*quantity)),
                            Outcome::Rejected(_) => {}
                        }
                    }
                }
            }
        }
    }
}
