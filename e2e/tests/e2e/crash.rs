//! The worker as a real process, killed with SIGKILL in the middle of a flash
//! sale and started again: nothing accepted is lost, nothing is decided
//! twice, and first-come first-served holds across the crash.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use crate::process::{spawn_worker, worker_binary};
use checkline_e2e::{buy, TestApp};
use tokio::process::Command;

/// Small batches, so that a kill lands between and inside them.
const SMALL_BATCHES: &[(&str, &str)] = &[("CHECKLINE_BATCH_MAX", "7")];

async fn decided_count(app: &TestApp, product_id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE product_id = $1::uuid AND status <> 'pending'",
    )
    .bind(product_id)
    .fetch_one(&app.env.pool)
    .await
    .unwrap()
}

async fn check_invariants(
    app: &TestApp,
    product_id: &str,
    stock: i64,
    accepted: &[(String, String)],
) {
    for (token, id) in accepted {
        app.decided(token, id).await;
    }
    let (confirmed, pending): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'confirmed'), count(*) FILTER (WHERE status = 'pending') \
         FROM orders WHERE product_id = $1::uuid",
    )
    .bind(product_id)
    .fetch_one(&app.env.pool)
    .await
    .unwrap();
    assert_eq!(pending, 0, "every accepted order is decided");
    assert_eq!(
        confirmed,
        stock.min(accepted.len() as i64),
        "exactly the stock is sold"
    );
    assert_eq!(app.product(product_id).await["stock"], stock - confirmed);
    assert!(
        app.balanced(product_id).await,
        "initial stock = stock + confirmed: nothing decided twice"
    );
    // Queue order is (message sequence, position in the message).
    let last_confirmed: Option<(i64, i32)> = sqlx::query_as(
        "SELECT queue_sequence, COALESCE(queue_index, 0) FROM orders \
         WHERE product_id = $1::uuid AND status = 'confirmed' \
         ORDER BY queue_sequence DESC, COALESCE(queue_index, 0) DESC LIMIT 1",
    )
    .bind(product_id)
    .fetch_optional(&app.env.pool)
    .await
    .unwrap();
    let first_rejected: Option<(i64, i32)> = sqlx::query_as(
        "SELECT queue_sequence, COALESCE(queue_index, 0) FROM orders \
         WHERE product_id = $1::uuid AND status = 'rejected' \
         ORDER BY queue_sequence, COALESCE(queue_index, 0) LIMIT 1",
    )
    .bind(product_id)
    .fetch_optional(&app.env.pool)
    .await
    .unwrap();
    if let (Some(last), Some(first)) = (last_confirmed, first_rejected) {
        assert!(last < first, "confirmed orders are the first ones queued");
    }
}

#[tokio::test]
async fn a_killed_worker_loses_nothing_and_decides_nothing_twice() {
    let app = Arc::new(TestApp::spawn_without_worker().await);
    // More stock than the first wave of buyers: the product cannot sell out
    // before the kill, so the second wave is accepted while no worker runs
    // and the kill always lands with orders left to decide.
    let product = app.create_product(350, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();

    let mut worker = spawn_worker(&app, "crash-1", SMALL_BATCHES);
    let first = tokio::spawn({
        let app = app.clone();
        let pid = pid.clone();
        async move { buy(&app, std::slice::from_ref(&pid), 0, 300).await }
    });
    // Kill the worker once it has decided some, but not all, of the orders.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while decided_count(&app, &pid).await < 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker made no progress"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.start_kill().unwrap();
    worker.wait().await.unwrap();
    let killed_at = decided_count(&app, &pid).await;

    // Orders keep being accepted while no worker runs.
    let mut accepted = first.await.unwrap();
    accepted.extend(buy(&app, std::slice::from_ref(&pid), 300, 100).await);
    assert!(killed_at < accepted.len() as i64, "the kill landed mid-run");

    let mut worker = spawn_worker(&app, "crash-2", SMALL_BATCHES);
    check_invariants(&app, &pid, 350, &accepted).await;
    worker.start_kill().unwrap();
    worker.wait().await.unwrap();
    Arc::into_inner(app).unwrap().shutdown().await;
}

#[tokio::test]
async fn two_workers_starting_together_never_double_decide() {
    // Both race for every partition's lease at start-up; whoever loses a
    // race must not have applied anything, and the partitions end up split.
    let app = Arc::new(TestApp::spawn_without_worker().await);
    let product = app.create_product(60, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let mut a = spawn_worker(&app, "twin-a", SMALL_BATCHES);
    let mut b = spawn_worker(&app, "twin-b", SMALL_BATCHES);
    let accepted = buy(&app, std::slice::from_ref(&pid), 0, 200).await;
    check_invariants(&app, &pid, 60, &accepted).await;
    for worker in [&mut a, &mut b] {
        worker.start_kill().unwrap();
        worker.wait().await.unwrap();
    }
    Arc::into_inner(app).unwrap().shutdown().await;
}

/// Crashes the worker at `point` on its first batch, then starts a healthy
/// one: every order is decided exactly once whatever the window.
async fn crash_window(point: &str, committed_before_crash: bool) {
    let app = Arc::new(TestApp::spawn_without_worker().await);
    let product = app.create_product(10, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let accepted = buy(&app, std::slice::from_ref(&pid), 0, 20).await;
    assert_eq!(accepted.len(), 20);

    let mut doomed = Command::new(worker_binary())
        .envs(app.worker_vars("doomed"))
        .env("CHECKLINE_FAULTS", format!("{point}:crash"))
        .env("CHECKLINE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), doomed.wait())
        .await
        .expect("the worker reaches the crash point")
        .unwrap();
    assert!(!status.success(), "{point}: the worker aborted");
    let decided = decided_count(&app, &pid).await;
    if committed_before_crash {
        assert!(decided > 0, "{point}: the batch had committed");
    } else {
        assert_eq!(decided, 0, "{point}: nothing was committed");
    }

    let mut healthy = spawn_worker(&app, "healthy", SMALL_BATCHES);
    check_invariants(&app, &pid, 10, &accepted).await;
    healthy.start_kill().unwrap();
    healthy.wait().await.unwrap();
    Arc::into_inner(app).unwrap().shutdown().await;
}

#[tokio::test]
async fn killed_mid_batch_nothing_is_lost() {
    crash_window("mid_batch", false).await;
}

#[tokio::test]
async fn killed_before_commit_nothing_is_lost() {
    crash_window("before_commit", false).await;
}

#[tokio::test]
async fn killed_after_commit_before_ack_nothing_is_decided_twice() {
    crash_window("after_commit", true).await;
}

#[tokio::test]
async fn killed_mid_publish_of_results_nothing_is_decided_twice() {
    crash_window("mid_publish", true).await;
}
