//! A message that can never be processed is dead-lettered with its reason
//! and does not block its partition; ops can list and inspect it.

use checkline_e2e::TestApp;
use checkline_shared::partition::Partition;
use checkline_shared::subjects::Subjects;
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
    let partition: Partition = serde_json::from_value(product["partition"].clone()).unwrap();
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
    let letters = checkline_shared::deadletter::list(&mut stream, &subjects, 10)
        .await
        .unwrap()
        .letters;
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
    let output = tokio::process::Command::new(crate::process::worker_binary())
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

async fn metric(app: &TestApp, addr: &str, name: &str) -> u64 {
    // Nothing yet while the worker is still starting.
    let Ok(response) = app.http.get(format!("http://{addr}/metrics")).send().await else {
        return 0;
    };
    let text = response.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_full_dead_letter_stream_holds_the_partition_and_loses_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    // Room for one of the poison messages below, not two.
    let mut app = TestApp::spawn_with(&[
        ("CHECKLINE_WORKER_METRICS_ADDR", metrics_addr.as_str()),
        ("CHECKLINE_DEAD_LETTER_MAX_BYTES", "1024"),
        ("CHECKLINE_RETRY_MAX_DELAY_MS", "500"),
    ])
    .await;
    app.start_worker().await;
    let product = app.create_product(5, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let partition: Partition = serde_json::from_value(product["partition"].clone()).unwrap();
    let subjects = Subjects::new(&app.env.config.prefix);

    let client = async_nats::connect(app.env.config.nats_url.as_str())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = subjects.product_queue(partition, pid.parse().unwrap());
    let mut poison = Vec::new();
    for n in 1..=2 {
        let payload = format!(
            "{{\"type\":\"mystery-{n}\",\"pad\":\"{}\"}}",
            "x".repeat(600)
        );
        js.publish(subject.clone(), payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
        poison.push(payload);
    }
    let alice = app.customer("alice");
    let response = app.order(&alice, "k", &pid, 1).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The first is stored, the second does not fit: the partition waits at
    // it, and says so, rather than move past a dead letter it lost.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while metric(
        &app,
        &metrics_addr,
        "checkline_worker_dead_letter_failures_total",
    )
    .await
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed dead letter counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut stream = js.get_stream(subjects.dead_letter_stream()).await.unwrap();
    let letters = checkline_shared::deadletter::list(&mut stream, &subjects, 10)
        .await
        .unwrap()
        .letters;
    assert_eq!(letters.len(), 1, "only the first fits");
    assert_eq!(&letters[0].payload[..], poison[0].as_bytes());
    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(
        status, "pending",
        "the partition waits at the second poison"
    );

    // Ops clear the dead letters (after reading them): the partition goes on.
    stream.purge().await.unwrap();
    assert_eq!(
        app.decided(&alice, &id).await["status"],
        "confirmed",
        "the partition moved on once there was room"
    );
    let letters = checkline_shared::deadletter::list(&mut stream, &subjects, 10)
        .await
        .unwrap()
        .letters;
    assert!(
        letters
            .iter()
            .any(|l| &l.payload[..] == poison[1].as_bytes()),
        "the second dead letter was kept: {letters:?}"
    );
    app.shutdown().await;
}
