//! A message that can never be processed is dead-lettered with its reason
//! and does not block its partition; ops can list and inspect it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../api/tests/common/mod.rs"]
mod common;

use checkline_shared::subjects::Subjects;
use common::TestApp;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn poison_is_dead_lettered_and_the_partition_moves_on() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut app =
        TestApp::spawn_with(&[("CHECKLINE_WORKER_METRICS_ADDR", metrics_addr.as_str())]).await;
    app.start_worker().await;
    let product = app.create_product(5, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let partition = u32::try_from(product["partition"].as_i64().unwrap()).unwrap();
    let subjects = Subjects::new(&app.env.config.prefix);

    // Garbage on the product's queue, ahead of a real order.
    let client = async_nats::connect(app.env.config.nats_url.as_str())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = subjects.product_queue(partition, pid.parse().unwrap());
    js.publish(subject.clone(), "{\"type\":\"mystery\"}".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let alice = app.customer("alice");
    let response = app.order(&alice, "k", &pid, 1).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.decided(&alice, &id).await["status"],
        "confirmed",
        "the poison did not block the partition"
    );

    let mut stream = js.get_stream(subjects.dead_letter_stream()).await.unwrap();
    let letters = checkline_worker::deadletter::list(&mut stream, 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].original_subject, subject);
    assert!(
        letters[0].reason.contains("mystery"),
        "reason says why: {}",
        letters[0].reason
    );
    assert_eq!(&letters[0].payload[..], b"{\"type\":\"mystery\"}");

    // The worker's metrics count the decision and the dead letter.
    let metrics = app
        .http
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("checkline_worker_decisions_total{outcome=\"confirmed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("checkline_worker_dead_letters_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("checkline_worker_partitions_owned 4"),
        "{metrics}"
    );

    // The ops command sees it too.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_checkline-worker"))
        .args(["dead-letters", "list"])
        .envs(app.worker_vars("ops"))
        .env_remove("CHECKLINE_WORKER_METRICS_ADDR")
        .env("CHECKLINE_WORKER_METRICS_ADDR", "")
        .env("CHECKLINE_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&subject) && text.contains("1 dead letter(s)"),
        "{text}"
    );
    app.shutdown().await;
}
