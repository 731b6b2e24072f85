//! The real API (in process, on a random port) and a real in-process
//! worker, against the real PostgreSQL, NATS and Redis named by the
//! `CHECKLINE_*` variables, isolated by a fresh database and prefix per test.

use std::sync::Arc;
use std::time::Duration;

use crate::env::TestEnv;
use checkline_api::{ApiConfig, Application};
use checkline_shared::config::Env;
use checkline_worker::WorkerConfig;
use futures::future::join_all;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SECRET: &str = "test-secret-test-secret-test-secret!";

struct Task {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<()>,
}

impl Task {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(15), self.handle).await;
    }
}

pub struct TestApp {
    pub env: TestEnv,
    pub base: String,
    pub http: reqwest::Client,
    pub admin: String,
    api: Option<Task>,
    /// API instances started beside the first ([`TestApp::start_api`]).
    more_apis: Vec<Task>,
    worker: Option<Task>,
    extra: Vec<(String, String)>,
}

/// Builds an API instance from `vars` and runs it until its task is
/// stopped; returns the task and the instance's base URL.
async fn start_api_task(vars: &[(String, String)]) -> (Task, String) {
    let config = ApiConfig::from_env(&Env::from_pairs(
        vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ))
    .expect("api config");
    let app = Application::build(config).await.expect("api starts");
    let addr = app.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let _ = app
            .run_until_stopped(async move {
                let _ = stopped.await;
            })
            .await;
    });
    (Task { stop, handle }, format!("http://{addr}"))
}

impl TestApp {
    /// API and one in-process worker.
    pub async fn spawn() -> Self {
        let mut app = Self::spawn_without_worker().await;
        app.start_worker().await;
        app
    }

    /// The API alone: orders stay pending until a worker starts.
    pub async fn spawn_without_worker() -> Self {
        Self::spawn_with(&[]).await
    }

    /// The API alone, with extra `CHECKLINE_*` settings for API and workers.
    pub async fn spawn_with(extra: &[(&str, &str)]) -> Self {
        let env = TestEnv::new(4).await;
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut app = Self {
            env,
            base: String::new(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            admin: checkline_api::auth::mint(SECRET.as_bytes(), "admin", &["admin"], 3600).unwrap(),
            api: None,
            more_apis: Vec::new(),
            worker: None,
            extra,
        };
        let (api, base) = start_api_task(&app.api_vars()).await;
        app.api = Some(api);
        app.base = base;
        app
    }

    /// Settings an API instance of this app runs with.
    fn api_vars(&self) -> Vec<(String, String)> {
        let mut vars = self.env.vars();
        vars.push(("CHECKLINE_JWT_SECRET".into(), SECRET.into()));
        vars.push(("CHECKLINE_HTTP_ADDR".into(), "127.0.0.1:0".into()));
        vars.extend(self.extra.iter().cloned());
        vars
    }

    /// Starts another API instance on this app's database and prefix (in
    /// process, with its own port, connections and state, as a second API
    /// process would have); returns its base URL. Stopped with the app.
    pub async fn start_api(&mut self) -> String {
        let (api, base) = start_api_task(&self.api_vars()).await;
        self.more_apis.push(api);
        base
    }

    /// Settings a worker process or task of this app runs with.
    pub fn worker_vars(&self, worker_id: &str) -> Vec<(String, String)> {
        let mut vars = self.env.vars();
        vars.push(("CHECKLINE_WORKER_ID".into(), worker_id.into()));
        vars.push(("CHECKLINE_IDLE_AFTER_MS".into(), "200".into()));
        // Short leases: a killed worker's partitions move on within seconds.
        vars.push(("CHECKLINE_LEASE_TTL_MS".into(), "2000".into()));
        vars.push(("CHECKLINE_REBALANCE_INTERVAL_MS".into(), "200".into()));
        vars.extend(self.extra.iter().cloned());
        vars
    }

    pub async fn start_worker(&mut self) {
        assert!(self.worker.is_none(), "a worker is already running");
        let vars = self.worker_vars("test-worker");
        let config = WorkerConfig::from_env(&Env::from_pairs(
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ))
        .expect("worker config");
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            checkline_worker::run(config, async move {
                let _ = stopped.await;
            })
            .await
            .expect("worker runs");
        });
        self.worker = Some(Task { stop, handle });
    }

    pub async fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop().await;
        }
    }

    pub async fn shutdown(mut self) {
        self.stop_worker().await;
        for api in self.api.take().into_iter().chain(self.more_apis.drain(..)) {
            api.stop().await;
        }
        self.env.cleanup().await;
    }

    pub fn customer(&self, name: &str) -> String {
        checkline_api::auth::mint(SECRET.as_bytes(), name, &["customer"], 3600).unwrap()
    }

    /// `GET /v1/admin/stats`, as the admin.
    pub async fn stats(&self) -> Value {
        self.http
            .get(self.url("/v1/admin/stats"))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Creates a product as admin and returns it.
    pub async fn create_product(&self, stock: i64, max_per_customer: Option<i64>) -> Value {
        let sku = format!("SKU-{}", uuid::Uuid::new_v4().simple());
        let response = self
            .http
            .post(self.url("/v1/products"))
            .bearer_auth(&self.admin)
            .json(&json!({"sku": sku, "name": "Flash phone", "price_cents": 1990, "stock": stock, "max_per_customer": max_per_customer}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    pub async fn order(
        &self,
        token: &str,
        key: &str,
        product_id: &str,
        quantity: i64,
    ) -> reqwest::Response {
        self.http
            .post(self.url("/v1/orders"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&json!({"product_id": product_id, "quantity": quantity}))
            .send()
            .await
            .unwrap()
    }

    /// `GET /v1/orders/{id}`, or with `?wait=` when `wait_secs` is given.
    pub async fn read_order(&self, token: &str, order_id: &str, wait_secs: Option<u64>) -> Value {
        let wait = wait_secs.map_or(String::new(), |secs| format!("?wait={secs}"));
        self.http
            .get(self.url(&format!("/v1/orders/{order_id}{wait}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls (long polls) until the order is decided; panics after 30 s.
    pub async fn decided(&self, token: &str, order_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let order = self.read_order(token, order_id, Some(5)).await;
            if order["status"] != "pending" {
                return order;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {order_id} still pending"
            );
        }
    }

    pub async fn product(&self, id: &str) -> Value {
        self.http
            .get(self.url(&format!("/v1/products/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Invariant 1 for one product, from PostgreSQL.
    pub async fn balanced(&self, product_id: &str) -> bool {
        sqlx::query_scalar("SELECT balanced FROM stock_audit WHERE product_id = $1::uuid")
            .bind(product_id)
            .fetch_one(&self.env.pool)
            .await
            .unwrap()
    }

    /// Creates `n` products with `stock` each; creation assigns partitions
    /// round-robin, so `n` = partitions puts one on each.
    pub async fn create_products(&self, n: usize, stock: i64) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(
                self.create_product(stock, None).await["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        ids
    }

    /// Orders not decided yet, over every product.
    pub async fn count_pending(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'pending'")
            .fetch_one(&self.env.pool)
            .await
            .unwrap()
    }

    pub async fn count_orders(&self, product_id: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE product_id = $1::uuid")
            .bind(product_id)
            .fetch_one(&self.env.pool)
            .await
            .unwrap()
    }
}

/// Buyers `from..from + n`, all at once, each ordering one unit of one of
/// `products` (in turn) with its own token and key. Returns the accepted
/// orders as (buyer's token, order id); a buyer told "sold out" is left out.
pub async fn buy(
    app: &Arc<TestApp>,
    products: &[String],
    from: usize,
    n: usize,
) -> Vec<(String, String)> {
    let buyers = (from..from + n).map(|i| {
        let app = app.clone();
        let pid = products[i % products.len()].clone();
        tokio::spawn(async move {
            let token = app.customer(&format!("buyer-{i}"));
            let response = app.order(&token, &format!("k-{i}"), &pid, 1).await;
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            match status {
                StatusCode::ACCEPTED => Some((token, body["id"].as_str().unwrap().to_owned())),
                StatusCode::CONFLICT => None,
                other => panic!("unexpected {other}: {body}"),
            }
        })
    });
    join_all(buyers)
        .await
        .into_iter()
        .filter_map(Result::unwrap)
        .collect()
}

/// Reads server-sent events `(event, data)` until the stream ends or
/// `limit` events arrived, with an overall timeout.
pub async fn read_events(
    response: reqwest::Response,
    limit: usize,
    timeout: Duration,
) -> (Vec<(String, Value)>, bool) {
    read_events_until(response, timeout, |events| events.len() >= limit).await
}

/// Reads server-sent events `(event, data)` until `done` says the events
/// so far are enough or the stream ends, with an overall timeout. Whether
/// the stream ended is returned with the events.
pub async fn read_events_until(
    response: reqwest::Response,
    timeout: Duration,
    done: impl Fn(&[(String, Value)]) -> bool,
) -> (Vec<(String, Value)>, bool) {
    let mut events = Vec::new();
    let mut buffer = String::new();
    let mut stream = response.bytes_stream();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return (events, false),
            Ok(None) => return (events, true),
            Ok(Some(chunk)) => chunk.unwrap(),
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !name.is_empty() {
                events.push((name, serde_json::from_str(&data).unwrap_or(Value::Null)));
                if done(&events) {
                    return (events, false);
                }
            }
        }
    }
}
