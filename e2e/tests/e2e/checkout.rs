//! Checkout 1.1 (API.md, "Checkout 1.1: carts and reservations"): orders of
//! several lines, all or nothing, in queue order on every product they
//! name; reservations confirmed, cancelled or expired, exactly one of them.

use std::sync::Arc;
use std::time::Duration;

use checkline_e2e::{read_events, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// `POST /v1/orders` with `lines` and, optionally, `reserve_secs`.
pub async fn cart(
    app: &TestApp,
    token: &str,
    key: &str,
    lines: &[(&str, i64)],
    reserve_secs: Option<i64>,
) -> (StatusCode, Value) {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(p, q)| json!({"product_id": p, "quantity": q}))
        .collect();
    let mut body = json!({ "lines": lines });
    if let Some(secs) = reserve_secs {
        body["reserve_secs"] = json!(secs);
    }
    let response = app
        .http
        .post(app.url("/v1/orders"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// A one-line order with `reserve_secs`.
pub async fn reserve(
    app: &TestApp,
    token: &str,
    key: &str,
    product: &str,
    secs: i64,
) -> (StatusCode, Value) {
    let response = app
        .http
        .post(app.url("/v1/orders"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&json!({"product_id": product, "quantity": 1, "reserve_secs": secs}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// `POST /v1/orders/{id}/{action}` (`confirm` or `cancel`).
pub async fn act(app: &TestApp, token: &str, id: &str, action: &str) -> (StatusCode, Value) {
    let response = app
        .http
        .post(app.url(&format!("/v1/orders/{id}/{action}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// Orders one unit of `product`; returns (status, body).
async fn buy_one(app: &TestApp, token: &str, key: &str, product: &str) -> (StatusCode, Value) {
    let response = app.order(token, key, product, 1).await;
    let status = response.status();
    (status, response.json().await.unwrap())
}

fn id(order: &Value) -> String {
    order["id"].as_str().unwrap().to_owned()
}

/// Waits until nothing is on its way: no pending order, no line before its
/// settle entry, no unit on its way back. Panics after `limit`.
pub async fn drained(app: &TestApp, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (orders, lines, returns): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM orders WHERE status = 'pending'), \
                    (SELECT count(*) FROM order_lines WHERE state IN ('queued', 'parked', 'held', 'keep', 'release')), \
                    (SELECT count(*) FROM stock_returns WHERE status = 'pending')",
        )
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
        if orders + lines + returns == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not drained: {orders} pending orders, {lines} unsettled lines, {returns} returns"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Invariant 1 for every product, once drained: nothing held, nothing on
/// its way back, and initial + restocks = stock + units of reserved and
/// confirmed orders.
pub async fn audit(app: &TestApp) {
    let rows: Vec<(uuid::Uuid, bool, i64, i64, i64)> = sqlx::query_as(
        "SELECT product_id, balanced, held, returning_units, stock FROM stock_audit",
    )
    .fetch_all(&app.env.pool)
    .await
    .unwrap();
    for (product, balanced, held, returning, stock) in rows {
        assert!(balanced, "product {product} unbalanced");
        assert_eq!((held, returning), (0, 0), "product {product}");
        assert!(stock >= 0);
    }
}

/// Forces reservations to end at `in_ms` from now (negative: already
/// over), as if they had been made long ago.
async fn force_reserved_until(app: &TestApp, orders: &[String], in_ms: i64) {
    let ids: Vec<uuid::Uuid> = orders.iter().map(|o| o.parse().unwrap()).collect();
    for table in ["orders", "reservations"] {
        let key = if table == "orders" { "id" } else { "order_id" };
        sqlx::query(&format!(
            "UPDATE {table} SET reserved_until = now() + make_interval(secs => $2::float8 / 1000) \
             WHERE {key} = ANY($1)"
        ))
        .bind(&ids)
        .bind(in_ms as f64)
        .execute(&app.env.pool)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_cart_with_a_sold_out_line_takes_nothing_and_later_buyers_get_its_units() {
    // No worker yet: every order below is queued first, in this order.
    let mut app = TestApp::spawn_without_worker().await;
    let a = id(&app.create_product(1, None).await);
    let b = id(&app.create_product(1, None).await);
    let c = id(&app.create_product(1, None).await);
    let first = app.customer("first");
    let (status, first_order) = buy_one(&app, &first, "k", &c).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let carter = app.customer("carter");
    let (status, cart_order) = cart(&app, &carter, "k", &[(&a, 1), (&b, 1), (&c, 1)], None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{cart_order}");
    assert_eq!(cart_order["status"], "pending");
    assert!(cart_order["product_id"].is_null() && cart_order["quantity"].is_null());
    assert_eq!(cart_order["lines"].as_array().unwrap().len(), 3);
    let later_a = app.customer("later-a");
    let later_b = app.customer("later-b");
    let (sa, oa) = buy_one(&app, &later_a, "k", &a).await;
    let (sb, ob) = buy_one(&app, &later_b, "k", &b).await;
    assert_eq!((sa, sb), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));

    app.start_worker().await;
    assert_eq!(
        app.decided(&first, &id(&first_order)).await["status"],
        "confirmed"
    );
    let settled = app.decided(&carter, &id(&cart_order)).await;
    assert_eq!(settled["status"], "rejected", "{settled}");
    assert_eq!(settled["reason"], "sold_out");
    assert_eq!(settled["rejected_product_id"], c.as_str());
    assert!(settled["total_cents"].is_null());
    // A rejected order can be neither confirmed nor cancelled.
    for action in ["confirm", "cancel"] {
        let (status, problem) = act(&app, &carter, &id(&cart_order), action).await;
        assert_eq!(
            (status, &problem["code"]),
            (StatusCode::CONFLICT, &json!("order_rejected"))
        );
    }
    // The later buyers of A and B were never refused for the cart's holds.
    assert_eq!(app.decided(&later_a, &id(&oa)).await["status"], "confirmed");
    assert_eq!(app.decided(&later_b, &id(&ob)).await["status"], "confirmed");
    drained(&app, Duration::from_secs(30)).await;
    for p in [&a, &b, &c] {
        assert_eq!(app.product(p).await["stock"], 0);
    }
    let taken: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM order_lines WHERE order_id = $1::uuid AND state = 'taken'",
    )
    .bind(id(&cart_order))
    .fetch_one(&app.env.pool)
    .await
    .unwrap();
    assert_eq!(taken, 0, "no line of a rejected cart keeps its units");
    audit(&app).await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_cart_is_served_whole_and_refused_at_the_door_for_a_known_sold_out_line() {
    let app = TestApp::spawn().await;
    let a = id(&app.create_product(5, None).await);
    let b = id(&app.create_product(5, None).await);
    let gone = id(&app.create_product(0, None).await);
    let alice = app.customer("alice");
    let (status, order) = cart(&app, &alice, "k1", &[(&a, 2), (&b, 3)], None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let done = app.decided(&alice, &id(&order)).await;
    assert_eq!(done["status"], "confirmed", "{done}");
    assert_eq!(done["total_cents"], 1990 * 5);
    assert!(done["unit_price_cents"].is_null());
    let lines = done["lines"].as_array().unwrap();
    assert_eq!(lines[0]["product_id"], a.as_str());
    assert_eq!(lines[0]["quantity"], 2);
    assert_eq!(lines[1]["unit_price_cents"], 1990);
    // A retry is the same order; the same key with other lines is refused.
    let (status, again) = cart(&app, &alice, "k1", &[(&a, 2), (&b, 3)], None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], done["id"]);
    let (status, other) = cart(&app, &alice, "k1", &[(&b, 3), (&a, 2)], None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{other}");

    // Refused before anything is written.
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    let (status, problem) = cart(&app, &alice, "k2", &[(&a, 1), (&gone, 1)], None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["code"], "sold_out");
    assert_eq!(problem["product_id"], gone.as_str());
    let unknown = uuid::Uuid::new_v4().to_string();
    let (status, problem) = cart(&app, &alice, "k3", &[(&a, 1), (&unknown, 1)], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["code"], "product_not_found");
    for body in [
        json!({"lines": [{"product_id": a, "quantity": 1}, {"product_id": a, "quantity": 1}]}),
        json!({"lines": []}),
        json!({"lines": [{"product_id": a, "quantity": 1}], "product_id": a, "quantity": 1}),
        json!({"product_id": a, "quantity": 1, "reserve_secs": 10}),
        json!({"product_id": a, "quantity": 1, "reserve_secs": 100000}),
    ] {
        let response = app
            .http
            .post(app.url("/v1/orders"))
            .bearer_auth(&alice)
            .header("idempotency-key", "k4")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_request");
    }
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(before, after, "a 4xx leaves no order");
    drained(&app, Duration::from_secs(30)).await;
    assert_eq!(app.product(&a).await["stock"], 3);
    audit(&app).await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_reservation_is_confirmed_once_and_then_holds() {
    let app = TestApp::spawn().await;
    let p = id(&app.create_product(3, None).await);
    let q = id(&app.create_product(3, None).await);
    let alice = app.customer("alice");
    let (status, order) = reserve(&app, &alice, "r1", &p, 300).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let events = app
        .http
        .get(app.url(&format!("/v1/orders/{}/events", id(&order))))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let reader = tokio::spawn(read_events(events, 10, Duration::from_secs(30)));
    let reserved = app.decided(&alice, &id(&order)).await;
    assert_eq!(reserved["status"], "reserved", "{reserved}");
    assert_eq!(reserved["total_cents"], 1990);
    let until: chrono::DateTime<chrono::Utc> = reserved["reserved_until"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let decided_at: chrono::DateTime<chrono::Utc> =
        reserved["decided_at"].as_str().unwrap().parse().unwrap();
    assert_eq!((until - decided_at).num_seconds(), 300);
    let product = app.product(&p).await;
    assert_eq!(
        (product["stock"].as_i64(), product["reserved"].as_i64()),
        (Some(2), Some(1))
    );

    // Someone else cannot see it, confirm it or cancel it.
    let mallory = app.customer("mallory");
    for action in ["confirm", "cancel"] {
        let (status, problem) = act(&app, &mallory, &id(&order), action).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(problem["code"], "order_not_found");
    }
    let (status, confirmed) = act(&app, &alice, &id(&order), "confirm").await;
    assert_eq!(status, StatusCode::OK, "{confirmed}");
    assert_eq!(confirmed["status"], "confirmed");
    let (status, again) = act(&app, &alice, &id(&order), "confirm").await;
    assert_eq!(
        (status, &again["status"]),
        (StatusCode::OK, &json!("confirmed"))
    );
    let (status, problem) = act(&app, &alice, &id(&order), "cancel").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["code"], "order_confirmed");
    let product = app.product(&p).await;
    assert_eq!(
        (product["stock"].as_i64(), product["reserved"].as_i64()),
        (Some(2), Some(0))
    );

    // The order's stream showed pending, reserved, confirmed, and ended.
    let (events, ended) = reader.await.unwrap();
    let statuses: Vec<&str> = events
        .iter()
        .map(|(_, o)| o["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["pending", "reserved", "confirmed"]);
    assert!(ended, "the stream ends at a final state");

    // A reserved cart is confirmed whole; an admin may confirm it.
    let (status, order) = cart(&app, &alice, "r2", &[(&p, 1), (&q, 2)], Some(120)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let reserved = app.decided(&alice, &id(&order)).await;
    assert_eq!(reserved["status"], "reserved", "{reserved}");
    assert_eq!(app.product(&q).await["reserved"], 2);
    let (status, confirmed) = act(&app, &app.admin, &id(&order), "confirm").await;
    assert_eq!(
        (status, &confirmed["status"]),
        (StatusCode::OK, &json!("confirmed"))
    );
    drained(&app, Duration::from_secs(30)).await;
    assert_eq!(app.product(&q).await["stock"], 1);
    assert_eq!(app.product(&q).await["reserved"], 0);
    audit(&app).await;
    app.shutdown().await;
}

#[tokio::test]
async fn cancel_of_a_pending_and_of_a_reserved_order_gives_the_units_to_later_buyers() {
    let mut app = TestApp::spawn_without_worker().await;
    let p = id(&app.create_product(1, None).await);
    let q = id(&app.create_product(1, None).await);
    // Queued while no worker runs: a one-line order and a cart, both
    // cancelled while pending, then buyers behind them.
    let early = app.customer("early");
    let (_, one) = buy_one(&app, &early, "one", &p).await;
    let (status, both) = cart(&app, &early, "both", &[(&q, 1), (&p, 1)], Some(60)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for order in [&one, &both] {
        let (status, cancelled) = act(&app, &early, &id(order), "cancel").await;
        assert_eq!(
            (status, &cancelled["status"]),
            (StatusCode::OK, &json!("cancelled"))
        );
        let (status, again) = act(&app, &early, &id(order), "cancel").await;
        assert_eq!(
            (status, &again["status"]),
            (StatusCode::OK, &json!("cancelled"))
        );
        let (status, problem) = act(&app, &early, &id(order), "confirm").await;
        assert_eq!(
            (status, &problem["code"]),
            (StatusCode::CONFLICT, &json!("order_cancelled"))
        );
    }
    let later = app.customer("later");
    let (_, later_p) = reserve(&app, &later, "lp", &p, 60).await;
    let (_, later_q) = buy_one(&app, &later, "lq", &q).await;
    // Not decided yet: nothing to confirm.
    let (status, problem) = act(&app, &later, &id(&later_p), "confirm").await;
    assert_eq!(
        (status, &problem["code"]),
        (StatusCode::CONFLICT, &json!("order_pending"))
    );
    app.start_worker().await;
    let reserved = app.decided(&later, &id(&later_p)).await;
    assert_eq!(reserved["status"], "reserved", "{reserved}");
    assert_eq!(
        app.decided(&later, &id(&later_q)).await["status"],
        "confirmed"
    );
    drained(&app, Duration::from_secs(30)).await;
    for order in [&one, &both] {
        assert_eq!(app.decided(&early, &id(order)).await["status"], "cancelled");
    }

    // A reserved order cancelled: a buyer queued before the cancel was
    // refused (reserved units are nobody else's), one queued after gets them.
    let before = app.customer("before");
    let (status, refused) = buy_one(&app, &before, "b", &p).await;
    if status == StatusCode::ACCEPTED {
        let refused = app.decided(&before, &id(&refused)).await;
        assert_eq!(
            (&refused["status"], &refused["reason"]),
            (&json!("rejected"), &json!("sold_out"))
        );
    } else {
        assert_eq!(
            (status, &refused["code"]),
            (StatusCode::CONFLICT, &json!("sold_out"))
        );
    }
    let (status, cancelled) = act(&app, &later, &id(&later_p), "cancel").await;
    assert_eq!(
        (status, &cancelled["status"]),
        (StatusCode::OK, &json!("cancelled"))
    );
    let (status, problem) = act(&app, &later, &id(&later_p), "confirm").await;
    assert_eq!(
        (status, &problem["code"]),
        (StatusCode::CONFLICT, &json!("order_cancelled"))
    );
    // The unit is on its way back: the door lets the next buyer queue
    // behind the return (it is not told "sold out"), and the unit is its.
    let after = app.customer("after");
    let (status, got) = buy_one(&app, &after, "a", &p).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{got}");
    assert_eq!(app.decided(&after, &id(&got)).await["status"], "confirmed");
    drained(&app, Duration::from_secs(30)).await;
    audit(&app).await;
    app.shutdown().await;
}

#[tokio::test]
async fn an_unpaid_reservation_expires_within_the_bound_and_its_units_go_to_the_next_buyers() {
    let interval_ms = 500;
    let mut app =
        TestApp::spawn_with(&[("CHECKLINE_EXPIRY_INTERVAL_MS", &interval_ms.to_string())]).await;
    app.start_worker().await;
    let p = id(&app.create_product(1, None).await);
    let alice = app.customer("alice");
    let (_, order) = reserve(&app, &alice, "r", &p, 30).await;
    let events = app
        .http
        .get(app.url(&format!("/v1/orders/{}/events", id(&order))))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let reader = tokio::spawn(read_events(events, 10, Duration::from_secs(60)));
    let stock_events = app
        .http
        .get(app.url(&format!("/v1/products/{p}/events")))
        .send()
        .await
        .unwrap();
    let stock_reader = tokio::spawn(read_events(stock_events, 3, Duration::from_secs(10)));
    let reserved = app.decided(&alice, &id(&order)).await;
    assert_eq!(reserved["status"], "reserved");
    let until: chrono::DateTime<chrono::Utc> = reserved["reserved_until"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // The stock stream says when the units may come back.
    let (stock, _) = stock_reader.await.unwrap();
    let last = &stock.last().unwrap().1;
    assert_eq!(
        (last["stock"].as_i64(), last["reserved"].as_i64()),
        (Some(0), Some(1)),
        "{stock:?}"
    );
    assert_eq!(last["sold_out"], true);
    let next: chrono::DateTime<chrono::Utc> =
        last["next_release_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(next, until);

    // Buyers queued while the units are reserved are refused.
    let early = app.customer("early");
    let (status, refused) = buy_one(&app, &early, "e", &p).await;
    assert!(
        status == StatusCode::CONFLICT
            || app.decided(&early, &id(&refused)).await["status"] == "rejected"
    );

    // Expired within the bound: the expirer's interval, plus a second for
    // the round and the clocks.
    loop {
        let now = app.read_order(&alice, &id(&order), None).await;
        let late = chrono::Utc::now() - until;
        if now["status"] == "expired" {
            assert!(
                late.num_milliseconds() <= interval_ms + 1_000,
                "expired {late} after its end"
            );
            break;
        }
        assert_eq!(now["status"], "reserved");
        assert!(
            late.num_milliseconds() <= interval_ms + 1_000,
            "not expired {late} after its end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, problem) = act(&app, &alice, &id(&order), "confirm").await;
    assert_eq!(
        (status, &problem["code"]),
        (StatusCode::CONFLICT, &json!("reservation_expired"))
    );
    let (status, problem) = act(&app, &alice, &id(&order), "cancel").await;
    assert_eq!(
        (status, &problem["code"]),
        (StatusCode::CONFLICT, &json!("reservation_expired"))
    );
    let (events, ended) = reader.await.unwrap();
    let statuses: Vec<&str> = events
        .iter()
        .map(|(_, o)| o["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["pending", "reserved", "expired"]);
    assert!(ended);

    // The returned unit goes to the next buyer in queue order.
    drained(&app, Duration::from_secs(30)).await;
    let next_buyer = app.customer("next");
    let after_next = app.customer("after-next");
    let (_, first) = buy_one(&app, &next_buyer, "n", &p).await;
    let (second_status, second) = buy_one(&app, &after_next, "n", &p).await;
    assert_eq!(
        app.decided(&next_buyer, &id(&first)).await["status"],
        "confirmed"
    );
    if second_status == StatusCode::ACCEPTED {
        assert_eq!(
            app.decided(&after_next, &id(&second)).await["status"],
            "rejected"
        );
    }
    drained(&app, Duration::from_secs(30)).await;
    audit(&app).await;
    app.shutdown().await;
}

#[tokio::test]
async fn confirm_racing_expiry_lets_exactly_one_win() {
    let app = Arc::new(TestApp::spawn_with(&[("CHECKLINE_EXPIRY_INTERVAL_MS", "50")]).await);
    let mut app_mut = Arc::into_inner(app).unwrap();
    app_mut.start_worker().await;
    let app = Arc::new(app_mut);
    let p = id(&app.create_product(40, None).await);
    let mut orders = Vec::new();
    for i in 0..40 {
        let token = app.customer(&format!("c{i}"));
        let (status, order) = reserve(&app, &token, "k", &p, 600).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        orders.push((token, id(&order)));
    }
    for (token, order) in &orders {
        assert_eq!(app.decided(token, order).await["status"], "reserved");
    }
    // One reservation found over by its confirm: the confirm expires it.
    force_reserved_until(&app, &[orders[0].1.clone()], -1_000).await;
    let (status, problem) = act(&app, &orders[0].0, &orders[0].1, "confirm").await;
    assert_eq!(
        (status, &problem["code"]),
        (StatusCode::CONFLICT, &json!("reservation_expired"))
    );
    // The rest end in 300 ms, while their confirms arrive spread around it.
    let ids: Vec<String> = orders[1..].iter().map(|(_, o)| o.clone()).collect();
    force_reserved_until(&app, &ids, 300).await;
    let racers = orders[1..].iter().enumerate().map(|(i, (token, order))| {
        let app = app.clone();
        let (token, order) = (token.clone(), order.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150 + (i as u64 * 8))).await;
            let (status, body) = act(&app, &token, &order, "confirm").await;
            (order, status, body)
        })
    });
    let mut wins = (0, 0);
    for result in futures::future::join_all(racers).await {
        let (order, status, body) = result.unwrap();
        let token = &orders.iter().find(|(_, o)| *o == order).unwrap().0;
        let final_state = loop {
            let now = app.decided(token, &order).await;
            if now["status"] != "reserved" {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        match status {
            StatusCode::OK => {
                wins.0 += 1;
                assert_eq!(
                    final_state["status"], "confirmed",
                    "a 200 confirm is never undone"
                );
            }
            StatusCode::CONFLICT => {
                wins.1 += 1;
                assert_eq!(body["code"], "reservation_expired");
                assert_eq!(
                    final_state["status"], "expired",
                    "an expiry is never undone"
                );
            }
            other => panic!("confirm answered {other}: {body}"),
        }
    }
    assert_eq!(wins.0 + wins.1, 39);
    drained(&app, Duration::from_secs(30)).await;
    let stock = app.product(&p).await["stock"].as_i64().unwrap();
    assert_eq!(
        stock,
        40 - wins.0,
        "every expired unit came back, no confirmed one did"
    );
    audit(&app).await;
    Arc::into_inner(app).unwrap().shutdown().await;
}

#[tokio::test]
async fn limits_count_reserved_and_confirmed_units_and_get_back_expired_and_cancelled_ones() {
    let app = TestApp::spawn_with(&[("CHECKLINE_EXPIRY_INTERVAL_MS", "100")]).await;
    let mut app = app;
    app.start_worker().await;
    let p = id(&app.create_product(10, Some(2)).await);
    let c = app.customer("carol");
    let (_, reserved) = reserve(&app, &c, "r1", &p, 60).await;
    assert_eq!(app.decided(&c, &id(&reserved)).await["status"], "reserved");
    let (_, bought) = buy_one(&app, &c, "b1", &p).await;
    assert_eq!(app.decided(&c, &id(&bought)).await["status"], "confirmed");
    let (_, over) = buy_one(&app, &c, "b2", &p).await;
    let over = app.decided(&c, &id(&over)).await;
    assert_eq!(
        (&over["status"], &over["reason"]),
        (&json!("rejected"), &json!("limit_exceeded"))
    );
    // Cancelled: the unit counts no more once it is back.
    act(&app, &c, &id(&reserved), "cancel").await;
    drained(&app, Duration::from_secs(30)).await;
    let (_, again) = reserve(&app, &c, "r2", &p, 60).await;
    assert_eq!(app.decided(&c, &id(&again)).await["status"], "reserved");
    let (_, over) = buy_one(&app, &c, "b3", &p).await;
    assert_eq!(
        app.decided(&c, &id(&over)).await["reason"],
        "limit_exceeded"
    );
    // Expired: the same.
    force_reserved_until(&app, &[id(&again)], -1).await;
    loop {
        if app.decided(&c, &id(&again)).await["status"] == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drained(&app, Duration::from_secs(30)).await;
    let (_, last) = buy_one(&app, &c, "b4", &p).await;
    assert_eq!(app.decided(&c, &id(&last)).await["status"], "confirmed");
    let units: i64 = sqlx::query_scalar(
        "SELECT confirmed_quantity FROM customer_purchases WHERE customer_id = 'carol'",
    )
    .fetch_one(&app.env.pool)
    .await
    .unwrap();
    assert_eq!(units, 2);
    drained(&app, Duration::from_secs(30)).await;
    audit(&app).await;
    app.shutdown().await;
}

#[tokio::test]
async fn carts_arriving_together_are_cut_between_carts_into_queue_writes() {
    // Writes of at most three messages: carts of two lines each go two-line
    // writes, never split inside a cart.
    let mut app = TestApp::spawn_with(&[("CHECKLINE_QUEUE_BATCH_MAX", "3")]).await;
    app.start_worker().await;
    let app = Arc::new(app);
    let a = id(&app.create_product(100, None).await);
    let b = id(&app.create_product(100, None).await);
    let buyers = (0..24).map(|i| {
        let app = app.clone();
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move {
            let token = app.customer(&format!("buyer-{i}"));
            let (status, order) = cart(&app, &token, "k", &[(&a, 1), (&b, 2)], None).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{order}");
            (token, id(&order))
        })
    });
    for buyer in futures::future::join_all(buyers).await {
        let (token, order) = buyer.unwrap();
        assert_eq!(app.decided(&token, &order).await["status"], "confirmed");
    }
    drained(&app, Duration::from_secs(30)).await;
    assert_eq!(app.product(&a).await["stock"], 100 - 24);
    assert_eq!(app.product(&b).await["stock"], 100 - 48);
    audit(&app).await;
    Arc::into_inner(app).unwrap().shutdown().await;
}

#[tokio::test]
async fn reservations_expire_on_time_while_their_products_queue_is_stuck() {
    let mut app = TestApp::spawn_with(&[("CHECKLINE_EXPIRY_INTERVAL_MS", "200")]).await;
    app.start_worker().await;
    let p = id(&app.create_product(5, None).await);
    let alice = app.customer("alice");
    let (_, reserved) = reserve(&app, &alice, "r", &p, 60).await;
    assert_eq!(
        app.decided(&alice, &id(&reserved)).await["status"],
        "reserved"
    );
    app.stop_worker().await;

    // A worker whose first batch never finishes: the product's queue stops
    // there, and everything queued after it waits (a backlog that does not
    // drain), while the worker lives on and keeps its leases.
    let mut stuck =
        crate::process::spawn_worker(&app, "stuck", &[("CHECKLINE_FAULTS", "mid_batch:hang")]);
    let mut backlog = Vec::new();
    for i in 0..6 {
        let token = app.customer(&format!("buyer-{i}"));
        let (status, order) = buy_one(&app, &token, "k", &p).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        backlog.push((token, id(&order)));
    }
    // The reservation ends now; the expirer is a query on the database's
    // clock, not a queue entry, so it does not wait for the queue.
    force_reserved_until(&app, &[id(&reserved)], 0).await;
    let ended = tokio::time::Instant::now();
    loop {
        let now = app.read_order(&alice, &id(&reserved), None).await;
        if now["status"] == "expired" {
            break;
        }
        assert!(
            ended.elapsed() < Duration::from_millis(200 + 1_500),
            "not expired {:?} after its end",
            ended.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The queue is still stuck: its orders wait, and so does the return.
    assert!(app.count_pending().await >= 5, "the backlog drained");
    let returning: i64 =
        sqlx::query_scalar("SELECT count(*) FROM stock_returns WHERE status = 'pending'")
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
    assert_eq!(returning, 1);

    stuck.start_kill().unwrap();
    stuck.wait().await.unwrap();
    app.start_worker().await;
    // Four free units for six buyers queued before the return: the first
    // four take them; the return comes after all six, so its unit is left.
    let mut confirmed = 0;
    for (token, order) in &backlog {
        if app.decided(token, order).await["status"] == "confirmed" {
            confirmed += 1;
        }
    }
    assert_eq!(
        confirmed, 4,
        "the returned unit went to no order queued before it"
    );
    drained(&app, Duration::from_secs(30)).await;
    assert_eq!(
        app.product(&p).await["stock"],
        1,
        "the returned unit is back"
    );
    audit(&app).await;
    app.shutdown().await;
}
