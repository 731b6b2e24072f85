//! The baseline's request handling: `POST /orders` verifies the token,
//! validates the request like checkline's API does, and decides the order in
//! one row-locking transaction (see the [module documentation](super)).

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::auth::is_valid_subject;
use crate::client::OrderStatus;

/// Where the baseline takes orders.
pub const ORDERS_PATH: &str = "/orders";

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

/// What every request needs, and what the server reports back.
pub(super) struct AppState {
    pool: PgPool,
    key: DecodingKey,
    validation: Validation,
    /// The first database error answered as a 503, for the report.
    first_error: Mutex<Option<String>>,
}

impl AppState {
    /// Tokens are verified like the API does: HS256 with `secret`, `exp`
    /// and `sub` required.
    pub(super) fn new(pool: PgPool, jwt_secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = JWT_LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            pool,
            key: DecodingKey::from_secret(jwt_secret.as_bytes()),
            validation,
            first_error: Mutex::new(None),
        }
    }

    /// The first database error answered with a 503, if any.
    pub(super) fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|first| first.clone())
    }
}

/// The baseline's routes.
pub(super) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(ORDERS_PATH, post(place_order))
        .with_state(state)
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
) -> (OrderStatus, Option<&'static str>, Option<i64>, Option<i64>) {
    if stock >= quantity {
        (
            OrderStatus::Confirmed,
            None,
            Some(price_cents),
            Some(price_cents.saturating_mul(quantity)),
        )
    } else if stock == 0 {
        (OrderStatus::Rejected, Some("sold_out"), None, None)
    } else {
        (
            OrderStatus::Rejected,
            Some("insufficient_stock"),
            None,
            None,
        )
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
        .bind(status.as_str())
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
    if status == OrderStatus::Confirmed {
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
            status: status.as_str(),
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
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

    #[test]
    fn decisions_follow_the_stock() {
        assert_eq!(
            decide(5, 2, 1000),
            (OrderStatus::Confirmed, None, Some(1000), Some(2000))
        );
        assert_eq!(decide(2, 2, 1000).0, OrderStatus::Confirmed);
        assert_eq!(
            decide(1, 2, 1000),
            (
                OrderStatus::Rejected,
                Some("insufficient_stock"),
                None,
                None
            )
        );
        assert_eq!(
            decide(0, 1, 1000),
            (OrderStatus::Rejected, Some("sold_out"), None, None)
        );
    }

    #[test]
    fn statements_stay_in_the_baseline_schema() {
        for sql in [SELECT_PRODUCT, INSERT_ORDER, DECREMENT, SELECT_BY_KEY] {
            assert!(sql.contains("baseline."), "{sql}");
        }
    }

    fn state(secret: &str) -> AppState {
        let pool = PgPoolOptions::new().connect_lazy_with(
            "postgres://u@127.0.0.1:1/db"
                .parse::<PgConnectOptions>()
                .unwrap(),
        );
        AppState::new(pool, secret)
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
