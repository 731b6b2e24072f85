//! `CHECKLINE_NATS_URL` as a list of servers and `CHECKLINE_STREAM_REPLICAS`,
//! on the tests' single server. What needs a real three-node cluster (a
//! killed stream leader, a paused follower, a worker outliving its server)
//! is scripts/cluster-suite.sh.

use std::process::Stdio;
use std::time::Duration;

use checkline_e2e::TestApp;
use tokio::process::Command;

use crate::process::worker_binary;

/// A loopback port nothing listens on.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Servers are tried in turn: with a dead server listed before the live one,
/// the API and the worker still start, and an order is taken and decided.
#[tokio::test]
async fn a_dead_server_in_the_list_is_passed_over() {
    let base = TestApp::spawn_without_worker().await;
    let live = base.env.config.nats_url.clone();
    base.shutdown().await;
    let list = format!(
        "nats://127.0.0.1:{},{live},nats://127.0.0.1:{}",
        dead_port(),
        dead_port()
    );
    let mut app = TestApp::spawn_with(&[("CHECKLINE_NATS_URL", list.as_str())]).await;
    app.start_worker().await;
    let product = app.create_product(3, None).await;
    let token = app.customer("ann");
    let response = app
        .order(&token, "list-1", product["id"].as_str().unwrap(), 1)
        .await;
    assert_eq!(response.status(), 202);
    let order: serde_json::Value = response.json().await.unwrap();
    let decided = app.decided(&token, order["id"].as_str().unwrap()).await;
    assert_eq!(decided["status"], "confirmed", "{decided}");
    app.shutdown().await;
}

/// More replicas than the servers can place is refused at start-up, and the
/// error names the setting, instead of a bare JetStream error code.
#[tokio::test]
async fn replicas_beyond_the_servers_stop_the_worker_naming_the_setting() {
    let app = TestApp::spawn_without_worker().await;
    let mut worker = Command::new(worker_binary())
        .envs(app.worker_vars("replicas"))
        .env("CHECKLINE_STREAM_REPLICAS", "3")
        .env("CHECKLINE_STARTUP_TIMEOUT_MS", "2000")
        .env("CHECKLINE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("worker binary starts");
    let mut stderr = worker.stderr.take().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker stops at start-up")
        .unwrap();
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text)
        .await
        .unwrap();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("CHECKLINE_STREAM_REPLICAS=3"),
        "the error should name the setting: {text}"
    );
    app.shutdown().await;
}
