//! The activity series (`GET /v1/admin/activity`): orders accepted and
//! decided per second, counted for the whole deployment by every API
//! instance.

use std::time::Duration;

use checkline_e2e::TestApp;
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn activity(app: &TestApp, base: &str, query: &str) -> reqwest::Response {
    app.http
        .get(format!("{base}/v1/admin/activity{query}"))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap()
}

/// Sums of `accepted` and `decided` over a series.
fn totals(series: &Value) -> (u64, u64) {
    series["points"]
        .as_array()
        .unwrap()
        .iter()
        .fold((0, 0), |(a, d), p| {
            (
                a + p["accepted"].as_u64().unwrap(),
                d + p["decided"].as_u64().unwrap(),
            )
        })
}

#[tokio::test]
async fn activity_is_admin_only_and_seconds_is_10_to_600() {
    let app = TestApp::spawn_without_worker().await;
    let url = app.url("/v1/admin/activity");
    let anonymous = app.http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let customer = app
        .http
        .get(&url)
        .bearer_auth(app.customer("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(customer.status(), StatusCode::FORBIDDEN);
    for query in ["?seconds=9", "?seconds=601", "?seconds=ten", "?minutes=5"] {
        let response = activity(&app, &app.base, query).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["code"],
            "invalid_request"
        );
    }

    // 300 seconds by default, every one there, ending with the last
    // complete second.
    for (query, n) in [("", 300), ("?seconds=10", 10), ("?seconds=600", 600)] {
        let before = Utc::now().timestamp();
        let response = activity(&app, &app.base, query).await;
        let after = Utc::now().timestamp();
        assert_eq!(response.status(), StatusCode::OK);
        let series: Value = response.json().await.unwrap();
        assert_eq!(series["interval_secs"], 1);
        let points = series["points"].as_array().unwrap();
        assert_eq!(points.len(), n, "{query}");
        let seconds: Vec<i64> = points
            .iter()
            .map(|p| {
                let at = p["at"].as_str().unwrap();
                assert!(at.ends_with('Z') && !at.contains('.'), "{at}");
                at.parse::<DateTime<Utc>>().unwrap().timestamp()
            })
            .collect();
        assert!(seconds.windows(2).all(|w| w[1] == w[0] + 1), "{query}");
        let last = *seconds.last().unwrap();
        assert!((before - 1..after).contains(&last), "{last} {before}");
        assert_eq!(totals(&series), (0, 0), "nothing ordered yet");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn every_api_instance_counts_the_orders_accepted_and_decided_by_all() {
    let mut app = TestApp::spawn().await;
    let second = app.start_api().await;
    let product = app.create_product(100, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();

    // Six orders through the first instance, four through the second.
    let mut placed = Vec::new();
    for i in 0..10 {
        let base = if i < 6 { &app.base } else { &second };
        let token = app.customer(&format!("buyer-{i}"));
        let response = app
            .http
            .post(format!("{base}/v1/orders"))
            .bearer_auth(&token)
            .header("idempotency-key", format!("k-{i}"))
            .json(&json!({"product_id": pid, "quantity": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let id = response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        placed.push((token, id));
    }
    for (token, id) in &placed {
        app.decided(token, id).await;
    }

    // Each instance's samples reach the other within about a second.
    for base in [app.base.clone(), second.clone()] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let series: Value = activity(&app, &base, "?seconds=60")
                .await
                .json()
                .await
                .unwrap();
            let counted = totals(&series);
            if counted == (10, 10) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{base}: counted {counted:?} of 10 accepted and 10 decided"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // Nothing is counted twice later (an instance's own samples coming
    // back, say).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for base in [&app.base, &second] {
        let series: Value = activity(&app, base, "?seconds=60")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(totals(&series), (10, 10), "{base}");
    }
    app.shutdown().await;
}
