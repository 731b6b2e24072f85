//! Every API error, and the one place that turns it into a status and an
//! RFC 9457 problem document with the contract's `code`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

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
    #[error("a product with this sku exists")]
    SkuTaken,
    #[error("the product is sold out")]
    SoldOut,
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
    code: &'a str,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_)
            | Self::InvalidId
            | Self::MissingIdempotencyKey
            | Self::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::ProductNotFound | Self::OrderNotFound | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::SkuTaken | Self::SoldOut => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) | Self::Overloaded(_) | Self::Timeout(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The contract's stable problem code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidId => "invalid_id",
            Self::MissingIdempotencyKey => "missing_idempotency_key",
            Self::InvalidIdempotencyKey => "invalid_idempotency_key",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::ProductNotFound => "product_not_found",
            Self::OrderNotFound => "order_not_found",
            Self::SkuTaken => "sku_taken",
            Self::SoldOut => "sold_out",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unavailable(_) | Self::Timeout(_) => "unavailable",
            Self::Overloaded(_) => "overloaded",
            Self::RateLimited { .. } => "rate_limited",
            Self::HeadersTooLarge(_) => "headers_too_large",
            Self::Internal(_) => "internal",
        }
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        Self::Internal(err.to_string())
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
        let problem = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
            code: self.code(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
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
            "rate_limited"
        );
        let response = ApiError::HeadersTooLarge(8192).into_response();
        assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        assert_eq!(ApiError::HeadersTooLarge(1).code(), "headers_too_large");
        let response = ApiError::Timeout(100).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let response = ApiError::Unavailable("down".into()).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }
}
