//! The request-level limits every request passes before a handler: header
//! size (431), the per-address rate limit (429), a per-request time limit
//! (503), and the cap on open event streams (503 `overloaded`,
//! `crate::streams`); and, for authenticated routes, the caller (401)
//! and its per-subject rate limit.
//!
//! Connection-level limits (connection cap, header read timeout, the hard
//! header ceiling) are in `crate::server`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{
    ConnectInfo, FromRequestParts, MatchedPath, Query, RawPathParams, Request, State,
};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::RequestExt;
use futures::StreamExt;

use crate::auth::{bearer_token, Caller};
use crate::config::ApiConfig;
use crate::error::ApiError;
use crate::ratelimit::{client_addr, RequestFingerprint};
use crate::state::AppState;

/// Bytes of a request's head as it came on the wire, near enough: the
/// request line and every header line.
pub fn head_size(method: &Method, uri: &Uri, headers: &HeaderMap) -> usize {
    let line = method.as_str().len() + uri_len(uri) + " HTTP/1.1\r\n".len() + 1;
    headers.iter().fold(line, |total, (name, value)| {
        total + name.as_str().len() + value.len() + 4
    }) + 2
}

/// The length of `uri` as text, without writing it out.
fn uri_len(uri: &Uri) -> usize {
    struct Count(usize);
    impl std::fmt::Write for Count {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 += s.len();
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = std::fmt::Write::write_fmt(&mut count, format_args!("{uri}"));
    count.0
}

/// Refuses oversized heads (`431 headers_too_large`), then charges the
/// client address's rate limit (`429 rate_limited`).
pub async fn admit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let max = state.config.edge.header_max_bytes;
    if head_size(request.method(), request.uri(), request.headers()) > max {
        return ApiError::HeadersTooLarge(max).into_response();
    }
    let peer = peer_addr(&request);
    if let Err(err) = state.limiter.check_addr(peer, request.headers()).await {
        return err.into_response();
    }
    next.run(request).await
}

fn peer_addr(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
}

/// How long a request on `route` may take: the base limit, plus the wait a
/// long poll asked for (within its own bound) or a restock's bounded wait.
pub fn time_budget(config: &ApiConfig, route: &str, uri: &Uri) -> Duration {
    let base = config.edge.request_timeout;
    match route {
        "/v1/orders/{id}" => {
            let wait = Query::<HashMap<String, String>>::try_from_uri(uri)
                .ok()
                .and_then(|q| q.0.get("wait").and_then(|w| w.parse::<f64>().ok()))
                .filter(|w| w.is_finite() && *w > 0.0)
                .map_or(0.0, |w| w.min(config.wait_max_secs as f64));
            base + Duration::from_secs_f64(wait)
        }
        "/v1/products/{id}/restock" => base + config.restock_wait,
        _ => base,
    }
}

/// Answers a rejection by one of axum's own extractors (plain text: a path
/// parameter that is not UTF-8 once decoded, a query string or body the
/// extractor cannot read) with the contract's problem document instead.
/// The checkline errors are problem documents already and pass unchanged,
/// as does every success. `path_decodes`: whether the route's path
/// parameters decoded, so that a refused one answers `invalid_id`.
pub fn as_problem(response: Response, path_decodes: bool, body_max: usize) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !status.is_client_error() || is_problem {
        return response;
    }
    let error = match status {
        // Every path parameter of the API is an id.
        StatusCode::BAD_REQUEST if !path_decodes => ApiError::InvalidId,
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            ApiError::InvalidRequest("the request could not be read".into())
        }
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(body_max),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        StatusCode::NOT_FOUND => ApiError::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        _ => {
            tracing::warn!(%status, "a rejection without a problem code");
            return response;
        }
    };
    error.into_response()
}

/// Whether every path parameter of the matched route decodes (`%FF` does
/// not), read the way axum's `Path` reads them.
pub async fn path_decodes(request: &mut Request) -> bool {
    request.extract_parts::<RawPathParams>().await.is_ok()
}

/// Writes whose Idempotency-Key makes a retry pass the orders budget
/// uncharged, when it is the same request (`ratelimit::RequestFingerprint`).
const IDEMPOTENT_WRITES: [&str; 2] = ["/v1/orders", "/v1/products/{id}/restock"];

/// Reads the body of an idempotent write (at most `max` bytes, as the
/// handler would) and records its fingerprint for the per-subject rate
/// limit, which is charged before the handler reads the body.
async fn fingerprint(request: Request, route: &str, id: Option<&str>, max: usize) -> Request {
    let (mut parts, body) = request.into_parts();
    let mut stream = body.into_data_stream();
    let mut chunks = Vec::new();
    let mut size = 0;
    let mut failed = None;
    let complete = loop {
        if size > max {
            break false;
        }
        match stream.next().await {
            Some(Ok(chunk)) => {
                size += chunk.len();
                chunks.push(chunk);
            }
            Some(Err(err)) => {
                failed = Some(err);
                break false;
            }
            None => break true,
        }
    };
    if !complete {
        // Too large or unreadable: the handler gets the same body (what was
        // read, then the rest or the error) and refuses it as it would have.
        let read = chunks.into_iter().map(Ok).chain(failed.map(Err));
        let body = Body::from_stream(futures::stream::iter(read).chain(stream));
        return Request::from_parts(parts, body);
    }
    let body = chunks.concat();
    if let Some(fingerprint) = RequestFingerprint::of(route, id, &body) {
        parts.extensions.insert(fingerprint);
    }
    Request::from_parts(parts, Body::from(body))
}

/// Per matched route: the time limit, and for event streams a slot that is
/// held for as long as the stream is open; the fingerprint of an idempotent
/// write for the rate limit; extractor rejections as problem documents.
pub async fn bound(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let slot = if route.ends_with("/events") {
        let addr = client_addr(
            peer_addr(&request),
            request.headers(),
            &state.config.rate.trusted_proxies,
        );
        match state.streams.open(addr) {
            Some(slot) => Some(slot),
            None => {
                state.metrics.streams_refused.inc();
                return ApiError::Overloaded(
                    "too many open event streams; retry later or poll with ?wait=".into(),
                )
                .into_response();
            }
        }
    } else {
        None
    };
    let budget = time_budget(&state.config, &route, request.uri());
    let params = request.extract_parts::<RawPathParams>().await;
    let path_decodes = params.is_ok();
    let id = params
        .as_ref()
        .ok()
        .and_then(|p| p.iter().find(|(name, _)| *name == "id"))
        .map(|(_, value)| value.to_owned());
    // Only the per-subject rate limit uses the fingerprint: with limits off,
    // the body is left to the handler alone.
    let write = state.limiter.enabled()
        && request.method() == Method::POST
        && IDEMPOTENT_WRITES.contains(&route.as_str())
        && request.headers().contains_key("idempotency-key");
    let body_max = state.config.body_max_bytes;
    let run = async {
        if write {
            request = fingerprint(request, &route, id.as_deref(), body_max).await;
        }
        next.run(request).await
    };
    let response = match tokio::time::timeout(budget, run).await {
        Ok(response) => response,
        Err(_) => {
            state.metrics.request_timeouts.inc();
            tracing::warn!(
                route,
                budget_ms = budget.as_millis() as u64,
                "request timed out"
            );
            return ApiError::Timeout(budget.as_millis()).into_response();
        }
    };
    let response = as_problem(response, path_decodes, body_max);
    match slot {
        // The slot lives as long as the stream's body: dropped when the
        // stream ends or the client goes away.
        Some(slot) if response.status().is_success() => {
            let (parts, body) = response.into_parts();
            let stream = body.into_data_stream().map(move |chunk| {
                let _held = &slot;
                chunk
            });
            Response::from_parts(parts, Body::from_stream(stream))
        }
        _ => response,
    }
}

/// The caller of an authenticated route: its bearer token verified
/// (`crate::auth`), then its per-subject rate limit charged, so that every
/// authenticated route is covered (`crate::ratelimit`).
impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::Unauthorized(
                "an Authorization: Bearer token is required",
            ))?;
        let token = bearer_token(value.as_bytes()).ok_or(ApiError::Unauthorized(
            "an Authorization: Bearer token is required",
        ))?;
        let caller = state.verifier.verify(token)?;
        state
            .limiter
            .check_subject(
                &caller.subject,
                &parts.method,
                &parts.headers,
                parts.extensions.get::<RequestFingerprint>(),
            )
            .await?;
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn head_size_counts_line_and_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", "b".repeat(100).parse().unwrap());
        let size = head_size(&Method::GET, &"/v1/products".parse().unwrap(), &headers);
        assert!((100 + 3 + 12..200).contains(&size), "{size}");
    }

    #[test]
    fn uri_len_is_the_length_of_the_uri_as_text() {
        for uri in [
            "/",
            "/v1/orders?wait=1.5",
            "http://example.com:8080/v1/x?y=%FF",
            "*",
        ] {
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(uri_len(&uri), uri.to_string().len());
        }
    }

    proptest! {
        #[test]
        fn time_budget_is_bounded(query in "\\PC{0,64}") {
            let env = checkline_shared::config::Env::from_pairs([(
                "CHECKLINE_JWT_SECRET",
                "0123456789abcdef0123456789abcdef",
            )]);
            let config = ApiConfig::from_env(&env).unwrap();
            if let Ok(uri) = format!("/v1/orders/x?{query}").parse::<Uri>() {
                let budget = time_budget(&config, "/v1/orders/{id}", &uri);
                prop_assert!(budget >= config.edge.request_timeout);
                prop_assert!(
                    budget <= config.edge.request_timeout
                        + Duration::from_secs(config.wait_max_secs)
                );
            }
        }
    }
}
