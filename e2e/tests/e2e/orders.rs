//! The order path end to end: real API, real worker, real PostgreSQL, NATS
//! JetStream and Redis.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use checkline_e2e::TestApp;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn flash_sale_of_500_buyers_for_50_units_never_oversells() {
    let app = Arc::new(TestApp::spawn().await);
    let product = app.create_product(50, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();

    let buyers = (0..500).map(|i| {
        let app = app.clone();
        let pid = pid.clone();
        tokio::spawn(async move {
            let token = app.customer(&format!("buyer-{i}"));
            let response = app.order(&token, &format!("key-{i}"), &pid, 1).await;
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (token, status, body)
        })
    });
    let results: Vec<_> = join_all(buyers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let mut confirmed = 0;
    let mut sold_out = 0;
    for (token, status, body) in &results {
        match *status {
            StatusCode::ACCEPTED => {
                let order = app.decided(token, body["id"].as_str().unwrap()).await;
                match (order["status"].as_str(), order["reason"].as_str()) {
                    (Some("confirmed"), _) => confirmed += 1,
                    (Some("rejected"), Some("sold_out")) => sold_out += 1,
                    other => panic!("unexpected decision {other:?}"),
                }
            }
            StatusCode::CONFLICT => {
                assert_eq!(body["code"], "sold_out");
                sold_out += 1;
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(confirmed, 50);
    assert_eq!(sold_out, 450);
    assert_eq!(app.product(&pid).await["stock"], 0);
    assert!(app.balanced(&pid).await);
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'pending'")
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(pending, 0, "every accepted order is decided");
    Arc::into_inner(app).unwrap().shutdown().await;
}

#[tokio::test]
async fn identical_requests_make_one_order() {
    let app = Arc::new(TestApp::spawn().await);
    let product = app.create_product(10, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let token = app.customer("alice");

    let attempts = (0..50).map(|_| {
        let app = app.clone();
        let token = token.clone();
        let pid = pid.clone();
        tokio::spawn(async move {
            let response = app.order(&token, "same-key", &pid, 2).await;
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body)
        })
    });
    let results: Vec<_> = join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let ids: HashSet<String> = results
        .iter()
        .map(|(status, body)| {
            assert!(
                matches!(*status, StatusCode::ACCEPTED | StatusCode::OK),
                "{status}: {body}"
            );
            body["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one order id for every identical request");
    assert_eq!(
        results
            .iter()
            .filter(|(s, _)| *s == StatusCode::ACCEPTED)
            .count(),
        1
    );
    assert_eq!(app.count_orders(&pid).await, 1);

    let id = ids.into_iter().next().unwrap();
    let decided = app.decided(&token, &id).await;
    assert_eq!(decided["status"], "confirmed");

    // A replay after the decision: 200, the same order, flagged as replayed.
    let replay = app.order(&token, "same-key", &pid, 2).await;
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let body: Value = replay.json().await.unwrap();
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["status"], "confirmed");

    // The same key with another body: refused, nothing queued.
    let reused = app.order(&token, "same-key", &pid, 1).await;
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.headers()["content-type"], "application/problem+json");
    let body: Value = reused.json().await.unwrap();
    assert_eq!(body["code"], "idempotency_key_reused");
    assert_eq!(app.count_orders(&pid).await, 1);
    assert_eq!(app.product(&pid).await["stock"], 8, "stock taken once");

    // Keys are per customer: bob may use the same key.
    let bob = app.customer("bob");
    let other = app.order(&bob, "same-key", &pid, 1).await;
    assert_eq!(other.status(), StatusCode::ACCEPTED);
    Arc::into_inner(app).unwrap().shutdown().await;
}

#[tokio::test]
async fn orders_are_decided_first_come_first_served() {
    let mut app = TestApp::spawn_without_worker().await;
    let product = app.create_product(5, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();

    // Ten buyers queue one after the other while no worker runs.
    let mut queued = Vec::new();
    for i in 0..10 {
        let token = app.customer(&format!("c{i}"));
        let response = app.order(&token, "k", &pid, 1).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "pending");
        // Read-your-writes: visible, pending, right after the 202.
        let read: Value = app
            .http
            .get(app.url(&format!("/v1/orders/{}", body["id"].as_str().unwrap())))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(read["status"], "pending");
        queued.push((token, body["id"].as_str().unwrap().to_owned()));
    }
    app.start_worker().await;
    for (i, (token, id)) in queued.iter().enumerate() {
        let order = app.decided(token, id).await;
        if i < 5 {
            assert_eq!(order["status"], "confirmed", "buyer {i} came early enough");
            assert_eq!(order["unit_price_cents"], 1990);
            assert_eq!(order["total_cents"], 1990);
            assert!(order["decided_at"].is_string());
        } else {
            assert_eq!(order["status"], "rejected", "buyer {i} came too late");
            assert_eq!(order["reason"], "sold_out");
        }
    }
    // Once sold out, new buyers are told at once without queueing.
    let late = app.order(&app.customer("late"), "k", &pid, 1).await;
    assert_eq!(late.status(), StatusCode::CONFLICT);
    assert_eq!(late.json::<Value>().await.unwrap()["code"], "sold_out");
    // A buyer who got in and retries after the sell-out gets their order,
    // not "sold out".
    let (token, id) = &queued[0];
    let retry = app.order(token, "k", &pid, 1).await;
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let body: Value = retry.json().await.unwrap();
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["status"], "confirmed");
    assert_eq!(app.count_orders(&pid).await, 10);
    app.shutdown().await;
}

#[tokio::test]
async fn each_rejection_reason_is_produced() {
    let mut app = TestApp::spawn_without_worker().await;
    let product = app.create_product(3, Some(2)).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let (alice, bob, carol) = (
        app.customer("alice"),
        app.customer("bob"),
        app.customer("carol"),
    );

    // Queued in this order, decided in this order.
    let plan = [
        (&alice, "a1", 2, "confirmed", None),
        (&alice, "a2", 1, "rejected", Some("limit_exceeded")),
        (&bob, "b1", 2, "rejected", Some("insufficient_stock")),
        (&bob, "b2", 1, "confirmed", None),
        (&carol, "c1", 1, "rejected", Some("sold_out")),
    ];
    let mut ids = Vec::new();
    for (token, key, quantity, _, _) in &plan {
        let response = app.order(token, key, &pid, *quantity).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        ids.push(
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    app.start_worker().await;
    for ((token, key, _, status, reason), id) in plan.iter().zip(&ids) {
        let order = app.decided(token, id).await;
        assert_eq!(order["status"], *status, "order {key}");
        assert_eq!(order["reason"].as_str(), *reason, "order {key}");
    }

    // Inactive product: queued, then rejected as unavailable.
    let other = app.create_product(5, None).await;
    let other_id = other["id"].as_str().unwrap();
    let patched = app
        .http
        .patch(app.url(&format!("/v1/products/{other_id}")))
        .bearer_auth(&app.admin)
        .json(&serde_json::json!({"active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let response = app.order(&alice, "x1", other_id, 1).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let order = app.decided(&alice, &id).await;
    assert_eq!(order["reason"], "product_unavailable");
    assert_eq!(app.product(other_id).await["stock"], 5);

    // Invariant 5 in the database.
    let over: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT customer_id FROM orders WHERE product_id = $1::uuid AND status = 'confirmed' \
         GROUP BY customer_id HAVING sum(quantity) > 2) t",
    )
    .bind(&pid)
    .fetch_one(&app.env.pool)
    .await
    .unwrap();
    assert_eq!(over, 0);
    assert!(app.balanced(&pid).await);
    app.shutdown().await;
}

#[tokio::test]
async fn restock_is_applied_once_and_in_queue_order() {
    let app = TestApp::spawn().await;
    let product = app.create_product(1, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let alice = app.customer("alice");
    let first = app.order(&alice, "a1", &pid, 1).await;
    let id = first.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.decided(&alice, &id).await["status"], "confirmed");
    assert_eq!(
        app.order(&alice, "a2", &pid, 1).await.status(),
        StatusCode::CONFLICT
    );

    let restock = |key: &'static str, quantity: i64| {
        app.http
            .post(app.url(&format!("/v1/products/{pid}/restock")))
            .bearer_auth(&app.admin)
            .header("idempotency-key", key)
            .json(&serde_json::json!({"quantity": quantity}))
            .send()
    };
    let response = restock("r1", 5).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["stock"], 5);
    assert_eq!(body["product_id"], pid.as_str());
    // A retry adds nothing.
    let again = restock("r1", 5).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.unwrap()["stock"], 5);
    assert_eq!(app.product(&pid).await["stock"], 5);
    // The same key for another quantity is refused.
    let reused = restock("r1", 6).await.unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Customers cannot restock.
    let forbidden = app
        .http
        .post(app.url(&format!("/v1/products/{pid}/restock")))
        .bearer_auth(&alice)
        .header("idempotency-key", "r9")
        .json(&serde_json::json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);

    let response = app.order(&alice, "a3", &pid, 1).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.decided(&alice, &id).await["status"], "confirmed");
    assert_eq!(app.product(&pid).await["stock"], 4);
    assert!(app.balanced(&pid).await);
    app.shutdown().await;
}

#[tokio::test]
async fn an_order_written_but_never_queued_is_swept_into_the_queue() {
    // As if the API died between writing the row and publishing it.
    let app = TestApp::spawn_with(&[
        ("CHECKLINE_REQUEUE_AFTER_MS", "1000"),
        ("CHECKLINE_PUBLISH_TIMEOUT_MS", "500"),
    ])
    .await;
    let product = app.create_product(2, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let order_id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, quantity, partition, created_at) \
         SELECT $1, 'alice', 'stranded', '\\x00', id, 1, partition, now() - interval '10 seconds' FROM products WHERE id = $2::uuid",
    )
    .bind(order_id)
    .bind(&pid)
    .execute(&app.env.pool)
    .await
    .unwrap();
    let mut app = app;
    app.start_worker().await;
    let order = app
        .decided(&app.customer("alice"), &order_id.to_string())
        .await;
    assert_eq!(order["status"], "confirmed");
    assert_eq!(app.product(&pid).await["stock"], 1);
    // Deciding it did not wait for anything else, and it happened once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.product(&pid).await["stock"], 1);
    assert!(app.balanced(&pid).await);
    app.shutdown().await;
}

#[tokio::test]
async fn customers_list_their_own_orders_newest_first() {
    let app = TestApp::spawn().await;
    let product = app.create_product(100, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let alice = app.customer("alice");
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = app.order(&alice, &format!("k{i}"), &pid, 1).await;
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    app.order(&app.customer("bob"), "k0", &pid, 1).await;
    let page: Value = app
        .http
        .get(app.url("/v1/orders?limit=3"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[4].as_str(), ids[3].as_str(), ids[2].as_str()]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest: Value = app
        .http
        .get(app.url(&format!("/v1/orders?limit=3&cursor={cursor}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got: Vec<&str> = rest["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[1].as_str(), ids[0].as_str()]);
    assert!(rest["next_cursor"].is_null());
    app.shutdown().await;
}

#[tokio::test]
async fn a_full_accept_queue_answers_overloaded_and_loses_nothing() {
    // One batch in flight and room for one more order: a burst overflows.
    let app = Arc::new(
        TestApp::spawn_with(&[
            ("CHECKLINE_ACCEPT_PIPELINES", "1"),
            ("CHECKLINE_ACCEPT_QUEUE_MAX", "1"),
            ("CHECKLINE_ACCEPT_BATCH_MAX", "1"),
        ])
        .await,
    );
    let product = app.create_product(1000, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let attempts = (0..100).map(|i| {
        let app = app.clone();
        let pid = pid.clone();
        tokio::spawn(async move {
            let token = app.customer(&format!("b{i}"));
            let response = app.order(&token, "k", &pid, 1).await;
            let retry_after = response.headers().get("retry-after").cloned();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body, retry_after)
        })
    });
    let results: Vec<_> = join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let accepted = results
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::ACCEPTED)
        .count();
    let overloaded: Vec<_> = results
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(accepted > 0, "some orders get through");
    assert!(
        !overloaded.is_empty(),
        "a burst beyond the queue is refused"
    );
    for (_, body, retry_after) in &overloaded {
        assert_eq!(body["code"], "overloaded");
        assert!(retry_after.is_some(), "503 carries Retry-After");
    }
    assert_eq!(accepted + overloaded.len(), 100);
    // Refused requests left nothing behind; accepted ones are all there.
    assert_eq!(app.count_orders(&pid).await, accepted as i64);
    Arc::into_inner(app).unwrap().shutdown().await;
}
