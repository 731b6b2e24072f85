//! Workers that stall: a worker frozen inside a batch transaction, or a
//! partition task stuck in an await, must not freeze failover, lease
//! renewal or hand-over anywhere else; a batch the database stops
//! answering is given up and tried again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::process::{owners, signal, spawn_worker, wait_owners};
use checkline_e2e::{buy, TestApp};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::process::Child;

/// The lease TTL the test harness gives workers.
const TTL: Duration = Duration::from_millis(2000);

/// True while the process is stopped (SIGSTOP), from /proc.
fn stopped(child: &Child) -> bool {
    let pid = child.id().expect("running");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name.
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('T'))
}

async fn tokens(app: &TestApp) -> Vec<i64> {
    sqlx::query_scalar("SELECT fencing_token FROM partition_cursors ORDER BY partition")
        .fetch_all(&app.env.pool)
        .await
        .unwrap()
}

fn split_evenly(o: &BTreeMap<i32, Option<String>>, a: &str, b: &str) -> bool {
    o.iter().all(|(p, w)| {
        let expected = if p % 2 == 0 { a } else { b };
        w.as_deref() == Some(expected)
    })
}

#[tokio::test]
async fn a_worker_paused_mid_batch_does_not_freeze_failover() {
    let app = Arc::new(TestApp::spawn_without_worker().await);
    let stock = 50;
    let products = app.create_products(4, stock).await;
    let mut paused = spawn_worker(&app, "live-a", &[("CHECKLINE_FAULTS", "mid_batch:stop")]);
    let mut other = spawn_worker(&app, "live-b", &[]);
    wait_owners(&app, Duration::from_secs(20), |o| {
        split_evenly(o, "live-a", "live-b")
    })
    .await;

    // A sale in progress; the first batch of live-a stops the process with
    // its transaction open and the partition's cursor row locked.
    let sale = tokio::spawn({
        let app = app.clone();
        let products = products.clone();
        async move { buy(&app, &products, 0, 400).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stopped(&paused) {
        assert!(Instant::now() < deadline, "live-a never paused mid-batch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let paused_at = Instant::now();
    let mut accepted = sale.await.unwrap();

    // The other worker takes every partition over, the frozen one included,
    // and decides all their orders within the lease TTL and a few seconds.
    let limit = TTL + Duration::from_secs(5);
    loop {
        let left = app.count_pending().await;
        if left == 0 {
            break;
        }
        assert!(
            paused_at.elapsed() < limit,
            "{left} orders still pending {:?} after the owner froze; owners {:?}",
            paused_at.elapsed(),
            owners(&app).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        owners(&app)
            .await
            .values()
            .all(|w| w.as_deref() == Some("live-b")),
        "live-b owns every partition"
    );
    let tokens_taken = tokens(&app).await;

    // Thaw it after three TTLs: its open batch must not commit (its session
    // is gone and its token is fenced); orders keep flowing meanwhile.
    let thaw_at = paused_at + TTL * 3;
    tokio::time::sleep_until(thaw_at.into()).await;
    assert!(stopped(&paused), "live-a stayed paused");
    signal(&paused, "CONT");
    accepted.extend(buy(&app, &products, 400, 100).await);
    for (token, id) in &accepted {
        app.decided(token, id).await;
    }
    assert_eq!(app.count_pending().await, 0);
    for pid in &products {
        assert!(
            app.balanced(pid).await,
            "product {pid}: stock conserved, nothing decided twice"
        );
        let confirmed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE product_id = $1::uuid AND status = 'confirmed'",
        )
        .bind(pid)
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
        assert_eq!(confirmed, stock, "product {pid}: exactly the stock is sold");
        assert_eq!(app.product(pid).await["stock"], 0);
    }
    // live-a came back, if at all, only through new leases.
    let rows: Vec<(Option<String>, i64)> =
        sqlx::query_as("SELECT owner, fencing_token FROM partition_cursors ORDER BY partition")
            .fetch_all(&app.env.pool)
            .await
            .unwrap();
    for ((owner, token), taken) in rows.iter().zip(&tokens_taken) {
        if owner.as_deref() == Some("live-a") {
            assert!(token > taken, "live-a came back only through a new lease");
        }
    }
    for child in [&mut paused, &mut other] {
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
    Arc::into_inner(app).unwrap().shutdown().await;
}

#[tokio::test]
async fn a_partition_stuck_in_an_await_is_handed_over_within_the_deadline() {
    let app = Arc::new(TestApp::spawn_without_worker().await);
    let products = app.create_products(4, 10).await;
    // Long leases: only the hand-over deadline can move the stuck partition
    // quickly; waiting for its lease to expire would take 20 s.
    let settings = [
        ("CHECKLINE_LEASE_TTL_MS", "20000"),
        ("CHECKLINE_HANDOVER_TIMEOUT_MS", "1000"),
    ];
    let mut hang_settings = settings.to_vec();
    hang_settings.push(("CHECKLINE_FAULTS", "publish:hang"));
    let mut a = spawn_worker(&app, "hang-a", &hang_settings);
    wait_owners(&app, Duration::from_secs(20), |o| {
        o.values().all(|w| w.as_deref() == Some("hang-a"))
    })
    .await;

    // An order on partition 1 (which hang-b will get): its batch commits,
    // then the partition task hangs publishing the result.
    let mut on_p1 = None;
    for pid in &products {
        if app.product(pid).await["partition"] == 1 {
            on_p1 = Some(pid.clone());
        }
    }
    let p1 = on_p1.expect("a product on partition 1");
    let alice = app.customer("alice");
    let response = app.order(&alice, "k-1", &p1, 1).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let first = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.decided(&alice, &first).await["status"], "confirmed");
    let before = tokens(&app).await;

    // hang-b joins: hang-a hands partitions 1 and 3 over, the stuck one
    // within the deadline, and keeps renewing 0 and 2 meanwhile.
    let mut b = spawn_worker(&app, "hang-b", &settings);
    let took = wait_owners(&app, Duration::from_secs(15), |o| {
        split_evenly(o, "hang-a", "hang-b")
    })
    .await;
    assert!(
        took < Duration::from_secs(6),
        "hand-over took {took:?}, as if waiting for the stuck task or the 20 s lease"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = tokens(&app).await;
    assert!(
        split_evenly(&owners(&app).await, "hang-a", "hang-b"),
        "hang-a kept its partitions"
    );
    assert_eq!(
        (after[0], after[2]),
        (before[0], before[2]),
        "hang-a never lost partitions 0 and 2"
    );

    // The new owner decides partition 1's next orders.
    let bob = app.customer("bob");
    let response = app.order(&bob, "k-2", &p1, 1).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let second = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.decided(&bob, &second).await["status"], "confirmed");
    assert!(app.balanced(&p1).await);
    for child in [&mut a, &mut b] {
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
    Arc::into_inner(app).unwrap().shutdown().await;
}

#[tokio::test]
async fn a_batch_the_database_stops_answering_is_given_up_and_retried() {
    // The batch waits ten seconds between writing its decisions and its
    // commit, as if the database had stopped answering; the worker gives
    // it up after one and tries again.
    let mut app = TestApp::spawn_with(&[
        ("CHECKLINE_FAULTS", "mid_batch:10000"),
        ("CHECKLINE_BATCH_TIMEOUT_MS", "1000"),
    ])
    .await;
    app.start_worker().await;
    let product = app.create_product(3, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let alice = app.customer("alice");
    let accepted = Instant::now();
    let response = app.order(&alice, "k", &pid, 2).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let order: Value = response.json().await.unwrap();
    let order = app.decided(&alice, order["id"].as_str().unwrap()).await;
    assert_eq!(order["status"], "confirmed");
    assert!(
        accepted.elapsed() < Duration::from_secs(6),
        "decided only after {:?}: the stalled batch was waited out",
        accepted.elapsed()
    );
    // Given up means rolled back: the units were taken once.
    assert_eq!(app.product(&pid).await["stock"], 1);
    assert!(app.balanced(&pid).await);
    app.shutdown().await;
}
