//! Interleavings that real traffic hits only by chance, forced with fault
//! points (`CHECKLINE_FAULTS`): a stock event landing inside an accept batch,
//! a lost acknowledgement, a failed publish racing a retry, a stranded order
//! retried while NATS is slow. Each test states the promise it holds the API
//! to; real PostgreSQL, NATS JetStream and Redis throughout.

use std::time::{Duration, Instant};

use checkline_e2e::TestApp;
use checkline_shared::domain::StockEvent;
use checkline_shared::messages::{QueueMessage, QueuedOrder};
use checkline_shared::partition::Partition;
use checkline_shared::queue::{self, Publisher, StreamLimits};
use checkline_shared::subjects::Subjects;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// Publishes a stock event as a worker would after a commit.
async fn announce_stock(app: &TestApp, product_id: &str, stock: i64) {
    let client = async_nats::connect(app.env.config.nats_url.as_str())
        .await
        .unwrap();
    let id: Uuid = product_id.parse().unwrap();
    let subjects = Subjects::new(&app.env.config.prefix);
    client
        .publish(
            subjects.stock_event(id),
            serde_json::to_vec(&StockEvent::new(id, stock))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
}

async fn restock(app: &TestApp, product_id: &str, key: &str, quantity: i64) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/v1/products/{product_id}/restock")))
        .bearer_auth(&app.admin)
        .header("idempotency-key", key)
        .json(&json!({ "quantity": quantity }))
        .send()
        .await
        .unwrap()
}

/// Sends an order (quantity 1) in the background, to race it against
/// something else.
fn spawn_order(
    app: &TestApp,
    token: String,
    key: &str,
    product_id: &str,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let (url, http) = (app.url("/v1/orders"), app.http.clone());
    let body = json!({"product_id": product_id, "quantity": 1});
    let key = key.to_owned();
    tokio::spawn(async move {
        http.post(url)
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await
            .unwrap()
    })
}

/// Waits until the product's stock is `want`, for at most `limit`.
async fn stock_becomes(app: &TestApp, product_id: &str, want: i64, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let product = app.product(product_id).await;
        if product["stock"] == want || Instant::now() > deadline {
            return product["stock"].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A retry of a key that has an order gets that order, even when the
/// product sells out between the batch's look-ups (the catalog is read once
/// per request and every later step follows that reading).
#[tokio::test]
async fn a_retry_is_answered_with_its_order_when_the_product_sells_out_mid_batch() {
    // The order exists (as if accepted earlier); its retry's batch is the
    // first to reach the pause.
    let app = TestApp::spawn_with(&[("CHECKLINE_FAULTS", "accept_after_door:800")]).await;
    let product = app.create_product(5, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let order_id = Uuid::now_v7();
    let hash = checkline_shared::domain::request_hash(&["order", &pid, "1"]);
    sqlx::query(
        "INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, quantity, partition) \
         SELECT $1, 'alice', 'k1', $2, id, 1, partition FROM products WHERE id = $3::uuid",
    )
    .bind(order_id)
    .bind(&hash)
    .bind(&pid)
    .execute(&app.env.pool)
    .await
    .unwrap();
    let retry = spawn_order(&app, app.customer("alice"), "k1", &pid);
    // While the retry's batch is paused, the product sells out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    announce_stock(&app, &pid, 0).await;
    let retry = retry.await.unwrap();
    assert_eq!(retry.status(), StatusCode::OK, "a retry of an accepted key");
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let body: Value = retry.json().await.unwrap();
    assert_eq!(body["id"], order_id.to_string());
    app.shutdown().await;
}

/// A new order whose product sells out while its batch is under way is
/// still answered (202: the queue decides it), never dropped with a 500.
#[tokio::test]
async fn a_new_order_is_answered_when_the_product_sells_out_mid_batch() {
    let mut app = TestApp::spawn_with(&[("CHECKLINE_FAULTS", "accept_after_door:800")]).await;
    let product = app.create_product(5, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    // The product is known (and open) before the order comes.
    assert_eq!(app.product(&pid).await["stock"], 5);
    let order = spawn_order(&app, app.customer("bob"), "b1", &pid);
    tokio::time::sleep(Duration::from_millis(300)).await;
    announce_stock(&app, &pid, 0).await;
    let order = order.await.unwrap();
    assert_eq!(order.status(), StatusCode::ACCEPTED);
    let order: Value = order.json().await.unwrap();
    app.start_worker().await;
    let decided = app
        .decided(&app.customer("bob"), order["id"].as_str().unwrap())
        .await;
    // The stock event was a lie told for the test: stock was there.
    assert_eq!(decided["status"], "confirmed");
    assert!(app.balanced(&pid).await);
    app.shutdown().await;
}

/// The rule for a 5xx: the order may exist, and a retry with the same key
/// returns it. Here JetStream stores the message but its acknowledgement is
/// lost: the client gets a 503, the order is decided, and the retry answers
/// with that same order (200, replayed), never a second one.
#[tokio::test]
async fn an_order_whose_acknowledgement_was_lost_is_returned_to_its_retry() {
    let app = TestApp::spawn_with(&[("CHECKLINE_FAULTS", "accept_ack_lost")]).await;
    let product = app.create_product(3, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let carol = app.customer("carol");
    let first = app.order(&carol, "c1", &pid, 1).await;
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(first.headers().contains_key("retry-after"));
    let mut app = app;
    app.start_worker().await;
    let retry = app.order(&carol, "c1", &pid, 1).await;
    assert_eq!(retry.status(), StatusCode::OK, "the order exists");
    let retry: Value = retry.json().await.unwrap();
    let decided = app.decided(&carol, retry["id"].as_str().unwrap()).await;
    assert_eq!(decided["status"], "confirmed");
    assert_eq!(app.count_orders(&pid).await, 1);
    assert_eq!(
        stock_becomes(&app, &pid, 2, Duration::from_secs(5)).await,
        2
    );
    assert!(app.balanced(&pid).await);
    app.shutdown().await;
}

/// A failure after the batch's insert (here the look-up of the keys that
/// conflicted) still answers every order the batch wrote: they are queued
/// and get their 202; only the requests it could not look up get a 503.
#[tokio::test]
async fn a_failure_after_the_insert_still_answers_the_inserted_orders() {
    let mut app = TestApp::spawn_with(&[
        ("CHECKLINE_ACCEPT_PIPELINES", "1"),
        (
            "CHECKLINE_FAULTS",
            "accept_batch_start:700,accept_second_lookup",
        ),
    ])
    .await;
    app.start_worker().await;
    let product = app.create_product(10, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let dave = app.customer("dave");
    let send = |key: &str| spawn_order(&app, dave.clone(), key, &pid);
    // The first batch (key d0) holds the only pipeline; the next two
    // requests form the second batch: a new key and a retry of d0.
    let d0 = send("d0");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d1 = send("d1");
    let d0_again = send("d0");
    let d0 = d0.await.unwrap();
    assert_eq!(d0.status(), StatusCode::ACCEPTED);
    let d0: Value = d0.json().await.unwrap();
    let d1 = d1.await.unwrap();
    assert_eq!(d1.status(), StatusCode::ACCEPTED, "an inserted order");
    let d1: Value = d1.json().await.unwrap();
    let d0_again = d0_again.await.unwrap();
    assert!(
        matches!(
            d0_again.status(),
            StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE
        ),
        "{}",
        d0_again.status()
    );
    // Whatever it was told, the retry finds d0.
    let d0_retry: Value = app.order(&dave, "d0", &pid, 1).await.json().await.unwrap();
    assert_eq!(d0_retry["id"], d0["id"]);
    for id in [&d0["id"], &d1["id"]] {
        let decided = app.decided(&dave, id.as_str().unwrap()).await;
        assert_eq!(decided["status"], "confirmed");
    }
    assert_eq!(app.count_orders(&pid).await, 2);
    app.shutdown().await;
}

/// A restock that was answered (202, queued) is applied, even though the
/// publish of the request that wrote it failed: nothing is deleted behind
/// an answer.
#[tokio::test]
async fn a_restock_answered_202_is_applied_although_its_first_publish_failed() {
    let mut app = TestApp::spawn_with(&[
        ("CHECKLINE_RESTOCK_WAIT_MS", "300"),
        (
            "CHECKLINE_FAULTS",
            "restock_before_enqueue:1500,restock_publish",
        ),
    ])
    .await;
    app.start_worker().await;
    let product = app.create_product(10, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let first = {
        let url = app.url(&format!("/v1/products/{pid}/restock"));
        let http = app.http.clone();
        let admin = app.admin.clone();
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(admin)
                .header("idempotency-key", "r1")
                .json(&json!({ "quantity": 5 }))
                .send()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = restock(&app, &pid, "r1", 5).await;
    assert_eq!(second.status(), StatusCode::ACCEPTED, "still queued");
    let first = first.await.unwrap();
    assert!(
        matches!(
            first.status(),
            StatusCode::OK | StatusCode::ACCEPTED | StatusCode::SERVICE_UNAVAILABLE
        ),
        "{}",
        first.status()
    );
    assert_eq!(
        stock_becomes(&app, &pid, 15, Duration::from_secs(20)).await,
        15,
        "the restock answered 202 is applied, once"
    );
    let again = restock(&app, &pid, "r1", 5).await;
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["stock"], 15);
    assert!(app.balanced(&pid).await);
    app.shutdown().await;
}

/// "A restock is never hidden": while a restock waits in the queue, stock
/// events about other decisions (stock 1, then 0) do not bring back
/// `409 sold_out`; only the restock's own result does.
#[tokio::test]
async fn a_queued_restock_keeps_the_product_open_until_its_own_result() {
    let mut app = TestApp::spawn_with(&[("CHECKLINE_RESTOCK_WAIT_MS", "0")]).await;
    let product = app.create_product(0, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let erin = app.customer("erin");
    let refused = app.order(&erin, "e0", &pid, 1).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT, "sold out");
    // No worker: the restock stays queued.
    let queued = restock(&app, &pid, "r1", 10).await;
    assert_eq!(queued.status(), StatusCode::ACCEPTED);
    // Decisions of earlier orders report stock 1, then 0.
    announce_stock(&app, &pid, 1).await;
    announce_stock(&app, &pid, 0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let order = app.order(&erin, "e1", &pid, 1).await;
    assert_eq!(
        order.status(),
        StatusCode::ACCEPTED,
        "the queued restock may serve this order"
    );
    let order: Value = order.json().await.unwrap();
    app.start_worker().await;
    assert_eq!(
        app.decided(&erin, order["id"].as_str().unwrap()).await["status"],
        "confirmed"
    );
    // Once the restock is applied and the stock used up, sold out again.
    assert_eq!(
        stock_becomes(&app, &pid, 9, Duration::from_secs(5)).await,
        9
    );
    app.shutdown().await;
}

/// A retry of a stranded order (pending long past the publish, never
/// queued) is answered at once and the order requeued in the background:
/// a slow NATS does not hold the accept pipelines.
#[tokio::test]
async fn a_stranded_retry_is_requeued_off_the_accept_path() {
    let mut app = TestApp::spawn_with(&[
        ("CHECKLINE_ACCEPT_PIPELINES", "1"),
        ("CHECKLINE_REQUEUE_AFTER_MS", "1000"),
        ("CHECKLINE_PUBLISH_TIMEOUT_MS", "500"),
        ("CHECKLINE_FAULTS", "requeue_publish:4000"),
    ])
    .await;
    let product = app.create_product(5, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let order_id = Uuid::now_v7();
    let hash = checkline_shared::domain::request_hash(&["order", &pid, "1"]);
    sqlx::query(
        "INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, quantity, partition, created_at) \
         SELECT $1, 'frank', 'f1', $2, id, 1, partition, now() - interval '10 seconds' FROM products WHERE id = $3::uuid",
    )
    .bind(order_id)
    .bind(&hash)
    .bind(&pid)
    .execute(&app.env.pool)
    .await
    .unwrap();
    let frank = app.customer("frank");
    let started = Instant::now();
    let retry = app.order(&frank, "f1", &pid, 1).await;
    assert_eq!(retry.status(), StatusCode::OK);
    let other = app.order(&app.customer("gina"), "g1", &pid, 1).await;
    assert_eq!(other.status(), StatusCode::ACCEPTED);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(2500),
        "the accept path waited {waited:?} on a requeue"
    );
    app.start_worker().await;
    assert_eq!(
        app.decided(&frank, &order_id.to_string()).await["status"],
        "confirmed"
    );
    app.shutdown().await;
}

/// A group of orders and a lone republish of one of its orders are
/// different messages to JetStream's deduplication: the group is stored
/// even when the republish came first, and a group stored twice is
/// reported, never taken as queued.
#[tokio::test]
async fn a_group_is_never_dropped_as_a_duplicate_of_a_lone_republish() {
    let app = TestApp::spawn_without_worker().await;
    let product = app.create_product(5, None).await;
    let pid: Uuid = product["id"].as_str().unwrap().parse().unwrap();
    let client = async_nats::connect(app.env.config.nats_url.as_str())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let subjects = Subjects::new(&app.env.config.prefix);
    queue::ensure_stream(
        &js,
        &subjects,
        StreamLimits::from_config(&app.env.config),
        1,
    )
    .await
    .unwrap();
    let (x, y) = (Uuid::now_v7(), Uuid::now_v7());
    let lone = QueueMessage::Order {
        order_id: x,
        product_id: pid,
        customer_id: "hal".into(),
        quantity: 1,
        accepted_at: chrono::Utc::now(),
        key: None,
        reserve_secs: None,
    };
    let group = QueueMessage::Orders {
        product_id: pid,
        orders: [x, y]
            .into_iter()
            .map(|order_id| QueuedOrder {
                order_id,
                customer_id: "hal".into(),
                quantity: 1,
                key: None,
                reserve_secs: None,
            })
            .collect(),
    };
    let publisher = Publisher::new(js, subjects, Duration::from_secs(5));
    let partition = Partition::new(0);
    let first = publisher.publish(partition, &lone, None).await.unwrap();
    let second = publisher.publish(partition, &group, None).await.unwrap();
    assert!(!second.duplicate, "the group was dropped as a duplicate");
    assert!(second.sequence > first.sequence);
    let again = publisher.publish(partition, &group, None).await.unwrap();
    assert!(again.duplicate, "a second copy of the group is reported");
    app.shutdown().await;
}

/// Orders keep arriving faster than the partition goes idle: the sweep
/// still finds an order that was written but never queued, and it is
/// decided while the load goes on (not once the backlog drains).
#[tokio::test]
async fn a_stranded_order_is_swept_while_the_partition_never_goes_idle() {
    let mut app = TestApp::spawn_with(&[
        ("CHECKLINE_REQUEUE_AFTER_MS", "1000"),
        ("CHECKLINE_PUBLISH_TIMEOUT_MS", "500"),
    ])
    .await;
    app.start_worker().await;
    let product = app.create_product(100_000, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    // A steady trickle, one order every 40 ms: the worker's idle timeout
    // (200 ms in the tests) never fires for this partition.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (url, http, token, pid, stop) = (
            app.url("/v1/orders"),
            app.http.clone(),
            app.customer("load"),
            pid.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 1000 {
                n += 1;
                let response = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("idempotency-key", format!("load-{n}"))
                    .json(&json!({"product_id": pid, "quantity": 1}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::ACCEPTED);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let order_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, quantity, partition, created_at) \
         SELECT $1, 'ivy', 'stranded', '\\x00', id, 1, partition, now() - interval '10 seconds' FROM products WHERE id = $2::uuid",
    )
    .bind(order_id)
    .bind(&pid)
    .execute(&app.env.pool)
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
            .bind(order_id)
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
        if status != "pending" || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let still_loading = !load.is_finished();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        status, "confirmed",
        "the stranded order waited for the backlog to drain"
    );
    assert!(still_loading, "the load ran throughout");
    app.shutdown().await;
}

/// The queue stream is deleted mid-sale (NATS lost its store, or an
/// operator removed it) and created again: every order answered 202 before,
/// during or after is decided, once, and the stock adds up.
#[tokio::test]
async fn every_accepted_order_is_decided_across_a_recreated_stream() {
    let mut app = TestApp::spawn_with(&[
        ("CHECKLINE_REQUEUE_AFTER_MS", "1000"),
        ("CHECKLINE_PUBLISH_TIMEOUT_MS", "500"),
    ])
    .await;
    app.start_worker().await;
    let product = app.create_product(1000, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let jay = app.customer("jay");
    let mut ids = Vec::new();
    // Decided before the loss: the partition's cursor moves on.
    for i in 0..5 {
        let response = app.order(&jay, &format!("before-{i}"), &pid, 1).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let order: Value = response.json().await.unwrap();
        app.decided(&jay, order["id"].as_str().unwrap()).await;
        ids.push(order["id"].as_str().unwrap().to_owned());
    }
    // Queued, not decided, when the stream goes.
    app.stop_worker().await;
    for i in 0..5 {
        let response = app.order(&jay, &format!("queued-{i}"), &pid, 1).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let order: Value = response.json().await.unwrap();
        ids.push(order["id"].as_str().unwrap().to_owned());
    }
    let client = async_nats::connect(app.env.config.nats_url.as_str())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let subjects = Subjects::new(&app.env.config.prefix);
    js.delete_stream(subjects.stream_name()).await.unwrap();
    // Orders after the loss: a storefront retries 503s with the same key.
    for i in 0..3 {
        let key = format!("after-{i}");
        let deadline = Instant::now() + Duration::from_secs(15);
        let order: Value = loop {
            let response = app.order(&jay, &key, &pid, 1).await;
            match response.status() {
                StatusCode::ACCEPTED | StatusCode::OK => break response.json().await.unwrap(),
                StatusCode::SERVICE_UNAVAILABLE if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("order {key}: {other}"),
            }
        };
        ids.push(order["id"].as_str().unwrap().to_owned());
    }
    app.start_worker().await;
    for id in &ids {
        let decided = app.decided(&jay, id).await;
        assert_eq!(decided["status"], "confirmed", "{id}");
    }
    assert_eq!(
        stock_becomes(&app, &pid, 1000 - 13, Duration::from_secs(5)).await,
        1000 - 13
    );
    assert_eq!(app.count_orders(&pid).await, 13);
    assert!(app.balanced(&pid).await);
    app.shutdown().await;
}

/// The stream is deleted under a running worker, mid-sale: its consumer
/// must not carry on blindly on the stream created anew (nor purge it by
/// the old cursor). Orders placed after the loss are decided promptly, and
/// queue positions keep growing across the loss, since the new stream
/// continues the sequence after the partition cursors.
#[tokio::test]
async fn a_running_worker_follows_a_stream_created_anew() {
    let mut app = TestApp::spawn_with(&[
        ("CHECKLINE_REQUEUE_AFTER_MS", "1000"),
        ("CHECKLINE_PUBLISH_TIMEOUT_MS", "500"),
        ("CHECKLINE_PURGE_INTERVAL_MS", "100"),
    ])
    .await;
    app.start_worker().await;
    let product = app.create_product(1000, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let kim = app.customer("kim");
    let place = |key: String| {
        let (app_url, http, token, pid) = (
            app.url("/v1/orders"),
            app.http.clone(),
            kim.clone(),
            pid.clone(),
        );
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let response = http
                    .post(&app_url)
                    .bearer_auth(&token)
                    .header("idempotency-key", &key)
                    .json(&json!({"product_id": pid, "quantity": 1}))
                    .send()
                    .await
                    .unwrap();
                match response.status() {
                    StatusCode::ACCEPTED | StatusCode::OK => {
                        let order: Value = response.json().await.unwrap();
                        return order["id"].as_str().unwrap().to_owned();
                    }
                    StatusCode::SERVICE_UNAVAILABLE if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    other => panic!("order {key}: {other}"),
                }
            }
        }
    };
    let mut before = Vec::new();
    for i in 0..20 {
        let id = place(format!("before-{i}")).await;
        app.decided(&kim, &id).await;
        before.push(id);
    }
    let client = async_nats::connect(app.env.config.nats_url.as_str())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let subjects = Subjects::new(&app.env.config.prefix);
    js.delete_stream(subjects.stream_name()).await.unwrap();
    let mut after = Vec::new();
    for i in 0..5 {
        after.push(place(format!("after-{i}")).await);
    }
    let placed = Instant::now();
    for id in &after {
        let decided = app.decided(&kim, id).await;
        assert_eq!(decided["status"], "confirmed");
    }
    let waited = placed.elapsed();
    assert!(
        waited < Duration::from_secs(8),
        "orders after the loss waited {waited:?} to be decided"
    );
    let positions = |ids: Vec<String>| {
        let pool = app.env.pool.clone();
        async move {
            let ids: Vec<Uuid> = ids.iter().map(|i| i.parse().unwrap()).collect();
            let seqs: Vec<i64> =
                sqlx::query_scalar("SELECT queue_sequence FROM orders WHERE id = ANY($1)")
                    .bind(&ids)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            seqs
        }
    };
    let old_max = positions(before).await.into_iter().max().unwrap();
    let new_min = positions(after).await.into_iter().min().unwrap();
    assert!(
        new_min > old_max,
        "positions restarted: {new_min} after the loss, {old_max} before"
    );
    assert!(app.balanced(&pid).await);
    app.shutdown().await;
}

/// Every `Nats-Msg-Id` stored in the queue stream, oldest first.
async fn queued_message_ids(app: &TestApp) -> Vec<String> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    use futures::StreamExt;
    let client = async_nats::connect(app.env.config.nats_url.as_str())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let subjects = Subjects::new(&app.env.config.prefix);
    let stream = js.get_stream(subjects.stream_name()).await.unwrap();
    if stream.cached_info().state.messages == 0 {
        return Vec::new();
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subjects.orders_all(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut ids = Vec::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(500), messages.next()).await
    {
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        ids.push(id);
    }
    ids
}

/// With the API's only accept pipeline held by an order for `lone` (the
/// app runs with `CHECKLINE_ACCEPT_PIPELINES=1` and the fault point
/// `accept_batch_start:700`), one order of `token` for each of `products`,
/// keys `<prefix>1`, `<prefix>2`, …: they wait together and form one accept
/// batch. Returns their answers, in product order, once the first one was
/// accepted.
async fn one_batch_over(
    app: &TestApp,
    token: &str,
    prefix: &str,
    lone: &str,
    products: &[String],
) -> Vec<reqwest::Response> {
    let first = spawn_order(app, token.to_owned(), &format!("{prefix}0"), lone);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rest: Vec<_> = products
        .iter()
        .enumerate()
        .map(|(i, p)| spawn_order(app, token.to_owned(), &format!("{prefix}{}", i + 1), p))
        .collect();
    assert_eq!(first.await.unwrap().status(), StatusCode::ACCEPTED);
    let mut answers = Vec::with_capacity(rest.len());
    for answer in rest {
        answers.push(answer.await.unwrap());
    }
    answers
}

/// Messages for several products are one atomic write: a write holding a
/// message JetStream refuses (here a duplicate of one already stored) is
/// refused whole, and none of its other messages is stored.
#[tokio::test]
async fn an_atomic_queue_write_is_stored_whole_or_not_at_all() {
    let app = TestApp::spawn_without_worker().await;
    let products = app.create_products(3, 5).await;
    let client = async_nats::connect(app.env.config.nats_url.as_str())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let subjects = Subjects::new(&app.env.config.prefix);
    let publisher = Publisher::new(js.clone(), subjects.clone(), Duration::from_secs(5));
    let partition = Partition::new(0);
    let group = |product: &str| QueueMessage::Orders {
        product_id: product.parse().unwrap(),
        orders: vec![QueuedOrder {
            order_id: Uuid::now_v7(),
            customer_id: "ivy".into(),
            quantity: 1,
            key: None,
            reserve_secs: None,
        }],
    };
    let stored = group(&products[0]);
    publisher
        .publish_atomic(&[(partition, stored.clone())], None)
        .await
        .unwrap();
    let last = |js: async_nats::jetstream::Context| {
        let name = subjects.stream_name();
        async move {
            let mut stream = js.get_stream(name).await.unwrap();
            stream.info().await.unwrap().state.last_sequence
        }
    };
    let before = last(js.clone()).await;

    let fresh = [group(&products[1]), group(&products[2])];
    let refused = publisher
        .publish_atomic(
            &[
                (partition, fresh[0].clone()),
                (partition, stored.clone()),
                (partition, fresh[1].clone()),
            ],
            None,
        )
        .await;
    assert!(refused.is_err(), "a write with a duplicate is refused");
    assert_eq!(last(js.clone()).await, before, "nothing of it was stored");

    let written: Vec<_> = fresh.iter().map(|m| (partition, m.clone())).collect();
    publisher.publish_atomic(&written, None).await.unwrap();
    assert_eq!(last(js.clone()).await, before + 2, "stored together");
    let ids = queued_message_ids(&app).await;
    let expected: Vec<String> = std::iter::once(&stored)
        .chain(&fresh)
        .map(QueueMessage::message_id)
        .collect();
    assert_eq!(ids, expected);
    app.shutdown().await;
}

/// An accept batch spanning several products is queued as one atomic
/// write. When that write fails in the middle (one of its messages never
/// reaches the server), the server refuses all of it: no order of the batch
/// is answered 202 while another is lost, every client is told 503, and
/// every order is still queued again, decided once and returned to its
/// retry.
#[tokio::test]
async fn an_accept_batch_whose_queue_write_fails_midway_is_answered_as_one() {
    let mut app = TestApp::spawn_with(&[
        ("CHECKLINE_ACCEPT_PIPELINES", "1"),
        ("CHECKLINE_FAULTS", "accept_batch_start:700,queue_batch_gap"),
    ])
    .await;
    let products = app.create_products(5, 10).await;
    let (lone, products) = products.split_first().unwrap();
    let erin = app.customer("erin");
    // One write of four messages.
    for answer in one_batch_over(&app, &erin, "e", lone, products).await {
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.headers().contains_key("retry-after"));
    }
    // The refused write left none of its group messages in the queue; its
    // orders are there only as the lone copies the requeuer published.
    let mut orders = Vec::new();
    for (i, p) in products.iter().enumerate() {
        let retry = app.order(&erin, &format!("e{}", i + 1), p, 1).await;
        assert_eq!(retry.status(), StatusCode::OK, "the order was recorded");
        let retry: Value = retry.json().await.unwrap();
        orders.push(retry["id"].as_str().unwrap().to_owned());
    }
    let ids = queued_message_ids(&app).await;
    for id in &orders {
        assert!(!ids.contains(&format!("g.{id}")), "{ids:?}");
    }
    app.start_worker().await;
    for id in &orders {
        let decided = app.decided(&erin, id).await;
        assert_eq!(decided["status"], "confirmed");
    }
    for p in products {
        assert_eq!(app.count_orders(p).await, 1);
        assert_eq!(stock_becomes(&app, p, 9, Duration::from_secs(5)).await, 9);
        assert!(app.balanced(p).await);
    }
    app.shutdown().await;
}

/// An accept batch spanning more products than one queue write may hold
/// (`CHECKLINE_QUEUE_BATCH_MAX`) is cut into several writes between
/// products: every order is queued once and decided.
#[tokio::test]
async fn an_accept_batch_wider_than_one_queue_write_is_cut_between_products() {
    let mut app = TestApp::spawn_with(&[
        ("CHECKLINE_ACCEPT_PIPELINES", "1"),
        ("CHECKLINE_QUEUE_BATCH_MAX", "2"),
        ("CHECKLINE_FAULTS", "accept_batch_start:700"),
    ])
    .await;
    let products = app.create_products(6, 10).await;
    let (lone, products) = products.split_first().unwrap();
    let finn = app.customer("finn");
    // Three writes of at most two messages.
    let mut orders = Vec::new();
    for answer in one_batch_over(&app, &finn, "f", lone, products).await {
        assert_eq!(answer.status(), StatusCode::ACCEPTED);
        let order: Value = answer.json().await.unwrap();
        orders.push(order["id"].as_str().unwrap().to_owned());
    }
    // Read before any worker decides (and purges) them.
    let ids = queued_message_ids(&app).await;
    assert_eq!(ids.len(), 6, "one message per product, none twice: {ids:?}");
    app.start_worker().await;
    for id in &orders {
        let decided = app.decided(&finn, id).await;
        assert_eq!(decided["status"], "confirmed");
    }
    for p in products {
        assert_eq!(app.count_orders(p).await, 1);
        assert!(app.balanced(p).await);
    }
    app.shutdown().await;
}

/// A partition's consumer that delivers nothing (as one did after the NATS
/// server it was opened on died, the client having reconnected to another
/// member) is found out by the stranded sweep: items queued again a whole
/// sweep ago and still nothing delivered. The consumer is opened again from
/// the cursor and every order is decided.
#[tokio::test]
async fn a_deaf_consumer_is_reopened_and_its_orders_decided() {
    let mut app = TestApp::spawn_with(&[
        ("CHECKLINE_REQUEUE_AFTER_MS", "1000"),
        ("CHECKLINE_PUBLISH_TIMEOUT_MS", "500"),
        ("CHECKLINE_FAULTS", "consumer_deaf"),
    ])
    .await;
    // One order in every partition: whichever consumer is opened deaf has
    // one to decide.
    let mut by_partition = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let product = app.create_product(5, None).await;
        let partition = product["partition"].as_i64().unwrap();
        by_partition
            .entry(partition)
            .or_insert_with(|| product["id"].as_str().unwrap().to_owned());
        if by_partition.len() == app.env.config.partitions as usize {
            break;
        }
    }
    assert_eq!(by_partition.len(), app.env.config.partitions as usize);
    let buyer = app.customer("deaf");
    let mut orders = Vec::new();
    for (partition, pid) in &by_partition {
        let response = app
            .order(&buyer, &format!("deaf-{partition}"), pid, 1)
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let order: serde_json::Value = response.json().await.unwrap();
        orders.push(order["id"].as_str().unwrap().to_owned());
    }
    app.start_worker().await;
    for id in &orders {
        assert_eq!(app.decided(&buyer, id).await["status"], "confirmed");
    }
    app.shutdown().await;
}

/// Deletes orders' rows, as a failover to a standby that never received
/// their accept's commit would.
async fn lose_rows(app: &TestApp, ids: &[&str]) {
    let ids: Vec<Uuid> = ids.iter().map(|id| id.parse().unwrap()).collect();
    let deleted = sqlx::query("DELETE FROM orders WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), ids.len() as u64);
}

/// The order once it exists again and is decided.
async fn found_decided(app: &TestApp, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let order = app.read_order(token, id, Some(1)).await;
        if order["status"] != "pending" && order["code"] != "order_not_found" {
            return order;
        }
        assert!(
            Instant::now() < deadline,
            "order {id} neither found nor decided"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The 202 is a promise even when PostgreSQL loses the accept's commit (an
/// asynchronous standby promoted without it) after its message was queued:
/// the worker finds no row, writes the order again from the message (its
/// id, customer, key, request and reservation) and decides it in turn.
#[tokio::test]
async fn an_accepted_order_whose_row_a_failover_lost_is_written_again_and_decided() {
    let mut app = TestApp::spawn_without_worker().await;
    let pid = app.create_product(5, None).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (alice, bob) = (app.customer("alice"), app.customer("bob"));
    let bought = app.order(&alice, "a1", &pid, 2).await;
    assert_eq!(bought.status(), StatusCode::ACCEPTED);
    let bought: Value = bought.json().await.unwrap();
    let reserved = app
        .http
        .post(app.url("/v1/orders"))
        .bearer_auth(&bob)
        .header("idempotency-key", "b1")
        .json(&json!({"product_id": pid, "quantity": 1, "reserve_secs": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(reserved.status(), StatusCode::ACCEPTED);
    let reserved: Value = reserved.json().await.unwrap();
    let (a_id, b_id) = (
        bought["id"].as_str().unwrap(),
        reserved["id"].as_str().unwrap(),
    );
    lose_rows(&app, &[a_id, b_id]).await;
    let gone = app
        .http
        .get(app.url(&format!("/v1/orders/{a_id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(
        gone.status(),
        StatusCode::NOT_FOUND,
        "the row is really gone"
    );

    app.start_worker().await;
    let (a, b) = (
        found_decided(&app, &alice, a_id).await,
        found_decided(&app, &bob, b_id).await,
    );
    assert_eq!(
        (a["status"].as_str(), a["quantity"].as_i64()),
        (Some("confirmed"), Some(2))
    );
    assert_eq!(b["status"], "reserved", "its reservation travelled with it");
    // Accepted when the 202 said, to the millisecond of its id.
    let at = |o: &Value| {
        chrono::DateTime::parse_from_rfc3339(o["created_at"].as_str().unwrap()).unwrap()
    };
    assert!((at(&a) - at(&bought)).num_milliseconds().abs() < 1000);

    // Its key is its own again: a retry is answered with it, a different
    // body with the key is refused.
    let retry = app.order(&alice, "a1", &pid, 2).await;
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(retry.json::<Value>().await.unwrap()["id"], a_id);
    let other = app.order(&alice, "a1", &pid, 1).await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.count_orders(&pid).await, 2);
    assert_eq!(
        stock_becomes(&app, &pid, 2, Duration::from_secs(5)).await,
        2
    );
    assert!(app.balanced(&pid).await);
    app.shutdown().await;
}

/// A buyer whose order vanished with a failover and who retried before the
/// worker got to it holds the retry's order: the lost one is not written
/// again over its key, and one order, not two, takes stock.
#[tokio::test]
async fn a_retry_made_after_the_loss_keeps_the_key_and_the_lost_order_stays_lost() {
    let mut app = TestApp::spawn_without_worker().await;
    let pid = app.create_product(5, None).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let alice = app.customer("alice");
    let first: Value = app.order(&alice, "a1", &pid, 2).await.json().await.unwrap();
    let first_id = first["id"].as_str().unwrap();
    lose_rows(&app, &[first_id]).await;
    let retry = app.order(&alice, "a1", &pid, 2).await;
    assert_eq!(
        retry.status(),
        StatusCode::ACCEPTED,
        "a new order for the key"
    );
    let retry: Value = retry.json().await.unwrap();
    assert_ne!(retry["id"], first["id"]);

    app.start_worker().await;
    let decided = app.decided(&alice, retry["id"].as_str().unwrap()).await;
    assert_eq!(decided["status"], "confirmed");
    assert_eq!(app.count_orders(&pid).await, 1);
    assert_eq!(
        stock_becomes(&app, &pid, 3, Duration::from_secs(5)).await,
        3
    );
    let lost = app
        .http
        .get(app.url(&format!("/v1/orders/{first_id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(lost.status(), StatusCode::NOT_FOUND);
    assert!(app.balanced(&pid).await);
    app.shutdown().await;
}
