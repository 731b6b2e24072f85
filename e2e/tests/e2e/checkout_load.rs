//! Many buyers of random carts over few products with small stock, workers
//! killed mid-run: invariants 1-8 of the contract, checked in PostgreSQL
//! against what every buyer was told.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use checkline_e2e::TestApp;
use futures::StreamExt;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;

use crate::checkout::{act, audit, cart, drained};
use crate::process::spawn_worker;

const BUYERS: usize = 2_000;
const CUSTOMERS: usize = 700;
const PRODUCTS: usize = 20;
const STOCK: i64 = 6;

/// What one buyer did and was told.
#[derive(Debug)]
struct Buyer {
    customer: String,
    key: String,
    status: StatusCode,
    order: Option<String>,
    reserve: bool,
    /// For a reserved order: what confirm or cancel answered.
    action: Option<(&'static str, StatusCode)>,
}

#[tokio::test]
async fn two_thousand_random_carts_with_a_worker_killed_keep_every_promise() {
    let app = Arc::new(
        TestApp::spawn_with(&[
            ("CHECKLINE_EXPIRY_INTERVAL_MS", "200"),
            ("CHECKLINE_BATCH_MAX", "16"),
        ])
        .await,
    );
    let mut products = Vec::new();
    for i in 0..PRODUCTS {
        // Every fourth product limits each customer to one unit.
        let limit = (i % 4 == 0).then_some(1);
        products.push(
            app.create_product(STOCK, limit).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut first = spawn_worker(&app, "load-1", &[]);
    let mut second = spawn_worker(&app, "load-2", &[]);

    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let plans: Vec<(usize, Vec<String>, bool)> = (0..BUYERS)
        .map(|i| {
            let n = rng.gen_range(1..=3);
            let lines: Vec<String> = products.choose_multiple(&mut rng, n).cloned().collect();
            (i % CUSTOMERS, lines, rng.gen_bool(0.3))
        })
        .collect();
    let killer = {
        let app = app.clone();
        tokio::spawn(async move {
            // Kill a worker once a few hundred lines and orders are decided.
            loop {
                let decided: i64 = sqlx::query_scalar(
                    "SELECT (SELECT count(*) FROM orders WHERE status <> 'pending') \
                          + (SELECT count(*) FROM order_lines WHERE state <> 'queued')",
                )
                .fetch_one(&app.env.pool)
                .await
                .unwrap();
                if decided >= 300 {
                    break decided;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let buyers = futures::stream::iter(plans.into_iter().enumerate().map(
        |(i, (c, lines, reserve))| {
            let app = app.clone();
            async move {
                let customer = format!("cust-{c}");
                let token = app.customer(&customer);
                let key = format!("key-{i}");
                let lines: Vec<(&str, i64)> = lines.iter().map(|p| (p.as_str(), 1)).collect();
                let (status, body) = cart(&app, &token, &key, &lines, reserve.then_some(30)).await;
                Buyer {
                    customer,
                    key,
                    status,
                    order: body["id"].as_str().map(str::to_owned),
                    reserve,
                    action: None,
                }
            }
        },
    ))
    .buffer_unordered(64)
    .collect::<Vec<_>>();
    let (mut buyers, decided_at_kill) = tokio::join!(buyers, async {
        let decided = killer.await.unwrap();
        first.start_kill().unwrap();
        first.wait().await.unwrap();
        decided
    });
    let mut third = spawn_worker(&app, "load-3", &[]);
    for b in &buyers {
        assert!(
            [StatusCode::ACCEPTED, StatusCode::CONFLICT, StatusCode::OK].contains(&b.status),
            "{b:?}"
        );
    }

    // Settle the reservations: half confirmed, a quarter cancelled, the rest
    // left to expire (made due at once rather than waited for).
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut due = Vec::new();
    for b in buyers.iter_mut() {
        let Some(order) = b.order.clone() else {
            continue;
        };
        if !b.reserve {
            continue;
        }
        let token = app.customer(&b.customer);
        let decided = app.decided(&token, &order).await;
        if decided["status"] != "reserved" {
            continue;
        }
        let roll: f64 = rng.gen();
        if roll < 0.5 {
            let (status, _) = act(&app, &token, &order, "confirm").await;
            b.action = Some(("confirm", status));
        } else if roll < 0.75 {
            let (status, _) = act(&app, &token, &order, "cancel").await;
            b.action = Some(("cancel", status));
        } else {
            due.push(order);
        }
    }
    let ids: Vec<uuid::Uuid> = due.iter().map(|o| o.parse().unwrap()).collect();
    for (table, key) in [("orders", "id"), ("reservations", "order_id")] {
        sqlx::query(&format!(
            "UPDATE {table} SET reserved_until = now() WHERE {key} = ANY($1)"
        ))
        .bind(&ids)
        .execute(&app.env.pool)
        .await
        .unwrap();
    }
    drained(&app, Duration::from_secs(120)).await;
    let entries: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM order_lines)",
    )
    .fetch_one(&app.env.pool)
    .await
    .unwrap();
    assert!(
        decided_at_kill < entries / 2,
        "the kill landed early in the run: {decided_at_kill} of {entries}"
    );
    loop {
        let reserved: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'reserved'")
                .fetch_one(&app.env.pool)
                .await
                .unwrap();
        if reserved == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drained(&app, Duration::from_secs(60)).await;

    check(&app, &buyers).await;
    for worker in [&mut second, &mut third] {
        worker.start_kill().unwrap();
        worker.wait().await.unwrap();
    }
    Arc::into_inner(app).unwrap().shutdown().await;
}

async fn check(app: &TestApp, buyers: &[Buyer]) {
    let pool = &app.env.pool;
    // 1: the audit, nothing held, nothing on its way back.
    audit(app).await;

    // 2 and 6: one order per (customer, key), and none for a refusal.
    let orders: Vec<(String, String, String, String, Option<i64>, i32)> = sqlx::query_as(
        "SELECT id::text, customer_id, idempotency_key, status, total_cents, line_count FROM orders",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let by_key: HashMap<(String, String), (String, String, Option<i64>)> = orders
        .iter()
        .map(|(id, c, k, s, t, _)| ((c.clone(), k.clone()), (id.clone(), s.clone(), *t)))
        .collect();
    assert_eq!(by_key.len(), orders.len());
    for b in buyers {
        let stored = by_key.get(&(b.customer.clone(), b.key.clone()));
        if b.status.is_client_error() {
            assert!(stored.is_none(), "a {} left an order: {b:?}", b.status);
            continue;
        }
        // 3: every accepted order exists and is final.
        let (id, status, total) = stored.unwrap_or_else(|| panic!("accepted order lost: {b:?}"));
        assert_eq!(Some(id), b.order.as_ref());
        assert!(
            ["confirmed", "rejected", "expired", "cancelled"].contains(&status.as_str()),
            "{b:?} is {status}"
        );
        // 8: confirm and cancel agree with the final state.
        match b.action {
            Some(("confirm", StatusCode::OK)) => assert_eq!(status, "confirmed", "{b:?}"),
            Some(("cancel", StatusCode::OK)) => assert_eq!(status, "cancelled", "{b:?}"),
            Some((_, code)) => assert_eq!(code, StatusCode::CONFLICT, "{b:?}"),
            None => {}
        }
        if b.reserve && status == "confirmed" {
            assert!(
                matches!(b.action, Some(("confirm", StatusCode::OK))),
                "confirmed without a confirm: {b:?}"
            );
        }
        let _ = total;
    }

    // 7: a cart is served whole or not at all.
    let lines: Vec<(String, String, Option<i64>)> =
        sqlx::query_as("SELECT order_id::text, state, unit_price_cents FROM order_lines")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut states: HashMap<String, Vec<String>> = HashMap::new();
    for (order, state, _) in &lines {
        states.entry(order.clone()).or_default().push(state.clone());
    }
    for (id, _, _, status, total, count) in &orders {
        if *count == 1 {
            continue;
        }
        let states = &states[id];
        assert_eq!(states.len() as i32, *count);
        let took = total.is_some();
        if took {
            assert!(
                states.iter().all(|s| s == "taken"),
                "{id} {status}: {states:?}"
            );
        } else {
            assert!(
                states.iter().all(|s| s == "failed" || s == "released"),
                "{id} {status}: {states:?}"
            );
        }
        if status == "expired" || (status == "cancelled" && took) {
            let returned: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM stock_returns WHERE order_id = $1::uuid AND status = 'applied'",
            )
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
            assert_eq!(
                returned as i32, *count,
                "{id}: every line's units came back"
            );
        }
    }

    // 5: per (customer, product), units of reserved and confirmed orders
    // within the limit.
    let over: Vec<(String, String, i64, i32)> = sqlx::query_as(
        "SELECT l.customer_id, l.product_id::text, SUM(l.quantity)::bigint, p.max_per_customer \
         FROM (SELECT o.customer_id, o.product_id, o.quantity FROM orders o \
                WHERE o.line_count = 1 AND o.status IN ('reserved', 'confirmed') \
               UNION ALL \
               SELECT o.customer_id, ol.product_id, ol.quantity FROM order_lines ol \
                 JOIN orders o ON o.id = ol.order_id WHERE o.status IN ('reserved', 'confirmed')) l \
         JOIN products p ON p.id = l.product_id \
         WHERE p.max_per_customer IS NOT NULL \
         GROUP BY l.customer_id, l.product_id, p.max_per_customer \
         HAVING SUM(l.quantity) > p.max_per_customer",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(over.is_empty(), "over the limit: {over:?}");

    // 4: per product, replay the queue with the rules of the contract and
    // the outcomes each order had elsewhere (its other lines, confirm,
    // cancel, expiry): every entry must have got exactly what it got. An
    // entry that finds no free unit while units are held ahead of it waits
    // for them, in queue order; one refused for stock found none free and
    // none held; returned and released units go to the first waiting entry.
    let events: Vec<(String, i64, i32, String, bool)> = sqlx::query_as(
        "SELECT product_id::text, queue_sequence, queue_index, \
                CASE WHEN total_cents IS NOT NULL THEN 'take' \
                     WHEN reason = 'limit_exceeded' THEN 'limit' ELSE 'refuse' END, false \
           FROM orders WHERE line_count = 1 AND queue_sequence IS NOT NULL \
         UNION ALL \
         SELECT product_id::text, queue_sequence, queue_index, \
                CASE WHEN unit_price_cents IS NOT NULL THEN 'take' \
                     WHEN reason = 'limit_exceeded' THEN 'limit' ELSE 'refuse' END, true \
           FROM order_lines WHERE queue_sequence IS NOT NULL \
         UNION ALL \
         SELECT product_id::text, settle_sequence, -1, \
                CASE state WHEN 'taken' THEN 'keep' ELSE 'release' END, true \
           FROM order_lines WHERE settle_sequence IS NOT NULL \
         UNION ALL \
         SELECT product_id::text, queue_sequence, -1, 'return', false FROM stock_returns \
          WHERE status = 'applied'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut per_product: BTreeMap<String, Vec<(i64, i32, String, bool)>> = BTreeMap::new();
    for (product, seq, idx, kind, line) in events {
        per_product
            .entry(product)
            .or_default()
            .push((seq, idx, kind, line));
    }
    let mut refusals = 0;
    let mut waited = 0;
    for (product, mut events) in per_product {
        events.sort_by_key(|(seq, idx, _, _)| (*seq, *idx));
        let (mut stock, mut held) = (STOCK, 0i64);
        let mut parked: std::collections::VecDeque<(i64, i32, String, bool)> = Default::default();
        // One entry at its turn (or again, waiting): None if it must wait.
        let turn = |e: &(i64, i32, String, bool), stock: &mut i64, held: &mut i64| -> Option<()> {
            let (seq, idx, got, line) = e;
            if got == "limit" {
                return Some(());
            }
            let expected = if *stock >= 1 {
                *stock -= 1;
                if *line {
                    *held += 1;
                }
                "take"
            } else if *held > 0 {
                return None;
            } else {
                "refuse"
            };
            assert_eq!(got, expected, "product {product}: entry at ({seq}, {idx})");
            Some(())
        };
        for e in &events {
            match e.2.as_str() {
                "keep" | "release" | "return" => {
                    if e.2 != "return" {
                        held -= 1;
                    }
                    if e.2 != "keep" {
                        stock += 1;
                    }
                    while let Some(front) = parked.front() {
                        if turn(front, &mut stock, &mut held).is_none() {
                            break;
                        }
                        parked.pop_front();
                    }
                }
                _ => {
                    if e.2 == "refuse" {
                        refusals += 1;
                    }
                    if !parked.is_empty() || turn(e, &mut stock, &mut held).is_none() {
                        waited += 1;
                        parked.push_back(e.clone());
                    }
                }
            }
        }
        assert!(
            parked.is_empty(),
            "product {product}: left waiting: {parked:?}"
        );
        assert_eq!(held, 0, "product {product}");
        let db_stock: i64 = sqlx::query_scalar("SELECT stock FROM products WHERE id = $1::uuid")
            .bind(&product)
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(stock, db_stock, "product {product}");
    }
    assert!(refusals > 0, "the load sold products out");
    assert!(waited > 0, "some entries waited behind held units");
    let carts = orders.iter().filter(|o| o.5 > 1).count();
    let kept = orders.iter().filter(|o| o.5 > 1 && o.4.is_some()).count();
    assert!(carts > 500 && kept > 0, "{carts} carts, {kept} served");
    let statuses: HashSet<&str> = orders.iter().map(|o| o.3.as_str()).collect();
    for status in ["confirmed", "rejected", "expired", "cancelled"] {
        assert!(statuses.contains(status), "no {status} order in the run");
    }
}
