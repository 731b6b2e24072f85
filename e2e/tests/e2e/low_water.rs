//! The per-partition low-water mark that replaces a status index
//! (`checkline_shared::pending`): it never passes a pending order, however
//! the transactions that write orders interleave with the ones that move it,
//! so the stranded sweep still finds every stranded order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use checkline_e2e::env::TestEnv;
use checkline_shared::partition::Partition;
use checkline_shared::pending;
use checkline_worker::store::{self, StrandedBefore};
use sqlx::PgPool;
use uuid::Uuid;

const P0: Partition = Partition::new(0);

async fn product(pool: &PgPool) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO products (id, sku, name, price_cents, stock, initial_stock, partition) \
         VALUES ($1, $2, 'p', 100, 1000, 1000, 0)",
    )
    .bind(id)
    .bind(id.to_string())
    .execute(pool)
    .await
    .unwrap();
    id
}

const INSERT: &str = "INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, quantity, partition, created_at) \
     VALUES ($1, $2, $2, '\\x00', $3, 1, 0, now() - make_interval(secs => $4))";

async fn decide(pool: &PgPool, id: Uuid) {
    sqlx::query(
        "UPDATE orders SET status = 'rejected', reason = 'sold_out', decided_at = now() \
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
}

/// Pending orders of partition 0 below its mark: there must never be any.
async fn below_mark(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM orders o JOIN order_low_water w ON w.partition = o.partition \
         WHERE o.status = 'pending' AND o.insert_xid < w.low_water",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn mark(pool: &PgPool) -> Option<i64> {
    sqlx::query_scalar("SELECT low_water::text::bigint FROM order_low_water WHERE partition = 0")
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// Moves the mark until it satisfies `done`, for up to five seconds: the
/// snapshot's xmin is the whole server's, so a write transaction of another
/// database that happens to be open holds the mark back for its duration.
async fn mark_until(pool: &PgPool, done: impl Fn(i64) -> bool) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        pending::measure(pool, &[P0]).await.unwrap();
        let low = mark(pool).await.unwrap();
        if done(low) || tokio::time::Instant::now() > deadline {
            return low;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An order written by a transaction that is still open while the mark
/// moves past decided orders written after it — backdated an hour, as a
/// row whose publish failed long ago would be — is still found by the sweep
/// once it commits.
#[tokio::test]
async fn the_mark_waits_for_an_open_transaction_and_the_sweep_finds_its_order() {
    let env = TestEnv::new(2).await;
    let pool = &env.pool;
    let pid = product(pool).await;

    let mut open = pool.begin().await.unwrap();
    let stranded_id = Uuid::new_v4();
    sqlx::query(INSERT)
        .bind(stranded_id)
        .bind("late")
        .bind(pid)
        .bind(3600.0)
        .execute(&mut *open)
        .await
        .unwrap();
    let open_xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *open)
        .await
        .unwrap();

    // Orders written and decided after it, while it is open.
    for i in 0..20 {
        let id = Uuid::new_v4();
        sqlx::query(INSERT)
            .bind(id)
            .bind(format!("c{i}"))
            .bind(pid)
            .bind(3600.0)
            .execute(pool)
            .await
            .unwrap();
        decide(pool, id).await;
    }
    let counts = pending::measure(pool, &[P0]).await.unwrap();
    assert_eq!(counts, vec![(P0, 0)], "the open order is not visible yet");
    let held = mark(pool).await.expect("the measure records a mark");
    assert!(
        held <= open_xid,
        "the mark ({held}) passed an open transaction ({open_xid})"
    );

    open.commit().await.unwrap();
    let counts = pending::measure(pool, &[P0]).await.unwrap();
    assert_eq!(counts, vec![(P0, 1)]);
    let stranded = store::stranded(
        pool,
        P0,
        StrandedBefore {
            age: Some(Duration::from_secs(1)),
            written_before: None,
        },
        100,
    )
    .await
    .unwrap();
    let found: Vec<Uuid> = stranded.orders.iter().map(|o| o.id).collect();
    assert_eq!(found, vec![stranded_id]);

    // Decided, the mark moves past it.
    decide(pool, stranded_id).await;
    let moved = mark_until(pool, |low| low > open_xid).await;
    assert!(moved > open_xid, "the mark ({moved}) stays at {open_xid}");
    env.cleanup().await;
}

/// Writers (some slow to commit, some rolling back), a decider and several
/// processes moving the mark, all at once: at every moment no pending
/// order is below the mark, and the mark does move.
#[tokio::test]
async fn the_mark_never_passes_a_pending_order_under_concurrent_writes() {
    let env = TestEnv::new(2).await;
    let pool = env.pool.clone();
    let pid = product(&pool).await;
    let done = Arc::new(AtomicBool::new(false));

    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..40u64 {
                    let mut tx = pool.begin().await.unwrap();
                    let id = Uuid::new_v4();
                    sqlx::query(INSERT)
                        .bind(id)
                        .bind(format!("w{w}-{i}"))
                        .bind(pid)
                        .bind(((w * 40 + i) % 7) as f64)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    // Commit after a pause of 0 to 30 ms; one in nine rolls back.
                    tokio::time::sleep(Duration::from_millis((i * 7 + w * 3) % 31)).await;
                    if (i + w) % 9 == 0 {
                        tx.rollback().await.unwrap();
                    } else {
                        tx.commit().await.unwrap();
                        ids.push(id);
                    }
                }
                ids
            })
        })
        .collect();
    let movers: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut violations = 0;
                while !done.load(Ordering::Relaxed) {
                    pending::measure(&pool, &[P0]).await.unwrap();
                    violations += below_mark(&pool).await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                violations
            })
        })
        .collect();
    // Decide every committed order except the last few of each writer, in
    // a different order from the one they were written in.
    let decider = {
        let pool = pool.clone();
        let done = done.clone();
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let ids: Vec<Uuid> = sqlx::query_scalar(
                    "SELECT id FROM orders WHERE status = 'pending' \
                     AND customer_id NOT LIKE '%-3_' ORDER BY id LIMIT 5",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                for id in ids {
                    decide(&pool, id).await;
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };

    let mut written = Vec::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    done.store(true, Ordering::Relaxed);
    decider.await.unwrap();
    for m in movers {
        assert_eq!(m.await.unwrap(), 0, "a pending order was below the mark");
    }
    pending::measure(&pool, &[P0]).await.unwrap();
    assert_eq!(below_mark(&pool).await, 0);

    // The mark moved past decided orders (the test would prove nothing if
    // it stayed at 0), and it stops at the oldest pending one.
    let oldest_pending: i64 = sqlx::query_scalar(
        "SELECT min(insert_xid::text::bigint) FROM orders WHERE status = 'pending'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let low = mark_until(&pool, |low| low == oldest_pending).await;
    assert_eq!(low, oldest_pending);
    let decided_below: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders WHERE status <> 'pending' AND insert_xid::text::bigint < $1",
    )
    .bind(low)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(decided_below > 0, "the mark never moved");
    // What the backlog counts is every pending order, none missed.
    let pending_now: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(written.len() as i64 > pending_now && pending_now > 0);
    assert_eq!(
        pending::measure(&pool, &[P0]).await.unwrap(),
        vec![(P0, pending_now)]
    );
    env.cleanup().await;
}

/// The decision stays a HOT update only while no index of `orders` covers,
/// computes or is predicated on a column it sets: a later migration that
/// indexes one of them fails here, not in a benchmark.
#[tokio::test]
async fn no_index_of_orders_involves_a_column_the_decision_sets() {
    let env = TestEnv::new(1).await;
    let decided = [
        "status",
        "reason",
        "unit_price_cents",
        "total_cents",
        "decided_at",
        "queue_sequence",
        "queue_index",
    ];
    let offending: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.indexrelid::regclass::text, a.attname::text \
         FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
         WHERE i.indrelid = 'orders'::regclass AND a.attname = ANY($1) \
           AND (a.attnum = ANY(i.indkey) \
                OR COALESCE(pg_get_expr(i.indexprs, i.indrelid), '') ~ ('\\m' || a.attname || '\\M') \
                OR COALESCE(pg_get_expr(i.indpred, i.indrelid), '') ~ ('\\m' || a.attname || '\\M'))",
    )
    .bind(&decided[..])
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert!(
        offending.is_empty(),
        "indexes on columns the decision sets: {offending:?}"
    );
    let fillfactor: Option<String> = sqlx::query_scalar(
        "SELECT option_value FROM pg_options_to_table((SELECT reloptions FROM pg_class \
         WHERE oid = 'orders'::regclass)) WHERE option_name = 'fillfactor'",
    )
    .fetch_optional(&env.pool)
    .await
    .unwrap();
    assert_eq!(fillfactor.as_deref(), Some("45"), "room for the decision");
    env.cleanup().await;
}
