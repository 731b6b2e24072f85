//! A message that can never be processed is dead-lettered with its reason
//! and does not block its partition; ops can list, inspect and replay it,
//! with the worker's command line or over HTTP.

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

/// `GET /v1/admin/dead-letters` with `query` as `token` (none: no header).
async fn list_over_http(app: &TestApp, query: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .get(app.url(&format!("/v1/admin/dead-letters{query}")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// `POST /v1/admin/dead-letters/{sequence}/replay` as `token`.
async fn replay_over_http(app: &TestApp, sequence: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url(&format!("/v1/admin/dead-letters/{sequence}/replay")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn expect_problem(response: reqwest::Response, status: StatusCode, code: &str) {
    assert_eq!(response.status(), status, "expected {code}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
}

/// The admin's listing, oldest first, once it holds `n` letters.
async fn letters_over_http(app: &TestApp, query: &str, n: usize) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let response = list_over_http(app, query, Some(&app.admin)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        if body["total"] == n as u64 {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {n} dead letters: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn sequence_of(letter: &Value) -> u64 {
    letter["sequence"].as_u64().unwrap()
}

#[tokio::test]
async fn ops_list_and_replay_dead_letters_over_http() {
    let mut app = TestApp::spawn_without_worker().await;
    let product = app.create_product(5, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let partition: Partition = serde_json::from_value(product["partition"].clone()).unwrap();
    let subjects = Subjects::new(&app.env.config.prefix);

    // Before any worker declared the stream: no dead letters, no replay.
    let empty: Value = list_over_http(&app, "", Some(&app.admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(empty, serde_json::json!({"items": [], "total": 0}));
    expect_problem(
        replay_over_http(&app, "1", Some(&app.admin)).await,
        StatusCode::NOT_FOUND,
        "dead_letter_not_found",
    )
    .await;

    // Three poison messages on the product's queue.
    let client = async_nats::connect(app.env.config.nats_url.as_str())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = subjects.product_queue(partition, pid.parse().unwrap());
    let poison: Vec<String> = (1..=3)
        .map(|n| format!("{{\"type\":\"mystery-{n}\"}}"))
        .collect();
    let mut queued = Vec::new();
    for payload in &poison {
        let ack = js
            .publish(subject.clone(), payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
        queued.push(ack.sequence);
    }
    app.start_worker().await;

    // Listed oldest first, `limit` of them, with the count of all.
    let listed = letters_over_http(&app, "?limit=2", 3).await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{listed}");
    assert!(sequence_of(&items[0]) < sequence_of(&items[1]));
    let first = &items[0];
    let mut keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "original_sequence",
            "original_subject",
            "partition",
            "payload",
            "payload_bytes",
            "reason",
            "sequence",
            "stored_at"
        ]
    );
    assert_eq!(first["original_subject"], subject.as_str());
    assert_eq!(first["original_sequence"], queued[0]);
    assert_eq!(first["partition"], product["partition"]);
    assert_eq!(first["payload"], poison[0].as_str());
    assert_eq!(first["payload_bytes"], poison[0].len());
    assert!(
        first["reason"].as_str().unwrap().contains("mystery-1"),
        "the reason says why: {first}"
    );
    let stored_at =
        chrono::DateTime::parse_from_rfc3339(first["stored_at"].as_str().unwrap()).unwrap();
    let age = chrono::Utc::now().signed_duration_since(stored_at);
    assert!(
        age >= chrono::Duration::zero() - chrono::Duration::seconds(5)
            && age < chrono::Duration::seconds(60),
        "stored_at is the time it was stored: {stored_at}"
    );
    let all = letters_over_http(&app, "", 3).await;
    let sequences: Vec<u64> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(sequence_of)
        .collect();
    assert_eq!(sequences.len(), 3);
    assert_eq!(
        &sequences[..2],
        &[sequence_of(first), sequence_of(&items[1])]
    );

    // Refused: bad limits, other roles, no token, bad sequences.
    for query in ["?limit=0", "?limit=201", "?limit=x", "?cursor=1"] {
        expect_problem(
            list_over_http(&app, query, Some(&app.admin)).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
    let alice = app.customer("alice");
    let one = sequence_of(first).to_string();
    expect_problem(
        list_over_http(&app, "", Some(&alice)).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        replay_over_http(&app, &one, Some(&alice)).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_problem(
        list_over_http(&app, "", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    expect_problem(
        replay_over_http(&app, &one, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    for bad in ["0", "-1", "x", "1.5", "99999999999999999999999"] {
        expect_problem(
            replay_over_http(&app, bad, Some(&app.admin)).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
    expect_problem(
        replay_over_http(&app, "999999", Some(&app.admin)).await,
        StatusCode::NOT_FOUND,
        "dead_letter_not_found",
    )
    .await;

    // Replayed: published again to its subject and removed. Still poison,
    // the worker sets it aside again, under a new sequence, at the end.
    let response = replay_over_http(&app, &one, Some(&app.admin)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let replayed: Value = response.json().await.unwrap();
    assert_eq!(
        replayed,
        serde_json::json!({"sequence": sequence_of(first), "subject": subject})
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let after = loop {
        let now = letters_over_http(&app, "", 3).await;
        let items = now["items"].as_array().unwrap().clone();
        if items.iter().all(|l| sequence_of(l) != sequence_of(first)) {
            break items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replayed letter is still listed: {now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let again = &after[2];
    assert_eq!(
        after.iter().map(sequence_of).take(2).collect::<Vec<_>>(),
        &sequences[1..]
    );
    assert!(sequence_of(again) > sequences[2], "{after:?}");
    assert_eq!(again["payload"], poison[0].as_str());
    assert_eq!(again["original_subject"], subject.as_str());
    assert!(
        again["original_sequence"].as_u64().unwrap() > queued[2],
        "it went through the queue again: {again}"
    );
    // The old sequence is gone for good.
    expect_problem(
        replay_over_http(&app, &one, Some(&app.admin)).await,
        StatusCode::NOT_FOUND,
        "dead_letter_not_found",
    )
    .await;
    // And the partition was never blocked.
    let order = app.order(&alice, "after", &pid, 1).await;
    assert_eq!(order.status(), StatusCode::ACCEPTED);
    let id = order.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.decided(&alice, &id).await["status"], "confirmed");
    app.shutdown().await;
}

#[tokio::test]
async fn a_valid_message_dead_lettered_is_decided_once_replayed() {
    // No sweep in this test: only the replay can queue the order again.
    let mut app = TestApp::spawn_with(&[("CHECKLINE_REQUEUE_AFTER_MS", "86400000")]).await;
    let product = app.create_product(5, None).await;
    let pid = product["id"].as_str().unwrap().to_owned();
    let partition: Partition = serde_json::from_value(product["partition"].clone()).unwrap();
    let subjects = Subjects::new(&app.env.config.prefix);
    let alice = app.customer("alice");
    let response = app.order(&alice, "set-aside", &pid, 1).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The order's message is set aside as a worker that could not read it
    // would (say, a worker older than the API that wrote it): copied to
    // the dead letters and gone from the queue.
    let client = async_nats::connect(app.env.config.nats_url.as_str())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = subjects.product_queue(partition, pid.parse().unwrap());
    let queue = js.get_stream(subjects.stream_name()).await.unwrap();
    let message = queue
        .get_last_raw_message_by_subject(&subject)
        .await
        .unwrap();
    checkline_worker::deadletter::ensure_stream(&js, &subjects, 1024 * 1024, 1)
        .await
        .unwrap();
    checkline_worker::deadletter::send(
        &js,
        &subjects,
        partition,
        &subject,
        message.sequence,
        message.payload.clone(),
        "unknown variant (written by a newer version)",
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(queue.delete_message(message.sequence).await.unwrap());

    // The worker moves past it: an order queued after it is decided, and
    // it is not.
    app.start_worker().await;
    let response = app.order(&alice, "behind", &pid, 1).await;
    let behind = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.decided(&alice, &behind).await["status"], "confirmed");
    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.env.pool)
        .await
        .unwrap();
    assert_eq!(status, "pending");

    // Replayed, it joins the end of the queue and is decided.
    let listed = letters_over_http(&app, "", 1).await;
    let letter = &listed["items"][0];
    assert_eq!(
        letter["payload"],
        String::from_utf8_lossy(&message.payload).as_ref()
    );
    let response = replay_over_http(&app, &sequence_of(letter).to_string(), Some(&app.admin)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let decided = app.decided(&alice, &id).await;
    assert_eq!(decided["status"], "confirmed", "{decided}");
    assert_eq!(app.product(&pid).await["stock"], 3);
    assert_eq!(
        letters_over_http(&app, "", 0).await["items"],
        serde_json::json!([])
    );
    app.shutdown().await;
}

#[tokio::test]
async fn listing_skips_replayed_letters_without_visiting_them() {
    let env = checkline_e2e::env::TestEnv::new(2).await;
    let subjects = Subjects::new(&env.config.prefix);
    let client = async_nats::connect(env.config.nats_url.as_str())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    checkline_worker::deadletter::ensure_stream(&js, &subjects, 16 * 1024 * 1024, 1)
        .await
        .unwrap();
    // One letter of partition 0, then a thousand of partition 1 of which
    // only the last is left: a gap of removed sequences in between.
    let (p0, p1) = (
        subjects.dead_letter_subject(Partition::new(0)),
        subjects.dead_letter_subject(Partition::new(1)),
    );
    let gap = 1_000;
    js.publish(p0, "first".into()).await.unwrap().await.unwrap();
    let mut last = 0;
    // In rounds, so that no acknowledgement waits behind too many fsyncs.
    for round in (0..=gap).collect::<Vec<_>>().chunks(100) {
        let mut acks = Vec::new();
        for n in round {
            acks.push(js.publish(p1.clone(), n.to_string().into()).await.unwrap());
        }
        for ack in acks {
            last = ack.await.unwrap().sequence;
        }
    }
    let stream = js.get_stream(subjects.dead_letter_stream()).await.unwrap();
    stream.purge().filter(&p1).sequence(last).await.unwrap();

    // Listed from a connection of its own, whose messages are counted.
    let counted = async_nats::connect(env.config.nats_url.as_str())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(counted.clone());
    let mut stream = js.get_stream(subjects.dead_letter_stream()).await.unwrap();
    let sent = || {
        counted
            .statistics()
            .out_messages
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = sent();
    let listing = checkline_shared::deadletter::list(&mut stream, &subjects, 10)
        .await
        .unwrap();
    let requests = sent() - before;
    let payloads: Vec<&[u8]> = listing.letters.iter().map(|l| &l.payload[..]).collect();
    assert_eq!(payloads, [&b"first"[..], gap.to_string().as_bytes()]);
    assert_eq!(listing.letters[1].sequence, last);
    assert_eq!(listing.total, 2);
    // The stream's state, then one request per letter and one that finds
    // no more.
    assert!(requests <= 4, "{requests} requests for 2 letters");
    env.cleanup().await;
}
