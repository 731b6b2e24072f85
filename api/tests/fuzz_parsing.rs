//! A bounded fuzz driver on stable Rust for the request parsing that the
//! `cargo fuzz` target in `fuzz/` covers without bounds: the seed corpus,
//! mutated with a fixed random seed, and property tests over arbitrary
//! bytes and token-shaped input. `checkline_api::fuzzing::parse_request`
//! panics on any broken invariant, so a passing run means none was found.
//!
//! `FUZZ_ITERATIONS` (default 20,000) sets how many mutated inputs run;
//! `FUZZ_SEED` picks another sequence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::http::Method;
use base64::Engine;
use checkline_api::fuzzing::{parse_request, respond};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fuzz/corpus/request_parsing"
);

/// Fragments that reach deep into the parsers.
const DICTIONARY: &[&str] = &[
    "\n",
    "\r\n",
    ": ",
    "\n\n",
    "idempotency-key: ",
    "authorization: Bearer ",
    "content-type: application/json",
    "x-forwarded-for: ",
    "{",
    "}",
    "\"",
    "\"product_id\":",
    "\"quantity\":",
    "\"max_per_customer\":null",
    "1e309",
    "-9223372036854775809",
    "18446744073709551616",
    "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d",
    "0B7C1E52-3F0A-4C8E-9D1A-5E2F6A7B8C9D",
    "{0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d}",
    "?wait=",
    "&limit=",
    "&cursor=",
    "%00",
    "%FF",
    "%C3%28",
    "/v1/orders/%FF",
    "/v1/products/%FF/restock",
    "?limit=abc",
    "?wait=x",
    "content-type: text/plain",
    "idempotency-key: a b",
    "eyJhbGciOiJub25lIn0.",
    "eyJhbGciOiJIUzI1NiJ9.",
    "::ffff:1.2.3.4",
    "\u{0}",
    "\u{FEFF}",
    "é",
];

fn seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(CORPUS)
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "the seed corpus is in fuzz/corpus");
    seeds
}

fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..rng.gen_range(1..8) {
        let at = if input.is_empty() {
            0
        } else {
            rng.gen_range(0..=input.len())
        };
        match rng.gen_range(0..6) {
            0 if !input.is_empty() => {
                let i = rng.gen_range(0..input.len());
                input[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !input.is_empty() => {
                let end = (at + rng.gen_range(1..32)).min(input.len());
                input.drain(at.min(end)..end);
            }
            2 => {
                let word = DICTIONARY[rng.gen_range(0..DICTIONARY.len())];
                input.splice(at..at, word.bytes());
            }
            3 => {
                let byte: u8 = rng.gen();
                input.insert(at, byte);
            }
            4 => {
                let other = &seeds[rng.gen_range(0..seeds.len())];
                let from = rng.gen_range(0..other.len());
                let to = (from + rng.gen_range(1..64)).min(other.len());
                input.splice(at..at, other[from..to].iter().copied());
            }
            _ => {
                // Repeat a slice: long keys, deep JSON, many headers.
                if !input.is_empty() {
                    let from = rng.gen_range(0..input.len());
                    let to = (from + rng.gen_range(1..16)).min(input.len());
                    let piece = input[from..to].to_vec();
                    for _ in 0..rng.gen_range(1..64) {
                        input.splice(at..at, piece.iter().copied());
                    }
                }
            }
        }
        input.truncate(64 * 1024);
    }
}

#[test]
fn mutated_corpus_never_breaks_the_parsers() {
    let iterations: usize = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x00c0_ffee);
    let seeds = seeds();
    for seed_input in &seeds {
        parse_request(seed_input);
    }
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..iterations {
        let mut input = seeds[rng.gen_range(0..seeds.len())].clone();
        mutate(&mut rng, &mut input, &seeds);
        parse_request(&input);
    }
}

/// Each kind of input an extractor refuses, on every route that takes it,
/// is a problem document with the contract's code.
#[test]
fn each_refused_input_is_a_problem_with_its_code() {
    let id = "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d";
    let json = "content-type: application/json";
    let order = format!(r#"{{"product_id":"{id}","quantity":1}}"#);
    let big = format!(
        r#"{{"product_id":"{}","quantity":1}}"#,
        "x".repeat(17 * 1024)
    );
    let cases = [
        // Path ids that are not UTF-8 once decoded, or not ids.
        (
            Method::GET,
            "/v1/orders/%FF\n\n".to_owned(),
            400,
            "invalid_id",
        ),
        (
            Method::GET,
            "/v1/orders/%C3%28\n\n".to_owned(),
            400,
            "invalid_id",
        ),
        (
            Method::GET,
            "/v1/orders/%FF/events\n\n".to_owned(),
            400,
            "invalid_id",
        ),
        (
            Method::GET,
            "/v1/products/%FF\n\n".to_owned(),
            400,
            "invalid_id",
        ),
        (
            Method::GET,
            "/v1/products/%FF/events\n\n".to_owned(),
            400,
            "invalid_id",
        ),
        (
            Method::PATCH,
            format!("/v1/products/%FF\n{json}\n\n{{}}"),
            400,
            "invalid_id",
        ),
        (
            Method::POST,
            format!("/v1/products/%FF/restock\nidempotency-key: k\n{json}\n\n{{\"quantity\":1}}"),
            400,
            "invalid_id",
        ),
        (
            Method::GET,
            "/v1/orders/not-an-id\n\n".to_owned(),
            400,
            "invalid_id",
        ),
        // Query strings.
        (
            Method::GET,
            "/v1/orders?limit=abc\n\n".to_owned(),
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/v1/products?cursor=%FF\n\n".to_owned(),
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            format!("/v1/orders/{id}?wait=x\n\n"),
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            format!("/v1/orders/{id}?wait=%FF\n\n"),
            400,
            "invalid_request",
        ),
        // Headers.
        (
            Method::POST,
            format!("/v1/orders\n{json}\n\n{order}"),
            400,
            "missing_idempotency_key",
        ),
        (
            Method::POST,
            format!("/v1/orders\nidempotency-key: a b\n{json}\n\n{order}"),
            400,
            "invalid_idempotency_key",
        ),
        (
            Method::POST,
            format!("/v1/orders\nidempotency-key: k\n\n{order}"),
            415,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            format!("/v1/orders\nidempotency-key: k\ncontent-type: text/plain\n\n{order}"),
            415,
            "unsupported_media_type",
        ),
        // Bodies.
        (
            Method::POST,
            format!("/v1/orders\nidempotency-key: k\n{json}\n\n{{"),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            format!(
                "/v1/orders\nidempotency-key: k\n{json}\n\n{{\"product_id\":1,\"quantity\":\"x\"}}"
            ),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            format!("/v1/orders\nidempotency-key: k\n{json}\n\n{big}"),
            413,
            "payload_too_large",
        ),
        (
            Method::POST,
            format!("/v1/products\n{json}\n\n[]"),
            400,
            "invalid_request",
        ),
        // Routing.
        (
            Method::DELETE,
            "/v1/orders\n\n".to_owned(),
            405,
            "method_not_allowed",
        ),
        (Method::GET, "/v1/nowhere\n\n".to_owned(), 404, "not_found"),
    ];
    for (method, input, status, code) in cases {
        let what = format!("{method} {}", input.lines().next().unwrap());
        let answer = respond(method, input.as_bytes()).expect(&what);
        assert_eq!(answer.status.as_u16(), status, "{what}");
        assert_eq!(answer.problem_code.as_deref(), Some(code), "{what}");
        parse_request(input.as_bytes());
    }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes_never_break_the_parsers(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        parse_request(&data);
    }

    /// Token-shaped input: three base64url parts whose JSON may name any
    /// algorithm and any claims. None verifies without the key.
    #[test]
    fn forged_tokens_never_verify(
        alg in prop_oneof![
            Just("none".to_owned()),
            Just("HS256".to_owned()),
            Just("HS512".to_owned()),
            Just("RS256".to_owned()),
            "[a-zA-Z0-9]{0,8}",
        ],
        claims in "\\PC{0,200}",
        signature in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        let token = format!("{}.{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()), b64(&signature));
        parse_request(format!("/v1/orders\nauthorization: Bearer {token}\n\n{token}").as_bytes());
    }

    #[test]
    fn json_bodies_of_any_shape(
        product_id in "\\PC{0,40}",
        quantity in any::<i64>(),
        extra in proptest::option::of("[a-z_]{1,12}"),
    ) {
        let mut body = serde_json::json!({"product_id": product_id, "quantity": quantity});
        if let Some(extra) = extra {
            body[extra] = serde_json::json!(true);
        }
        parse_request(format!("/v1/orders\ncontent-type: application/json\n\n{body}").as_bytes());
    }
}
