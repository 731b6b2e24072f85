//! Parsing of request parts the contract is strict about: JSON bodies, the
//! Idempotency-Key header, path ids and query parameters.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use checkline_shared::domain::{parse_id, IdempotencyKey};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::ApiError;

/// Parses a JSON body after checking its media type and size.
pub fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    max_bytes: usize,
) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(max_bytes)
        } else {
            ApiError::InvalidRequest("the request body could not be read".into())
        }
    })?;
    serde_json::from_slice(&body).map_err(|err| ApiError::InvalidRequest(describe_json_error(&err)))
}

fn describe_json_error(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => format!("malformed JSON: {err}"),
        Category::Data => format!("invalid body: {err}"),
    }
}

/// The `Idempotency-Key` header: required, 1–255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, ApiError> {
    let value = headers
        .get("idempotency-key")
        .ok_or(ApiError::MissingIdempotencyKey)?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::InvalidIdempotencyKey)?;
    IdempotencyKey::parse(text).ok_or(ApiError::InvalidIdempotencyKey)
}

/// A path id.
pub fn path_id(raw: &str) -> Result<Uuid, ApiError> {
    parse_id(raw).ok_or(ApiError::InvalidId)
}

/// `limit` and `cursor` of a list call. The cursor is the last id of the
/// previous page.
pub fn page(query: &HashMap<String, String>) -> Result<(i64, Option<Uuid>), ApiError> {
    for key in query.keys() {
        if key != "limit" && key != "cursor" {
            return Err(ApiError::InvalidRequest(format!(
                "unknown query parameter {key:?}"
            )));
        }
    }
    let limit = parse_limit(query)?;
    let cursor = match query.get("cursor") {
        None => None,
        Some(raw) => Some(
            parse_id(raw).ok_or_else(|| ApiError::InvalidRequest("cursor is not valid".into()))?,
        ),
    };
    Ok((limit, cursor))
}

/// `limit` of a list call that has no other query parameter (no cursor:
/// the list is short, or reads from its start every time).
pub fn limit(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    if let Some(key) = query.keys().find(|k| *k != "limit") {
        return Err(ApiError::InvalidRequest(format!(
            "unknown query parameter {key:?}"
        )));
    }
    parse_limit(query)
}

/// `limit`: from 1 to 200; absent, 50.
fn parse_limit(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    match query.get("limit") {
        None => Ok(50),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=200).contains(l))
            .ok_or_else(|| {
                ApiError::InvalidRequest("limit must be an integer from 1 to 200".into())
            }),
    }
}

/// The page out of rows fetched with `LIMIT limit + 1` (see [`page`]): at
/// most `limit` items, and the cursor to the next page when there is one
/// (the last item's id).
pub fn split_page<T>(
    mut items: Vec<T>,
    limit: i64,
    id: impl Fn(&T) -> Uuid,
) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if items.len() <= limit {
        return (items, None);
    }
    items.truncate(limit);
    let next = items.last().map(|item| id(item).to_string());
    (items, next)
}

/// `wait` of a long poll, the only query parameter of `GET /v1/orders/{id}`:
/// seconds from 0 to `max_secs`; absent, 0.
pub fn wait(query: &HashMap<String, String>, max_secs: u64) -> Result<Duration, ApiError> {
    let mut wait = Duration::ZERO;
    for (name, value) in query {
        if name != "wait" {
            return Err(ApiError::InvalidRequest(format!(
                "unknown query parameter {name:?}"
            )));
        }
        let max = max_secs as f64;
        let secs = value
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && (0.0..=max).contains(s))
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "wait must be a number of seconds from 0 to {max}"
                ))
            })?;
        wait = Duration::from_secs_f64(secs);
    }
    Ok(wait)
}

/// The request id set (or echoed) by the request-id layer.
pub fn request_id(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-request-id").and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProblemCode;
    use axum::http::HeaderValue;

    #[test]
    fn a_page_names_the_next_only_when_there_is_more() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let (items, next) = split_page(ids.clone(), 2, |id| *id);
        assert_eq!(items, ids[..2]);
        assert_eq!(next, Some(ids[1].to_string()));
        let (items, next) = split_page(ids.clone(), 3, |id| *id);
        assert_eq!((items.len(), next), (3, None));
    }

    #[test]
    fn media_type_and_syntax() {
        let mut headers = HeaderMap::new();
        let body = || Ok(Bytes::from_static(b"{\"a\":1}"));
        let err = json_body::<serde_json::Value>(&headers, body(), 10).unwrap_err();
        assert_eq!(err.code(), ProblemCode::UnsupportedMediaType);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(json_body::<serde_json::Value>(&headers, body(), 10).is_ok());
        let err =
            json_body::<serde_json::Value>(&headers, Ok(Bytes::from_static(b"{")), 10).unwrap_err();
        assert_eq!(err.code(), ProblemCode::InvalidRequest);
    }

    #[test]
    fn keys_and_pages() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            idempotency_key(&headers).unwrap_err().code(),
            ProblemCode::MissingIdempotencyKey
        );
        headers.insert("idempotency-key", HeaderValue::from_static("has space"));
        assert_eq!(
            idempotency_key(&headers).unwrap_err().code(),
            ProblemCode::InvalidIdempotencyKey
        );
        let q = HashMap::from([("limit".to_string(), "0".to_string())]);
        assert!(page(&q).is_err());
        let q = HashMap::from([("limit".to_string(), "200".to_string())]);
        assert_eq!(page(&q).unwrap(), (200, None));
        assert_eq!(limit(&q).unwrap(), 200);
        assert_eq!(limit(&HashMap::new()).unwrap(), 50);
        let with_cursor = HashMap::from([("cursor".to_string(), Uuid::nil().to_string())]);
        assert!(page(&with_cursor).is_ok());
        for (k, v) in [
            ("limit", "0"),
            ("limit", "201"),
            ("limit", "x"),
            ("cursor", "a"),
        ] {
            let q = HashMap::from([(k.to_string(), v.to_string())]);
            assert_eq!(limit(&q).unwrap_err().code(), ProblemCode::InvalidRequest);
        }
        let q = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(
            wait(&q("wait", "1.5"), 30).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(wait(&HashMap::new(), 30).unwrap(), Duration::ZERO);
        for (k, v) in [
            ("wait", "x"),
            ("wait", "31"),
            ("wait", "NaN"),
            ("other", "1"),
        ] {
            assert_eq!(
                wait(&q(k, v), 30).unwrap_err().code(),
                ProblemCode::InvalidRequest
            );
        }
    }
}
