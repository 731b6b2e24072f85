//! Product reads from memory (`checkline_api::product_cache`): never older
//! than `CHECKLINE_CATALOG_FRESH_MS`, never from before a decision the
//! instance has reported, admin changes seen on every instance, HTTP
//! validators, and list pages stable under inserts.

use std::time::{Duration, Instant};

use checkline_e2e::{read_events, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Long enough that only the mechanism under test can show a change.
const FOREVER: &str = "60000";

async fn get(app: &TestApp, base: &str, path: &str) -> reqwest::Response {
    app.http.get(format!("{base}{path}")).send().await.unwrap()
}

async fn stock_at(app: &TestApp, base: &str, id: &str) -> i64 {
    let product: Value = get(app, base, &format!("/v1/products/{id}"))
        .await
        .json()
        .await
        .unwrap();
    product["stock"].as_i64().unwrap()
}

/// Stock changed behind the system's back: no event will tell anyone.
async fn add_stock_silently(app: &TestApp, id: &str, units: i64) {
    sqlx::query("UPDATE products SET stock = stock + $2 WHERE id = $1::uuid")
        .bind(id)
        .bind(units)
        .execute(&app.env.pool)
        .await
        .unwrap();
}

async fn db_reads(app: &TestApp) -> u64 {
    let text = get(app, &app.base, "/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("checkline_product_db_reads_total "))
        .expect("the counter is exported")
        .parse()
        .unwrap()
}

fn id_of(product: &Value) -> String {
    product["id"].as_str().unwrap().to_owned()
}

/// `quantity` units of the product reserved for five minutes; returns the
/// order once decided (reserved).
async fn reserve(app: &TestApp, token: &str, id: &str, quantity: i64) -> Value {
    let response = app
        .http
        .post(app.url("/v1/orders"))
        .bearer_auth(token)
        .header("idempotency-key", format!("reserve-{id}-{quantity}"))
        .json(&json!({"product_id": id, "quantity": quantity, "reserve_secs": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let order: Value = response.json().await.unwrap();
    let order = app.decided(token, order["id"].as_str().unwrap()).await;
    assert_eq!(order["status"], "reserved");
    order
}

#[tokio::test]
async fn reads_come_from_memory_and_never_older_than_the_bound() {
    let app = TestApp::spawn_with(&[("CHECKLINE_CATALOG_FRESH_MS", "1500")]).await;
    let id = id_of(&app.create_product(5, None).await);
    let list = "/v1/products?limit=200";
    let read_at = Instant::now();
    assert_eq!(stock_at(&app, &app.base, &id).await, 5);
    get(&app, &app.base, list).await;
    let reads = db_reads(&app).await;
    add_stock_silently(&app, &id, 7).await;

    // Within the bound (before half of it, when a read in the background
    // may begin): from memory, no query.
    let mut checked = 0;
    while read_at.elapsed() < Duration::from_millis(600) && checked < 20 {
        let stock = stock_at(&app, &app.base, &id).await;
        let page: Value = get(&app, &app.base, list).await.json().await.unwrap();
        let listed = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id.as_str())
            .unwrap()["stock"]
            .clone();
        if read_at.elapsed() < Duration::from_millis(700) {
            assert_eq!((stock, listed), (5, json!(5)));
            checked += 1;
        }
    }
    assert!(checked > 0, "the machine is too slow for this test");
    assert!(
        db_reads(&app).await <= reads + 1,
        "reads within the bound went to PostgreSQL"
    );

    // Past it, whatever events said (none did): the change is shown.
    tokio::time::sleep(Duration::from_millis(1_550).saturating_sub(read_at.elapsed())).await;
    assert_eq!(stock_at(&app, &app.base, &id).await, 12);
    let page: Value = get(&app, &app.base, list).await.json().await.unwrap();
    assert!(page["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == id.as_str() && p["stock"] == 12));
    app.shutdown().await;
}

#[tokio::test]
async fn past_half_the_bound_a_product_is_read_again_while_still_served() {
    let app = TestApp::spawn_with(&[("CHECKLINE_CATALOG_FRESH_MS", "3000")]).await;
    let id = id_of(&app.create_product(5, None).await);
    let read_at = Instant::now();
    assert_eq!(stock_at(&app, &app.base, &id).await, 5);
    add_stock_silently(&app, &id, 7).await;
    tokio::time::sleep(Duration::from_millis(1_600).saturating_sub(read_at.elapsed())).await;
    // Past half the bound: still served, and read again behind it...
    let served = stock_at(&app, &app.base, &id).await;
    // ...so the change shows well before the entry would have expired.
    let mut shown = served;
    while shown != 12 && read_at.elapsed() < Duration::from_millis(2_800) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        shown = stock_at(&app, &app.base, &id).await;
    }
    assert_eq!(
        (served, shown),
        (5, 12),
        "not read again in the background (after {:?})",
        read_at.elapsed()
    );
    app.shutdown().await;
}

/// A sale the API instance hears nothing of through the events `faults`
/// drops, with a bound of a minute: a product of 5 read into its memory,
/// then alice's order of 2 accepted and on its way to a worker. Returns
/// the app, the product's id, alice's token and the order as accepted.
async fn a_sale_whose_events_are_lost(faults: &str) -> (TestApp, String, String, Value) {
    let mut app = TestApp::spawn_with(&[
        ("CHECKLINE_CATALOG_FRESH_MS", FOREVER),
        ("CHECKLINE_FAULTS", faults),
    ])
    .await;
    let id = id_of(&app.create_product(5, None).await);
    assert_eq!(stock_at(&app, &app.base, &id).await, 5);
    app.start_worker().await;
    let alice = app.customer("alice");
    let response = app.order(&alice, "k1", &id, 2).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let order = response.json().await.unwrap();
    (app, id, alice, order)
}

#[tokio::test]
async fn a_buyer_who_saw_their_order_decided_never_reads_stock_from_before_it() {
    // The stock event of the sale is lost and the bound is a minute: only
    // the reported decision can make the read right.
    let (app, id, alice, order) = a_sale_whose_events_are_lost("hub_drop_stock").await;
    let order = app.decided(&alice, order["id"].as_str().unwrap()).await;
    assert_eq!(order["status"], "confirmed");
    assert_eq!(stock_at(&app, &app.base, &id).await, 3);

    // The next sale's event arrives: served from memory again, with it.
    let response = app.order(&alice, "k2", &id, 1).await;
    let order: Value = response.json().await.unwrap();
    let order_id = order["id"].as_str().unwrap().to_owned();
    let reads = db_reads(&app).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stock_at(&app, &app.base, &id).await != 2 {
        assert!(Instant::now() < deadline, "the stock event was not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.decided(&alice, &order_id).await["status"], "confirmed");
    assert_eq!(stock_at(&app, &app.base, &id).await, 2);
    assert_eq!(db_reads(&app).await, reads, "the event alone was enough");
    app.shutdown().await;
}

#[tokio::test]
async fn stats_that_show_a_sale_are_never_ahead_of_the_product_read_after_them() {
    // Both events of the sale are lost and the bound is a minute: only the
    // figures the instance reported can make the read right.
    let (app, id, _, _) = a_sale_whose_events_are_lost("hub_drop_stock,hub_drop_decisions").await;

    // Watched from the admin's figures, not from the order.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = app.stats().await;
        let product = stats["products"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id.as_str())
            .expect("the product is in the stats")
            .clone();
        if product["confirmed_orders"] == 1 {
            assert_eq!(product["stock"], 3);
            break;
        }
        assert!(Instant::now() < deadline, "the order was not decided");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stock_at(&app, &app.base, &id).await, 3);
    app.shutdown().await;
}

#[tokio::test]
async fn a_reservation_confirmed_is_shown_at_once_on_the_instance_that_confirmed_it() {
    let mut app = TestApp::spawn_with(&[("CHECKLINE_CATALOG_FRESH_MS", FOREVER)]).await;
    app.start_worker().await;
    let id = id_of(&app.create_product(5, None).await);
    let alice = app.customer("alice");
    let order = reserve(&app, &alice, &id, 2).await;
    let order_id = order["id"].as_str().unwrap().to_owned();
    let product: Value = get(&app, &app.base, &format!("/v1/products/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (product["stock"].as_i64(), product["reserved"].as_i64()),
        (Some(3), Some(2))
    );

    let confirmed = app
        .http
        .post(app.url(&format!("/v1/orders/{order_id}/confirm")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), StatusCode::OK);
    let product: Value = get(&app, &app.base, &format!("/v1/products/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (product["stock"].as_i64(), product["reserved"].as_i64()),
        (Some(3), Some(0))
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_admin_change_reaches_every_instance_at_once() {
    let mut app = TestApp::spawn_with(&[("CHECKLINE_CATALOG_FRESH_MS", FOREVER)]).await;
    let other = app.start_api().await;
    let id = id_of(&app.create_product(5, None).await);
    let list = "/v1/products?limit=200";
    for base in [&app.base, &other] {
        let product: Value = get(&app, base, &format!("/v1/products/{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(product["name"], "Flash phone");
        get(&app, base, list).await;
    }

    let patched = app
        .http
        .patch(app.url(&format!("/v1/products/{id}")))
        .bearer_auth(&app.admin)
        .json(&json!({"name": "Flash phone 2", "active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let created = id_of(&app.create_product(1, None).await);

    // This instance at once; the other as soon as the event reaches it.
    let deadline = Instant::now() + Duration::from_secs(5);
    for base in [&app.base, &other] {
        loop {
            let product: Value = get(&app, base, &format!("/v1/products/{id}"))
                .await
                .json()
                .await
                .unwrap();
            let page: Value = get(&app, base, list).await.json().await.unwrap();
            let listed = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["id"] == created.as_str());
            if product["name"] == "Flash phone 2" && product["active"] == false && listed {
                break;
            }
            assert!(
                base != &app.base,
                "the instance that made the change served the old product"
            );
            assert!(Instant::now() < deadline, "the change never reached {base}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_restock_applied_is_shown_by_the_instance_that_answered_it() {
    let mut app = TestApp::spawn_with(&[("CHECKLINE_CATALOG_FRESH_MS", FOREVER)]).await;
    app.start_worker().await;
    let id = id_of(&app.create_product(1, None).await);
    assert_eq!(stock_at(&app, &app.base, &id).await, 1);
    let response = app
        .http
        .post(app.url(&format!("/v1/products/{id}/restock")))
        .bearer_auth(&app.admin)
        .header("idempotency-key", "restock-1")
        .json(&json!({"quantity": 40}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(stock_at(&app, &app.base, &id).await, 41);
    app.shutdown().await;
}

#[tokio::test]
async fn an_instance_keeps_what_it_read_after_its_own_admin_change() {
    // The instance's own announcement of the create comes back half a
    // second late, after a read: it must not drop what that read kept.
    let app = TestApp::spawn_with(&[
        ("CHECKLINE_CATALOG_FRESH_MS", FOREVER),
        ("CHECKLINE_FAULTS", "hub_catalog_late:500"),
    ])
    .await;
    let id = id_of(&app.create_product(5, None).await);
    let reads = db_reads(&app).await;
    assert_eq!(stock_at(&app, &app.base, &id).await, 5);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(stock_at(&app, &app.base, &id).await, 5);
    assert_eq!(
        db_reads(&app).await,
        reads + 1,
        "the entry read after the change was dropped by the instance's own announcement"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn validators_answer_304_until_the_product_changes() {
    let mut app = TestApp::spawn_with(&[]).await;
    app.start_worker().await;
    let id = id_of(&app.create_product(5, None).await);
    for path in [
        format!("/v1/products/{id}"),
        "/v1/products?limit=10".to_owned(),
    ] {
        let first = get(&app, &app.base, &path).await;
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()["etag"].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
        assert_eq!(
            first.headers()["cache-control"],
            "public, max-age=0, must-revalidate"
        );
        assert_eq!(first.headers()["content-type"], "application/json");
        let body: Value = first.json().await.unwrap();
        assert!(body.is_object());

        let again = app
            .http
            .get(app.url(&path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(again.headers()["etag"], etag.as_str());
        assert!(again.bytes().await.unwrap().is_empty());

        let other = app
            .http
            .get(app.url(&path))
            .header("if-none-match", "\"something-else\"")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::OK);
    }

    let before = get(&app, &app.base, &format!("/v1/products/{id}")).await;
    let etag = before.headers()["etag"].to_str().unwrap().to_owned();
    let alice = app.customer("alice");
    let order: Value = app.order(&alice, "k", &id, 1).await.json().await.unwrap();
    app.decided(&alice, order["id"].as_str().unwrap()).await;
    let after = app
        .http
        .get(app.url(&format!("/v1/products/{id}")))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::OK);
    assert_ne!(after.headers()["etag"], etag.as_str());
    let product: Value = after.json().await.unwrap();
    assert_eq!(product["stock"], 4);
    app.shutdown().await;
}

#[tokio::test]
async fn list_pages_are_stable_while_products_are_created() {
    let app = TestApp::spawn_with(&[]).await;
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..5 {
        ids.push(id_of(&app.create_product(1, None).await));
    }
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/products?limit=2&cursor={c}"),
            None => "/v1/products?limit=2".to_owned(),
        };
        let page: Value = get(&app, &app.base, &path).await.json().await.unwrap();
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned()),
        );
        // Products created mid-walk land after the pages already read.
        if ids.len() < 9 {
            ids.push(id_of(&app.create_product(1, None).await));
            ids.push(id_of(&app.create_product(1, None).await));
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "pages overlap or go backwards");
    ids.sort();
    assert_eq!(seen, ids, "a product was skipped");
    app.shutdown().await;
}

#[tokio::test]
async fn the_first_stock_event_from_memory_is_what_postgresql_says() {
    let mut app = TestApp::spawn_with(&[("CHECKLINE_CATALOG_FRESH_MS", FOREVER)]).await;
    app.start_worker().await;
    let id = id_of(&app.create_product(4, None).await);
    let alice = app.customer("alice");
    reserve(&app, &alice, &id, 4).await;
    // Read once so that the stream's first event comes from memory.
    assert_eq!(stock_at(&app, &app.base, &id).await, 0);
    let stream = get(&app, &app.base, &format!("/v1/products/{id}/events")).await;
    let (events, _) = read_events(stream, 1, Duration::from_secs(5)).await;
    let uuid: uuid::Uuid = id.parse().unwrap();
    let from_db = checkline_shared::stock::events(&app.env.pool, &[uuid])
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1, serde_json::to_value(from_db[0]).unwrap());
    assert_eq!(events[0].1["sold_out"], true);
    assert_eq!(events[0].1["reserved"], 4);
    assert!(events[0].1["next_release_at"].is_string());
    app.shutdown().await;
}
