//! Everything the API parses from a request, behind one function that takes
//! arbitrary bytes: the `cargo fuzz` target (`fuzz/`) and the bounded
//! stable-Rust driver in the test suite (`api/tests/fuzz_parsing.rs`) both
//! call [`parse_request`]. It must never panic, and what it accepts must
//! hold the invariants asserted below.
//!
//! The input is read as a rough HTTP request: the first line is the path
//! and query, then `name: value` header lines up to an empty line, then
//! the body. Invalid parts are skipped, as a server would refuse them.
//!
//! The request also goes, as GET, POST and PATCH, through a router with the
//! API's routes and the extractors their handlers use (`Path`, `Query`,
//! headers, bodies) behind the same rejection handling (`edge::as_problem`):
//! whatever it refuses must be a problem document with a `code`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::routing::{get, post};
use axum::Router;
use checkline_shared::config::Env;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

use crate::auth::{bearer_token, Verifier};
use crate::config::ApiConfig;
use crate::edge::{as_problem, head_size, path_decodes, time_budget};
use crate::error::ApiError;
use crate::extract::{idempotency_key, json_body, page, path_id, wait};
use crate::order_request::CreateOrder;
use crate::ratelimit::{client_addr, client_key};
use crate::routes::products::{CreateProduct, PatchProduct, RestockBody};

/// The key the fuzzed tokens are checked against: a fuzzer does not know it,
/// so no input may verify.
const FUZZ_SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-fuzzing";

struct Fixture {
    config: ApiConfig,
    verifier: Verifier,
    router: Router,
    runtime: tokio::runtime::Runtime,
}

#[derive(Clone, Copy)]
struct Limits {
    body_max: usize,
    wait_max_secs: u64,
}

/// The API's routes with the extractors and parsers of their handlers, and
/// the same rejection handling; each answers 204 once its input parsed.
fn router(config: &ApiConfig) -> Router {
    let limits = Limits {
        body_max: config.body_max_bytes,
        wait_max_secs: config.wait_max_secs,
    };
    async fn list(Query(query): Query<HashMap<String, String>>) -> Result<StatusCode, ApiError> {
        page(&query)?;
        Ok(StatusCode::NO_CONTENT)
    }
    async fn by_id(Path(id): Path<String>) -> Result<StatusCode, ApiError> {
        path_id(&id)?;
        Ok(StatusCode::NO_CONTENT)
    }
    async fn order(
        State(limits): State<Limits>,
        Path(id): Path<String>,
        Query(query): Query<HashMap<String, String>>,
    ) -> Result<StatusCode, ApiError> {
        path_id(&id)?;
        wait(&query, limits.wait_max_secs)?;
        Ok(StatusCode::NO_CONTENT)
    }
    async fn create<T: DeserializeOwned>(
        State(limits): State<Limits>,
        headers: HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<StatusCode, ApiError> {
        json_body::<T>(&headers, body, limits.body_max)?;
        Ok(StatusCode::NO_CONTENT)
    }
    async fn keyed<T: DeserializeOwned>(
        State(limits): State<Limits>,
        headers: HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<StatusCode, ApiError> {
        idempotency_key(&headers)?;
        json_body::<T>(&headers, body, limits.body_max)?;
        Ok(StatusCode::NO_CONTENT)
    }
    async fn change<T: DeserializeOwned>(
        State(limits): State<Limits>,
        Path(id): Path<String>,
        headers: HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<StatusCode, ApiError> {
        path_id(&id)?;
        json_body::<T>(&headers, body, limits.body_max)?;
        Ok(StatusCode::NO_CONTENT)
    }
    async fn restock(
        State(limits): State<Limits>,
        Path(id): Path<String>,
        headers: HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<StatusCode, ApiError> {
        path_id(&id)?;
        idempotency_key(&headers)?;
        json_body::<RestockBody>(&headers, body, limits.body_max)?;
        Ok(StatusCode::NO_CONTENT)
    }
    let body_max = limits.body_max;
    Router::new()
        .route("/v1/products", get(list).post(create::<CreateProduct>))
        .route(
            "/v1/products/{id}",
            get(by_id).patch(change::<PatchProduct>),
        )
        .route("/v1/products/{id}/events", get(by_id))
        .route("/v1/products/{id}/restock", post(restock))
        .route("/v1/orders", get(list).post(keyed::<CreateOrder>))
        .route("/v1/orders/{id}", get(order))
        .route("/v1/orders/{id}/events", get(by_id))
        .route_layer(axum::middleware::from_fn(
            move |mut request: Request, next: Next| async move {
                let decodes = path_decodes(&mut request).await;
                as_problem(next.run(request).await, decodes, body_max)
            },
        ))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_max))
        .with_state(limits)
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let secret = String::from_utf8_lossy(FUZZ_SECRET).into_owned();
        let env = Env::from_pairs([("CHECKLINE_JWT_SECRET", secret.as_str())]);
        #[allow(clippy::expect_used)] // fixed, valid settings
        let config = ApiConfig::from_env(&env).expect("fuzzing settings are valid");
        let verifier =
            Verifier::with_options(FUZZ_SECRET, &[], 5, Some("checkline"), Some("storefront"));
        let router = router(&config);
        #[allow(clippy::expect_used)] // no I/O: only fails when out of resources
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime for the router");
        Fixture {
            config,
            verifier,
            router,
            runtime,
        }
    })
}

/// Splits fuzz input into a request target, headers and a body.
pub fn split(data: &[u8]) -> (Vec<u8>, HeaderMap, Vec<u8>) {
    let mut headers = HeaderMap::new();
    let mut lines = data.split(|b| *b == b'\n');
    let target = lines.next().unwrap_or_default().to_vec();
    let mut consumed = target.len() + 1;
    for line in lines.by_ref() {
        consumed += line.len() + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            let (name, value) = line.split_at(colon);
            let value = value[1..].trim_ascii();
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                if headers.len() < 128 {
                    headers.append(name, value);
                }
            }
        }
    }
    let body = data
        .get(consumed.min(data.len())..)
        .unwrap_or_default()
        .to_vec();
    (target, headers, body)
}

/// What the routes answered to a request.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// The `code` of a problem document; `None` if the answer is not one.
    pub problem_code: Option<String>,
}

/// Sends `data` (read as [`split`] reads it) as a `method` request through
/// the routes' extractors. `None` when the target is not an origin-form path.
pub fn respond(method: Method, data: &[u8]) -> Option<Answer> {
    let fixture = fixture();
    let (target, headers, body) = split(data);
    let uri = Uri::try_from(target.as_slice()).ok()?;
    if !uri.path().starts_with('/') || uri.authority().is_some() {
        return None;
    }
    let mut request = Request::new(Body::from(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    let router = fixture.router.clone();
    fixture.runtime.block_on(async move {
        let response = router.oneshot(request).await.ok()?;
        let status = response.status();
        let is_problem = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/problem+json");
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .ok()?;
        let problem_code = is_problem
            .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
            .flatten()
            .and_then(|problem| problem["code"].as_str().map(str::to_owned))
            .filter(|code| !code.is_empty());
        Some(Answer {
            status,
            problem_code,
        })
    })
}

/// Runs every edge parser over `data`. Panics only if an invariant breaks.
pub fn parse_request(data: &[u8]) {
    let fixture = fixture();
    let (target, mut headers, body) = split(data);

    // The request target: path ids and list queries.
    if let Ok(uri) = Uri::try_from(target.as_slice()) {
        for segment in uri.path().split('/') {
            if let Ok(id) = path_id(segment) {
                // Only the canonical spelling parses, so ids are unambiguous.
                assert_eq!(id.to_string(), segment.to_ascii_lowercase());
            }
        }
        if let Ok(Query(query)) = Query::<HashMap<String, String>>::try_from_uri(&uri) {
            if let Ok((limit, _cursor)) = page(&query) {
                assert!((1..=200).contains(&limit));
            }
        }
        for route in ["/v1/orders/{id}", "/v1/products/{id}/restock", "/v1/orders"] {
            let budget = time_budget(&fixture.config, route, &uri);
            assert!(budget >= fixture.config.edge.request_timeout);
        }
        let _ = head_size(&Method::POST, &uri, &headers);
    }

    // Through the routes' extractors: a success or a problem with a code.
    for method in [Method::GET, Method::POST, Method::PATCH] {
        if let Some(answer) = respond(method.clone(), data) {
            assert!(
                answer.status.is_success() || answer.problem_code.is_some(),
                "{method} answered {answer:?} without a problem code"
            );
        }
    }

    // Headers: idempotency key, bearer token, forwarded addresses.
    if let Ok(key) = idempotency_key(&headers) {
        let key = key.as_str();
        assert!((1..=255).contains(&key.len()));
        assert!(key.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    }
    for value in headers.get_all(header::AUTHORIZATION) {
        if let Some(token) = bearer_token(value.as_bytes()) {
            assert!(
                fixture.verifier.verify(token).is_err(),
                "a fuzzed token verified"
            );
        }
    }
    let peer = SocketAddr::from(([10, 0, 0, 1], 443));
    let trusted = [peer.ip()];
    let key = client_key(client_addr(Some(peer), &headers, &trusted));
    assert!(!key.is_empty() && key.len() <= 64);

    // Bodies, as each JSON-taking route parses them.
    let body = Bytes::from(body);
    let max = fixture.config.body_max_bytes;
    let _ = json_body::<CreateOrder>(&headers, Ok(body.clone()), max);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let _ = json_body::<CreateOrder>(&headers, Ok(body.clone()), max);
    let _ = json_body::<CreateProduct>(&headers, Ok(body.clone()), max);
    let _ = json_body::<PatchProduct>(&headers, Ok(body.clone()), max);
    let _ = json_body::<RestockBody>(&headers, Ok(body.clone()), max);
    // The body as a token too: tokens are the most structured input.
    if let Ok(text) = std::str::from_utf8(&body) {
        assert!(
            fixture.verifier.verify(text.trim()).is_err(),
            "a fuzzed token verified"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_reads_target_headers_and_body() {
        let (target, headers, body) =
            split(b"/v1/orders?limit=5\nidempotency-key: k1\nbad header\n\n{\"a\":1}");
        assert_eq!(target, b"/v1/orders?limit=5");
        assert_eq!(headers["idempotency-key"], "k1");
        assert_eq!(headers.len(), 1);
        assert_eq!(body, b"{\"a\":1}");
        parse_request(b"/v1/orders/67e55044-10b1-426f-9247-bb680e5fe0c8?wait=1e308\n\n");
        parse_request(b"");
        parse_request(b"\n\n\n");
    }
}
