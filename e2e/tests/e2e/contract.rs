//! The contract's error cases, authentication and roles, products and the
//! operations endpoints. Every refused request must leave nothing behind.
//!
//! The refusals are tables: (what the case is, the request, the status, the
//! problem `code`), sent in order by [`expect_problems`].

use base64::Engine;
use checkline_e2e::{TestApp, SECRET};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};

/// A refused request: what it is, the request, its status and problem code.
type Refusal = (String, RequestBuilder, u16, &'static str);

/// Sends each request in turn; each must be answered with its status and a
/// problem document carrying its code.
async fn expect_problems(cases: Vec<Refusal>) {
    for (what, request, status, code) in cases {
        let status = StatusCode::from_u16(status).unwrap();
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{what}: expected {code}");
        assert!(response.headers().contains_key("x-request-id"), "{what}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{what}: expected {code}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], code, "{what}");
        assert_eq!(body["status"], status.as_u16(), "{what}");
        assert!(
            body["title"].is_string() && body["detail"].is_string() && body["type"].is_string(),
            "{what}"
        );
    }
}

fn b64(data: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn hs256(header: &str, payload: &str, key: &[u8]) -> String {
    use jsonwebtoken::{crypto, Algorithm, EncodingKey};
    let message = format!("{}.{}", b64(header), b64(payload));
    let signature = crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(key),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{message}.{signature}")
}

#[tokio::test]
async fn bad_order_requests_get_their_codes_and_move_nothing() {
    let app = TestApp::spawn().await;
    let product = app.create_product(10, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let alice = app.customer("alice");
    // An order as alice, with the key and content type given.
    let post = |key: Option<&str>, content_type: Option<&str>, body: String| {
        let mut request = app
            .http
            .post(app.url("/v1/orders"))
            .bearer_auth(&alice)
            .body(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request
    };
    let get = |path: String, status: u16, code: &'static str| -> Refusal {
        let request = app.http.get(app.url(&path)).bearer_auth(&alice);
        (format!("GET {path}"), request, status, code)
    };
    let good = json!({"product_id": pid, "quantity": 1}).to_string();
    let json_ct = Some("application/json");
    let long = "k".repeat(256);
    let missing = json!({"product_id": uuid::Uuid::new_v4(), "quantity": 1}).to_string();
    let huge = format!(
        "{{\"product_id\": \"{pid}\", \"quantity\": 1, \"pad\": \"{}\"}}",
        "x".repeat(17 * 1024)
    );
    let unknown = uuid::Uuid::new_v4();

    #[rustfmt::skip]
    let mut cases: Vec<Refusal> = vec![
        ("no key".into(), post(None, json_ct, good.clone()), 400, "missing_idempotency_key"),
        ("a key with a space".into(), post(Some("has space"), json_ct, good.clone()), 400, "invalid_idempotency_key"),
        ("a key of 256 bytes".into(), post(Some(&long), json_ct, good.clone()), 400, "invalid_idempotency_key"),
        ("no content type".into(), post(Some("k1"), None, good.clone()), 415, "unsupported_media_type"),
        ("text/plain".into(), post(Some("k1"), Some("text/plain"), good.clone()), 415, "unsupported_media_type"),
    ];
    for body in [
        "{".to_string(),
        "[]".to_string(),
        json!({"product_id": pid}).to_string(),
        json!({"quantity": 1}).to_string(),
        json!({"product_id": pid, "quantity": 0}).to_string(),
        json!({"product_id": pid, "quantity": 101}).to_string(),
        json!({"product_id": pid, "quantity": -1}).to_string(),
        json!({"product_id": pid, "quantity": 1.5}).to_string(),
        json!({"product_id": pid, "quantity": "1"}).to_string(),
        json!({"product_id": "not-a-uuid", "quantity": 1}).to_string(),
        json!({"product_id": pid, "quantity": 1, "extra": true}).to_string(),
    ] {
        let request = post(Some("k1"), json_ct, body.clone());
        cases.push((body, request, 400, "invalid_request"));
    }
    let (orders, products) = ("/v1/orders", "/v1/products");
    #[rustfmt::skip]
    cases.extend([
        ("an unknown product".into(), post(Some("k1"), json_ct, missing), 404, "product_not_found"),
        ("a body over 16 KiB".into(), post(Some("k1"), json_ct, huge), 413, "payload_too_large"),
        // Reads with bad ids and queries.
        get(format!("{orders}/nope"), 400, "invalid_id"),
        get(format!("{orders}/{unknown}"), 404, "order_not_found"),
        get(format!("{orders}/{unknown}?wait=31"), 400, "invalid_request"),
        get(format!("{orders}?limit=0"), 400, "invalid_request"),
        get(format!("{products}/nope"), 400, "invalid_id"),
        get(format!("{products}/{unknown}"), 404, "product_not_found"),
        get(format!("{products}?cursor=zzz"), 400, "invalid_request"),
        get("/v1/nothing-here".into(), 404, "not_found"),
        ("DELETE /v1/orders".into(), app.http.delete(app.url(orders)), 405, "method_not_allowed"),
    ]);
    expect_problems(cases).await;

    assert_eq!(
        app.count_orders(&pid).await,
        0,
        "no refused request left an order"
    );
    assert_eq!(app.product(&pid).await["stock"], 10);
    app.shutdown().await;
}

#[tokio::test]
async fn tokens_are_checked_strictly_and_roles_enforced() {
    let app = TestApp::spawn().await;
    let product = app.create_product(10, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let now = jsonwebtoken::get_current_timestamp();
    let payload =
        json!({"sub": "alice", "exp": now + 600, "roles": ["customer", "admin"]}).to_string();
    let hs256_header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let signed = |claims: Value| hs256(hs256_header, &claims.to_string(), SECRET.as_bytes());
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": "alice", "exp": now + 600, "roles": ["customer"]}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let alice = app.customer("alice");
    let body = json!({"product_id": pid, "quantity": 1});
    // An order, with the token given.
    let post = |token: Option<&str>| {
        let request = app
            .http
            .post(app.url("/v1/orders"))
            .header("idempotency-key", "k")
            .json(&body);
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };

    let alg_none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&payload)
    );
    let other_key = b"some-other-key-some-other-key-123";
    let rs256_header = r#"{"alg":"RS256","typ":"JWT"}"#;
    #[rustfmt::skip]
    let tokens = [
        ("alg none", alg_none),
        ("wrong key", hs256(hs256_header, &payload, other_key)),
        ("expired", signed(json!({"sub": "alice", "exp": now - 60, "roles": ["customer"]}))),
        ("missing exp", signed(json!({"sub": "alice", "roles": ["customer"]}))),
        ("missing roles", signed(json!({"sub": "alice", "exp": now + 600}))),
        ("bad sub", signed(json!({"sub": "a b", "exp": now + 600, "roles": ["customer"]}))),
        ("HS512", hs512),
        // An RS256 header over an HMAC signature: algorithm confusion.
        ("RS256", hs256(rs256_header, &payload, SECRET.as_bytes())),
        ("garbage", "abc.def.ghi".into()),
    ];
    let mut cases: Vec<Refusal> = tokens
        .into_iter()
        .map(|(name, token)| (name.into(), post(Some(&token)), 401, "unauthorized"))
        .collect();
    let new_product = json!({"sku": "X", "name": "x", "price_cents": 1, "stock": 1});
    let create_product = app.http.post(app.url("/v1/products")).json(&new_product);
    let read_stats = app.http.get(app.url("/v1/admin/stats"));
    #[rustfmt::skip]
    cases.extend([
        ("no token".into(), post(None), 401, "unauthorized"),
        // Wrong roles.
        ("an admin ordering".into(), post(Some(&app.admin)), 403, "forbidden"),
        ("a customer creating a product".into(), create_product.bearer_auth(&alice), 403, "forbidden"),
        ("a customer reading the stats".into(), read_stats.bearer_auth(&alice), 403, "forbidden"),
    ]);
    expect_problems(cases).await;
    assert_eq!(app.count_orders(&pid).await, 0);

    // Another customer's order does not exist for bob; the admin sees it.
    let placed = app.order(&alice, "mine", &pid, 1).await;
    let id = placed.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob = app.customer("bob");
    let as_bob = |path: String| -> Refusal {
        let request = app.http.get(app.url(&path)).bearer_auth(&bob);
        (format!("bob: GET {path}"), request, 404, "order_not_found")
    };
    expect_problems(vec![
        as_bob(format!("/v1/orders/{id}")),
        as_bob(format!("/v1/orders/{id}/events")),
    ])
    .await;
    let admin_view = app
        .http
        .get(app.url(&format!("/v1/orders/{id}")))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(admin_view.status(), StatusCode::OK);
    let bobs: Value = app
        .http
        .get(app.url("/v1/orders"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bobs["items"].as_array().unwrap().len(), 0);
    app.shutdown().await;
}

#[tokio::test]
async fn products_are_managed_by_admins() {
    let app = TestApp::spawn().await;
    let create = |body: Value| {
        app.http
            .post(app.url("/v1/products"))
            .bearer_auth(&app.admin)
            .json(&body)
    };

    let response = create(json!({"sku": "FLASH-1", "name": "Flash phone", "price_cents": 19900, "stock": 100, "max_per_customer": 2})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let product: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/products/{}", product["id"].as_str().unwrap())
    );
    assert_eq!(product["stock"], 100);
    assert_eq!(product["max_per_customer"], 2);
    assert_eq!(product["active"], true);
    assert!(product["partition"].as_i64().unwrap() < 4);

    let id = product["id"].as_str().unwrap();
    let patch = |id: &str, body: Value| {
        app.http
            .patch(app.url(&format!("/v1/products/{id}")))
            .bearer_auth(&app.admin)
            .json(&body)
    };
    let patched: Value = patch(
        id,
        json!({"name": "Flash phone 2", "max_per_customer": null}),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(patched["name"], "Flash phone 2");
    assert!(patched["max_per_customer"].is_null());
    assert_eq!(patched["price_cents"], 19900);

    let taken = json!({"sku": "FLASH-1", "name": "again", "price_cents": 1, "stock": 1});
    let mut cases: Vec<Refusal> = vec![("a taken sku".into(), create(taken), 409, "sku_taken")];
    for bad in [
        json!({"sku": "", "name": "x", "price_cents": 1, "stock": 1}),
        json!({"sku": "x".repeat(65), "name": "x", "price_cents": 1, "stock": 1}),
        json!({"sku": "S2", "name": "", "price_cents": 1, "stock": 1}),
        json!({"sku": "S2", "name": "x".repeat(201), "price_cents": 1, "stock": 1}),
        json!({"sku": "S2", "name": "x", "price_cents": -1, "stock": 1}),
        json!({"sku": "S2", "name": "x", "price_cents": 1_000_000_000_001_i64, "stock": 1}),
        json!({"sku": "S2", "name": "x", "price_cents": 1, "stock": -1}),
        json!({"sku": "S2", "name": "x", "price_cents": 1, "stock": 1_000_000_001}),
        json!({"sku": "S2", "name": "x", "price_cents": 1, "stock": 1, "max_per_customer": 0}),
        json!({"sku": "S2", "name": "x", "price_cents": 1}),
        json!({"sku": "S2", "name": "x", "price_cents": 1, "stock": 1, "color": "red"}),
    ] {
        cases.push((format!("create {bad}"), create(bad), 400, "invalid_request"));
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    #[rustfmt::skip]
    cases.extend([
        ("an empty patch".into(), patch(id, json!({})), 400, "invalid_request"),
        ("a patch of the stock".into(), patch(id, json!({"stock": 5})), 400, "invalid_request"),
        ("a patch of an unknown product".into(), patch(&unknown, json!({"name": "x"})), 404, "product_not_found"),
    ]);
    expect_problems(cases).await;

    // Listing pages through everything, public.
    for i in 0..4 {
        create(json!({"sku": format!("P-{i}"), "name": "p", "price_cents": 1, "stock": 1}))
            .send()
            .await
            .unwrap();
    }
    let mut seen = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/products?limit=2&cursor={c}"),
            None => "/v1/products?limit=2".to_string(),
        };
        let page: Value = app
            .http
            .get(app.url(&path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen += page["items"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, 5);

    let stats = app.stats().await;
    assert_eq!(stats["products"].as_array().unwrap().len(), 5);
    assert_eq!(stats["partitions"].as_array().unwrap().len(), 4);
    assert_eq!(stats["products"][0]["confirmed_units"], 0);
    app.shutdown().await;
}

#[tokio::test]
async fn operations_endpoints() {
    let app = TestApp::spawn().await;
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["database"], "up");
    assert_eq!(ready["checks"]["queue"], "up");
    // One order, so that the queue write's latency has an observation.
    let pid = app.create_product(1, None).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let alice = app.customer("alice");
    assert_eq!(
        app.order(&alice, "m1", &pid, 1).await.status(),
        StatusCode::ACCEPTED
    );
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text().await.unwrap();
    assert!(text.contains("checkline_orders_accepted_total"));
    assert!(text.contains("checkline_partition_backlog{partition=\"3\"}"));
    assert!(text.contains("# TYPE checkline_queue_publish_seconds histogram\n"));
    assert!(text.contains("checkline_queue_publish_seconds_bucket{le=\"+Inf\"} 1\n"));
    assert!(text.contains("checkline_queue_publish_seconds_count 1\n"));
    let spec: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    assert!(spec["paths"]["/v1/orders"]["post"].is_object());

    // The request id is echoed when sent, generated when not.
    let echoed = app
        .http
        .request(Method::GET, app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "abc-123");
    let generated = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert!(!generated.headers()["x-request-id"].is_empty());
    app.shutdown().await;
}
