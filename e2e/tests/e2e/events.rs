//! Server-sent events: order decisions and stock changes reach subscribers.

use std::time::Duration;

use checkline_e2e::{read_events, TestApp};
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
