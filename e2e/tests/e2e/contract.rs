//! The contract's error cases, authentication and roles, products and the
//! operations endpoints. Every refused request must leave nothing behind.

use base64::Engine;
use checkline_e2e::{TestApp, SECRET};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn expect_problem(response: reqwest::Response, status: StatusCode, code: &str) {
    assert_eq!(response.status(), status, "expected {code}");
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "expected {code}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code);
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].is_string() && body["detail"].is_string() && body["type"].is_string());
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
        request.send()
    };
    let good = json!({"product_id": pid, "quantity": 1}).to_string();
    let json_ct = Some("application/json");

    expect_problem(
        post(None, json_ct, good.clone()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "missing_idempotency_key",
    )
    .await;
    expect_problem(
        post(Some("has space"), json_ct, good.clone())
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_idempotency_key",
    )
    .await;
    let long = "k".repeat(256);
    expect_problem(
        post(Some(&long), json_ct, good.clone()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_idempotency_key",
    )
    .await;
    expect_problem(
        post(Some("k1"), None, good.clone()).await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    expect_problem(
        post(Some("k1"), Some("text/plain"), good.clone())
            .await
            .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
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
        expect_problem(
            post(Some("k1"), json_ct, body).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
    let missing = json!({"product_id": uuid::Uuid::new_v4(), "quantity": 1}).to_string();
    expect_problem(
        post(Some("k1"), json_ct, missing).await.unwrap(),
        StatusCode::NOT_FOUND,
        "product_not_found",
    )
    .await;
    let huge = format!(
        "{{\"product_id\": \"{pid}\", \"quantity\": 1, \"pad\": \"{}\"}}",
        "x".repeat(17 * 1024)
    );
    expect_problem(
        post(Some("k1"), json_ct, huge).await.unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;

    // Reads with bad ids and queries.
    let get = |path: String| app.http.get(app.url(&path)).bearer_auth(&alice).send();
    expect_problem(
        get("/v1/orders/nope".into()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_id",
    )
    .await;
    expect_problem(
        get(format!("/v1/orders/{}", uuid::Uuid::new_v4()))
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "order_not_found",
    )
    .await;
    expect_problem(
        get(format!("/v1/orders/{}?wait=31", uuid::Uuid::new_v4()))
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_problem(
        get("/v1/orders?limit=0".into()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_problem(
        get("/v1/products/nope".into()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_id",
    )
    .await;
    expect_problem(
        get(format!("/v1/products/{}", uuid::Uuid::new_v4()))
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "product_not_found",
    )
    .await;
    expect_problem(
        get("/v1/products?cursor=zzz".into()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_problem(
        get("/v1/nothing-here".into()).await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let delete = app.http.delete(app.url("/v1/orders")).send().await.unwrap();
    expect_problem(delete, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;

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

    let alg_none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&payload)
    );
    let wrong_key = hs256(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &payload,
        b"some-other-key-some-other-key-123",
    );
    let expired = hs256(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &json!({"sub": "alice", "exp": now - 60, "roles": ["customer"]}).to_string(),
        SECRET.as_bytes(),
    );
    let no_exp = hs256(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &json!({"sub": "alice", "roles": ["customer"]}).to_string(),
        SECRET.as_bytes(),
    );
    let no_roles = hs256(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &json!({"sub": "alice", "exp": now + 600}).to_string(),
        SECRET.as_bytes(),
    );
    let bad_sub = hs256(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &json!({"sub": "a b", "exp": now + 600, "roles": ["customer"]}).to_string(),
        SECRET.as_bytes(),
    );
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": "alice", "exp": now + 600, "roles": ["customer"]}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    // An RS256 header over an HMAC signature: algorithm confusion.
    let rs256 = hs256(
        r#"{"alg":"RS256","typ":"JWT"}"#,
        &payload,
        SECRET.as_bytes(),
    );
    let body = json!({"product_id": pid, "quantity": 1});
    for (name, token) in [
        ("alg none", alg_none),
        ("wrong key", wrong_key),
        ("expired", expired),
        ("missing exp", no_exp),
        ("missing roles", no_roles),
        ("bad sub", bad_sub),
        ("HS512", hs512),
        ("RS256", rs256),
        ("garbage", "abc.def.ghi".into()),
    ] {
        let response = app
            .http
            .post(app.url("/v1/orders"))
            .bearer_auth(&token)
            .header("idempotency-key", "k")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
        expect_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let response = app
        .http
        .post(app.url("/v1/orders"))
        .header("idempotency-key", "k")
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // Wrong roles.
    let alice = app.customer("alice");
    let admin_orders = app
        .http
        .post(app.url("/v1/orders"))
        .bearer_auth(&app.admin)
        .header("idempotency-key", "k")
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_problem(admin_orders, StatusCode::FORBIDDEN, "forbidden").await;
    let customer_creates = app
        .http
        .post(app.url("/v1/products"))
        .bearer_auth(&alice)
        .json(&json!({"sku": "X", "name": "x", "price_cents": 1, "stock": 1}))
        .send()
        .await
        .unwrap();
    expect_problem(customer_creates, StatusCode::FORBIDDEN, "forbidden").await;
    let customer_stats = app
        .http
        .get(app.url("/v1/admin/stats"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    expect_problem(customer_stats, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(app.count_orders(&pid).await, 0);

    // Another customer's order does not exist for bob; the admin sees it.
    let placed = app.order(&alice, "mine", &pid, 1).await;
    let id = placed.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob = app.customer("bob");
    let peek = app
        .http
        .get(app.url(&format!("/v1/orders/{id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    expect_problem(peek, StatusCode::NOT_FOUND, "order_not_found").await;
    let peek_events = app
        .http
        .get(app.url(&format!("/v1/orders/{id}/events")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    expect_problem(peek_events, StatusCode::NOT_FOUND, "order_not_found").await;
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
            .send()
    };

    let response = create(json!({"sku": "FLASH-1", "name": "Flash phone", "price_cents": 19900, "stock": 100, "max_per_customer": 2})).await.unwrap();
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

    expect_problem(
        create(json!({"sku": "FLASH-1", "name": "again", "price_cents": 1, "stock": 1}))
            .await
            .unwrap(),
        StatusCode::CONFLICT,
        "sku_taken",
    )
    .await;
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
        expect_problem(
            create(bad.clone()).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }

    let id = product["id"].as_str().unwrap();
    let patch = |body: Value| {
        app.http
            .patch(app.url(&format!("/v1/products/{id}")))
            .bearer_auth(&app.admin)
            .json(&body)
            .send()
    };
    let patched: Value = patch(json!({"name": "Flash phone 2", "max_per_customer": null}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["name"], "Flash phone 2");
    assert!(patched["max_per_customer"].is_null());
    assert_eq!(patched["price_cents"], 19900);
    expect_problem(
        patch(json!({})).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    expect_problem(
        patch(json!({"stock": 5})).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    let missing = app
        .http
        .patch(app.url(&format!("/v1/products/{}", uuid::Uuid::new_v4())))
        .bearer_auth(&app.admin)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    expect_problem(missing, StatusCode::NOT_FOUND, "product_not_found").await;

    // Listing pages through everything, public.
    for i in 0..4 {
        create(json!({"sku": format!("P-{i}"), "name": "p", "price_cents": 1, "stock": 1}))
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

    let stats: Value = app
        .http
        .get(app.url("/v1/admin/stats"))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text().await.unwrap();
    assert!(text.contains("checkline_orders_accepted_total"));
    assert!(text.contains("checkline_partition_backlog{partition=\"3\"}"));
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
