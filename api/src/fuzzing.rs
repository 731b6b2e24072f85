//! Everything the API parses from a request, behind one function that takes
//! arbitrary bytes: the `cargo fuzz` target (`fuzz/`) and the bounded
//! stable-Rust driver in the test suite (`api/tests/fuzz_parsing.rs`) both
//! call [`parse_request`]. It must never panic, and what it accepts must
//! hold the invariants asserted below.
//!
//! The input is read as a rough HTTP request: the first line is the path
//! and query, then `name: value` header lines up to an empty line, then
//! the body. Invalid parts are skipped, as a server would refuse them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Uri};
use checkline_shared::config::Env;

use crate::auth::{bearer_token, Verifier};
use crate::config::ApiConfig;
use crate::edge::{head_size, time_budget};
use crate::extract::{idempotency_key, json_body, page, path_id};
use crate::ratelimit::{client_addr, client_key};
use crate::routes::orders::CreateOrder;
use crate::routes::products::{CreateProduct, PatchProduct, RestockBody};

/// The key the fuzzed tokens are checked against: a fuzzer does not know it,
/// so no input may verify.
const FUZZ_SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-fuzzing";

struct Fixture {
    config: ApiConfig,
    verifier: Verifier,
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
        Fixture { config, verifier }
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
