//! Workers as real processes sharing the partitions: an even spread, failover
//! after SIGKILL, fencing of a paused former owner, and graceful hand-over on
//! SIGTERM.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::process::{signal, spawn_worker, wait_owners};
use checkline_e2e::{buy, TestApp};

fn counts(owners: &BTreeMap<i32, Option<String>>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for owner in owners.values().flatten() {
        *counts.entry(owner.clone()).or_insert(0) += 1;
    }
    counts
}

async fn all_decided_and_balanced(
    app: &TestApp,
    products: &[String],
    accepted: &[(String, String)],
) {
    for (token, id) in accepted {
        app.decided(token, id).await;
    }
    for pid in products {
        assert!(
            app.balanced(pid).await,
            "product {pid}: stock conserved, nothing decided twice"
        );
    }
    assert_eq!(app.count_pending().await, 0);
}

#[tokio::test]
async fn three_workers_share_evenly_and_survive_losing_two() {
    let app = Arc::new(TestApp::spawn_without_worker().await);
    let products = app.create_products(4, 1000).await;
    let mut a = spawn_worker(&app, "worker-a", &[]);
    let mut b = spawn_worker(&app, "worker-b", &[]);
    let mut c = spawn_worker(&app, "worker-c", &[]);
    // 4 partitions over 3 workers: 2, 1 and 1.
    wait_owners(&app, Duration::from_secs(20), |o| {
        let mut shares: Vec<usize> = counts(o).into_values().collect();
        shares.sort_unstable();
        o.values().all(Option::is_some) && shares == vec![1, 1, 2]
    })
    .await;

    let sale = tokio::spawn({
        let app = app.clone();
        let products = products.clone();
        async move { buy(&app, &products, 0, 400).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.start_kill().unwrap();
    b.start_kill().unwrap();
    a.wait().await.unwrap();
    b.wait().await.unwrap();
    let mut accepted = sale.await.unwrap();
    accepted.extend(buy(&app, &products, 400, 100).await);

    // The survivor takes every partition within the lease TTL (2 s) plus a
    // rebalance or two.
    let took = wait_owners(&app, Duration::from_secs(10), |o| {
        o.values().all(|w| w.as_deref() == Some("worker-c"))
    })
    .await;
    assert!(took < Duration::from_secs(10), "failover took {took:?}");
    all_decided_and_balanced(&app, &products, &accepted).await;
    c.start_kill().unwrap();
    c.wait().await.unwrap();
    Arc::into_inner(app).unwrap().shutdown().await;
}

#[tokio::test]
async fn a_paused_former_owner_never_commits_again() {
    let app = Arc::new(TestApp::spawn_without_worker().await);
    let products = app.create_products(4, 1000).await;
    let mut old = spawn_worker(&app, "worker-old", &[]);
    wait_owners(&app, Duration::from_secs(20), |o| {
        o.values().all(|w| w.as_deref() == Some("worker-old"))
    })
    .await;
    let tokens_before: Vec<i64> =
        sqlx::query_scalar("SELECT fencing_token FROM partition_cursors ORDER BY partition")
            .fetch_all(&app.env.pool)
            .await
            .unwrap();

    // Freeze the owner (as a long GC pause or a network split would), let
    // its leases expire, and let another worker take over.
    signal(&old, "STOP");
    let mut new = spawn_worker(&app, "worker-new", &[]);
    wait_owners(&app, Duration::from_secs(15), |o| {
        o.values().all(|w| w.as_deref() == Some("worker-new"))
    })
    .await;
    let tokens_after: Vec<i64> =
        sqlx::query_scalar("SELECT fencing_token FROM partition_cursors ORDER BY partition")
            .fetch_all(&app.env.pool)
            .await
            .unwrap();
    assert!(
        tokens_after.iter().zip(&tokens_before).all(|(a, b)| a > b),
        "every take-over bumps the fencing token"
    );

    // Thaw it while orders flow: its stale loops must stand down without
    // committing (their tokens are fenced). It may then rejoin as a fresh
    // member, taking partitions again only through new leases and tokens.
    let sale = tokio::spawn({
        let app = app.clone();
        let products = products.clone();
        async move { buy(&app, &products, 0, 300).await }
    });
    signal(&old, "CONT");
    let accepted = sale.await.unwrap();
    all_decided_and_balanced(&app, &products, &accepted).await;
    let rows: Vec<(Option<String>, i64)> =
        sqlx::query_as("SELECT owner, fencing_token FROM partition_cursors ORDER BY partition")
            .fetch_all(&app.env.pool)
            .await
            .unwrap();
    for ((owner, token), stale) in rows.iter().zip(&tokens_after) {
        if owner.as_deref() == Some("worker-old") {
            assert!(
                token > stale,
                "the old worker came back only through a new lease"
            );
        }
    }
    for child in [&mut old, &mut new] {
        child.start_kill().unwrap();
        child.wait().await.unwrap();
    }
    Arc::into_inner(app).unwrap().shutdown().await;
}

#[tokio::test]
async fn sigterm_hands_partitions_over_without_waiting_for_expiry() {
    let app = Arc::new(TestApp::spawn_without_worker().await);
    let products = app.create_products(4, 1000).await;
    // Long leases: only an explicit release can make the hand-over quick.
    let long = [("CHECKLINE_LEASE_TTL_MS", "20000")];
    let mut leaving = spawn_worker(&app, "worker-leaving", &long);
    let mut staying = spawn_worker(&app, "worker-staying", &long);
    wait_owners(&app, Duration::from_secs(20), |o| {
        let c = counts(o);
        o.values().all(Option::is_some) && c.len() == 2 && c.values().all(|n| *n == 2)
    })
    .await;
    let sale = tokio::spawn({
        let app = app.clone();
        let products = products.clone();
        async move { buy(&app, &products, 0, 200).await }
    });
    signal(&leaving, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), leaving.wait())
        .await
        .expect("exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "a clean exit: {status}");
    let took = wait_owners(&app, Duration::from_secs(10), |o| {
        o.values().all(|w| w.as_deref() == Some("worker-staying"))
    })
    .await;
    assert!(
        took < Duration::from_secs(5),
        "hand-over took {took:?}, as if waiting for the 20 s leases"
    );
    let accepted = sale.await.unwrap();
    all_decided_and_balanced(&app, &products, &accepted).await;
    staying.start_kill().unwrap();
    staying.wait().await.unwrap();
    Arc::into_inner(app).unwrap().shutdown().await;
}
