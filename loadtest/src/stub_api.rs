//! Unit-test stand-ins for API instances: a stub that answers
//! `POST /v1/orders` and `GET /v1/orders/{id}` as told and keeps what it
//! was sent, and an address nothing listens on.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use reqwest::Url;
use uuid::Uuid;

/// How a stub answers an order.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// `202` with a pending order of this id.
    Accept(Uuid),
    /// This status with a problem document (`code` from the status).
    Refuse(u16),
}

/// One order request a stub received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub host: String,
    pub idempotency_key: String,
    pub body: String,
}

#[derive(Clone)]
struct Stub {
    behaviour: Behaviour,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A running stub: its base URL and the orders it received.
pub struct StubApi {
    pub url: Url,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl StubApi {
    pub async fn start(behaviour: Behaviour) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Stub {
            behaviour,
            seen: Arc::clone(&seen),
        };
        let app = Router::new()
            .route("/v1/orders", post(place))
            .route("/v1/orders/{id}", get(read))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, seen }
    }

    /// The order requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A URL where no API listens: connections to it are refused.
pub async fn dead_url() -> Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url.parse().unwrap()
}

fn order_json(id: Uuid, status: &str) -> String {
    format!(
        r#"{{"id":"{id}","customer_id":"c","product_id":"{product}","quantity":1,"status":"{status}","reason":null,"created_at":"2026-11-22T10:00:00Z","decided_at":{decided}}}"#,
        product = Uuid::nil(),
        decided = if status == "pending" {
            "null"
        } else {
            r#""2026-11-22T10:00:01Z""#
        }
    )
}

async fn place(State(stub): State<Stub>, headers: HeaderMap, body: String) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    stub.seen.lock().unwrap().push(Seen {
        host: header("host"),
        idempotency_key: header("idempotency-key"),
        body,
    });
    match stub.behaviour {
        Behaviour::Accept(id) => (StatusCode::ACCEPTED, order_json(id, "pending")).into_response(),
        Behaviour::Refuse(status) => {
            let status = StatusCode::from_u16(status).unwrap();
            let code = match status.as_u16() {
                409 => "sold_out",
                503 => "overloaded",
                _ => "other",
            };
            let problem = format!(r#"{{"status":{},"code":"{code}"}}"#, status.as_u16());
            (status, [("retry-after", "0")], problem).into_response()
        }
    }
}

async fn read(Path(id): Path<Uuid>) -> Response {
    (StatusCode::OK, order_json(id, "confirmed")).into_response()
}
