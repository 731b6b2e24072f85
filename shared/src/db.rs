//! PostgreSQL: connecting, creating the database, migrating, and the row
//! mappings both binaries read.

use std::str::FromStr;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use uuid::Uuid;

use crate::config::ConfigError;
use sqlx::types::Json;

use crate::domain::{Order, OrderLine, OrderStatus, RejectReason};

/// The schema, embedded at build time from `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("CHECKLINE_DATABASE_URL: {0}")]
    Url(String),
    #[error("database unreachable: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Pool sizing and timeouts for one binary.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// How long to keep retrying the first connection.
    pub startup_timeout: Duration,
}

/// PostgreSQL session settings of every connection of a pool: server-side
/// bounds (`None` leaves the server's default, usually unbounded) and how
/// statements are planned.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionSettings {
    /// `statement_timeout`: the longest any one statement may run.
    pub statement: Option<Duration>,
    /// `lock_timeout`: the longest a statement may wait for a lock.
    pub lock: Option<Duration>,
    /// `idle_in_transaction_session_timeout`: a session left idle inside a
    /// transaction this long (its client paused or gone) is ended, and its
    /// locks with it.
    pub idle_in_transaction: Option<Duration>,
    /// Every statement of the pool reads rows by key (`enable_seqscan =
    /// off`). The worker's batch statements are all lookups by primary or
    /// unique key, prepared once per connection; PostgreSQL plans a prepared
    /// statement anew for its first five runs and then may keep one generic
    /// plan. On an `orders` table that has just started to grow (a new
    /// deployment's first drop, before autovacuum has analyzed it), the
    /// plans chosen included sequential scans of `orders`: measured on a
    /// 100-product load of 40,000 orders, 2,432 full scans (45 million rows
    /// read) for 2,587 batches, and 2.4× PostgreSQL's CPU per order; with
    /// the setting, none. A statement with no index path still scans; the
    /// setting only makes a scan the last resort.
    pub keyed_statements_only: bool,
}

impl SessionSettings {
    fn options(&self) -> Vec<(&'static str, String)> {
        [
            ("statement_timeout", self.statement),
            ("lock_timeout", self.lock),
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction,
            ),
        ]
        .into_iter()
        .filter_map(|(name, d)| d.map(|d| (name, format!("{}ms", d.as_millis().max(1)))))
        .chain(
            self.keyed_statements_only
                .then(|| ("enable_seqscan", "off".to_owned())),
        )
        .collect()
    }
}

/// Creates the database if it is missing, connects a pool and applies the
/// migrations. Retries with backoff while the server is not up yet.
pub async fn connect_and_migrate(
    url: &str,
    settings: PoolSettings,
) -> Result<PgPool, DbSetupError> {
    connect_and_migrate_with(url, settings, SessionSettings::default()).await
}

/// [`connect_and_migrate`], with `session` timeouts on every pooled
/// connection (the migrations themselves run unbounded).
pub async fn connect_and_migrate_with(
    url: &str,
    settings: PoolSettings,
    session: SessionSettings,
) -> Result<PgPool, DbSetupError> {
    let base = PgConnectOptions::from_str(url).map_err(|e| DbSetupError::Url(e.to_string()))?;
    let timeouts = session.options();
    let options = if timeouts.is_empty() {
        base.clone()
    } else {
        base.clone().options(timeouts)
    };
    let retry = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .with_total_delay(Some(settings.startup_timeout));
    let pool = (|| async {
        ensure_database(&options).await?;
        PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options.clone())
            .await
    })
    .retry(retry)
    .when(is_transient)
    .notify(|err, after| tracing::warn!(error = %err, retry_in = ?after, "database not ready"))
    .await
    .map_err(DbSetupError::Connect)?;
    // The migrator takes an advisory lock: api and worker may start together.
    if session.options().is_empty() {
        MIGRATOR.run(&pool).await?;
    } else {
        // Waiting for another process's migrations, or a long one, must not
        // trip the sessions' timeouts: migrate through a connection of its own.
        let unbounded = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(base)
            .await
            .map_err(DbSetupError::Connect)?;
        let migrated = MIGRATOR.run(&unbounded).await;
        unbounded.close().await;
        migrated?;
    }
    Ok(pool)
}

/// Failures of the connection or the server's state (down, restarting,
/// shutting down, a serialization conflict), as opposed to errors that would
/// repeat on every attempt. Worth a retry, and a `503` rather than a `500`.
/// The SQL for a product's next version (`updated_at`), in an `UPDATE` of
/// `products` whose row is named `row`: later than the row's version and
/// than any order decided in the same transaction (`decided_at` is the
/// transaction's start, `now()`). A product's versions only ever grow, so
/// a reader can tell which of two states of it is newer, and that a state
/// at version v includes every order of its decided at or before v.
pub fn next_product_version(row: &str) -> String {
    format!("greatest(clock_timestamp(), {row}.updated_at + interval '1 microsecond')")
}

pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 40001 serialization_failure, 40P01 deadlock_detected, class 08
            // connection exceptions, 57P01..57P03 admin shutdown, crash
            // shutdown, cannot connect now.
            code == "40001" || code == "40P01" || code.starts_with("08") || code.starts_with("57P")
        }),
        _ => false,
    }
}

/// `CREATE DATABASE` for the URL's database unless it exists.
async fn ensure_database(options: &PgConnectOptions) -> Result<(), sqlx::Error> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut conn = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it first: 42P04 duplicate_database, or
            // 23505 when both passed the existence check at the same moment.
            Err(sqlx::Error::Database(e))
                if e.code().is_some_and(|c| c == "42P04" || c == "23505") => {}
            Err(e) => return Err(e),
        }
    }
    conn.close().await
}

/// The sequence a queue stream created anew should start at: after every
/// position any partition has applied (see `queue::ensure_stream`).
pub async fn next_queue_sequence(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let highest: i64 =
        sqlx::query_scalar("SELECT COALESCE(max(last_sequence), 0) FROM partition_cursors")
            .fetch_one(pool)
            .await?;
    Ok(u64::try_from(highest).unwrap_or(0) + 1)
}

/// Makes sure every partition has its cursor row, and that no product was
/// assigned to a partition this deployment no longer has.
pub async fn ensure_partitions(pool: &PgPool, partitions: u32) -> Result<(), DbSetupError> {
    let partitions = i32::try_from(partitions).unwrap_or(i32::MAX);
    let highest: Option<i32> = sqlx::query_scalar("SELECT max(partition) FROM products")
        .fetch_one(pool)
        .await
        .map_err(DbSetupError::Connect)?;
    if let Some(highest) = highest.filter(|h| *h >= partitions) {
        return Err(ConfigError::new(
            "CHECKLINE_PARTITIONS",
            format!(
                "{partitions} partitions configured, but products are assigned to partition \
                 {highest}; the partition count cannot shrink"
            ),
        )
        .into());
    }
    sqlx::query(
        "INSERT INTO partition_cursors (partition) SELECT generate_series(0, $1 - 1) \
         ON CONFLICT (partition) DO NOTHING",
    )
    .bind(partitions)
    .execute(pool)
    .await
    .map_err(DbSetupError::Connect)?;
    Ok(())
}

/// Columns selected for an [`Order`], in [`OrderRow`]'s order.
pub const ORDER_COLUMNS: &str = "id, customer_id, product_id, quantity, lines, status, reason, \
     rejected_product_id, unit_price_cents, total_cents, created_at, decided_at, reserved_until";

/// [`ORDER_COLUMNS`] qualified with a table alias, for joins and
/// `UPDATE … FROM` statements.
pub fn order_columns(alias: &str) -> String {
    ORDER_COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub id: Uuid,
    pub customer_id: String,
    pub product_id: Option<Uuid>,
    pub quantity: Option<i32>,
    /// The lines of an order of several lines; NULL for one line.
    pub lines: Option<Json<Vec<OrderLine>>>,
    pub status: String,
    pub reason: Option<String>,
    pub rejected_product_id: Option<Uuid>,
    pub unit_price_cents: Option<i64>,
    pub total_cents: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub reserved_until: Option<DateTime<Utc>>,
}

impl From<OrderRow> for Order {
    fn from(row: OrderRow) -> Self {
        // A one-line order keeps its line in the v1 columns (the table's
        // orders_one_line constraint says which form a row has).
        let lines = match (row.lines, row.product_id, row.quantity) {
            (Some(Json(lines)), _, _) => lines,
            (None, Some(product_id), Some(quantity)) => vec![OrderLine {
                product_id,
                quantity,
                unit_price_cents: row.unit_price_cents,
            }],
            (None, _, _) => Vec::new(),
        };
        Order {
            id: row.id,
            customer_id: row.customer_id,
            product_id: row.product_id,
            quantity: row.quantity,
            lines,
            // The table's CHECK constraints only admit known values.
            status: OrderStatus::parse(&row.status).unwrap_or(OrderStatus::Pending),
            reason: row.reason.as_deref().and_then(RejectReason::parse),
            rejected_product_id: row.rejected_product_id,
            unit_price_cents: row.unit_price_cents,
            total_cents: row.total_cents,
            created_at: row.created_at,
            decided_at: row.decided_at,
            reserved_until: row.reserved_until,
        }
    }
}

/// The same server URL with another database name (query parameters kept).
pub fn with_database(url: &str, database: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let query_start = url.find('?').unwrap_or(url.len());
    let path_start = url[authority_start..query_start]
        .find('/')
        .map_or(query_start, |i| i + authority_start);
    format!("{}/{database}{}", &url[..path_start], &url[query_start..])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{with_database, SessionSettings};

    #[test]
    fn session_settings_become_connection_options() {
        let settings = SessionSettings {
            statement: Some(Duration::from_secs(5)),
            lock: None,
            idle_in_transaction: Some(Duration::from_micros(10)),
            keyed_statements_only: true,
        };
        assert_eq!(
            settings.options(),
            vec![
                ("statement_timeout", "5000ms".to_owned()),
                ("idle_in_transaction_session_timeout", "1ms".to_owned()),
                ("enable_seqscan", "off".to_owned()),
            ]
        );
        assert!(SessionSettings::default().options().is_empty());
    }

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://u@h:5432/checkline", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            with_database("postgres://h/db?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }
}
