//! Server-sent events: order decisions and stock changes reach subscribers.

use std::time::Duration;

use checkline_e2e::{read_events, read_events_until, TestApp};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn a_subscriber_sees_the_decision_and_a_late_one_the_current_state() {
    let mut app = TestApp::spawn_without_worker().await;
    let product = app.create_product(1, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let alice = app.customer("alice");
    let response = app.order(&alice, "k", &pid, 1).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let stream = app
        .http
        .get(app.url(&format!("/v1/orders/{id}/events")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let stock_stream = app
        .http
        .get(app.url(&format!("/v1/products/{pid}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(stock_stream.status(), StatusCode::OK);

    let reader = tokio::spawn(read_events(stream, 10, Duration::from_secs(30)));
    let stock_reader = tokio::spawn(read_events(stock_stream, 2, Duration::from_secs(30)));
    // The subscriber is waiting on a pending order when the worker starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.start_worker().await;

    let (events, ended) = reader.await.unwrap();
    assert!(ended, "the stream ends after the decision");
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].0, "order");
    assert_eq!(events[0].1["status"], "pending");
    assert_eq!(events[1].1["status"], "confirmed");
    assert_eq!(events[1].1["id"], id.as_str());

    let (stock, _) = stock_reader.await.unwrap();
    assert_eq!(stock.len(), 2, "{stock:?}");
    assert_eq!(stock[0].0, "stock");
    assert_eq!(stock[0].1["stock"], 1);
    assert_eq!(stock[0].1["sold_out"], false);
    assert_eq!(stock[1].1["stock"], 0);
    assert_eq!(stock[1].1["sold_out"], true);

    // A late subscriber (or a reconnect) gets the decision at once.
    let late = app
        .http
        .get(app.url(&format!("/v1/orders/{id}/events")))
        .bearer_auth(&alice)
        .header("last-event-id", "pending")
        .send()
        .await
        .unwrap();
    let (events, ended) = read_events(late, 10, Duration::from_secs(10)).await;
    assert!(ended);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1["status"], "confirmed");
    app.shutdown().await;
}

#[tokio::test]
async fn long_poll_returns_as_soon_as_the_order_is_decided() {
    let mut app = TestApp::spawn_without_worker().await;
    let product = app.create_product(1, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let alice = app.customer("alice");
    let response = app.order(&alice, "k", &pid, 1).await;
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Without a decision, the wait runs out and the order is still pending.
    let started = std::time::Instant::now();
    let pending: Value = app
        .http
        .get(app.url(&format!("/v1/orders/{id}?wait=1")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pending["status"], "pending");
    assert!(started.elapsed() >= Duration::from_millis(900));

    let poll = {
        let http = app.http.clone();
        let url = app.url(&format!("/v1/orders/{id}?wait=30"));
        let alice = alice.clone();
        tokio::spawn(async move {
            http.get(url)
                .bearer_auth(&alice)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.start_worker().await;
    let decided = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .expect("long poll returned")
        .unwrap();
    assert_eq!(decided["status"], "confirmed");
    app.shutdown().await;
}

/// The stock of `product` in each `stock` event about it, in arrival order.
fn stocks_of(events: &[(String, Value)], product: &str) -> Vec<i64> {
    events
        .iter()
        .filter(|(_, data)| data["product_id"] == product)
        .map(|(_, data)| data["stock"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn one_stream_carries_the_stock_of_every_product_or_of_those_named() {
    // Every change is sent (no coalescing), so each decision shows; at
    // most two streams per address.
    let mut app = TestApp::spawn_with(&[
        ("CHECKLINE_STOCK_EVENT_INTERVAL_MS", "0"),
        ("CHECKLINE_SSE_MAX_STREAMS_PER_ADDR", "2"),
    ])
    .await;
    app.start_worker().await;
    let a = app.create_product(5, None).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = app.create_product(5, None).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // `events` is a route of its own; a product's id is still a product.
    assert_eq!(app.product(&a).await["id"], a.as_str());

    let open = |query: String| {
        app.http
            .get(app.url(&format!("/v1/products/events{query}")))
            .send()
    };
    // Bad lists are refused, no stream opened.
    let many: Vec<String> = (0..101).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for query in [
        "?ids=not-a-uuid".to_owned(),
        "?ids=".to_owned(),
        format!("?ids={a},"),
        format!("?ids={}", many.join(",")),
        format!("?id={a}"),
    ] {
        let response = open(query.clone()).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["code"],
            "invalid_request",
            "{query}"
        );
    }

    let all = open(String::new()).await.unwrap();
    assert_eq!(all.status(), StatusCode::OK);
    assert!(all.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let only_a = open(format!("?ids={a}")).await.unwrap();
    assert_eq!(only_a.status(), StatusCode::OK);
    // The streams of many products share the per-address cap.
    let third = open(String::new()).await.unwrap();
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(third.json::<Value>().await.unwrap()["code"], "overloaded");

    let (pa, pb) = (a.clone(), b.clone());
    let all = tokio::spawn(read_events_until(all, Duration::from_secs(30), move |e| {
        stocks_of(e, &pa).last() == Some(&3) && stocks_of(e, &pb).last() == Some(&3)
    }));
    let pa = a.clone();
    let only_a = tokio::spawn(read_events_until(
        only_a,
        Duration::from_secs(30),
        move |e| stocks_of(e, &pa).last() == Some(&3),
    ));
    // Two orders on each product, one after the other.
    let alice = app.customer("alice");
    for (i, product) in [&a, &b, &a, &b].into_iter().enumerate() {
        let response = app.order(&alice, &format!("k{i}"), product, 1).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let id = response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(app.decided(&alice, &id).await["status"], "confirmed");
    }

    let (events, _) = all.await.unwrap();
    assert!(events.iter().all(|(name, _)| name == "stock"), "{events:?}");
    // No snapshot first: the first event of each is its first change.
    assert_eq!(stocks_of(&events, &a), [4, 3], "{events:?}");
    assert_eq!(stocks_of(&events, &b), [4, 3], "{events:?}");
    let (events, _) = only_a.await.unwrap();
    assert_eq!(stocks_of(&events, &a), [4, 3], "{events:?}");
    assert!(
        events
            .iter()
            .all(|(_, data)| data["product_id"] == a.as_str()),
        "only the product named: {events:?}"
    );

    app.shutdown().await;
}
