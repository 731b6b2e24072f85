//! Product reads served from memory, never older than a stated bound.
//!
//! **The promise** (`CHECKLINE_CATALOG_FRESH_MS`, the bound): a product read
//! at time t shows the product as PostgreSQL had it at some instant
//! ≥ t − bound, whatever happens to events. It holds because an entry is
//! served only while less than the bound has passed since the PostgreSQL
//! read behind it *started*; past that, the next request reads it again.
//! Re-reads are single-flight per product (one query however many requests
//! find the entry old), and past half the bound an entry still served is
//! read again in the background, so a hot product costs a few queries a
//! second per instance and its readers seldom wait.
//!
//! **Events make entries fresher sooner, never longer.** The workers' stock
//! events (after each commit) update an entry at once; they carry the
//! product's version (`updated_at`, which only grows, see
//! `checkline_shared::db::next_product_version`), and one older than the
//! entry is ignored. They never extend an entry's life: an event can be
//! lost (core NATS), and a lost one must not make old data look fresh.
//! Admin changes (create, patch, deactivate) are published as catalog
//! events; each instance then reads the product again before serving it.
//!
//! **Read-your-decision on one instance.** A buyer who has seen their order
//! decided must not then read stock from before it. Every order this
//! instance reports (a poll, a long poll, a list, a stream, a replayed
//! POST, a confirm or cancel, a decision event) is shown to
//! [`ProductCache::saw_order`]: an entry older than the order's decision is
//! not served until it is read again or an event brings it up to date.
//! The workers send a batch's stock events before its decisions, so the
//! entry is usually already newer and nothing is read. Across instances
//! only the bound holds.
//!
//! The list pages (`GET /v1/products`) are kept the same way: a page's ids,
//! served while fresh, with its products from the entries; a product
//! created anywhere drops every page. The cursor is the product id, so
//! pages are stable under inserts. Nothing here uses Redis.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use checkline_shared::domain::{Order, OrderStatus, Product, StockEvent};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::db::{product_columns, ProductRow};
use crate::error::ApiError;
use crate::metrics::Counter;

/// A product as served: its representation, encoded once, and its stock
/// event (the first event of a stock stream).
#[derive(Debug)]
pub struct Entry {
    pub product: Product,
    pub stock: StockEvent,
    /// The JSON of `product`.
    pub body: Bytes,
    /// A strong validator of `body`, quoted.
    pub etag: String,
    /// When the PostgreSQL read behind this entry started.
    read_started: Instant,
}

impl Entry {
    fn new(product: Product, stock: StockEvent, read_started: Instant) -> Self {
        let body = Bytes::from(serde_json::to_vec(&product).unwrap_or_default());
        let etag = etag_of(&body);
        Self {
            product,
            stock,
            body,
            etag,
            read_started,
        }
    }

    /// When the PostgreSQL read behind this entry started.
    pub fn read_started(&self) -> Instant {
        self.read_started
    }

    fn version(&self) -> DateTime<Utc> {
        self.product.updated_at
    }
}

/// A strong entity tag of a representation: the same bytes give the same
/// tag on every instance (the hasher's keys are fixed).
pub fn etag_of(body: &[u8]) -> String {
    let mut hasher = DefaultHasher::new();
    body.hash(&mut hasher);
    format!("\"{:016x}\"", hasher.finish())
}

/// What an entry must show before it is served again: a version at least
/// `version` (`None`: no event will do), unless it was read from
/// PostgreSQL after `since`.
#[derive(Debug, Clone, Copy)]
struct Need {
    version: Option<DateTime<Utc>>,
    since: Instant,
}

impl Need {
    fn met_by(&self, entry: &Entry) -> bool {
        entry.read_started > self.since || self.version.is_some_and(|v| entry.version() >= v)
    }

    /// Both needs at once (conservatively).
    fn and(self, other: Need) -> Need {
        Need {
            version: match (self.version, other.version) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            },
            since: self.since.max(other.since),
        }
    }
}

#[derive(Default)]
struct Slot {
    entry: Option<Arc<Entry>>,
    need: Option<Need>,
    /// Milliseconds since the cache's epoch of the last read served.
    last_used: AtomicU64,
    /// A background re-read is on its way.
    refreshing: AtomicBool,
}

/// One list page's ids, as read.
struct Page {
    ids: Vec<Uuid>,
    next_cursor: Option<Uuid>,
    read_started: Instant,
    /// The catalog generation the read started in (see `ProductCache::generation`).
    generation: u64,
    /// A background re-read is on its way.
    refreshing: AtomicBool,
}

type PageKey = (Option<Uuid>, i64);

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Flight {
    Product(Uuid),
    Page(PageKey),
}

/// Pages kept per instance; beyond, all are dropped (they are re-read on
/// demand, and a crowd reads few distinct pages).
const PAGES_MAX: usize = 1024;

/// The cache's counters, for `/metrics`.
#[derive(Default)]
pub struct CacheMetrics {
    /// Reads answered from memory.
    pub hits: Counter,
    /// PostgreSQL queries made for product reads (a product or a page).
    pub db_reads: Counter,
    /// Entries dropped to stay within `CHECKLINE_CATALOG_MAX_PRODUCTS`.
    pub dropped: Counter,
    /// `304 Not Modified` answers.
    pub not_modified: Counter,
}

impl CacheMetrics {
    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        crate::metrics::render_counters(&[
            (
                "checkline_product_reads_from_memory_total",
                "Product and list reads answered from memory.",
                self.hits.get(),
            ),
            (
                "checkline_product_db_reads_total",
                "PostgreSQL queries behind product and list reads.",
                self.db_reads.get(),
            ),
            (
                "checkline_products_dropped_total",
                "Products dropped from memory over CHECKLINE_CATALOG_MAX_PRODUCTS.",
                self.dropped.get(),
            ),
            (
                "checkline_product_not_modified_total",
                "Product and list reads answered 304 Not Modified.",
                self.not_modified.get(),
            ),
        ])
    }
}

pub struct ProductCache {
    pool: PgPool,
    fresh: Duration,
    max_products: usize,
    slots: RwLock<HashMap<Uuid, Slot>>,
    pages: Mutex<HashMap<PageKey, Arc<Page>>>,
    /// Bumped by every product created: pages read before are not served.
    generation: AtomicU64,
    flights: Mutex<HashMap<Flight, Arc<tokio::sync::Mutex<()>>>>,
    epoch: Instant,
    pub metrics: CacheMetrics,
}

/// One page of the list: its products and the next page's cursor.
pub struct ListPage {
    pub items: Vec<Arc<Entry>>,
    pub next_cursor: Option<Uuid>,
    /// When the oldest PostgreSQL read behind the page started.
    pub read_started: Instant,
}

impl ProductCache {
    pub fn new(pool: PgPool, fresh: Duration, max_products: usize) -> Self {
        Self {
            pool,
            fresh,
            max_products: max_products.max(1),
            slots: RwLock::new(HashMap::new()),
            pages: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            flights: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            metrics: CacheMetrics::default(),
        }
    }

    /// The bound.
    pub fn fresh(&self) -> Duration {
        self.fresh
    }

    /// How long a response read at `read_started` may still be kept by a
    /// browser or CDN, in whole seconds (`Cache-Control: max-age`): 0
    /// below a one-second bound, since any positive max-age would outlive it.
    pub fn max_age_secs(&self, read_started: Instant) -> u64 {
        self.fresh.saturating_sub(read_started.elapsed()).as_secs()
    }

    /// The product, or `None` if there is none.
    pub async fn product(self: &Arc<Self>, id: Uuid) -> Result<Option<Arc<Entry>>, ApiError> {
        if let Some(entry) = self.servable(id, true) {
            self.metrics.hits.inc();
            return Ok(Some(entry));
        }
        self.read_product(id, false).await
    }

    /// An entry that may be served now; with `refresh`, starts a background
    /// re-read when it is past half its life.
    fn servable(self: &Arc<Self>, id: Uuid, refresh: bool) -> Option<Arc<Entry>> {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        let slot = slots.get(&id)?;
        let entry = slot.entry.as_ref()?;
        let age = entry.read_started.elapsed();
        if age >= self.fresh || slot.need.is_some_and(|need| !need.met_by(entry)) {
            return None;
        }
        slot.last_used.store(self.now_ms(), Ordering::Relaxed);
        if refresh && age >= self.fresh / 2 && !slot.refreshing.swap(true, Ordering::AcqRel) {
            let cache = self.clone();
            tokio::spawn(async move {
                let _ = cache.read_product(id, true).await;
                let slots = cache.slots.read().unwrap_or_else(|e| e.into_inner());
                if let Some(slot) = slots.get(&id) {
                    slot.refreshing.store(false, Ordering::Release);
                }
            });
        }
        Some(entry.clone())
    }

    /// Reads the product from PostgreSQL, once for everyone who asks at the
    /// same time. In the `background`, an entry still servable is what is
    /// to be replaced: only one read since the ask will do.
    async fn read_product(
        self: &Arc<Self>,
        id: Uuid,
        background: bool,
    ) -> Result<Option<Arc<Entry>>, ApiError> {
        let asked = Instant::now();
        let flight = self.flight(Flight::Product(id));
        let guard = flight.lock().await;
        // Whoever held the flight before may have just read it.
        if let Some(entry) = self
            .servable(id, false)
            .filter(|entry| !background || entry.read_started >= asked)
        {
            drop(guard);
            self.land(Flight::Product(id), flight);
            return Ok(Some(entry));
        }
        let read = self.read(&[id]).await;
        drop(guard);
        self.land(Flight::Product(id), flight);
        let entries = read?;
        if entries.is_empty() {
            self.forget(id);
        }
        Ok(entries.into_iter().next())
    }

    /// One page of the list, from `cursor` (exclusive), `limit` products.
    pub async fn list(
        self: &Arc<Self>,
        cursor: Option<Uuid>,
        limit: i64,
    ) -> Result<ListPage, ApiError> {
        let key = (cursor, limit);
        if let Some(page) = self.page(key) {
            if page.read_started.elapsed() >= self.fresh / 2
                && !page.refreshing.swap(true, Ordering::AcqRel)
            {
                let cache = self.clone();
                tokio::spawn(async move {
                    let flight = cache.flight(Flight::Page(key));
                    let guard = flight.lock().await;
                    let _ = cache.read_page(key).await;
                    drop(guard);
                    cache.land(Flight::Page(key), flight);
                });
            }
            return self.fill(&page).await;
        }
        let flight = self.flight(Flight::Page(key));
        let guard = flight.lock().await;
        let result = match self.page(key) {
            Some(page) => self.fill(&page).await,
            None => self.read_page(key).await,
        };
        drop(guard);
        self.land(Flight::Page(key), flight);
        result
    }

    fn page(&self, key: PageKey) -> Option<Arc<Page>> {
        let pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        let page = pages.get(&key)?;
        (page.read_started.elapsed() < self.fresh
            && page.generation == self.generation.load(Ordering::Acquire))
        .then(|| page.clone())
    }

    /// The page's products from memory, those not servable read again in
    /// one query.
    async fn fill(self: &Arc<Self>, page: &Page) -> Result<ListPage, ApiError> {
        let mut items: Vec<Option<Arc<Entry>>> = Vec::with_capacity(page.ids.len());
        let mut missing = Vec::new();
        for id in &page.ids {
            // The page as a whole is read again in the background, not
            // each of its products.
            let entry = self.servable(*id, false);
            if entry.is_none() {
                missing.push(*id);
            }
            items.push(entry);
        }
        let mut read_started = page.read_started;
        if missing.is_empty() {
            self.metrics.hits.inc();
        } else {
            read_started = Instant::now();
            let read: HashMap<Uuid, Arc<Entry>> = self
                .read(&missing)
                .await?
                .into_iter()
                .map(|e| (e.product.id, e))
                .collect();
            for (slot, id) in items.iter_mut().zip(&page.ids) {
                if slot.is_none() {
                    *slot = read.get(id).cloned();
                }
            }
        }
        let items: Vec<Arc<Entry>> = items.into_iter().flatten().collect();
        let oldest = items
            .iter()
            .map(|e| e.read_started)
            .min()
            .unwrap_or(read_started);
        Ok(ListPage {
            items,
            next_cursor: page.next_cursor,
            read_started: oldest.min(read_started),
        })
    }

    async fn read_page(self: &Arc<Self>, (cursor, limit): PageKey) -> Result<ListPage, ApiError> {
        let generation = self.generation.load(Ordering::Acquire);
        let started = Instant::now();
        self.metrics.db_reads.inc();
        let rows: Vec<CachedRow> = sqlx::query_as(&format!(
            "SELECT {} FROM products WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
            cached_columns()
        ))
        .bind(cursor)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut items = self.store(rows, started);
        let next_cursor = if items.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
            items.truncate(usize::try_from(limit).unwrap_or(0));
            items.last().map(|e| e.product.id)
        } else {
            None
        };
        let page = Arc::new(Page {
            ids: items.iter().map(|e| e.product.id).collect(),
            next_cursor,
            read_started: started,
            generation,
            refreshing: AtomicBool::new(false),
        });
        {
            let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
            if pages.len() >= PAGES_MAX {
                pages.clear();
            }
            pages.insert((cursor, limit), page);
        }
        Ok(ListPage {
            items,
            next_cursor,
            read_started: started,
        })
    }

    /// Reads `ids` from PostgreSQL and keeps what it found.
    async fn read(&self, ids: &[Uuid]) -> Result<Vec<Arc<Entry>>, ApiError> {
        let started = Instant::now();
        self.metrics.db_reads.inc();
        let rows: Vec<CachedRow> = sqlx::query_as(&format!(
            "SELECT {} FROM products WHERE id = ANY($1) ORDER BY id",
            cached_columns()
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(self.store(rows, started))
    }

    /// Keeps rows read from a query that started at `started`; returns the
    /// entries to serve, in the rows' order.
    fn store(&self, rows: Vec<CachedRow>, started: Instant) -> Vec<Arc<Entry>> {
        let now_ms = self.now_ms();
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        let entries = rows
            .into_iter()
            .map(|row| {
                let read = Arc::new(row.into_entry(started));
                let slot = slots.entry(read.product.id).or_default();
                slot.last_used.store(now_ms, Ordering::Relaxed);
                let entry = match &slot.entry {
                    // An event brought a newer state than this read saw:
                    // it is at least as fresh.
                    Some(known) if known.version() > read.version() => {
                        if known.read_started >= started {
                            known.clone()
                        } else {
                            Arc::new(Entry::new(known.product.clone(), known.stock, started))
                        }
                    }
                    Some(known) if known.read_started > started => known.clone(),
                    _ => read,
                };
                if slot.need.is_some_and(|need| need.met_by(&entry)) {
                    slot.need = None;
                }
                slot.entry = Some(entry.clone());
                entry
            })
            .collect();
        if slots.len() > self.max_products {
            let dropped = shrink(&mut slots, self.max_products);
            self.metrics.dropped.add(dropped as u64);
        }
        entries
    }

    fn forget(&self, id: Uuid) {
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        slots.remove(&id);
    }

    /// A worker's stock event (after its commit).
    pub fn observe_stock(&self, event: &StockEvent) {
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = slots.get_mut(&event.product_id) else {
            return;
        };
        let Some(known) = &slot.entry else { return };
        let mut product = known.product.clone();
        match event.updated_at {
            Some(version) if version <= known.version() => return,
            Some(version) => product.updated_at = version,
            // From a worker that does not stamp its events: applied, but it
            // cannot prove itself newer than what is held.
            None => {}
        }
        product.stock = event.stock;
        product.reserved = event.reserved;
        let entry = Arc::new(Entry::new(product, *event, known.read_started));
        if slot.need.is_some_and(|need| need.met_by(&entry)) {
            slot.need = None;
        }
        slot.entry = Some(entry);
    }

    /// This instance reports `order` to someone: its products are not served
    /// from before its decision.
    pub fn saw_order(&self, order: &Order) {
        let Some(decided_at) = order.decided_at else {
            return;
        };
        // A rejection changes no product.
        if order.status == OrderStatus::Rejected {
            return;
        }
        let need = Need {
            version: Some(decided_at),
            since: Instant::now(),
        };
        for id in order_products(order) {
            self.require(id, need);
        }
    }

    /// This instance reports products as PostgreSQL had them at these
    /// versions (the admin stats): none is served from before that. A
    /// product not held is read from PostgreSQL when asked anyway.
    pub fn saw_products(&self, seen: impl IntoIterator<Item = (Uuid, DateTime<Utc>)>) {
        let since = Instant::now();
        for (id, version) in seen {
            let held = self
                .slots
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&id);
            if held {
                let version = Some(version);
                self.require(id, Need { version, since });
            }
        }
    }

    /// `order` changed outside a batch (confirmed, cancelled, expired): the
    /// units it reserved moved without a new product version, so its
    /// products are read again before they are served.
    pub fn order_changed(&self, order: &Order) {
        for id in order_products(order) {
            self.evict(id);
        }
    }

    /// The product changed in a way no stock event reports (an admin change,
    /// a restock applied): read it again before serving it.
    pub fn evict(&self, id: Uuid) {
        self.require(
            id,
            Need {
                version: None,
                since: Instant::now(),
            },
        );
    }

    /// A product was created or changed by an admin: it is read again, and
    /// so is every page (a new product joins one).
    pub fn admin_changed(&self, id: Uuid) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.pages.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.evict(id);
    }

    fn require(&self, id: Uuid, need: Need) {
        let met = |slot: &Slot| slot.entry.as_ref().is_some_and(|e| need.met_by(e));
        // Usually the stock event came first: nothing to write.
        if self
            .slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .is_some_and(met)
        {
            return;
        }
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        // Marked even when nothing is held: a read already on its way
        // started before the mark and must not be served after it.
        let slot = slots.entry(id).or_default();
        if met(slot) {
            return;
        }
        slot.need = Some(match slot.need {
            Some(held) => held.and(need),
            None => need,
        });
    }

    fn flight(&self, key: Flight) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        flights.entry(key).or_default().clone()
    }

    /// Lets go of a flight; the last one out removes it.
    fn land(&self, key: Flight, flight: Arc<tokio::sync::Mutex<()>>) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        // The map's and ours: nobody else holds it, nor can take it now.
        if Arc::strong_count(&flight) == 2 {
            flights.remove(&key);
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.read().map(|s| s.len()).unwrap_or(0)
    }
}

/// Drops the least recently read entries until a tenth below `max`
/// (so that the scan is paid once per many inserts). Returns how many.
fn shrink(slots: &mut HashMap<Uuid, Slot>, max: usize) -> usize {
    let keep = max - max / 10;
    let mut used: Vec<(u64, Uuid)> = slots
        .iter()
        .map(|(id, slot)| (slot.last_used.load(Ordering::Relaxed), *id))
        .collect();
    let drop = used.len().saturating_sub(keep);
    if drop == 0 {
        return 0;
    }
    used.select_nth_unstable(drop - 1);
    for (_, id) in used.iter().take(drop) {
        slots.remove(id);
    }
    drop
}

fn order_products(order: &Order) -> impl Iterator<Item = Uuid> + '_ {
    order
        .product_id
        .into_iter()
        .chain(order.lines.iter().map(|line| line.product_id))
}

/// A product with what its stock event needs besides.
#[derive(sqlx::FromRow)]
struct CachedRow {
    #[sqlx(flatten)]
    product: ProductRow,
    held: i64,
    next_release_at: Option<DateTime<Utc>>,
}

impl CachedRow {
    fn into_entry(self, read_started: Instant) -> Entry {
        let product = Product::from(self.product);
        let stock = StockEvent::with_reserved(
            product.id,
            product.stock,
            self.held,
            product.reserved,
            self.next_release_at,
        )
        .at(product.updated_at);
        Entry::new(product, stock, read_started)
    }
}

fn cached_columns() -> &'static str {
    static COLUMNS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    COLUMNS.get_or_init(|| {
        format!(
            "{}, held, (SELECT r.next FROM ({}) r) AS next_release_at",
            product_columns(),
            checkline_shared::stock::reserved_units("r.product_id = products.id")
        )
    })
}

#[cfg(test)]
mod tests {
    use checkline_shared::domain::OrderLine;
    use checkline_shared::partition::Partition;

    use super::*;

    fn cache(fresh_ms: u64, max: usize) -> Arc<ProductCache> {
        // Never connects: these tests read nothing from PostgreSQL.
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        Arc::new(ProductCache::new(
            pool,
            Duration::from_millis(fresh_ms),
            max,
        ))
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn row(id: Uuid, stock: i64, version: DateTime<Utc>) -> CachedRow {
        CachedRow {
            product: ProductRow {
                id,
                sku: format!("SKU-{id}"),
                name: "Flash phone".into(),
                price_cents: 19_900,
                stock,
                max_per_customer: None,
                active: true,
                partition: Partition::new(1),
                updated_at: version,
                reserved: 0,
            },
            held: 0,
            next_release_at: None,
        }
    }

    fn event(id: Uuid, stock: i64, version: DateTime<Utc>) -> StockEvent {
        StockEvent::new(id, stock).at(version)
    }

    fn order(id: Uuid, status: OrderStatus, decided_at: DateTime<Utc>) -> Order {
        Order {
            id: Uuid::now_v7(),
            customer_id: "alice".into(),
            product_id: Some(id),
            quantity: Some(1),
            lines: vec![OrderLine {
                product_id: id,
                quantity: 1,
                unit_price_cents: None,
            }],
            status,
            reason: None,
            rejected_product_id: None,
            unit_price_cents: None,
            total_cents: None,
            created_at: decided_at,
            decided_at: Some(decided_at),
            reserved_until: None,
        }
    }

    fn stock_served(cache: &Arc<ProductCache>, id: Uuid) -> Option<i64> {
        cache.servable(id, true).map(|e| e.product.stock)
    }

    #[tokio::test]
    async fn an_entry_is_served_only_within_the_bound() {
        let cache = cache(60, 100);
        let id = Uuid::now_v7();
        assert_eq!(stock_served(&cache, id), None);
        cache.store(vec![row(id, 5, at(0))], Instant::now());
        assert_eq!(stock_served(&cache, id), Some(5));
        tokio::time::sleep(Duration::from_millis(70)).await;
        assert_eq!(stock_served(&cache, id), None);
    }

    #[tokio::test]
    async fn events_bring_news_but_never_extend_an_entrys_life() {
        let cache = cache(60, 100);
        let id = Uuid::now_v7();
        cache.store(vec![row(id, 5, at(0))], Instant::now());
        cache.observe_stock(&event(id, 4, at(10)));
        assert_eq!(stock_served(&cache, id), Some(4));
        let entry = cache.servable(id, true).unwrap();
        assert_eq!(entry.product.updated_at, at(10));
        assert_eq!(entry.stock.stock, 4);
        // The body and its validator follow the change.
        let shown: Product = serde_json::from_slice(&entry.body).unwrap();
        assert_eq!(shown.stock, 4);
        assert_eq!(entry.etag, etag_of(&entry.body));
        // An event older than what is held is ignored.
        cache.observe_stock(&event(id, 5, at(5)));
        assert_eq!(stock_served(&cache, id), Some(4));
        tokio::time::sleep(Duration::from_millis(40)).await;
        cache.observe_stock(&event(id, 3, at(20)));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(
            stock_served(&cache, id),
            None,
            "an event made it live longer"
        );
    }

    #[tokio::test]
    async fn a_reported_decision_hides_older_stock_until_it_is_shown() {
        let cache = cache(10_000, 100);
        let id = Uuid::now_v7();
        cache.store(vec![row(id, 5, at(0))], Instant::now());
        // A rejection changes no product.
        cache.saw_order(&order(id, OrderStatus::Rejected, at(50)));
        assert_eq!(stock_served(&cache, id), Some(5));
        // A confirmation after the entry's version: not served until the
        // stock event of that batch arrives...
        cache.saw_order(&order(id, OrderStatus::Confirmed, at(50)));
        assert_eq!(stock_served(&cache, id), None);
        cache.observe_stock(&event(id, 4, at(40)));
        assert_eq!(stock_served(&cache, id), None, "an older event met it");
        cache.observe_stock(&event(id, 3, at(51)));
        assert_eq!(stock_served(&cache, id), Some(3));
        // ...or a read that started after the order was seen.
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        cache.saw_order(&order(id, OrderStatus::Confirmed, at(80)));
        cache.store(vec![row(id, 3, at(51))], before);
        assert_eq!(
            stock_served(&cache, id),
            None,
            "a read from before it met it"
        );
        cache.store(vec![row(id, 2, at(60))], Instant::now());
        assert_eq!(stock_served(&cache, id), Some(2));
    }

    #[tokio::test]
    async fn a_read_begun_before_a_decision_was_reported_is_not_served_after() {
        let cache = cache(10_000, 100);
        let id = Uuid::now_v7();
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        // Nothing held yet when the order is reported...
        cache.saw_order(&order(id, OrderStatus::Confirmed, at(50)));
        // ...and the read that was on its way lands afterwards.
        cache.store(vec![row(id, 5, at(0))], started);
        assert_eq!(stock_served(&cache, id), None);
    }

    #[tokio::test]
    async fn a_change_outside_a_batch_or_by_an_admin_is_read_again() {
        let cache = cache(10_000, 100);
        let id = Uuid::now_v7();
        cache.store(vec![row(id, 5, at(0))], Instant::now());
        cache.order_changed(&order(id, OrderStatus::Confirmed, at(0)));
        assert_eq!(stock_served(&cache, id), None);
        // No event can stand in for the read.
        cache.observe_stock(&event(id, 5, at(100)));
        assert_eq!(stock_served(&cache, id), None);
        cache.store(vec![row(id, 5, at(100))], Instant::now());
        assert_eq!(stock_served(&cache, id), Some(5));
        cache.admin_changed(id);
        assert_eq!(stock_served(&cache, id), None);
    }

    #[tokio::test]
    async fn a_newer_state_from_an_event_outlives_an_older_read() {
        let cache = cache(10_000, 100);
        let id = Uuid::now_v7();
        let started = Instant::now();
        cache.store(vec![row(id, 5, at(0))], Instant::now());
        cache.observe_stock(&event(id, 4, at(10)));
        // A read that saw the older state lands late.
        let served = cache.store(vec![row(id, 5, at(0))], started);
        assert_eq!(served[0].product.stock, 4);
        assert_eq!(stock_served(&cache, id), Some(4));
    }

    #[tokio::test]
    async fn memory_keeps_the_most_recently_read() {
        let cache = cache(10_000, 100);
        let ids: Vec<Uuid> = (0..100).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            cache.store(vec![row(*id, 1, at(0))], Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
        // Read the last half again, then one more product comes in.
        for id in &ids[50..] {
            assert!(cache.servable(*id, true).is_some());
        }
        cache.store(vec![row(Uuid::now_v7(), 1, at(0))], Instant::now());
        assert_eq!(cache.len(), 90);
        assert_eq!(cache.metrics.dropped.get(), 11);
        assert!(ids[50..]
            .iter()
            .all(|id| cache.servable(*id, true).is_some()));
    }

    #[tokio::test]
    async fn caches_downstream_keep_a_copy_only_for_the_bound_s_whole_seconds_left() {
        let pool = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        let short = ProductCache::new(pool.clone(), Duration::from_millis(250), 100);
        assert_eq!(short.max_age_secs(Instant::now()), 0);
        let long = ProductCache::new(pool, Duration::from_millis(3_500), 100);
        assert_eq!(long.max_age_secs(Instant::now()), 3);
        let old = Instant::now() - Duration::from_millis(1_600);
        assert_eq!(long.max_age_secs(old), 1);
        assert_eq!(
            long.max_age_secs(Instant::now() - Duration::from_secs(9)),
            0
        );
    }
}
