//! Stock as server-sent events.
//!
//! - `GET /v1/products/{id}/events`: one product. The first event is the
//!   current stock; then changes, coalesced to at most one per
//!   `CHECKLINE_STOCK_EVENT_INTERVAL_MS`. Fed by the hub's watch channel
//!   of that product.
//! - `GET /v1/products/events`: every product, or the ones named by
//!   `?ids=`, on one stream, for pages showing many products (a browser
//!   opens about six connections to a host, not one per product). No
//!   initial snapshot: the client opens the stream, then reads the
//!   products, then applies the events in arrival order. Fed by the hub's
//!   broadcast of every stock event ([`Feed`]), coalesced per product the
//!   same way.
//!
//! A stream of many products that falls behind the broadcast (its client
//! stopped reading) must not go on with a gap: with `ids` it re-reads those
//! products from PostgreSQL and sends what changed; without, re-reading
//! the whole catalogue for one slow client would cost too much, so the
//! stream ends, and the client (an `EventSource` does it by itself)
//! reconnects and reads the products again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use checkline_shared::domain::{parse_id, StockEvent};
use futures::future::BoxFuture;
use futures::Stream;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::Instant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::path_id;
use crate::hub::Watch;
use crate::state::AppState;

/// Most products one stream of many products may name in `ids`.
pub const IDS_MAX: usize = 100;

/// The stock events' routes, with their OpenAPI operations.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(events))
        .routes(routes!(events_of_many))
}

#[utoipa::path(
    get,
    path = "/v1/products/{id}/events",
    operation_id = "streamProductStock",
    tag = "products",
    summary = "Stream stock changes",
    description = "Public. Answered as a problem document, before any event, when the id is invalid or unknown. Open streams are capped per deployment and per client address (`503 overloaded` beyond).",
    params(("id" = uuid::Uuid, Path, description = "Product id (canonical UUID); anything else is `400 invalid_id`.")),
    responses(
        (status = 200, description = "A server-sent event stream. Every event is named `stock` and its `data` is a `StockEvent` JSON object (`#/components/schemas/StockEvent`). The first event is the current stock; then one per change, possibly coalesced (at most a few per second).",
            content_type = "text/event-stream", body = crate::openapi::StockStreamEvent,
            example = json!({"event": "stock", "data": "{\"product_id\":\"0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d\",\"stock\":3,\"sold_out\":false}"})),
        (status = 400, response = crate::openapi::InvalidId),
        (status = 404, response = crate::openapi::ProductNotFound),
    )
)]
pub async fn events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = path_id(&id)?;
    // Subscribe before reading, so no change falls between the two.
    let watch = state.hub.stock.subscribe(id);
    let first = state
        .products
        .product(id)
        .await?
        .ok_or(ApiError::ProductNotFound)?
        .stock;
    let keepalive = state.config.sse_keepalive;
    struct Cursor {
        state: Arc<AppState>,
        watch: Watch<uuid::Uuid, StockEvent>,
        last_sent: Option<StockEvent>,
        pending_first: Option<StockEvent>,
    }
    let cursor = Cursor {
        state,
        watch,
        last_sent: None,
        pending_first: Some(first),
    };
    let stream = futures::stream::unfold(cursor, |mut c| async move {
        if let Some(first) = c.pending_first.take() {
            c.last_sent = Some(first);
            return Some((Ok(stock_event(&first)), c));
        }
        loop {
            let interval = c.state.config.stock_event_interval;
            tokio::time::sleep(interval).await;
            let next = tokio::select! {
                changed = c.watch.rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    *c.watch.rx.borrow_and_update()
                }
                () = tokio::time::sleep(c.state.config.stock_refresh) => {
                    let product_id = c.last_sent.map(|e| e.product_id)?;
                    current(&c.state.pool, product_id).await.ok().flatten()
                }
            };
            if let Some(event) = next.filter(|e| Some(*e) != c.last_sent) {
                c.last_sent = Some(event);
                return Some((Ok(stock_event(&event)), c));
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(keepalive)))
}

/// The product's stock event as PostgreSQL has it now; `None` if there is
/// no such product.
async fn current(pool: &sqlx::PgPool, id: uuid::Uuid) -> Result<Option<StockEvent>, ApiError> {
    Ok(checkline_shared::stock::events(pool, &[id])
        .await?
        .into_iter()
        .next())
}

#[utoipa::path(
    get,
    path = "/v1/products/events",
    operation_id = "streamProductsStock",
    tag = "products",
    summary = "Stream stock changes of many products",
    description = "Public. One stream for a page that shows many products (a browser opens only about six connections to a host, not one per product). Every event is named `stock` and carries a `StockEvent`, as `GET /v1/products/{id}/events` does: a change of any product, or with `ids` of those products only, coalesced per product to at most one per `CHECKLINE_STOCK_EVENT_INTERVAL_MS` (250 ms by default).\n\n\
**No initial snapshot.** Open this stream first, then read the products (`GET /v1/products`, or `GET /v1/products/{id}`), then apply the events in arrival order, those that arrived while the products were being read included. Each event carries the product's whole stock state, and a change's event always follows the change, so the last event applied for a product is its current stock.\n\n\
Events are hints sent after each decision: a lost one leaves a product stale until its next change; with `ids`, the products are also read again every `CHECKLINE_STOCK_REFRESH_MS` (5 s by default) and what changed is sent. A client that stops reading and falls thousands of events behind: with `ids`, its products are read again and what changed is sent; without `ids`, the stream ends, and the client reconnects and reads the products again. Open streams are capped per deployment and per client address (`503 overloaded` beyond), with the per-product streams.",
    params(
        ("ids" = Option<String>, Query, example = "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d,5d0e4a4c-2b7f-4c1e-8f3a-9a6b7c8d9e0f",
            description = "Comma-separated product ids (canonical UUIDs, 1 to 100): only these products' changes are sent. An id of no product is accepted and never has an event. Anything else is `400 invalid_request`."),
    ),
    responses(
        (status = 200, description = "A server-sent event stream. Every event is named `stock` and its `data` is a `StockEvent` JSON object (`#/components/schemas/StockEvent`); no initial snapshot.",
            content_type = "text/event-stream", body = crate::openapi::StockStreamEvent,
            example = json!({"event": "stock", "data": "{\"product_id\":\"0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d\",\"stock\":3,\"sold_out\":false,\"reserved\":0}"})),
        (status = 400, response = crate::openapi::InvalidRequest),
    )
)]
pub async fn events_of_many(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let ids = watched_ids(&query)?;
    // Subscribed before the answer's head is sent: every change after the
    // client sees the stream open reaches it.
    let receiver = state.hub.all_stock.subscribe();
    let pool = state.pool.clone();
    let read: Read = Box::new(move |ids| {
        let pool = pool.clone();
        Box::pin(async move { checkline_shared::stock::events(&pool, &ids).await })
    });
    let feed = Feed::new(
        receiver,
        ids,
        state.config.stock_event_interval,
        state.config.stock_refresh,
        read,
    );
    let keepalive = state.config.sse_keepalive;
    let stream = futures::stream::unfold((feed, state), |(mut feed, state)| async move {
        match feed.next().await {
            Some(event) => Some((Ok(stock_event(&event)), (feed, state))),
            None => {
                if feed.lagged {
                    state.metrics.stock_streams_lagged.inc();
                }
                None
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(keepalive)))
}

/// `ids`, the only query parameter of a stream of many products: 1 to
/// [`IDS_MAX`] canonical UUIDs, comma-separated; `None` (every product)
/// when absent.
fn watched_ids(query: &HashMap<String, String>) -> Result<Option<HashSet<Uuid>>, ApiError> {
    let mut watched = None;
    for (name, value) in query {
        if name != "ids" {
            return Err(ApiError::InvalidRequest(format!(
                "unknown query parameter {name:?}"
            )));
        }
        let listed: Vec<&str> = value.split(',').collect();
        if listed.len() > IDS_MAX {
            return Err(ApiError::InvalidRequest(format!(
                "ids may name at most {IDS_MAX} products"
            )));
        }
        let ids = listed
            .iter()
            .map(|raw| parse_id(raw))
            .collect::<Option<HashSet<Uuid>>>()
            .ok_or_else(|| {
                ApiError::InvalidRequest(
                    "ids must be product ids (canonical UUIDs) separated by commas".into(),
                )
            })?;
        watched = Some(ids);
    }
    Ok(watched)
}

/// Reads products' stock events from PostgreSQL (the handler's; tests
/// give their own).
type Read =
    Box<dyn Fn(Vec<Uuid>) -> BoxFuture<'static, Result<Vec<StockEvent>, sqlx::Error>> + Send>;

/// The events of one stream of many products: every stock event of the
/// hub's broadcast (or of the watched products), coalesced per product.
///
/// Changes wait in `pending`, one per product (the latest), in the order
/// their products first changed; they are sent together at most once per
/// `interval`, and at once when the last sending is that old. So no
/// product gets more than one event per `interval`, and a lone change is
/// not delayed.
struct Feed {
    receiver: broadcast::Receiver<StockEvent>,
    /// The products asked for; `None`: every product.
    watched: Option<HashSet<Uuid>>,
    interval: Duration,
    /// How often the watched products are read again.
    refresh: Duration,
    read: Read,
    pending: Vec<StockEvent>,
    /// Position of each product in `pending`.
    positions: HashMap<Uuid, usize>,
    /// Sent, one by one, before anything else is received.
    ready: VecDeque<StockEvent>,
    last_flush: Option<Instant>,
    next_refresh: Instant,
    /// With `watched`: the last event sent per product, so that a re-read
    /// sends only what changed (at most [`IDS_MAX`] entries).
    sent: HashMap<Uuid, StockEvent>,
    /// The stream ended because it fell behind the broadcast.
    lagged: bool,
}

impl Feed {
    fn new(
        receiver: broadcast::Receiver<StockEvent>,
        watched: Option<HashSet<Uuid>>,
        interval: Duration,
        refresh: Duration,
        read: Read,
    ) -> Self {
        Self {
            receiver,
            watched,
            interval,
            refresh,
            read,
            pending: Vec::new(),
            positions: HashMap::new(),
            ready: VecDeque::new(),
            last_flush: None,
            next_refresh: Instant::now() + refresh,
            sent: HashMap::new(),
            lagged: false,
        }
    }

    /// The next event to send; `None` ends the stream.
    async fn next(&mut self) -> Option<StockEvent> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                if self.watched.is_some() {
                    self.sent.insert(event.product_id, event);
                }
                return Some(event);
            }
            let due = self.last_flush.map(|at| at + self.interval);
            let flush_at = if self.pending.is_empty() {
                None
            } else {
                match due {
                    Some(due) if due > Instant::now() => Some(due),
                    _ => {
                        // What arrived with it goes with it.
                        let behind = self.take_queued().is_err();
                        if behind && !self.catch_up().await {
                            self.lagged = true;
                            return None;
                        }
                        self.flush();
                        continue;
                    }
                }
            };
            tokio::select! {
                received = self.receiver.recv() => match received {
                    Ok(event) => self.offer(event),
                    Err(RecvError::Lagged(_)) => {
                        if !self.catch_up().await {
                            self.lagged = true;
                            return None;
                        }
                    }
                    Err(RecvError::Closed) => return None,
                },
                () = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {}
                () = tokio::time::sleep_until(self.next_refresh), if self.watched.is_some() => {
                    self.next_refresh = Instant::now() + self.refresh;
                    // A failed read is tried again at the next refresh.
                    let _ = self.read_again().await;
                }
            }
        }
    }

    /// Keeps `event` as its product's latest change, if the product is
    /// watched.
    fn offer(&mut self, event: StockEvent) {
        if let Some(watched) = &self.watched {
            if !watched.contains(&event.product_id) {
                return;
            }
        }
        match self.positions.get(&event.product_id) {
            Some(&at) => self.pending[at] = event,
            None => {
                self.positions.insert(event.product_id, self.pending.len());
                self.pending.push(event);
            }
        }
    }

    /// Moves the pending changes to `ready`, leaving out those that
    /// repeat what was sent.
    fn flush(&mut self) {
        self.positions.clear();
        let sent = &self.sent;
        self.ready.extend(
            self.pending
                .drain(..)
                .filter(|event| sent.get(&event.product_id) != Some(event)),
        );
        if !self.ready.is_empty() {
            self.last_flush = Some(Instant::now());
        }
    }

    /// Takes the events the broadcast already holds; `Err` when this
    /// stream fell behind it (events were lost to it).
    fn take_queued(&mut self) -> Result<(), ()> {
        loop {
            match self.receiver.try_recv() {
                Ok(event) => self.offer(event),
                Err(TryRecvError::Lagged(_)) => return Err(()),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return Ok(()),
            }
        }
    }

    /// After falling behind: whether the stream can go on without a gap
    /// (only with `watched`, by reading those products again).
    async fn catch_up(&mut self) -> bool {
        tracing::debug!(
            some = self.watched.is_some(),
            "a stock stream fell behind the broadcast"
        );
        self.watched.is_some() && self.read_again().await.is_ok()
    }

    /// Reads the watched products from PostgreSQL and keeps what changed.
    /// The events already in the broadcast are taken first: they are older
    /// than the read, and must not be sent after it.
    async fn read_again(&mut self) -> Result<(), sqlx::Error> {
        let Some(watched) = &self.watched else {
            return Ok(());
        };
        let ids: Vec<Uuid> = watched.iter().copied().collect();
        // Falling behind again loses nothing: the read follows.
        while self.take_queued().is_err() {}
        for event in (self.read)(ids).await? {
            self.offer(event);
        }
        Ok(())
    }
}

fn stock_event(event: &StockEvent) -> Event {
    Event::default()
        .event("stock")
        .json_data(event)
        .unwrap_or_else(|_| Event::default().event("stock"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProblemCode;

    const LONG: Duration = Duration::from_secs(3600);

    fn read_returning(events: Vec<StockEvent>) -> Read {
        Box::new(move |_ids| {
            let events = events.clone();
            Box::pin(async move { Ok(events) })
        })
    }

    fn feed(
        capacity: usize,
        watched: Option<&[Uuid]>,
        interval: Duration,
        refresh: Duration,
        read: Read,
    ) -> (broadcast::Sender<StockEvent>, Feed) {
        let (tx, rx) = broadcast::channel(capacity);
        let watched = watched.map(|ids| ids.iter().copied().collect());
        (tx, Feed::new(rx, watched, interval, refresh, read))
    }

    async fn next_within(feed: &mut Feed, wait: Duration) -> Option<StockEvent> {
        tokio::time::timeout(wait, feed.next()).await.ok().flatten()
    }

    #[tokio::test]
    async fn changes_are_coalesced_per_product_in_the_order_products_changed() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let interval = Duration::from_millis(200);
        let (tx, mut feed) = feed(64, None, interval, LONG, read_returning(vec![]));
        for event in [
            StockEvent::new(a, 9),
            StockEvent::new(b, 5),
            StockEvent::new(a, 8),
        ] {
            tx.send(event).unwrap();
        }
        // A lone first change goes at once, with whatever came with it.
        let started = Instant::now();
        let first = feed.next().await.unwrap();
        assert!(started.elapsed() < interval);
        assert_eq!(first, StockEvent::new(a, 8), "the latest of a");
        assert_eq!(feed.next().await.unwrap(), StockEvent::new(b, 5));
        // Within the interval, changes wait and only the latest is sent.
        tx.send(StockEvent::new(a, 7)).unwrap();
        tx.send(StockEvent::new(a, 6)).unwrap();
        let third = feed.next().await.unwrap();
        assert!(started.elapsed() >= interval, "{:?}", started.elapsed());
        assert_eq!(third, StockEvent::new(a, 6));
        assert_eq!(
            next_within(&mut feed, Duration::from_millis(300)).await,
            None
        );
    }

    #[tokio::test]
    async fn ids_restrict_the_stream_to_those_products() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (tx, mut feed) = feed(64, Some(&[a]), Duration::ZERO, LONG, read_returning(vec![]));
        tx.send(StockEvent::new(b, 3)).unwrap();
        tx.send(StockEvent::new(a, 2)).unwrap();
        tx.send(StockEvent::new(b, 1)).unwrap();
        assert_eq!(feed.next().await.unwrap(), StockEvent::new(a, 2));
        assert_eq!(
            next_within(&mut feed, Duration::from_millis(200)).await,
            None
        );
    }

    #[tokio::test]
    async fn a_stream_of_every_product_that_falls_behind_ends() {
        let a = Uuid::new_v4();
        let (tx, mut feed) = feed(4, None, Duration::ZERO, LONG, read_returning(vec![]));
        for stock in (0..10).rev() {
            tx.send(StockEvent::new(a, stock)).unwrap();
        }
        assert_eq!(feed.next().await, None, "no stale event after a gap");
        assert!(feed.lagged);
    }

    #[tokio::test]
    async fn a_stream_of_some_products_that_falls_behind_reads_them_again() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        // PostgreSQL is newer than anything left in the broadcast.
        let read = read_returning(vec![StockEvent::new(a, 0), StockEvent::new(b, 4)]);
        let (tx, mut feed) = feed(4, Some(&[a, b]), Duration::ZERO, LONG, read);
        for stock in (1..=10).rev() {
            tx.send(StockEvent::new(a, stock)).unwrap();
        }
        assert_eq!(feed.next().await.unwrap(), StockEvent::new(a, 0));
        assert_eq!(feed.next().await.unwrap(), StockEvent::new(b, 4));
        assert!(!feed.lagged);
        assert_eq!(
            next_within(&mut feed, Duration::from_millis(200)).await,
            None
        );
    }

    #[tokio::test]
    async fn watched_products_are_read_again_and_only_changes_sent() {
        let a = Uuid::new_v4();
        let refresh = Duration::from_millis(50);
        let read = read_returning(vec![StockEvent::new(a, 5)]);
        let (tx, mut feed) = feed(64, Some(&[a]), Duration::ZERO, refresh, read);
        // A lost event is made good by the refresh...
        assert_eq!(
            next_within(&mut feed, Duration::from_secs(2)).await,
            Some(StockEvent::new(a, 5))
        );
        // ...which sends nothing while nothing changes.
        assert_eq!(
            next_within(&mut feed, Duration::from_millis(300)).await,
            None
        );
        tx.send(StockEvent::new(a, 4)).unwrap();
        assert_eq!(
            next_within(&mut feed, Duration::from_secs(2)).await,
            Some(StockEvent::new(a, 4))
        );
    }

    fn query(value: &str) -> HashMap<String, String> {
        HashMap::from([("ids".to_owned(), value.to_owned())])
    }

    #[test]
    fn ids_are_1_to_100_canonical_uuids() {
        assert_eq!(watched_ids(&HashMap::new()).unwrap(), None);
        let ids: Vec<Uuid> = (0..IDS_MAX).map(|_| Uuid::new_v4()).collect();
        let list = |ids: &[Uuid]| {
            ids.iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let watched = watched_ids(&query(&list(&ids))).unwrap().unwrap();
        assert_eq!(watched.len(), IDS_MAX);
        let one = watched_ids(&query(&list(&ids[..1]))).unwrap().unwrap();
        assert_eq!(one, HashSet::from([ids[0]]));
        let too_many = format!("{},{}", list(&ids), Uuid::new_v4());
        let braced = format!("{{{}}}", ids[0]);
        for bad in [
            too_many.as_str(),
            "",
            "not-a-uuid",
            &format!("{},", ids[0]),
            &ids[0].simple().to_string(),
            &braced,
        ] {
            assert_eq!(
                watched_ids(&query(bad)).unwrap_err().code(),
                ProblemCode::InvalidRequest,
                "{bad:?}"
            );
        }
        let other = HashMap::from([("id".to_owned(), ids[0].to_string())]);
        assert_eq!(
            watched_ids(&other).unwrap_err().code(),
            ProblemCode::InvalidRequest
        );
    }
}
