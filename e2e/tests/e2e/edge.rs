//! The edge: each limit refuses what it should and lets normal traffic
//! through. Rate limits (per customer, per address, Redis down), header
//! size, slow clients, the connection cap, the event stream cap, and tokens
//! (rotation, issuer and audience) through the real server.

use std::time::{Duration, Instant};

use checkline_e2e::{TestApp, SECRET};
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn expect_problem(response: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "expected {code}");
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    if matches!(status.as_u16(), 429 | 503) {
        let retry: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1);
    }
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code);
    body
}

fn addr_of(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn a_flooding_customer_is_limited_while_others_keep_buying() {
    let app = std::sync::Arc::new(
        TestApp::spawn_with(&[
            // The slowest refill there is: the checks after the flood rely on
            // no token coming back meanwhile, and on a busy machine 200 ms
            // (one token at 5/s) passed before the last of them.
            ("CHECKLINE_RATE_ORDERS_PER_SEC", "1"),
            ("CHECKLINE_RATE_ORDERS_BURST", "10"),
            ("CHECKLINE_RATE_READS_PER_SEC", "50"),
            ("CHECKLINE_RATE_READS_BURST", "100"),
        ])
        .await,
    );
    let product = app.create_product(1_000, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();

    // The bot: 60 orders with fresh keys, all at once.
    let bot = app.customer("bot");
    let flood = (0..60).map(|i| {
        let (app, bot, pid) = (app.clone(), bot.clone(), pid.clone());
        tokio::spawn(async move {
            let key = format!("bot-{i}");
            let response = app.order(&bot, &key, &pid, 1).await;
            (key, response)
        })
    });
    // Meanwhile 20 other customers each place one order.
    let buyers = (0..20).map(|i| {
        let (app, pid) = (app.clone(), pid.clone());
        tokio::spawn(async move {
            let token = app.customer(&format!("buyer-{i}"));
            app.order(&token, "k", &pid, 1).await.status()
        })
    });
    let (flood, buyers) = tokio::join!(join_all(flood), join_all(buyers));
    let mut accepted = Vec::new();
    let mut accepted_key = String::new();
    let mut limited = 0;
    for response in flood {
        let (key, response) = response.unwrap();
        match response.status() {
            StatusCode::ACCEPTED => {
                let order: Value = response.json().await.unwrap();
                accepted.push(order["id"].as_str().unwrap().to_owned());
                accepted_key = key;
            }
            StatusCode::TOO_MANY_REQUESTS => {
                expect_problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // The burst (10), plus what the rate refills while the flood runs.
    assert!(
        (10..=15).contains(&accepted.len()),
        "{} accepted",
        accepted.len()
    );
    assert_eq!(accepted.len() + limited, 60);
    for status in buyers {
        assert_eq!(
            status.unwrap(),
            StatusCode::ACCEPTED,
            "other customers flow"
        );
    }
    // A refused request leaves nothing behind.
    let bot_orders: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE customer_id = 'bot'")
            .fetch_one(&app.env.pool)
            .await
            .unwrap();
    assert_eq!(bot_orders as usize, accepted.len());

    // Still limited on submissions, the bot can read its orders (a separate
    // budget) and retry an accepted key (not charged again): it sees its order.
    let response = app.order(&bot, "bot-new", &pid, 1).await;
    expect_problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let order = app
        .http
        .get(app.url(&format!("/v1/orders/{}", accepted[0])))
        .bearer_auth(&bot)
        .send()
        .await
        .unwrap();
    assert_eq!(order.status(), StatusCode::OK);
    let replay = app.order(&bot, &accepted_key, &pid, 1).await;
    assert_eq!(replay.status(), StatusCode::OK);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    std::sync::Arc::into_inner(app).unwrap().shutdown().await;
}

#[tokio::test]
async fn retries_of_an_accepted_key_are_never_locked_out() {
    let app = TestApp::spawn_with(&[
        ("CHECKLINE_RATE_ORDERS_PER_SEC", "1"),
        ("CHECKLINE_RATE_ORDERS_BURST", "2"),
    ])
    .await;
    let product = app.create_product(100, None).await;
    let pid = product["id"].as_str().unwrap();
    let alice = app.customer("alice");
    let first = app.order(&alice, "k1", pid, 1).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    assert_eq!(
        app.order(&alice, "k2", pid, 1).await.status(),
        StatusCode::ACCEPTED
    );
    // The budget is spent: a new key is refused...
    let refused = app.order(&alice, "k3", pid, 1).await;
    expect_problem(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // ...but retries of the accepted key keep getting the same order.
    for _ in 0..10 {
        let replay = app.order(&alice, "k1", pid, 1).await;
        assert_eq!(replay.status(), StatusCode::OK);
        assert_eq!(replay.headers()["idempotent-replayed"], "true");
        let order: Value = replay.json().await.unwrap();
        assert_eq!(order["id"], first["id"]);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn per_address_limit_applies_to_everyone_and_can_be_turned_off() {
    // Behind a trusted proxy, the client is the forwarded address.
    let app = TestApp::spawn_with(&[
        ("CHECKLINE_RATE_ADDR_PER_SEC", "2"),
        ("CHECKLINE_RATE_ADDR_BURST", "5"),
        ("CHECKLINE_RATE_TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    let get = |client: &'static str| {
        app.http
            .get(app.url("/v1/products"))
            .header("x-forwarded-for", client)
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get("203.0.113.1").await.unwrap().status());
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert!((5..=6).contains(&ok), "{statuses:?}");
    expect_problem(
        get("203.0.113.1").await.unwrap(),
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    // Another address is not affected; nor are unauthenticated probes special.
    assert_eq!(get("203.0.113.2").await.unwrap().status(), StatusCode::OK);
    app.shutdown().await;

    let app = TestApp::spawn_with(&[
        ("CHECKLINE_RATE_LIMITS", "off"),
        ("CHECKLINE_RATE_ADDR_PER_SEC", "1"),
        ("CHECKLINE_RATE_ADDR_BURST", "1"),
    ])
    .await;
    for _ in 0..20 {
        let response = app.http.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn with_redis_down_the_limits_still_hold_in_process() {
    let app = TestApp::spawn_with(&[
        // Nothing listens there: every Redis call fails at once.
        ("CHECKLINE_REDIS_URL", "redis://127.0.0.1:9/0"),
        ("CHECKLINE_RATE_ORDERS_PER_SEC", "1"),
        ("CHECKLINE_RATE_ORDERS_BURST", "3"),
    ])
    .await;
    let product = app.create_product(100, None).await;
    let pid = product["id"].as_str().unwrap();
    let alice = app.customer("alice");
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(app.order(&alice, &format!("k{i}"), pid, 1).await.status());
    }
    let accepted = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    assert!((3..=4).contains(&accepted), "{statuses:?}");
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS));
    // Another customer still gets through.
    let bob = app.customer("bob");
    assert_eq!(
        app.order(&bob, "k", pid, 1).await.status(),
        StatusCode::ACCEPTED
    );
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("checkline_rate_local_decisions_total 0\n"));
    app.shutdown().await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let app = TestApp::spawn_without_worker().await;
    // Over the limit (8 KiB): a problem document.
    let response = app
        .http
        .get(app.url("/v1/products"))
        .header("x-padding", "p".repeat(10 * 1024))
        .send()
        .await
        .unwrap();
    expect_problem(
        response,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    )
    .await;
    // Far over it: hyper refuses before parsing (a bare 431, or the
    // connection closed); either way nothing is served.
    let response = app
        .http
        .get(app.url("/v1/products"))
        .header("x-padding", "p".repeat(64 * 1024))
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }
    // Normal requests still pass, and unknown JSON fields are refused.
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let response = app
        .http
        .post(app.url("/v1/products"))
        .bearer_auth(&app.admin)
        .json(&serde_json::json!({"sku": "X", "name": "x", "price_cents": 1, "stock": 1, "admin": true}))
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    app.shutdown().await;
}

#[tokio::test]
async fn slow_clients_do_not_slow_a_normal_request_and_are_cut_off() {
    let app = TestApp::spawn_with(&[("CHECKLINE_HEADER_READ_TIMEOUT_MS", "1000")]).await;
    let addr = addr_of(&app);
    // 400 clients that send half a request head and stall.
    let mut slow = Vec::new();
    for i in 0..400 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let partial = if i % 2 == 0 {
            "GET /v1/products HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_owned()
        } else {
            "POST /v1/ord".to_owned()
        };
        stream.write_all(partial.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    let opened = Instant::now();
    // A normal request, on a fresh connection, is answered at once.
    let client = reqwest::Client::new();
    let started = Instant::now();
    let response = client.get(app.url("/v1/products")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(took < Duration::from_millis(500), "took {took:?}");

    // The header read timeout closes every stalled connection.
    let deadline = opened + Duration::from_secs(5);
    let mut closed = 0;
    for stream in &mut slow {
        let mut buf = [0u8; 512];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1, // EOF, a 408 or a reset
            Err(_) => {}
        }
    }
    assert_eq!(closed, 400, "every slow connection is closed");
    assert!(opened.elapsed() < Duration::from_secs(5));
    app.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_cap_get_503_overloaded() {
    let app = TestApp::spawn_with(&[("CHECKLINE_MAX_CONNECTIONS", "4")]).await;
    let addr = addr_of(&app);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = reqwest::Client::new();
    let response = client.get(app.url("/healthz")).send().await.unwrap();
    let body = expect_problem(response, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
    assert!(body["detail"].as_str().unwrap().contains("connections"));
    // Once connections close, requests are served again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = reqwest::Client::new()
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    app.shutdown().await;
}

#[tokio::test]
async fn event_streams_are_capped_and_give_their_slot_back() {
    let app = TestApp::spawn_with(&[("CHECKLINE_SSE_MAX_STREAMS_PER_ADDR", "2")]).await;
    let product = app.create_product(5, None).await;
    let url = app.url(&format!(
        "/v1/products/{}/events",
        product["id"].as_str().unwrap()
    ));
    let open = || reqwest::Client::new().get(&url).send();
    let first = open().await.unwrap();
    let second = open().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    expect_problem(
        open().await.unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
    )
    .await;
    // A refused stream for an unknown product does not hold a slot either.
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = open().await.unwrap();
    assert_eq!(third.status(), StatusCode::OK);
    app.shutdown().await;
}

#[tokio::test]
async fn rotated_keys_issuer_and_audience_through_the_server() {
    let previous = "previous-secret-previous-secret-previous";
    let app = TestApp::spawn_with(&[
        ("CHECKLINE_JWT_PREVIOUS_SECRETS", previous),
        ("CHECKLINE_JWT_ISSUER", "checkline"),
        ("CHECKLINE_JWT_AUDIENCE", "storefront"),
    ])
    .await;
    let mint = |secret: &str, iss: Option<&str>, aud: Option<&str>| {
        checkline_api::auth::mint_with(secret.as_bytes(), "alice", &["customer"], 60, iss, aud)
            .unwrap()
    };
    let list = |token: String| {
        app.http
            .get(app.url("/v1/orders"))
            .bearer_auth(token)
            .send()
    };
    let good = Some("checkline");
    let aud = Some("storefront");
    assert_eq!(
        list(mint(SECRET, good, aud)).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        list(mint(previous, good, aud)).await.unwrap().status(),
        StatusCode::OK
    );
    for token in [
        mint("some-other-secret-some-other-secret-x", good, aud),
        mint(SECRET, None, aud),
        mint(SECRET, good, None),
        mint(SECRET, Some("elsewhere"), aud),
        mint(SECRET, good, Some("elsewhere")),
    ] {
        expect_problem(
            list(token).await.unwrap(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    app.shutdown().await;
}

#[tokio::test]
async fn roles_are_enforced_on_every_route_and_orders_stay_private() {
    let mut app = TestApp::spawn_without_worker().await;
    let product = app.create_product(10, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let alice = app.customer("alice");
    let bob = app.customer("bob");
    let order: Value = app.order(&alice, "k", &pid, 1).await.json().await.unwrap();
    let oid = order["id"].as_str().unwrap().to_owned();
    let nobody = checkline_api::auth::mint(SECRET.as_bytes(), "nobody", &[], 60).unwrap();
    let viewer = checkline_api::auth::mint(SECRET.as_bytes(), "viewer", &["viewer"], 60).unwrap();

    // (method, path, roles allowed): every authenticated route of the contract.
    let customer_or_admin: &[&str] = &["customer", "admin"];
    let routes: [(&str, String, &[&str]); 12] = [
        ("POST", "/v1/products".to_owned(), &["admin"]),
        ("PATCH", format!("/v1/products/{pid}"), &["admin"]),
        ("POST", format!("/v1/products/{pid}/restock"), &["admin"]),
        ("GET", "/v1/admin/stats".to_owned(), &["admin"]),
        ("GET", "/v1/admin/audit".to_owned(), &["admin"]),
        ("GET", "/v1/admin/dead-letters".to_owned(), &["admin"]),
        (
            "POST",
            "/v1/admin/dead-letters/1/replay".to_owned(),
            &["admin"],
        ),
        ("POST", "/v1/orders".to_owned(), &["customer"]),
        ("GET", "/v1/orders".to_owned(), &["customer"]),
        ("GET", format!("/v1/orders/{oid}"), customer_or_admin),
        ("GET", format!("/v1/orders/{oid}?wait=1"), customer_or_admin),
        ("GET", format!("/v1/orders/{oid}/events"), customer_or_admin),
    ];
    for (method, path, allowed) in &routes {
        let request = |token: Option<&str>| {
            let mut r = app
                .http
                .request(method.parse().unwrap(), app.url(path))
                .header("idempotency-key", "role-check")
                .header("content-type", "application/json")
                .body("{}");
            if let Some(token) = token {
                r = r.bearer_auth(token);
            }
            r.send()
        };
        expect_problem(
            request(None).await.unwrap(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        // A valid token without a role the route takes is 403, whatever
        // the route would answer otherwise.
        let wrong_roles = [("customer", &alice), ("admin", &app.admin)]
            .into_iter()
            .filter(|(role, _)| !allowed.contains(role))
            .map(|(_, token)| token);
        for token in [&nobody, &viewer].into_iter().chain(wrong_roles) {
            let response = request(Some(token)).await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::FORBIDDEN,
                "{method} {path} with roles other than {allowed:?}"
            );
            expect_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
        }
    }
    // Another customer's order does not exist for bob, in any form.
    for path in [
        format!("/v1/orders/{oid}"),
        format!("/v1/orders/{oid}/events"),
    ] {
        let response = app
            .http
            .get(app.url(&path))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap();
        expect_problem(response, StatusCode::NOT_FOUND, "order_not_found").await;
        let response = app.http.get(app.url(&path)).send().await.unwrap();
        expect_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let listed: Value = app
        .http
        .get(app.url("/v1/orders"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 0);
    // The owner and an admin see it.
    for token in [&alice, &app.admin] {
        let response = app
            .http
            .get(app.url(&format!("/v1/orders/{oid}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    app.stop_worker().await;
    app.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_open_requests_finish() {
    let app = TestApp::spawn_without_worker().await;
    let product = app.create_product(5, None).await;
    let alice = app.customer("alice");
    let order: Value = app
        .order(&alice, "k", product["id"].as_str().unwrap(), 1)
        .await
        .json()
        .await
        .unwrap();
    let addr = addr_of(&app);
    // A long poll on an order that no worker will decide.
    let poll = app
        .http
        .get(app.url(&format!(
            "/v1/orders/{}?wait=2",
            order["id"].as_str().unwrap()
        )))
        .bearer_auth(&alice)
        .send();
    let poll = tokio::spawn(poll);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::spawn(app.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The listener is closed at once...
    assert!(TcpStream::connect(&addr).await.is_err(), "still accepting");
    // ...and the open request is answered in full.
    let response = poll.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    stopping.await.unwrap();
}

#[tokio::test]
async fn event_streams_from_one_ipv6_64_share_the_per_address_cap() {
    let app = TestApp::spawn_with(&[
        ("CHECKLINE_SSE_MAX_STREAMS_PER_ADDR", "2"),
        ("CHECKLINE_RATE_TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    let product = app.create_product(5, None).await;
    let url = app.url(&format!(
        "/v1/products/{}/events",
        product["id"].as_str().unwrap()
    ));
    let open = |client: &'static str| {
        reqwest::Client::new()
            .get(&url)
            .header("x-forwarded-for", client)
            .send()
    };
    let first = open("2001:db8:1:2::1").await.unwrap();
    let second = open("2001:db8:1:2::2").await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    // A third address of the same /64 is the same client.
    expect_problem(
        open("2001:db8:1:2:ffff::3").await.unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
    )
    .await;
    // Another /64 has its own share.
    let other = open("2001:db8:1:3::1").await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        open("2001:db8:1:2::4").await.unwrap().status(),
        StatusCode::OK
    );
    drop((second, other));
    app.shutdown().await;
}

#[tokio::test]
async fn reusing_a_key_with_other_bodies_is_charged_but_true_retries_are_not() {
    let app = TestApp::spawn_with(&[
        ("CHECKLINE_RATE_ORDERS_PER_SEC", "1"),
        ("CHECKLINE_RATE_ORDERS_BURST", "2"),
    ])
    .await;
    let product = app.create_product(100, None).await;
    let pid = product["id"].as_str().unwrap();
    let alice = app.customer("alice");
    let first = app.order(&alice, "k1", pid, 1).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    // One key, other requests: other quantities, other products.
    let mut statuses = Vec::new();
    for i in 0..20 {
        let response = if i % 2 == 0 {
            app.order(&alice, "k1", pid, 2 + i).await
        } else {
            app.order(&alice, "k1", &uuid::Uuid::new_v4().to_string(), 1)
                .await
        };
        statuses.push(response.status());
    }
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(limited >= 16, "{statuses:?}");
    // The request that was let through, repeated, is never charged.
    for _ in 0..10 {
        let replay = app.order(&alice, "k1", pid, 1).await;
        assert_eq!(replay.status(), StatusCode::OK);
        let order: Value = replay.json().await.unwrap();
        assert_eq!(order["id"], first["id"]);
    }
    app.shutdown().await;
}

#[tokio::test]
async fn every_rejection_is_a_problem_document_with_a_code() {
    let app = TestApp::spawn_without_worker().await;
    let product = app.create_product(5, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let alice = app.customer("alice");
    let admin = app.admin.clone();
    let unknown = uuid::Uuid::new_v4();
    let order = format!(r#"{{"product_id":"{pid}","quantity":1}}"#);
    let big = format!(
        r#"{{"product_id":"{}","quantity":1}}"#,
        "x".repeat(17 * 1024)
    );
    let ct: (&str, &[u8]) = ("content-type", b"application/json");
    let k: (&str, &[u8]) = ("idempotency-key", b"rejections-1");
    let (alice, admin) = (alice.as_str(), admin.as_str());
    type Case<'a> = (
        &'a str,
        String,
        Option<&'a str>,
        Vec<(&'a str, &'a [u8])>,
        &'a str,
        u16,
        &'a str,
    );
    let case = |method, path, token, headers, body, status, code| -> Case {
        (method, path, token, headers, body, status, code)
    };
    let cases = vec![
        // Paths that are not UTF-8 once decoded, on every route with an id.
        case(
            "GET",
            "/v1/orders/%FF".into(),
            Some(alice),
            vec![],
            "",
            400,
            "invalid_id",
        ),
        case(
            "GET",
            "/v1/orders/%C3%28".into(),
            Some(alice),
            vec![],
            "",
            400,
            "invalid_id",
        ),
        case(
            "GET",
            "/v1/orders/%FF/events".into(),
            Some(alice),
            vec![],
            "",
            400,
            "invalid_id",
        ),
        case(
            "GET",
            "/v1/products/%FF".into(),
            None,
            vec![],
            "",
            400,
            "invalid_id",
        ),
        case(
            "GET",
            "/v1/products/%FF/events".into(),
            None,
            vec![],
            "",
            400,
            "invalid_id",
        ),
        case(
            "PATCH",
            "/v1/products/%FF".into(),
            Some(admin),
            vec![ct],
            "{}",
            400,
            "invalid_id",
        ),
        case(
            "POST",
            "/v1/products/%FF/restock".into(),
            Some(admin),
            vec![ct, k],
            r#"{"quantity":1}"#,
            400,
            "invalid_id",
        ),
        case(
            "GET",
            "/v1/orders/not-a-uuid".into(),
            Some(alice),
            vec![],
            "",
            400,
            "invalid_id",
        ),
        // Without a token, the token is what is wrong first.
        case(
            "GET",
            "/v1/orders/%FF".into(),
            None,
            vec![],
            "",
            401,
            "unauthorized",
        ),
        // Query strings.
        case(
            "GET",
            "/v1/orders?limit=abc".into(),
            Some(alice),
            vec![],
            "",
            400,
            "invalid_request",
        ),
        case(
            "GET",
            "/v1/orders?cursor=%FF".into(),
            Some(alice),
            vec![],
            "",
            400,
            "invalid_request",
        ),
        case(
            "GET",
            "/v1/products?limit=abc".into(),
            None,
            vec![],
            "",
            400,
            "invalid_request",
        ),
        case(
            "GET",
            "/v1/products?limit=%FF%FE".into(),
            None,
            vec![],
            "",
            400,
            "invalid_request",
        ),
        case(
            "GET",
            format!("/v1/orders/{unknown}?wait=x"),
            Some(alice),
            vec![],
            "",
            400,
            "invalid_request",
        ),
        case(
            "GET",
            format!("/v1/orders/{unknown}?wait=%FF"),
            Some(alice),
            vec![],
            "",
            400,
            "invalid_request",
        ),
        case(
            "GET",
            format!("/v1/orders/{unknown}?other=1"),
            Some(alice),
            vec![],
            "",
            400,
            "invalid_request",
        ),
        // Headers.
        case(
            "GET",
            "/v1/orders".into(),
            None,
            vec![("authorization", b"Basic YTpi")],
            "",
            401,
            "unauthorized",
        ),
        case(
            "GET",
            "/v1/orders".into(),
            None,
            vec![("authorization", b"Bearer \xff\xfe")],
            "",
            401,
            "unauthorized",
        ),
        case(
            "POST",
            "/v1/orders".into(),
            Some(alice),
            vec![ct],
            &order,
            400,
            "missing_idempotency_key",
        ),
        case(
            "POST",
            "/v1/orders".into(),
            Some(alice),
            vec![ct, ("idempotency-key", b"a b")],
            &order,
            400,
            "invalid_idempotency_key",
        ),
        case(
            "POST",
            "/v1/orders".into(),
            Some(alice),
            vec![ct, ("idempotency-key", b"\xff")],
            &order,
            400,
            "invalid_idempotency_key",
        ),
        // Bodies.
        case(
            "POST",
            "/v1/orders".into(),
            Some(alice),
            vec![k],
            &order,
            415,
            "unsupported_media_type",
        ),
        case(
            "POST",
            "/v1/orders".into(),
            Some(alice),
            vec![k, ("content-type", b"text/plain")],
            &order,
            415,
            "unsupported_media_type",
        ),
        case(
            "POST",
            "/v1/orders".into(),
            Some(alice),
            vec![k, ("content-type", b"\xff")],
            &order,
            415,
            "unsupported_media_type",
        ),
        case(
            "POST",
            "/v1/orders".into(),
            Some(alice),
            vec![ct, k],
            "{",
            400,
            "invalid_request",
        ),
        case(
            "POST",
            "/v1/orders".into(),
            Some(alice),
            vec![ct, k],
            "\u{feff}{}",
            400,
            "invalid_request",
        ),
        case(
            "POST",
            "/v1/orders".into(),
            Some(alice),
            vec![ct, k],
            r#"{"product_id":1,"quantity":"x"}"#,
            400,
            "invalid_request",
        ),
        case(
            "POST",
            "/v1/orders".into(),
            Some(alice),
            vec![ct, k],
            "[]",
            400,
            "invalid_request",
        ),
        case(
            "POST",
            "/v1/orders".into(),
            Some(alice),
            vec![ct, k],
            &big,
            413,
            "payload_too_large",
        ),
        case(
            "POST",
            "/v1/products".into(),
            Some(admin),
            vec![ct],
            r#"{"sku":7}"#,
            400,
            "invalid_request",
        ),
        case(
            "PATCH",
            format!("/v1/products/{pid}"),
            Some(admin),
            vec![ct],
            r#"{"price_cents":"x"}"#,
            400,
            "invalid_request",
        ),
        // Routing.
        case(
            "DELETE",
            "/v1/orders".into(),
            Some(alice),
            vec![],
            "",
            405,
            "method_not_allowed",
        ),
        case(
            "GET",
            "/v1/nowhere".into(),
            None,
            vec![],
            "",
            404,
            "not_found",
        ),
    ];
    for (method, path, token, headers, body, status, code) in cases {
        let mut request = app
            .http
            .request(method.parse().unwrap(), app.url(&path))
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(
                name,
                reqwest::header::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let what = format!("{method} {path} ({code})");
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{what}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], code, "{what}");
        assert_eq!(body["status"], status, "{what}");
    }
    app.shutdown().await;
}
