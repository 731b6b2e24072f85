//! Every API error, and the one place that turns it into a status and an
//! RFC 9457 problem document with the contract's `code`.
//!
//! The codes are one table ([`ProblemCode`]: code, string, status), and
//! [`ApiError::code`] one exhaustive match onto it, so an error without a
//! code does not compile and a code cannot have two spellings or statuses.

use std::sync::OnceLock;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Declares [`ProblemCode`] from one list: each code once, with the string
/// clients switch on (also its serde name, hence the OpenAPI schema's
/// values) and the status every error with that code answers.
macro_rules! problem_codes {
    ($($variant:ident = $code:tt => $status:ident,)+) => {
        /// Stable problem codes clients switch on (`ApiError::code`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
        #[schema(
            description = "Stable snake_case identifier that clients switch on. `not_found` and `method_not_allowed` answer unknown routes and unsupported methods; `internal` is any unexpected server error (never leaking internals)."
        )]
        pub enum ProblemCode {
            $(
                #[serde(rename = $code)]
                $variant,
            )+
        }

        impl ProblemCode {
            /// Every code, in the contract's order.
            pub const ALL: &'static [ProblemCode] = &[$(Self::$variant),+];

            /// The code as the API writes it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $code,)+
                }
            }

            /// The status of every problem with this code.
            pub fn status(self) -> StatusCode {
                match self {
                    $(Self::$variant => StatusCode::$status,)+
                }
            }
        }
    };
}

problem_codes! {
    InvalidRequest = "invalid_request" => BAD_REQUEST,
    InvalidId = "invalid_id" => BAD_REQUEST,
    MissingIdempotencyKey = "missing_idempotency_key" => BAD_REQUEST,
    InvalidIdempotencyKey = "invalid_idempotency_key" => BAD_REQUEST,
    IdempotencyKeyReused = "idempotency_key_reused" => UNPROCESSABLE_ENTITY,
    Unauthorized = "unauthorized" => UNAUTHORIZED,
    Forbidden = "forbidden" => FORBIDDEN,
    ProductNotFound = "product_not_found" => NOT_FOUND,
    OrderNotFound = "order_not_found" => NOT_FOUND,
    DeadLetterNotFound = "dead_letter_not_found" => NOT_FOUND,
    SkuTaken = "sku_taken" => CONFLICT,
    SoldOut = "sold_out" => CONFLICT,
    OrderPending = "order_pending" => CONFLICT,
    ReservationExpired = "reservation_expired" => CONFLICT,
    OrderCancelled = "order_cancelled" => CONFLICT,
    OrderRejected = "order_rejected" => CONFLICT,
    OrderConfirmed = "order_confirmed" => CONFLICT,
    PayloadTooLarge = "payload_too_large" => PAYLOAD_TOO_LARGE,
    UnsupportedMediaType = "unsupported_media_type" => UNSUPPORTED_MEDIA_TYPE,
    HeadersTooLarge = "headers_too_large" => REQUEST_HEADER_FIELDS_TOO_LARGE,
    RateLimited = "rate_limited" => TOO_MANY_REQUESTS,
    Overloaded = "overloaded" => SERVICE_UNAVAILABLE,
    Unavailable = "unavailable" => SERVICE_UNAVAILABLE,
    NotFound = "not_found" => NOT_FOUND,
    MethodNotAllowed = "method_not_allowed" => METHOD_NOT_ALLOWED,
    Internal = "internal" => INTERNAL_SERVER_ERROR,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the id is not a UUID in canonical form")]
    InvalidId,
    #[error("the Idempotency-Key header is required")]
    MissingIdempotencyKey,
    #[error("the Idempotency-Key header must be 1-255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("no such product")]
    ProductNotFound,
    #[error("no such order")]
    OrderNotFound,
    /// No dead letter at this sequence: never stored, or replayed already.
    #[error("no dead letter at this sequence (never stored, or replayed already)")]
    DeadLetterNotFound,
    #[error("a product with this sku exists")]
    SkuTaken,
    #[error("the product is sold out")]
    SoldOut,
    /// A line of an order of several lines names a product known to be
    /// sold out; the problem document carries its `product_id`.
    #[error("the product {0} is sold out")]
    SoldOutLine(uuid::Uuid),
    #[error("the order is not decided yet; retry shortly")]
    OrderPending,
    #[error("the reservation has expired and its units went back to stock")]
    ReservationExpired,
    #[error("the order was cancelled")]
    OrderCancelled,
    #[error("the order was rejected")]
    OrderRejected,
    #[error("the order is confirmed and can no longer be cancelled")]
    OrderConfirmed,
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    #[error("no such resource")]
    NotFound,
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    /// A dependency is down; the request may be retried.
    #[error("{0}")]
    Unavailable(String),
    /// Too much work queued already; the request may be retried.
    #[error("{0}")]
    Overloaded(String),
    /// A rate limit refused the request; retry after this many seconds.
    #[error("too many requests; retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The request line and headers are larger than the configured limit.
    #[error("the request headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// The request took longer than the server allows; it may be retried
    /// (orders with the same Idempotency-Key).
    #[error("the request was not answered within {0} ms; retry later")]
    Timeout(u128),
    /// Anything else. The cause is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
    code: ProblemCode,
    /// The product a `sold_out` of an order of several lines is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    product_id: Option<uuid::Uuid>,
}

impl ApiError {
    /// The contract's stable problem code: one arm per variant, so a variant
    /// without a code does not compile.
    pub fn code(&self) -> ProblemCode {
        match self {
            Self::InvalidRequest(_) => ProblemCode::InvalidRequest,
            Self::InvalidId => ProblemCode::InvalidId,
            Self::MissingIdempotencyKey => ProblemCode::MissingIdempotencyKey,
            Self::InvalidIdempotencyKey => ProblemCode::InvalidIdempotencyKey,
            Self::IdempotencyKeyReused => ProblemCode::IdempotencyKeyReused,
            Self::Unauthorized(_) => ProblemCode::Unauthorized,
            Self::Forbidden(_) => ProblemCode::Forbidden,
            Self::ProductNotFound => ProblemCode::ProductNotFound,
            Self::OrderNotFound => ProblemCode::OrderNotFound,
            Self::DeadLetterNotFound => ProblemCode::DeadLetterNotFound,
            Self::SkuTaken => ProblemCode::SkuTaken,
            Self::SoldOut | Self::SoldOutLine(_) => ProblemCode::SoldOut,
            Self::OrderPending => ProblemCode::OrderPending,
            Self::ReservationExpired => ProblemCode::ReservationExpired,
            Self::OrderCancelled => ProblemCode::OrderCancelled,
            Self::OrderRejected => ProblemCode::OrderRejected,
            Self::OrderConfirmed => ProblemCode::OrderConfirmed,
            Self::PayloadTooLarge(_) => ProblemCode::PayloadTooLarge,
            Self::UnsupportedMediaType => ProblemCode::UnsupportedMediaType,
            Self::NotFound => ProblemCode::NotFound,
            Self::MethodNotAllowed => ProblemCode::MethodNotAllowed,
            Self::Unavailable(_) | Self::Timeout(_) => ProblemCode::Unavailable,
            Self::Overloaded(_) => ProblemCode::Overloaded,
            Self::RateLimited { .. } => ProblemCode::RateLimited,
            Self::HeadersTooLarge(_) => ProblemCode::HeadersTooLarge,
            Self::Internal(_) => ProblemCode::Internal,
        }
    }

    /// The status, which the code decides.
    pub fn status(&self) -> StatusCode {
        self.code().status()
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        Self::Internal(err.to_string())
    }

    /// The problem document, serialized.
    fn problem_json(&self) -> Vec<u8> {
        let status = self.status();
        let problem = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
            code: self.code(),
            product_id: match self {
                Self::SoldOutLine(id) => Some(*id),
                _ => None,
            },
        };
        serde_json::to_vec(&problem).unwrap_or_default()
    }

    /// The problem document of an error whose every part is fixed (no
    /// detail that varies), serialized once per process: a storm of
    /// `409 sold_out` answers the same bytes thousands of times a second.
    fn fixed_body(&self) -> Option<&'static [u8]> {
        static BODIES: [OnceLock<Vec<u8>>; ProblemCode::ALL.len()] =
            [const { OnceLock::new() }; ProblemCode::ALL.len()];
        match self {
            Self::InvalidId
            | Self::MissingIdempotencyKey
            | Self::InvalidIdempotencyKey
            | Self::IdempotencyKeyReused
            | Self::ProductNotFound
            | Self::OrderNotFound
            | Self::DeadLetterNotFound
            | Self::SkuTaken
            | Self::SoldOut
            | Self::OrderPending
            | Self::ReservationExpired
            | Self::OrderCancelled
            | Self::OrderRejected
            | Self::OrderConfirmed
            | Self::UnsupportedMediaType
            | Self::NotFound
            | Self::MethodNotAllowed => {
                // Each of these variants is the only one with its code.
                let index = ProblemCode::ALL.iter().position(|c| *c == self.code())?;
                Some(BODIES[index].get_or_init(|| self.problem_json()).as_slice())
            }
            _ => None,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if checkline_shared::db::is_transient(&err) {
            tracing::warn!(error = %err, "database unavailable");
            Self::Unavailable("the database is unavailable; retry later".into())
        } else {
            Self::Internal(err.to_string())
        }
    }
}

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Internal(cause) = &self {
            tracing::error!(cause = %cause, "internal error");
        }
        let body = match self.fixed_body() {
            Some(body) => Body::from(Bytes::from_static(body)),
            None => Body::from(self.problem_json()),
        };
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            Self::Unavailable(_) | Self::Overloaded(_) | Self::Timeout(_) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
            }
            Self::RateLimited { retry_after_secs } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(1)),
                );
            }
            Self::HeadersTooLarge(_) => {
                // The connection may hold more of the oversized head.
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak() {
        let response = ApiError::Internal("SELECT secret FROM x".into()).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(ApiError::Internal("x".into()).to_string(), "internal error");
    }

    #[test]
    fn edge_errors_have_their_codes_and_headers() {
        let response = ApiError::RateLimited {
            retry_after_secs: 3,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        assert_eq!(
            ApiError::RateLimited {
                retry_after_secs: 0
            }
            .into_response()
            .headers()[header::RETRY_AFTER],
            "1"
        );
        assert_eq!(
            ApiError::RateLimited {
                retry_after_secs: 1
            }
            .code(),
            ProblemCode::RateLimited
        );
        let response = ApiError::HeadersTooLarge(8192).into_response();
        assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert_eq!(
            ApiError::HeadersTooLarge(1).code(),
            ProblemCode::HeadersTooLarge
        );
        let response = ApiError::Timeout(100).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn codes_are_written_as_their_serde_names() {
        for code in ProblemCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn fixed_bodies_are_the_problem_documents() {
        let all = [
            ApiError::InvalidRequest("x".into()),
            ApiError::InvalidId,
            ApiError::MissingIdempotencyKey,
            ApiError::InvalidIdempotencyKey,
            ApiError::IdempotencyKeyReused,
            ApiError::Unauthorized("u"),
            ApiError::Forbidden("f"),
            ApiError::ProductNotFound,
            ApiError::OrderNotFound,
            ApiError::DeadLetterNotFound,
            ApiError::SkuTaken,
            ApiError::SoldOut,
            ApiError::SoldOutLine(uuid::Uuid::nil()),
            ApiError::OrderPending,
            ApiError::ReservationExpired,
            ApiError::OrderCancelled,
            ApiError::OrderRejected,
            ApiError::OrderConfirmed,
            ApiError::PayloadTooLarge(5),
            ApiError::UnsupportedMediaType,
            ApiError::NotFound,
            ApiError::MethodNotAllowed,
            ApiError::Unavailable("u".into()),
            ApiError::Overloaded("o".into()),
            ApiError::RateLimited {
                retry_after_secs: 1,
            },
            ApiError::HeadersTooLarge(1),
            ApiError::Timeout(1),
            ApiError::Internal("i".into()),
        ];
        let mut fixed = 0;
        for err in &all {
            if let Some(body) = err.fixed_body() {
                fixed += 1;
                // Twice: the second answer is the stored one.
                assert_eq!(body, err.problem_json().as_slice(), "{err:?}");
                assert_eq!(err.fixed_body(), Some(body), "{err:?}");
            }
        }
        assert_eq!(fixed, 17);
        let line: serde_json::Value =
            serde_json::from_slice(&ApiError::SoldOutLine(uuid::Uuid::nil()).problem_json())
                .unwrap();
        assert_eq!(line["code"], "sold_out");
        assert_eq!(line["product_id"], uuid::Uuid::nil().to_string());
        let json: serde_json::Value =
            serde_json::from_slice(ApiError::SoldOut.fixed_body().unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "about:blank", "title": "Conflict", "status": 409,
                "detail": "the product is sold out", "code": "sold_out"})
        );
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let response = ApiError::Unavailable("down".into()).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }
}
