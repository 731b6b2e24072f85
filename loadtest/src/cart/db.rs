//! What the cart checks read from PostgreSQL (migrations/0005_checkout.sql),
//! and the waits before reading it: the queues drained, and (with
//! `--wait-expiry`) every abandoned reservation expired.
//!
//! A run's orders are found by their customers (`buyer-<run>-…`), so a cart
//! of several products (no `product_id` on its order row) is found too, and
//! so is an order a client never heard of.

use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::client::OrderStatus;
use crate::db::sql_error;

/// How often the waits look again.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// A product's row of `stock_audit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub product_id: Uuid,
    pub initial_stock: i64,
    pub restocked: i64,
    pub stock: i64,
    pub held: i64,
    /// Units of reserved and confirmed orders.
    pub confirmed_units: i64,
    pub returning_units: i64,
    pub balanced: Option<bool>,
}

/// An `orders` row of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartOrderRow {
    pub id: Uuid,
    pub customer_id: String,
    pub idempotency_key: String,
    pub status: OrderStatus,
    pub reason: Option<String>,
    /// One-line orders only.
    pub product_id: Option<Uuid>,
    pub quantity: Option<i64>,
    pub line_count: i64,
    /// Set once the order took its units, kept after a reservation ends.
    pub total_cents: Option<i64>,
    pub queue_sequence: Option<i64>,
    pub queue_index: Option<i64>,
    pub rejected_product_id: Option<Uuid>,
    pub reserve_secs: Option<i64>,
    pub reserved_until: Option<DateTime<Utc>>,
}

/// An `order_lines` row of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRow {
    pub order_id: Uuid,
    pub line_no: i64,
    pub product_id: Uuid,
    pub quantity: i64,
    pub state: String,
    pub reason: Option<String>,
    /// Set once the line held its units, kept when they are released.
    pub unit_price_cents: Option<i64>,
    pub queue_sequence: Option<i64>,
    pub queue_index: Option<i64>,
    pub settle_sequence: Option<i64>,
}

/// A `stock_returns` row of the run's products.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnRow {
    pub order_id: Uuid,
    pub product_id: Uuid,
    pub quantity: i64,
    pub applied: bool,
    pub queue_sequence: Option<i64>,
}

/// An applied restock of the run's products.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestockRow {
    pub product_id: Uuid,
    pub quantity: i64,
    pub queue_sequence: Option<i64>,
}

/// Everything the checks read, in one snapshot.
#[derive(Debug, Clone, Default)]
pub struct CartDbView {
    /// The database's clock when read (reservations are judged by it).
    pub now: DateTime<Utc>,
    pub audits: Vec<AuditRow>,
    pub orders: Vec<CartOrderRow>,
    pub lines: Vec<LineRow>,
    pub returns: Vec<ReturnRow>,
    pub restocks: Vec<RestockRow>,
}

/// The run's customers, as a `LIKE` pattern (run ids are hex: nothing to
/// escape).
pub fn customer_pattern(run_id: &str) -> String {
    format!("buyer-{run_id}-%")
}

const ORDERS: &str = "SELECT id, customer_id, idempotency_key, status, reason, product_id, \
            quantity::bigint AS quantity, line_count::bigint AS line_count, total_cents, queue_sequence, \
            queue_index::bigint AS queue_index, rejected_product_id, \
            reserve_secs::bigint AS reserve_secs, reserved_until \
     FROM orders WHERE customer_id LIKE $1";

const LINES: &str = "SELECT l.order_id, l.line_no::bigint AS line_no, l.product_id, \
            l.quantity::bigint AS quantity, l.state, l.reason, l.unit_price_cents, l.queue_sequence, \
            l.queue_index::bigint AS queue_index, l.settle_sequence \
     FROM order_lines l JOIN orders o ON o.id = l.order_id \
     WHERE o.customer_id LIKE $1 ORDER BY l.order_id, l.line_no";

const RETURNS: &str = "SELECT order_id, product_id, quantity::bigint AS quantity, \
            status = 'applied' AS applied, queue_sequence \
     FROM stock_returns WHERE product_id = ANY($1)";

const RESTOCKS: &str = "SELECT product_id, quantity, queue_sequence \
     FROM restocks WHERE product_id = ANY($1) AND status = 'applied'";

const AUDITS: &str = "SELECT product_id, initial_stock, restocked, stock, held, \
            confirmed_units, returning_units, balanced \
     FROM stock_audit WHERE product_id = ANY($1)";

/// Reads the run's orders, lines, returns, restocks and stock audits.
pub async fn fetch_view(pool: &PgPool, run_id: &str, products: &[Uuid]) -> Result<CartDbView> {
    let pattern = customer_pattern(run_id);
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(pool)
        .await
        .map_err(sql_error("reading the database clock"))?;
    let orders = decode_all(
        sqlx::query(ORDERS).bind(&pattern).fetch_all(pool).await,
        "reading the run's orders",
        |row| {
            Ok(CartOrderRow {
                id: row.try_get("id")?,
                customer_id: row.try_get("customer_id")?,
                idempotency_key: row.try_get("idempotency_key")?,
                status: decode_status(row)?,
                reason: row.try_get("reason")?,
                product_id: row.try_get("product_id")?,
                quantity: row.try_get("quantity")?,
                line_count: row.try_get("line_count")?,
                total_cents: row.try_get("total_cents")?,
                queue_sequence: row.try_get("queue_sequence")?,
                queue_index: row.try_get("queue_index")?,
                rejected_product_id: row.try_get("rejected_product_id")?,
                reserve_secs: row.try_get("reserve_secs")?,
                reserved_until: row.try_get("reserved_until")?,
            })
        },
    )?;
    let lines = decode_all(
        sqlx::query(LINES).bind(&pattern).fetch_all(pool).await,
        "reading the run's order lines",
        |row| {
            Ok(LineRow {
                order_id: row.try_get("order_id")?,
                line_no: row.try_get("line_no")?,
                product_id: row.try_get("product_id")?,
                quantity: row.try_get("quantity")?,
                state: row.try_get("state")?,
                reason: row.try_get("reason")?,
                unit_price_cents: row.try_get("unit_price_cents")?,
                queue_sequence: row.try_get("queue_sequence")?,
                queue_index: row.try_get("queue_index")?,
                settle_sequence: row.try_get("settle_sequence")?,
            })
        },
    )?;
    let returns = decode_all(
        sqlx::query(RETURNS).bind(products).fetch_all(pool).await,
        "reading the stock returns",
        |row| {
            Ok(ReturnRow {
                order_id: row.try_get("order_id")?,
                product_id: row.try_get("product_id")?,
                quantity: row.try_get("quantity")?,
                applied: row.try_get("applied")?,
                queue_sequence: row.try_get("queue_sequence")?,
            })
        },
    )?;
    let restocks = decode_all(
        sqlx::query(RESTOCKS).bind(products).fetch_all(pool).await,
        "reading the restocks",
        |row| {
            Ok(RestockRow {
                product_id: row.try_get("product_id")?,
                quantity: row.try_get("quantity")?,
                queue_sequence: row.try_get("queue_sequence")?,
            })
        },
    )?;
    let audits = decode_all(
        sqlx::query(AUDITS).bind(products).fetch_all(pool).await,
        "reading stock_audit",
        |row| {
            Ok(AuditRow {
                product_id: row.try_get("product_id")?,
                initial_stock: row.try_get("initial_stock")?,
                restocked: row.try_get("restocked")?,
                stock: row.try_get("stock")?,
                held: row.try_get("held")?,
                confirmed_units: row.try_get("confirmed_units")?,
                returning_units: row.try_get("returning_units")?,
                balanced: row.try_get("balanced")?,
            })
        },
    )?;
    Ok(CartDbView {
        now,
        audits,
        orders,
        lines,
        returns,
        restocks,
    })
}

fn decode_all<T>(
    rows: Result<Vec<PgRow>, sqlx::Error>,
    what: &'static str,
    decode: impl Fn(&PgRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>> {
    rows.map_err(sql_error(what))?
        .iter()
        .map(decode)
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql_error(what))
}

fn decode_status(row: &PgRow) -> Result<OrderStatus, sqlx::Error> {
    let status: String = row.try_get("status")?;
    OrderStatus::parse(&status)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown order status {status:?}").into()))
}

/// What is still moving: the run is drained when all of it is zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Backlog {
    /// Orders of the run not decided yet.
    pub pending: i64,
    /// Units held by lines whose order has not settled.
    pub held: i64,
    /// Lines whose settle entry has not taken effect (`keep`, `release`).
    pub settling: i64,
    /// Entries waiting behind holds.
    pub parked: i64,
    /// Returned units not back in stock yet.
    pub returning: i64,
}

impl Backlog {
    pub fn drained(&self) -> bool {
        *self == Self::default()
    }
}

const BACKLOG: &str = "SELECT \
      (SELECT count(*) FROM orders WHERE customer_id LIKE $1 AND status = 'pending') AS pending, \
      (SELECT COALESCE(SUM(held), 0)::bigint FROM products WHERE id = ANY($2)) AS held, \
      (SELECT count(*) FROM order_lines WHERE product_id = ANY($2) \
          AND state IN ('keep', 'release')) AS settling, \
      (SELECT count(*) FROM parked WHERE product_id = ANY($2)) AS parked, \
      (SELECT count(*) FROM stock_returns WHERE product_id = ANY($2) \
          AND status = 'pending') AS returning";

pub async fn backlog(pool: &PgPool, run_id: &str, products: &[Uuid]) -> Result<Backlog> {
    let row = sqlx::query(BACKLOG)
        .bind(customer_pattern(run_id))
        .bind(products)
        .fetch_one(pool)
        .await
        .map_err(sql_error("measuring what is still in the queues"))?;
    let get = |name: &str| row.try_get::<i64, _>(name);
    (|| {
        Ok(Backlog {
            pending: get("pending")?,
            held: get("held")?,
            settling: get("settling")?,
            parked: get("parked")?,
            returning: get("returning")?,
        })
    })()
    .map_err(sql_error("decoding the backlog"))
}

/// How a bounded wait ended.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Waited<T> {
    pub done: bool,
    pub secs: f64,
    /// The last figures read.
    pub last: T,
}

/// Waits until the run's queues are drained, at most `timeout`.
pub async fn wait_drained(
    pool: &PgPool,
    run_id: &str,
    products: &[Uuid],
    timeout: Duration,
) -> Result<Waited<Backlog>> {
    let started = Instant::now();
    loop {
        let last = backlog(pool, run_id, products).await?;
        let elapsed = started.elapsed();
        if last.drained() || elapsed >= timeout {
            return Ok(Waited {
                done: last.drained(),
                secs: elapsed.as_secs_f64(),
                last,
            });
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

/// The run's reservations still open, and how late the latest expiry is.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Reservations {
    pub reserved: i64,
    /// Reserved orders past their `reserved_until`.
    pub overdue: i64,
    /// How far past `reserved_until` the most overdue one is, in seconds.
    pub most_overdue_secs: f64,
}

const RESERVATIONS: &str = "SELECT count(*) AS reserved, \
       count(*) FILTER (WHERE reserved_until <= now()) AS overdue, \
       COALESCE(EXTRACT(EPOCH FROM now() - min(reserved_until) \
                FILTER (WHERE reserved_until <= now())), 0)::float8 AS most_overdue_secs \
     FROM orders WHERE customer_id LIKE $1 AND status = 'reserved'";

/// `--wait-expiry`: waits until none of the run's orders is `reserved`, at
/// most `timeout`, and records the largest lateness seen on the way (the
/// expirer's bound, measured).
pub async fn wait_expired(
    pool: &PgPool,
    run_id: &str,
    timeout: Duration,
) -> Result<(Waited<Reservations>, f64)> {
    let started = Instant::now();
    let mut worst_late_secs = 0f64;
    let pattern = customer_pattern(run_id);
    loop {
        let row = sqlx::query(RESERVATIONS)
            .bind(&pattern)
            .fetch_one(pool)
            .await
            .map_err(sql_error("counting open reservations"))?;
        let last = (|| {
            Ok::<_, sqlx::Error>(Reservations {
                reserved: row.try_get("reserved")?,
                overdue: row.try_get("overdue")?,
                most_overdue_secs: row.try_get("most_overdue_secs")?,
            })
        })()
        .map_err(sql_error("decoding open reservations"))?;
        worst_late_secs = worst_late_secs.max(last.most_overdue_secs);
        let elapsed = started.elapsed();
        if last.reserved == 0 || elapsed >= timeout {
            return Ok((
                Waited {
                    done: last.reserved == 0,
                    secs: elapsed.as_secs_f64(),
                    last,
                },
                worst_late_secs,
            ));
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    //! Against real PostgreSQL: a fresh database on the server of
    //! `CHECKLINE_DATABASE_URL` (scripts/test.sh exports it), migrated with
    //! the repository's migrations, dropped at the end.

    use super::*;
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use sqlx::{ConnectOptions, Executor};

    const RUN: &str = "abc12345";

    struct FreshDatabase {
        admin: PgConnectOptions,
        name: String,
        pool: PgPool,
    }

    impl FreshDatabase {
        async fn create() -> Self {
            let url = std::env::var("CHECKLINE_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/checkline".to_owned());
            let admin: PgConnectOptions = url
                .parse::<PgConnectOptions>()
                .unwrap()
                .database("postgres");
            let name = format!(
                "loadtest_cart_{}",
                &Uuid::new_v4().simple().to_string()[..12]
            );
            let mut conn = admin
                .connect()
                .await
                .expect("PostgreSQL at CHECKLINE_DATABASE_URL");
            conn.execute(format!("CREATE DATABASE {name}").as_str())
                .await
                .unwrap();
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .connect_with(admin.clone().database(&name))
                .await
                .unwrap();
            let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
            let migrated = sqlx::migrate::Migrator::new(migrations)
                .await
                .unwrap()
                .run(&pool)
                .await;
            let db = Self { admin, name, pool };
            if let Err(err) = migrated {
                db.drop().await;
                panic!("the migrations do not apply: {err}");
            }
            db
        }

        async fn drop(self) {
            self.pool.close().await;
            let mut conn = self.admin.connect().await.unwrap();
            conn.execute(format!("DROP DATABASE {} WITH (FORCE)", self.name).as_str())
                .await
                .unwrap();
        }
    }

    const A: Uuid = Uuid::from_u128(0xA);
    const B: Uuid = Uuid::from_u128(0xB);

    async fn seed(pool: &PgPool) {
        let statements = format!(
            "INSERT INTO products (id, sku, name, price_cents, stock, initial_stock, partition, held) \
             VALUES ('{A}', 'A', 'a', 100, 2, 5, 0, 1), ('{B}', 'B', 'b', 100, 2, 3, 1, 0);
             -- One line, confirmed: 2 units of A.
             INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, \
                 quantity, partition, status, unit_price_cents, total_cents, decided_at, queue_sequence) \
             VALUES ('{one}', 'buyer-{RUN}-0', 'k0', '\\x00', '{A}', 2, 0, 'confirmed', 100, 200, now(), 10);
             -- One line on B, reserved, expired; its unit on its way back.
             INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, \
                 quantity, partition, status, unit_price_cents, total_cents, decided_at, queue_sequence, \
                 queue_index, reserve_secs, reserved_until) \
             VALUES ('{gone}', 'buyer-{RUN}-1', 'k1', '\\x00', '{B}', 1, 1, 'expired', 100, 100, now(), 11, \
                 3, 30, now() - interval '1 minute');
             INSERT INTO stock_returns (id, order_id, product_id, customer_id, quantity, partition) \
             VALUES ('{ret}', '{gone}', '{B}', 'buyer-{RUN}-1', 1, 1);
             -- A cart of A and B, pending: A's line holds its unit.
             INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, \
                 quantity, partition, status, line_count, lines) \
             VALUES ('{cart}', 'buyer-{RUN}-1', 'k2', '\\x00', NULL, NULL, 0, 'pending', 2, \
                 '[{{\"product_id\": \"{A}\", \"quantity\": 1}}, {{\"product_id\": \"{B}\", \"quantity\": 1}}]');
             INSERT INTO order_lines (order_id, line_no, product_id, quantity, partition, state, \
                 unit_price_cents, queue_sequence, queue_index) \
             VALUES ('{cart}', 0, '{A}', 1, 0, 'held', 100, 12, 0), \
                 ('{cart}', 1, '{B}', 1, 1, 'queued', NULL, NULL, NULL);
             -- Another run's order on A: not this run's.
             INSERT INTO orders (id, customer_id, idempotency_key, request_hash, product_id, \
                 quantity, partition, status, decided_at, reason) \
             VALUES ('{other}', 'buyer-fff00000-0', 'k0', '\\x00', '{A}', 1, 0, 'rejected', now(), 'sold_out');",
            one = Uuid::from_u128(1),
            gone = Uuid::from_u128(2),
            cart = Uuid::from_u128(3),
            other = Uuid::from_u128(4),
            ret = Uuid::from_u128(5),
        );
        pool.execute(statements.as_str()).await.unwrap();
    }

    #[tokio::test]
    async fn the_run_is_read_from_the_checkout_tables() {
        let db = FreshDatabase::create().await;
        let pool = &db.pool;
        seed(pool).await;
        let products = [A, B];

        let backlog = backlog(pool, RUN, &products).await.unwrap();
        assert_eq!(
            backlog,
            Backlog {
                pending: 1,
                held: 1,
                settling: 0,
                parked: 0,
                returning: 1,
            }
        );
        let waited = wait_drained(pool, RUN, &products, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(!waited.done);
        assert_eq!(waited.last, backlog);

        let view = fetch_view(pool, RUN, &products).await.unwrap();
        let mut ids: Vec<u128> = view.orders.iter().map(|o| o.id.as_u128()).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2, 3], "only the run's orders");
        let cart = view.orders.iter().find(|o| o.id.as_u128() == 3).unwrap();
        assert_eq!(
            (cart.line_count, cart.product_id, cart.quantity),
            (2, None, None)
        );
        assert_eq!(cart.status, OrderStatus::Pending);
        let gone = view.orders.iter().find(|o| o.id.as_u128() == 2).unwrap();
        assert_eq!(gone.status, OrderStatus::Expired);
        assert_eq!((gone.queue_sequence, gone.queue_index), (Some(11), Some(3)));
        assert_eq!(gone.reserve_secs, Some(30));
        assert_eq!(gone.total_cents, Some(100));
        assert_eq!(cart.total_cents, None);
        assert!(gone.reserved_until.is_some_and(|until| until < view.now));
        assert_eq!(view.lines.len(), 2);
        assert_eq!(view.lines[0].state, "held");
        assert_eq!(view.lines[0].queue_sequence, Some(12));
        assert_eq!(
            (
                view.lines[0].unit_price_cents,
                view.lines[1].unit_price_cents
            ),
            (Some(100), None)
        );
        assert_eq!(view.lines[1].queue_sequence, None);
        assert_eq!(
            view.returns,
            [ReturnRow {
                order_id: Uuid::from_u128(2),
                product_id: B,
                quantity: 1,
                applied: false,
                queue_sequence: None,
            }]
        );
        assert!(view.restocks.is_empty());
        let audit = |id| view.audits.iter().find(|a| a.product_id == id).unwrap();
        // A: 5 = stock 2 + held 1 + confirmed 2.
        assert_eq!(
            (
                audit(A).stock,
                audit(A).held,
                audit(A).confirmed_units,
                audit(A).balanced
            ),
            (2, 1, 2, Some(true))
        );
        // B: 3 = stock 2 + returning 1.
        assert_eq!(
            (audit(B).returning_units, audit(B).balanced),
            (1, Some(true))
        );

        // Settle the cart's lines: they count as settling until applied.
        pool.execute("UPDATE order_lines SET state = 'keep' WHERE line_no = 0")
            .await
            .unwrap();
        assert_eq!(backlog_of(pool).await.settling, 1);

        // A reservation past its time is measured as overdue.
        pool.execute(
            format!(
                "UPDATE orders SET status = 'reserved', reserved_until = now() - interval '2 seconds' \
                 WHERE id = '{}'",
                Uuid::from_u128(2)
            )
            .as_str(),
        )
        .await
        .unwrap();
        let (waited, worst) = wait_expired(pool, RUN, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(!waited.done);
        assert_eq!((waited.last.reserved, waited.last.overdue), (1, 1));
        assert!((2.0..60.0).contains(&worst), "{worst}");
        pool.execute("UPDATE orders SET status = 'expired' WHERE status = 'reserved'")
            .await
            .unwrap();
        let (waited, _) = wait_expired(pool, RUN, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(waited.done);

        db.drop().await;
    }

    async fn backlog_of(pool: &PgPool) -> Backlog {
        backlog(pool, RUN, &[A, B]).await.unwrap()
    }
}
