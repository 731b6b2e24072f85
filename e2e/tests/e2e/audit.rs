//! `GET /v1/admin/audit`: invariant 1 per product, as ops read it. Every
//! product balances once the queues drain, after one-line orders and carts,
//! reserved, confirmed and cancelled; a line kept but not yet settled reads
//! as `settling`; stock that appears from nowhere reads as `unbalanced`.

use checkline_e2e::TestApp;
use reqwest::StatusCode;
use serde_json::Value;

use crate::checkout::{act, cart, drained, reserve};

async fn audit_as(app: &TestApp, token: &str) -> reqwest::Response {
    app.http
        .get(app.url("/v1/admin/audit"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn audit(app: &TestApp) -> Value {
    let response = audit_as(app, &app.admin).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// The audit's row of `product`.
fn row<'a>(audit: &'a Value, product: &str) -> &'a Value {
    audit["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == product)
        .unwrap()
}

#[tokio::test]
async fn the_audit_balances_once_drained_and_names_what_does_not() {
    let mut app = TestApp::spawn().await;
    let ids = app.create_products(3, 10).await;
    let (a, b, c) = (ids[0].as_str(), ids[1].as_str(), ids[2].as_str());
    let alice = app.customer("alice");

    // A one-line order confirmed at once, one reserved then paid, one
    // reserved then cancelled (its unit comes back), a cart confirmed at
    // once and a reserved cart paid.
    let placed = app.order(&alice, "one", a, 2).await;
    assert_eq!(placed.status(), StatusCode::ACCEPTED);
    let one: Value = placed.json().await.unwrap();
    let (status, paid) = reserve(&app, &alice, "paid", b, 60).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, dropped) = reserve(&app, &alice, "dropped", c, 60).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, cart_now) = cart(&app, &alice, "cart", &[(a, 1), (b, 2), (c, 3)], None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, cart_later) = cart(&app, &alice, "cart-r", &[(b, 1), (c, 1)], Some(60)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for (order, after) in [
        (&one, "confirmed"),
        (&paid, "reserved"),
        (&dropped, "reserved"),
        (&cart_now, "confirmed"),
        (&cart_later, "reserved"),
    ] {
        let id = order["id"].as_str().unwrap();
        assert_eq!(app.decided(&alice, id).await["status"], after, "{order}");
    }
    for (order, action) in [
        (&paid, "confirm"),
        (&cart_later, "confirm"),
        (&dropped, "cancel"),
    ] {
        let (status, _) = act(&app, &alice, order["id"].as_str().unwrap(), action).await;
        assert_eq!(status, StatusCode::OK, "{action} {order}");
    }
    drained(&app, std::time::Duration::from_secs(30)).await;

    let report = audit(&app).await;
    assert_eq!(report["holds"], true, "{report}");
    let products = report["products"].as_array().unwrap();
    assert_eq!(products.len(), 3);
    let skus: Vec<&str> = products
        .iter()
        .map(|p| p["sku"].as_str().unwrap())
        .collect();
    let mut sorted = skus.clone();
    sorted.sort_unstable();
    assert_eq!(skus, sorted, "ordered by sku");
    for p in products {
        assert_eq!(p["state"], "balanced", "{p}");
        assert_eq!(p.as_object().unwrap().len(), 10, "{p}");
    }
    // a: 2 + 1 taken; b: 1 + 2 + 1; c: 3 + 1 (the cancelled unit is back).
    for (product, taken) in [(a, 3), (b, 4), (c, 4)] {
        let r = row(&report, product);
        assert_eq!(
            (
                &r["initial_stock"],
                &r["restocked"],
                &r["stock"],
                &r["held"],
                &r["taken_units"],
                &r["returning_units"],
                &r["settling_lines"]
            ),
            (
                &Value::from(10),
                &Value::from(0),
                &Value::from(10 - taken),
                &Value::from(0),
                &Value::from(taken),
                &Value::from(0),
                &Value::from(0)
            ),
            "{r}"
        );
    }

    // The worker stops, so that nothing moves under the changes below.
    app.stop_worker().await;
    let customer = audit_as(&app, &alice).await;
    assert_eq!(customer.status(), StatusCode::FORBIDDEN);
    let problem: Value = customer.json().await.unwrap();
    assert_eq!(problem["code"], "forbidden");

    // The cart's line of c as it stands between its order's settlement and
    // its settle entry's turn: kept, its units still held.
    let cart_id = cart_now["id"].as_str().unwrap();
    sqlx::query(
        "WITH l AS ( \
             UPDATE order_lines SET state = 'keep', settle_sequence = NULL \
             WHERE order_id = $1::uuid AND product_id = $2::uuid RETURNING product_id, quantity \
         ) \
         UPDATE products p SET held = p.held + l.quantity FROM l WHERE p.id = l.product_id",
    )
    .bind(cart_id)
    .bind(c)
    .execute(&app.env.pool)
    .await
    .unwrap();
    let report = audit(&app).await;
    let r = row(&report, c);
    assert_eq!(r["state"], "settling", "{r}");
    assert_eq!(
        (&r["held"], &r["settling_lines"]),
        (&Value::from(3), &Value::from(1))
    );
    assert_eq!(report["holds"], true, "{report}");

    // A unit from nowhere: unbalanced, whether lines are settling (c) or
    // not (a); the others still balance.
    for product in [a, c] {
        sqlx::query("UPDATE products SET stock = stock + 1 WHERE id = $1::uuid")
            .bind(product)
            .execute(&app.env.pool)
            .await
            .unwrap();
    }
    let report = audit(&app).await;
    assert_eq!(report["holds"], false, "{report}");
    assert_eq!(row(&report, a)["state"], "unbalanced");
    assert_eq!(row(&report, c)["state"], "unbalanced");
    assert_eq!(row(&report, b)["state"], "balanced");
    app.shutdown().await;
}
