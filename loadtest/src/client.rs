//! A thin client for the parts of the checkline HTTP API the load test uses.
//!
//! Every call is a single attempt that returns the raw [`Reply`] (status,
//! body, `Retry-After`, latency); retry policy belongs to the callers, which
//! know whether a request is safe to repeat.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, AUTHORIZATION, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::wire;

const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const USER_AGENT: &str = concat!("checkline-loadtest/", env!("CARGO_PKG_VERSION"));
/// How much of a non-problem error body goes into a message.
const BODY_SNIPPET_CHARS: usize = 200;

/// Body of `POST /v1/products`.
#[derive(Debug, Clone, Serialize)]
pub struct NewProduct {
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub stock: u64,
    /// Serialised as `null` when there is no limit.
    pub max_per_customer: Option<u32>,
}

/// The fields of a `Product` the load test reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Product {
    pub id: Uuid,
    pub sku: String,
    pub stock: i64,
    pub max_per_customer: Option<i64>,
    pub partition: i64,
    /// Checkout 1.1: units in other carts (held and reserved).
    #[serde(default)]
    pub reserved: Option<i64>,
}

/// An order's status. v1 knows `pending`, `confirmed` and `rejected`;
/// checkout 1.1 adds `reserved` (a decision: its units are held until
/// confirm, cancel or expiry) and the final `cancelled` and `expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Reserved,
    Confirmed,
    Rejected,
    Cancelled,
    Expired,
}

impl OrderStatus {
    pub const ALL: [Self; 6] = [
        Self::Pending,
        Self::Reserved,
        Self::Confirmed,
        Self::Rejected,
        Self::Cancelled,
        Self::Expired,
    ];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Reserved => "reserved",
            Self::Confirmed => "confirmed",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// Nothing moves the order any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Confirmed | Self::Rejected | Self::Cancelled | Self::Expired
        )
    }
}

/// The fields of an `Order` the load test reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Order {
    pub id: Uuid,
    pub status: OrderStatus,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    /// Checkout 1.1: the first failing line's product of a rejected order.
    #[serde(default)]
    pub rejected_product_id: Option<Uuid>,
}

/// One line of a cart (`POST /v1/orders` with `lines`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CartLine {
    pub product_id: Uuid,
    pub quantity: u32,
}

/// The checkout 1.1 body of `POST /v1/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CartBody {
    pub lines: Vec<CartLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserve_secs: Option<u32>,
}

/// An RFC 9457 problem document (the fields the load test uses).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Problem {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
}

/// One HTTP response, fully read.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    /// `Retry-After`, if present and parseable.
    pub retry_after: Option<Duration>,
    /// `Idempotent-Replayed: true` was present.
    pub replayed: bool,
    pub body: Vec<u8>,
    /// From sending the request to having read the whole body.
    pub latency: Duration,
    pub sent_at: Instant,
    pub received_at: Instant,
}

impl Reply {
    /// 429 and 503 ask the client to come back later.
    pub fn is_backpressure(&self) -> bool {
        self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
    }

    pub fn problem(&self) -> Option<Problem> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The problem document's `code`, if the body is one.
    pub fn code(&self) -> Option<String> {
        self.problem().and_then(|problem| problem.code)
    }

    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("decoding the body of a {} response", self.status))
    }

    /// `"409 Conflict (sold_out): detail"`, for error messages.
    pub fn describe(&self) -> String {
        let mut text = self.status.to_string();
        if let Some(problem) = self.problem() {
            if let Some(code) = problem.code {
                text.push_str(&format!(" ({code})"));
            }
            if let Some(detail) = problem.detail.or(problem.title) {
                text.push_str(&format!(": {detail}"));
            }
        }
        text
    }

    /// Like [`Reply::describe`], with the start of the body when it is not a
    /// problem document.
    pub fn describe_with_body(&self) -> String {
        let is_problem = self
            .problem()
            .is_some_and(|p| p.code.is_some() || p.detail.is_some() || p.title.is_some());
        if is_problem {
            return self.describe();
        }
        let body = String::from_utf8_lossy(&self.body);
        let body = body.trim();
        if body.is_empty() {
            return self.describe();
        }
        let snippet: String = body.chars().take(BODY_SNIPPET_CHARS).collect();
        let ellipsis = if body.chars().count() > BODY_SNIPPET_CHARS {
            "..."
        } else {
            ""
        };
        format!("{}: {snippet}{ellipsis}", self.status)
    }
}

/// Shared, cheaply cloneable API client (one connection pool for every task)
/// for one API instance or several.
///
/// Orders go through [`wire::Endpoint`], the load's own HTTP/1.1 client
/// (see there why); everything else through reqwest. Every call names the
/// API it goes to by its index in the `--api-url` list; [`ApiClient::home`]
/// spreads buyers over them and [`ApiClient::next`] is where a request that
/// got no answer is sent again.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    apis: Arc<[Api]>,
    request_timeout: Duration,
    /// Path orders are placed at: `/v1/orders` for checkline.
    orders_path: &'static str,
    /// The server decides in the answer (`200` with the decision) instead of
    /// queueing (`202`); then a `200` is not a replay unless it says so.
    synchronous: bool,
}

/// One API instance.
struct Api {
    base: Box<str>,
    orders: wire::Endpoint,
    counters: ApiCounters,
}

/// What happened to the order attempts sent to one API. Counted by every
/// task at once, so each API's counters have a cache line of their own.
#[repr(align(128))]
#[derive(Default)]
struct ApiCounters {
    attempts: AtomicU64,
    accepted: AtomicU64,
    no_answer: AtomicU64,
    failovers: AtomicU64,
}

/// A snapshot of one API's counters ([`ApiClient::counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApiCounts {
    /// Order requests sent to it.
    pub attempts: u64,
    /// Of those, answered 2xx (an order exists).
    pub accepted: u64,
    /// Of those, left without an HTTP answer (refused or reset connection,
    /// timeout).
    pub no_answer: u64,
    /// Attempts that got no answer here and were sent again to another API.
    pub failovers: u64,
}

impl ApiCounts {
    /// What was counted between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            attempts: self.attempts.saturating_sub(earlier.attempts),
            accepted: self.accepted.saturating_sub(earlier.accepted),
            no_answer: self.no_answer.saturating_sub(earlier.no_answer),
            failovers: self.failovers.saturating_sub(earlier.failovers),
        }
    }
}

impl ApiClient {
    /// A client for the APIs at `base_urls` (at least one). `pool_size`
    /// should cover every request that may be in flight at once.
    pub fn new(base_urls: &[Url], pool_size: usize, request_timeout: Duration) -> Result<Self> {
        ensure!(!base_urls.is_empty(), "no API URL given");
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(pool_size)
            .pool_idle_timeout(Duration::from_secs(90))
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .user_agent(USER_AGENT)
            .build()
            .context("building the HTTP client")?;
        let apis = base_urls
            .iter()
            .map(|url| {
                Ok(Api {
                    base: url.as_str().trim_end_matches('/').into(),
                    orders: wire::Endpoint::new(url, pool_size, CONNECT_TIMEOUT, USER_AGENT)?,
                    counters: ApiCounters::default(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            http,
            apis: apis.into(),
            request_timeout,
            orders_path: "/v1/orders",
            synchronous: false,
        })
    }

    /// Closes the order connections kept open between requests.
    pub fn close_idle_order_connections(&self) {
        for api in self.apis.iter() {
            api.orders.close_idle();
        }
    }

    /// A client for an order endpoint at `orders_path` that answers `200`
    /// with the decision (the baseline).
    pub fn synchronous_at(mut self, orders_path: &'static str) -> Self {
        self.orders_path = orders_path;
        self.synchronous = true;
        self
    }

    /// How many APIs the client spreads requests over (at least 1).
    pub fn api_count(&self) -> usize {
        self.apis.len()
    }

    /// The base URL of API `api`.
    pub fn base_url(&self, api: usize) -> &str {
        &self.api(api).base
    }

    /// Every base URL, in `--api-url` order.
    pub fn base_urls(&self) -> impl Iterator<Item = &str> {
        self.apis.iter().map(|api| &*api.base)
    }

    /// The base URLs joined by commas, as `--api-url` takes them.
    pub fn joined_base_urls(&self) -> String {
        self.base_urls().collect::<Vec<_>>().join(",")
    }

    /// Buyer `index`'s API: `index mod n`.
    pub fn home(&self, index: u32) -> usize {
        usize::try_from(index).unwrap_or(usize::MAX) % self.apis.len()
    }

    /// The API after `api`, in turn (`api` itself when there is one).
    pub fn next(&self, api: usize) -> usize {
        (api + 1) % self.apis.len()
    }

    /// Notes that an order attempt that got no answer from `api` is sent
    /// again to another.
    pub fn count_failover(&self, api: usize) {
        self.api(api)
            .counters
            .failovers
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Each API's order counters so far, in `--api-url` order.
    pub fn counts(&self) -> Vec<ApiCounts> {
        self.apis
            .iter()
            .map(|api| {
                let c = &api.counters;
                ApiCounts {
                    attempts: c.attempts.load(Ordering::Relaxed),
                    accepted: c.accepted.load(Ordering::Relaxed),
                    no_answer: c.no_answer.load(Ordering::Relaxed),
                    failovers: c.failovers.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    pub fn is_synchronous(&self) -> bool {
        self.synchronous
    }

    /// API `api`; an index past the end wraps around (indices come from
    /// [`ApiClient::home`] and [`ApiClient::next`], which never do).
    fn api(&self, api: usize) -> &Api {
        &self.apis[api % self.apis.len()]
    }

    fn url(&self, api: usize, path: &str) -> String {
        format!("{}{path}", self.api(api).base)
    }

    /// `GET /readyz`.
    pub async fn readyz(&self, api: usize) -> Result<Reply, reqwest::Error> {
        let request = self.http.get(self.url(api, "/readyz"));
        self.execute(request, self.request_timeout).await
    }

    /// Runs `call` against the first API, then the next ones in turn, until
    /// one answers (any HTTP status): for set-up and reads, which any API
    /// serves alike. The last transport error if none answers.
    pub async fn first_answer<F, Fut>(&self, mut call: F) -> Result<Reply, reqwest::Error>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<Reply, reqwest::Error>>,
    {
        let mut result = call(0).await;
        for api in 1..self.apis.len() {
            if result.is_ok() {
                break;
            }
            result = call(api).await;
        }
        result
    }

    /// `POST /v1/products` (admin) at API `api`.
    pub async fn create_product(
        &self,
        api: usize,
        token: &str,
        product: &NewProduct,
    ) -> Result<Reply, reqwest::Error> {
        let request = self
            .http
            .post(self.url(api, "/v1/products"))
            .header(AUTHORIZATION, bearer(token))
            .json(product);
        self.execute(request, self.request_timeout).await
    }

    /// `GET /v1/products/{id}` (public) at API `api`.
    pub async fn get_product(&self, api: usize, id: Uuid) -> Result<Reply, reqwest::Error> {
        let request = self.http.get(self.url(api, &format!("/v1/products/{id}")));
        self.execute(request, self.request_timeout).await
    }

    /// `GET /v1/products?limit=<limit>[&cursor=<cursor>]` (public) at API
    /// `api`: one page of the catalogue.
    pub async fn list_products(
        &self,
        api: usize,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Reply, reqwest::Error> {
        let mut request = self
            .http
            .get(self.url(api, "/v1/products"))
            .query(&[("limit", limit)]);
        if let Some(cursor) = cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        self.execute(request, self.request_timeout).await
    }

    /// The bytes of a buyer's `POST /v1/orders` (customer) to API `api`, or
    /// of the synchronous endpoint's: built once, sent by every attempt
    /// there with [`ApiClient::place_order`].
    pub fn order_request(
        &self,
        api: usize,
        token: &str,
        idempotency_key: &str,
        product_id: Uuid,
        quantity: u32,
    ) -> Vec<u8> {
        self.api(api).orders.order_request(
            self.orders_path,
            token,
            idempotency_key,
            product_id,
            quantity,
        )
    }

    /// The bytes of a cart's `POST /v1/orders` (customer) to API `api`,
    /// sent by every attempt there with [`ApiClient::place_order`].
    pub fn cart_request(
        &self,
        api: usize,
        token: &str,
        idempotency_key: &str,
        cart: &CartBody,
    ) -> Vec<u8> {
        // A struct of uuids and integers always serialises.
        let body = serde_json::to_string(cart).unwrap_or_default();
        self.api(api)
            .orders
            .json_request(self.orders_path, token, idempotency_key, &body)
    }

    /// Sends an order built for API `api` by [`ApiClient::order_request`]
    /// there: one attempt, bounded by the request timeout like every other
    /// call.
    pub async fn place_order(&self, api: usize, request: &[u8]) -> Result<Reply, OrderError> {
        let api = self.api(api);
        api.counters.attempts.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let answer =
            match tokio::time::timeout(self.request_timeout, api.orders.send(request)).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(err)) => {
                    api.counters.no_answer.fetch_add(1, Ordering::Relaxed);
                    return Err(OrderError::Wire(err));
                }
                Err(_) => {
                    api.counters.no_answer.fetch_add(1, Ordering::Relaxed);
                    return Err(OrderError::Timeout);
                }
            };
        let received_at = Instant::now();
        let status = StatusCode::from_u16(answer.status)
            .map_err(|_| OrderError::Wire(wire::WireError::invalid_status(answer.status)))?;
        if status.is_success() {
            api.counters.accepted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Reply {
            status,
            retry_after: answer
                .retry_after
                .as_deref()
                .and_then(|value| parse_retry_after(value, Utc::now())),
            replayed: answer.replayed,
            body: answer.body,
            latency: received_at.saturating_duration_since(started),
            sent_at: started,
            received_at,
        })
    }

    /// `GET /v1/orders/{id}?wait=<wait_secs>` (owner) at API `api`: a
    /// long-poll that returns as soon as the order is decided or the wait
    /// ends.
    pub async fn get_order(
        &self,
        api: usize,
        token: &str,
        id: Uuid,
        wait_secs: u64,
    ) -> Result<Reply, reqwest::Error> {
        let request = self
            .http
            .get(self.url(api, &format!("/v1/orders/{id}?wait={wait_secs}")))
            .header(AUTHORIZATION, bearer(token));
        let timeout = self.request_timeout + Duration::from_secs(wait_secs);
        self.execute(request, timeout).await
    }

    /// `POST /v1/orders/{id}/confirm` (owner) at API `api`: a reserved order
    /// is paid for.
    pub async fn confirm_order(
        &self,
        api: usize,
        token: &str,
        id: Uuid,
    ) -> Result<Reply, reqwest::Error> {
        self.order_action(api, token, id, "confirm").await
    }

    /// `POST /v1/orders/{id}/cancel` (owner) at API `api`: a pending or
    /// reserved order is given up.
    pub async fn cancel_order(
        &self,
        api: usize,
        token: &str,
        id: Uuid,
    ) -> Result<Reply, reqwest::Error> {
        self.order_action(api, token, id, "cancel").await
    }

    async fn order_action(
        &self,
        api: usize,
        token: &str,
        id: Uuid,
        action: &str,
    ) -> Result<Reply, reqwest::Error> {
        let request = self
            .http
            .post(self.url(api, &format!("/v1/orders/{id}/{action}")))
            .header(AUTHORIZATION, bearer(token));
        self.execute(request, self.request_timeout).await
    }

    async fn execute(
        &self,
        request: RequestBuilder,
        timeout: Duration,
    ) -> Result<Reply, reqwest::Error> {
        let started = Instant::now();
        let response = request.timeout(timeout).send().await?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let replayed = response
            .headers()
            .get(IDEMPOTENT_REPLAYED)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.trim().eq_ignore_ascii_case("true"));
        let body = response.bytes().await?.to_vec();
        let received_at = Instant::now();
        Ok(Reply {
            status,
            retry_after,
            replayed,
            body,
            latency: received_at.saturating_duration_since(started),
            sent_at: started,
            received_at,
        })
    }
}

/// Why an order got no HTTP answer.
#[derive(Debug)]
pub enum OrderError {
    /// No answer within the request timeout.
    Timeout,
    Wire(wire::WireError),
}

impl OrderError {
    /// The same labels as [`transport_error_kind`].
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Wire(err) => err.kind(),
        }
    }
}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("no answer within the request timeout"),
            Self::Wire(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for OrderError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Timeout => None,
            Self::Wire(err) => err.source(),
        }
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, Utc::now())
}

/// Parses a `Retry-After` value: delta-seconds (fractions tolerated) or an
/// HTTP-date, which is turned into the delay from `now` (zero if past).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let when = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (when.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// A short, stable label for a transport error (for tallies).
pub fn transport_error_kind(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else if err.is_body() || err.is_decode() {
        "body"
    } else if err.is_request() {
        "request"
    } else {
        "other"
    }
}

/// The error and its sources on one line.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: None,
            replayed: false,
            body: body.as_bytes().to_vec(),
            latency: Duration::from_millis(3),
            sent_at: Instant::now(),
            received_at: Instant::now(),
        }
    }

    #[test]
    fn buyers_are_spread_over_the_apis_in_turn() {
        let urls: Vec<Url> = ["http://a:1", "http://b:2/", "http://c:3/prefix"]
            .iter()
            .map(|url| url.parse().unwrap())
            .collect();
        let client = ApiClient::new(&urls, 4, Duration::from_secs(1)).unwrap();
        assert_eq!(client.api_count(), 3);
        let homes: Vec<usize> = (0..7).map(|index| client.home(index)).collect();
        assert_eq!(homes, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(
            client.home(u32::MAX),
            usize::try_from(u32::MAX).unwrap() % 3
        );
        assert_eq!([client.next(0), client.next(1), client.next(2)], [1, 2, 0]);
        assert_eq!(client.base_url(2), "http://c:3/prefix");
        assert_eq!(
            client.joined_base_urls(),
            "http://a:1,http://b:2,http://c:3/prefix"
        );
        assert_eq!(client.counts(), vec![ApiCounts::default(); 3]);

        let one = ApiClient::new(&urls[..1], 4, Duration::from_secs(1)).unwrap();
        assert_eq!(
            (one.home(5), one.next(0)),
            (0, 0),
            "one API: always that one"
        );
        assert!(ApiClient::new(&[], 4, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn counts_of_a_phase_are_differences() {
        let before = ApiCounts {
            attempts: 10,
            accepted: 4,
            no_answer: 1,
            failovers: 1,
        };
        let after = ApiCounts {
            attempts: 25,
            accepted: 9,
            no_answer: 3,
            failovers: 2,
        };
        assert_eq!(
            after.since(before),
            ApiCounts {
                attempts: 15,
                accepted: 5,
                no_answer: 2,
                failovers: 1
            }
        );
    }

    #[tokio::test]
    async fn set_up_calls_go_to_the_first_api_that_answers() {
        let dead = crate::stub_api::dead_url().await;
        let live = crate::stub_api::StubApi::start(crate::stub_api::Behaviour::Refuse(409)).await;
        let client =
            ApiClient::new(&[dead.clone(), live.url.clone()], 4, Duration::from_secs(5)).unwrap();
        let id = Uuid::from_u128(5);
        let reply = client
            .first_answer(|api| client.get_order(api, "t", id, 0))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json::<Order>().unwrap().id, id);

        let none = ApiClient::new(&[dead], 4, Duration::from_secs(5)).unwrap();
        assert!(none
            .first_answer(|api| none.get_order(api, "t", id, 0))
            .await
            .is_err());
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("0.5", now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after("Sun, 22 Nov 2026 10:00:07 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Sun, 22 Nov 2026 09:59:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("inf", now), None);
    }

    #[test]
    fn problem_documents() {
        let sold_out = reply(
            409,
            r#"{"type":"about:blank","title":"Sold out","status":409,"detail":"no stock left","code":"sold_out"}"#,
        );
        assert_eq!(sold_out.code().as_deref(), Some("sold_out"));
        assert_eq!(
            sold_out.describe(),
            "409 Conflict (sold_out): no stock left"
        );
        assert!(!sold_out.is_backpressure());

        let plain = reply(502, "<html>bad gateway</html>");
        assert_eq!(plain.code(), None);
        assert_eq!(plain.describe(), "502 Bad Gateway");
        assert_eq!(
            plain.describe_with_body(),
            "502 Bad Gateway: <html>bad gateway</html>"
        );
        assert_eq!(
            sold_out.describe_with_body(),
            "409 Conflict (sold_out): no stock left"
        );
        let long = reply(503, &format!("{{\"down\":\"{}\"}}", "x".repeat(300)));
        assert!(long.describe_with_body().ends_with("..."));
        assert_eq!(
            reply(500, "").describe_with_body(),
            "500 Internal Server Error"
        );

        assert!(reply(429, "{}").is_backpressure());
        assert!(reply(503, "").is_backpressure());
    }

    #[test]
    fn orders_decode() {
        let body = r#"{"id":"0b8f2d7e-3c1a-4b7e-9a51-2f0c6d1e8a90","customer_id":"alice",
            "product_id":"5e0c3f8a-1d2b-4c6e-8f9a-0b1c2d3e4f50","quantity":1,
            "status":"rejected","reason":"sold_out","unit_price_cents":null,
            "total_cents":null,"created_at":"2026-11-22T10:00:00Z",
            "decided_at":"2026-11-22T10:00:00.25Z"}"#;
        let order: Order = reply(200, body).json().unwrap();
        assert_eq!(order.status, OrderStatus::Rejected);
        assert_eq!(order.reason.as_deref(), Some("sold_out"));
        let decided = order.decided_at.unwrap();
        assert_eq!((decided - order.created_at).num_milliseconds(), 250);

        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        assert!(!OrderStatus::Reserved.is_final());
        assert!(OrderStatus::Expired.is_final());
        assert_eq!(OrderStatus::parse("lost"), None);

        let unknown_status = body.replace("rejected", "lost");
        assert!(reply(200, &unknown_status).json::<Order>().is_err());
    }

    #[test]
    fn carts_serialise_as_the_contract_says() {
        let line = CartLine {
            product_id: Uuid::from_u128(1),
            quantity: 2,
        };
        let reserved = CartBody {
            lines: vec![line],
            reserve_secs: Some(30),
        };
        assert_eq!(
            serde_json::to_string(&reserved).unwrap(),
            r#"{"lines":[{"product_id":"00000000-0000-0000-0000-000000000001","quantity":2}],"reserve_secs":30}"#
        );
        let bought = CartBody {
            lines: vec![line],
            reserve_secs: None,
        };
        assert!(!serde_json::to_string(&bought)
            .unwrap()
            .contains("reserve_secs"));

        let body = r#"{"id":"0b8f2d7e-3c1a-4b7e-9a51-2f0c6d1e8a90","customer_id":"alice",
            "product_id":null,"quantity":null,"lines":[],"status":"rejected","reason":"sold_out",
            "rejected_product_id":"5e0c3f8a-1d2b-4c6e-8f9a-0b1c2d3e4f50",
            "created_at":"2026-11-22T10:00:00Z","decided_at":"2026-11-22T10:00:01Z"}"#;
        let order: Order = reply(200, body).json().unwrap();
        assert_eq!(
            order.rejected_product_id,
            Some(Uuid::parse_str("5e0c3f8a-1d2b-4c6e-8f9a-0b1c2d3e4f50").unwrap())
        );
        let reserved = body
            .replace("\"rejected\"", "\"reserved\"")
            .replace("\"sold_out\"", "null");
        assert_eq!(
            reply(200, &reserved).json::<Order>().unwrap().status,
            OrderStatus::Reserved
        );
    }

    #[test]
    fn new_product_serialises_no_limit_as_null() {
        let product = NewProduct {
            sku: "LOAD-X".into(),
            name: "Flash sale".into(),
            price_cents: 1000,
            stock: 5,
            max_per_customer: None,
        };
        let json = serde_json::to_value(&product).unwrap();
        assert!(json["max_per_customer"].is_null());
        assert_eq!(json["stock"], 5);
    }

    #[test]
    fn error_chain_joins_sources() {
        let inner = std::io::Error::other("connection reset");
        let outer = anyhow::Error::new(inner).context("sending");
        let boxed: Box<dyn std::error::Error + 'static> = outer.into();
        assert_eq!(error_chain(boxed.as_ref()), "sending: connection reset");
    }
}
