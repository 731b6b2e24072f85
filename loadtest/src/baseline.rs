//! The baseline: the order endpoint as most flash-sale demos write it, to
//! compare checkline against.
//!
//! An HTTP server (axum, in this process, on `127.0.0.1:0`) whose
//! `POST /orders` runs one PostgreSQL transaction per request and answers
//! `200` with the decision:
//!
//! ```sql
//! BEGIN;
//! SELECT stock, price_cents FROM baseline.products WHERE id = $1 FOR UPDATE;
//! INSERT INTO baseline.orders (id, customer_id, idempotency_key, product_id, quantity,
//!                              status, reason, unit_price_cents, total_cents)
//!   VALUES (...)   -- 'confirmed' if stock >= quantity, else 'rejected'
//!   ON CONFLICT (customer_id, idempotency_key) DO NOTHING RETURNING created_at;
//! UPDATE baseline.products SET stock = stock - $2 WHERE id = $1;   -- if confirmed
//! COMMIT;
//! ```
//!
//! The order row is inserted before the decrement so that the unique
//! constraint settles a retried key before any stock moves (a conflict rolls
//! back and answers the stored order as a replay). It does the same
//! per-request work as checkline's accept path where the two overlap: it
//! verifies the HS256 bearer token, checks the `customer` role, validates the
//! `Idempotency-Key` and parses the same JSON body.
//!
//! Its tables live in their own schema, `baseline`, of the same database,
//! created by the load test if missing; every run creates a fresh product.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::auth::is_valid_subject;
use crate::checks::{DbView, DuplicateKey, OrderRow, StockAudit};
use crate::db::sql_error;

/// Where the baseline takes orders.
pub const ORDERS_PATH: &str = "/orders";

/// The baseline's tables, created if missing (under an advisory lock, so two
/// load tests starting at once do not race on the DDL).
pub const SCHEMA_SQL: &str = "\
CREATE SCHEMA IF NOT EXISTS baseline;
CREATE TABLE IF NOT EXISTS baseline.products (
    id            uuid        PRIMARY KEY,
    sku           text        NOT NULL,
    price_cents   bigint      NOT NULL CHECK (price_cents >= 0),
    stock         bigint      NOT NULL CHECK (stock >= 0),
    initial_stock bigint      NOT NULL CHECK (initial_stock >= 0),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS baseline.orders (
    id               uuid        PRIMARY KEY,
    customer_id      text        NOT NULL,
    idempotency_key  text        NOT NULL,
    product_id       uuid        NOT NULL REFERENCES baseline.products (id),
    quantity         integer     NOT NULL CHECK (quantity > 0),
    status           text        NOT NULL CHECK (status IN ('confirmed', 'rejected')),
    reason           text,
    unit_price_cents bigint,
    total_cents      bigint,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT baseline_orders_customer_key UNIQUE (customer_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS baseline_orders_product_status
    ON baseline.orders (product_id, status);
";

/// Key of the advisory lock held while the schema is created.
const SCHEMA_LOCK: i64 = 0x6368_6b6c_6e62_6173;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_QUANTITY: i64 = 100;
const MAX_KEY_LEN: usize = 255;
const JWT_LEEWAY_SECS: u64 = 5;

const SELECT_PRODUCT: &str =
    "SELECT stock, price_cents FROM baseline.products WHERE id = $1 FOR UPDATE";
const INSERT_ORDER: &str = "INSERT INTO baseline.orders \
     (id, customer_id, idempotency_key, product_id, quantity, status, reason, \
      unit_price_cents, total_cents) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (customer_id, idempotency_key) DO NOTHING RETURNING created_at";
const DECREMENT: &str = "UPDATE baseline.products SET stock = stock - $2 WHERE id = $1";
const SELECT_BY_KEY: &str = "SELECT id, product_id, quantity, status, reason, \
     unit_price_cents, total_cents, created_at \
     FROM baseline.orders WHERE customer_id = $1 AND idempotency_key = $2";

/// The running baseline server.
pub struct BaselineServer {
    url: Url,
    pool: PgPool,
    state: Arc<AppState>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

struct AppState {
    pool: PgPool,
    key: DecodingKey,
    validation: Validation,
    /// The first database error answered as a 503, for the report.
    first_error: Mutex<Option<String>>,
}

impl BaselineServer {
    /// Creates the schema if needed, opens (and warms) a pool of `pool_size`
    /// connections, and starts serving on a free loopback port.
    pub async fn start(database_url: &str, pool_size: u32, jwt_secret: &str) -> Result<Self> {
        let options: PgConnectOptions = database_url
            .parse()
            .map_err(sql_error("--database-url is not a valid PostgreSQL URL"))?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .min_connections(pool_size)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        create_schema(&pool).await?;
        check_connection_headroom(&pool, pool_size).await?;
        // Open every connection now, so that the measured run does not pay
        // for connection set-up (checkline's API has its pool warm too).
        let warm = tokio::time::timeout(
            CONNECT_TIMEOUT,
            futures::future::try_join_all((0..pool_size).map(|_| pool.acquire())),
        )
        .await
        .map_err(|_elapsed| anyhow!("opening the baseline's {pool_size} connections timed out"))?
        .map_err(sql_error("opening the baseline's connections"))?;
        drop(warm);

        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = JWT_LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let state = Arc::new(AppState {
            pool: pool.clone(),
            key: DecodingKey::from_secret(jwt_secret.as_bytes()),
            validation,
            first_error: Mutex::new(None),
        });
        let app = Router::new()
            .route(ORDERS_PATH, post(place_order))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the baseline server to 127.0.0.1:0")?;
        let addr = listener
            .local_addr()
            .context("reading the baseline's address")?;
        let url = Url::parse(&format!("http://{addr}")).context("the baseline's URL")?;
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.await;
                })
                .await
        });
        Ok(Self {
            url,
            pool,
            state,
            shutdown,
            task,
        })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The first database error the server answered with a 503, if any.
    pub fn first_error(&self) -> Option<String> {
        self.state
            .first_error
            .lock()
            .ok()
            .and_then(|first| first.clone())
    }

    /// Inserts a fresh product with `stock` units.
    pub async fn create_product(&self, sku: &str, stock: u64, price_cents: i64) -> Result<Uuid> {
        let id = Uuid::new_v4();
        let stock = i64::try_from(stock).context("stock out of range")?;
        sqlx::query(
            "INSERT INTO baseline.products (id, sku, price_cents, stock, initial_stock) \
             VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(id)
        .bind(sku)
        .bind(price_cents)
        .bind(stock)
        .execute(&self.pool)
        .await
        .map_err(sql_error("creating the baseline product"))?;
        Ok(id)
    }

    pub async fn stock(&self, product_id: Uuid) -> Result<i64> {
        sqlx::query_scalar("SELECT stock FROM baseline.products WHERE id = $1")
            .bind(product_id)
            .fetch_one(&self.pool)
            .await
            .map_err(sql_error("reading the baseline product's stock"))
    }

    /// What the checks need to know about `product_id`, from the baseline's
    /// tables (no queue positions, no per-customer totals).
    pub async fn fetch_view(&self, product_id: Uuid) -> Result<DbView> {
        let audit = sqlx::query(
            "SELECT p.initial_stock, p.stock, c.units AS confirmed_units, \
                    p.initial_stock = p.stock + c.units AS balanced \
             FROM baseline.products p, \
                  LATERAL (SELECT COALESCE(SUM(quantity), 0)::bigint AS units \
                           FROM baseline.orders \
                           WHERE product_id = p.id AND status = 'confirmed') c \
             WHERE p.id = $1",
        )
        .bind(product_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(sql_error("auditing the baseline product's stock"))?
        .map(|row| -> Result<StockAudit, sqlx::Error> {
            Ok(StockAudit {
                initial_stock: row.try_get("initial_stock")?,
                restocked: 0,
                stock: row.try_get("stock")?,
                confirmed_units: row.try_get("confirmed_units")?,
                balanced: row.try_get("balanced")?,
            })
        })
        .transpose()
        .map_err(sql_error("decoding the baseline stock audit"))?;

        let duplicate_keys = sqlx::query(
            "SELECT customer_id, idempotency_key, count(*) AS n FROM baseline.orders \
             WHERE product_id = $1 GROUP BY customer_id, idempotency_key HAVING count(*) > 1",
        )
        .bind(product_id)
        .fetch_all(&self.pool)
        .await
        .map_err(sql_error("looking for baseline keys used twice"))?
        .into_iter()
        .map(|row| {
            Ok(DuplicateKey {
                customer_id: row.try_get("customer_id")?,
                idempotency_key: row.try_get("idempotency_key")?,
                count: row.try_get("n")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(sql_error("decoding baseline duplicate keys"))?;

        let orders = sqlx::query(
            "SELECT id, status, reason, quantity::bigint AS quantity \
             FROM baseline.orders WHERE product_id = $1",
        )
        .bind(product_id)
        .fetch_all(&self.pool)
        .await
        .map_err(sql_error("reading the baseline orders"))?
        .into_iter()
        .map(|row| {
            Ok(OrderRow {
                id: row.try_get("id")?,
                status: row.try_get("status")?,
                reason: row.try_get("reason")?,
                quantity: row.try_get("quantity")?,
                queue_sequence: None,
                queue_index: None,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(sql_error("decoding the baseline orders"))?;

        Ok(DbView {
            audit,
            duplicate_keys,
            orders,
            ..DbView::default()
        })
    }

    /// Stops serving and closes the pool.
    pub async fn stop(self) -> Result<()> {
        let _ = self.shutdown.send(());
        let served = self.task.await.context("the baseline server task failed")?;
        self.pool.close().await;
        served.context("the baseline server failed")
    }
}

/// Fails early, with the figures, when PostgreSQL cannot give the baseline
/// `pool_size` connections (a pool would only report a timeout).
async fn check_connection_headroom(pool: &PgPool, pool_size: u32) -> Result<()> {
    let row = sqlx::query(
        "SELECT current_setting('max_connections')::bigint AS max, \
                (SELECT count(*) FROM pg_stat_activity) AS used",
    )
    .fetch_one(pool)
    .await
    .map_err(sql_error("reading PostgreSQL's connection limit"))?;
    let max: i64 = row
        .try_get("max")
        .map_err(sql_error("decoding max_connections"))?;
    let used: i64 = row
        .try_get("used")
        .map_err(sql_error("decoding the connection count"))?;
    // One of the used connections is the pool's own.
    let free = max - used + 1;
    ensure!(
        i64::from(pool_size) <= free,
        "--baseline-pool {pool_size} needs {pool_size} PostgreSQL connections, but only {free} \
         of max_connections {max} are free ({used} in use); lower --baseline-pool or raise \
         max_connections"
    );
    Ok(())
}

async fn create_schema(pool: &PgPool) -> Result<()> {
    let mut tx = pool
        .begin()
        .await
        .map_err(sql_error("connecting for the baseline schema"))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(sql_error("locking for the baseline schema"))?;
    sqlx::raw_sql(SCHEMA_SQL)
        .execute(&mut *tx)
        .await
        .map_err(sql_error("creating the baseline schema"))?;
    tx.commit()
        .await
        .map_err(sql_error("committing the baseline schema"))
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize)]
struct OrderBody {
    product_id: Uuid,
    quantity: i64,
}

/// The answer: the order with its decision (the fields of checkline's Order).
#[derive(Serialize)]
struct OrderJson<'a> {
    id: Uuid,
    customer_id: &'a str,
    product_id: Uuid,
    quantity: i64,
    status: &'a str,
    reason: Option<&'a str>,
    unit_price_cents: Option<i64>,
    total_cents: Option<i64>,
    created_at: DateTime<Utc>,
    decided_at: DateTime<Utc>,
}

/// The decision for `quantity` units out of `stock`, at `price_cents` each:
/// `(status, reason, unit price, total)`.
fn decide(
    stock: i64,
    quantity: i64,
    price_cents: i64,
) -> (&'static str, Option<&'static str>, Option<i64>, Option<i64>) {
    if stock >= quantity {
        (
            "confirmed",
            None,
            Some(price_cents),
            Some(price_cents.saturating_mul(quantity)),
        )
    } else if stock == 0 {
        ("rejected", Some("sold_out"), None, None)
    } else {
        ("rejected", Some("insufficient_stock"), None, None)
    }
}

async fn place_order(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&state, &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn handle(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Response, Problem> {
    let customer = authenticate(state, headers)?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("application/json"));
    if !is_json {
        return Err(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send Content-Type: application/json",
        ));
    }
    let key = headers
        .get("idempotency-key")
        .ok_or_else(|| {
            problem(
                StatusCode::BAD_REQUEST,
                "missing_idempotency_key",
                "the Idempotency-Key header is required",
            )
        })?
        .to_str()
        .ok()
        .filter(|key| {
            (1..=MAX_KEY_LEN).contains(&key.len())
                && key.bytes().all(|byte| (0x21..=0x7e).contains(&byte))
        })
        .ok_or_else(|| {
            problem(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "the Idempotency-Key must be 1-255 visible ASCII characters",
            )
        })?;
    let order: OrderBody = serde_json::from_slice(body).map_err(|_| {
        problem(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the body must be {\"product_id\": uuid, \"quantity\": n}",
        )
    })?;
    if !(1..=MAX_QUANTITY).contains(&order.quantity) {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "quantity must be between 1 and 100",
        ));
    }
    match decide_in_transaction(state, &customer, key, &order).await {
        Ok(response) => Ok(response),
        Err(err) => Err(database_problem(state, &err)),
    }
}

/// Verifies the bearer token (HS256, `exp`, `sub`) and the `customer` role;
/// returns the customer id.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<String, Problem> {
    let unauthorized = || {
        problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let claims = jsonwebtoken::decode::<Claims>(token.trim(), &state.key, &state.validation)
        .map_err(|_| unauthorized())?
        .claims;
    if !is_valid_subject(&claims.sub) {
        return Err(unauthorized());
    }
    if !claims.roles.iter().any(|role| role == "customer") {
        return Err(problem(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the customer role is required",
        ));
    }
    Ok(claims.sub)
}

/// The row-locking transaction (see the module documentation).
async fn decide_in_transaction(
    state: &AppState,
    customer: &str,
    key: &str,
    order: &OrderBody,
) -> Result<Response, sqlx::Error> {
    let mut tx = state.pool.begin().await?;
    let Some(product) = sqlx::query(SELECT_PRODUCT)
        .bind(order.product_id)
        .fetch_optional(&mut *tx)
        .await?
    else {
        tx.rollback().await?;
        return Ok(problem(
            StatusCode::NOT_FOUND,
            "product_not_found",
            "no such product",
        )
        .into_response());
    };
    let stock: i64 = product.try_get("stock")?;
    let price_cents: i64 = product.try_get("price_cents")?;
    let (status, reason, unit_price, total) = decide(stock, order.quantity, price_cents);
    let id = Uuid::new_v4();
    let quantity = i32::try_from(order.quantity).unwrap_or(i32::MAX);
    let created_at: Option<DateTime<Utc>> = sqlx::query_scalar(INSERT_ORDER)
        .bind(id)
        .bind(customer)
        .bind(key)
        .bind(order.product_id)
        .bind(quantity)
        .bind(status)
        .bind(reason)
        .bind(unit_price)
        .bind(total)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(created_at) = created_at else {
        // The key was used before: nothing of this attempt stays.
        tx.rollback().await?;
        return replay(state, customer, key, order).await;
    };
    if status == "confirmed" {
        sqlx::query(DECREMENT)
            .bind(order.product_id)
            .bind(order.quantity)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(order_response(
        &OrderJson {
            id,
            customer_id: customer,
            product_id: order.product_id,
            quantity: order.quantity,
            status,
            reason,
            unit_price_cents: unit_price,
            total_cents: total,
            created_at,
            decided_at: created_at,
        },
        false,
    ))
}

/// A retried key: the stored order if the request is the same, else 422.
async fn replay(
    state: &AppState,
    customer: &str,
    key: &str,
    order: &OrderBody,
) -> Result<Response, sqlx::Error> {
    let row = sqlx::query(SELECT_BY_KEY)
        .bind(customer)
        .bind(key)
        .fetch_one(&state.pool)
        .await?;
    let product_id: Uuid = row.try_get("product_id")?;
    let quantity: i32 = row.try_get("quantity")?;
    if product_id != order.product_id || i64::from(quantity) != order.quantity {
        return Ok(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with another request",
        )
        .into_response());
    }
    let status: String = row.try_get("status")?;
    let reason: Option<String> = row.try_get("reason")?;
    let created_at: DateTime<Utc> = row.try_get("created_at")?;
    Ok(order_response(
        &OrderJson {
            id: row.try_get("id")?,
            customer_id: customer,
            product_id,
            quantity: i64::from(quantity),
            status: &status,
            reason: reason.as_deref(),
            unit_price_cents: row.try_get("unit_price_cents")?,
            total_cents: row.try_get("total_cents")?,
            created_at,
            decided_at: created_at,
        },
        true,
    ))
}

fn order_response(order: &OrderJson<'_>, replayed: bool) -> Response {
    let body = match serde_json::to_vec(order) {
        Ok(body) => body,
        Err(_) => {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "could not encode the order",
            )
            .into_response()
        }
    };
    let mut response = (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// A database failure: `503` with `Retry-After: 1` (the load generator
/// retries it with the same key), `overloaded` when no connection was free.
fn database_problem(state: &AppState, err: &sqlx::Error) -> Problem {
    if let Ok(mut first) = state.first_error.lock() {
        if first.is_none() {
            *first = Some(err.to_string());
        }
    }
    let (code, detail) = match err {
        sqlx::Error::PoolTimedOut => ("overloaded", "no database connection free"),
        _ => ("unavailable", "the database failed; retry"),
    };
    Problem {
        retry_after: true,
        ..problem(StatusCode::SERVICE_UNAVAILABLE, code, detail)
    }
}

/// An error answer, kept small until it is turned into a problem document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Problem {
    status: StatusCode,
    code: &'static str,
    detail: &'static str,
    /// Send `Retry-After: 1`.
    retry_after: bool,
}

fn problem(status: StatusCode, code: &'static str, detail: &'static str) -> Problem {
    Problem {
        status,
        code,
        detail,
        retry_after: false,
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            body.to_string(),
        )
            .into_response();
        if self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_follow_the_stock() {
        assert_eq!(
            decide(5, 2, 1000),
            ("confirmed", None, Some(1000), Some(2000))
        );
        assert_eq!(decide(2, 2, 1000).0, "confirmed");
        assert_eq!(
            decide(1, 2, 1000),
            ("rejected", Some("insufficient_stock"), None, None)
        );
        assert_eq!(
            decide(0, 1, 1000),
            ("rejected", Some("sold_out"), None, None)
        );
    }

    #[test]
    fn schema_is_namespaced() {
        // Every table and index the baseline creates lives in its own schema.
        for line in SCHEMA_SQL.lines().filter(|line| line.starts_with("CREATE")) {
            assert!(line.contains("baseline"), "{line}");
        }
        for sql in [SELECT_PRODUCT, INSERT_ORDER, DECREMENT, SELECT_BY_KEY] {
            assert!(sql.contains("baseline."), "{sql}");
        }
    }

    fn state(secret: &str) -> AppState {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = JWT_LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        AppState {
            pool: PgPoolOptions::new().connect_lazy_with(
                "postgres://u@127.0.0.1:1/db"
                    .parse::<PgConnectOptions>()
                    .unwrap(),
            ),
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            first_error: Mutex::new(None),
        }
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers
    }

    #[tokio::test]
    async fn tokens_are_verified_like_the_api_does() {
        let state = state("secret");
        let minter = crate::auth::TokenMinter::new("secret");
        let customer = minter.customer("buyer-x-1").unwrap();
        assert_eq!(
            authenticate(&state, &bearer(&customer)).unwrap(),
            "buyer-x-1"
        );
        let admin = minter.admin().unwrap();
        assert_eq!(
            authenticate(&state, &bearer(&admin)).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        let forged = crate::auth::TokenMinter::new("other")
            .customer("buyer-x-1")
            .unwrap();
        assert_eq!(
            authenticate(&state, &bearer(&forged)).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            authenticate(&state, &HeaderMap::new()).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn requests_are_validated_before_the_database() {
        let state = state("secret");
        let token = crate::auth::TokenMinter::new("secret")
            .customer("buyer-x-1")
            .unwrap();
        let body = br#"{"product_id":"5e0c3f8a-1d2b-4c6e-8f9a-0b1c2d3e4f50","quantity":1}"#;
        let mut headers = bearer(&token);
        let status = |headers: &HeaderMap, body: &[u8]| {
            let state = &state;
            let headers = headers.clone();
            let body = body.to_vec();
            async move { handle(state, &headers, &body).await.unwrap_err().status }
        };
        assert_eq!(
            status(&headers, body).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert_eq!(status(&headers, body).await, StatusCode::BAD_REQUEST);
        headers.insert("idempotency-key", HeaderValue::from_static("k-1"));
        assert_eq!(
            status(&headers, br#"{"product_id":"x","quantity":1}"#).await,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(
                &headers,
                br#"{"product_id":"5e0c3f8a-1d2b-4c6e-8f9a-0b1c2d3e4f50","quantity":101}"#
            )
            .await,
            StatusCode::BAD_REQUEST
        );
    }
}
