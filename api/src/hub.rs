//! Result events from the workers, fanned out to the requests waiting on them.
//!
//! One core NATS subscription per API process receives every result event;
//! requests waiting on an order (long polls, order streams), a restock or a
//! product's stock subscribe here by id. A `watch` channel per id keeps only
//! the latest value, which is exactly the coalescing stock streams want.
//! Streams of many products read every stock event from one `broadcast`
//! channel instead (`crate::routes::stock`), and the activity series
//! (`crate::activity`) counts the decisions and other instances' accepts.
//! Events are hints: waiters re-read PostgreSQL periodically, so a lost event
//! (NATS reconnecting, say) costs latency, never a missed decision.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use checkline_shared::domain::{Order, RestockResult, StockEvent};
use checkline_shared::faults::Faults;
use checkline_shared::subjects::{EventSubject, Subjects};
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::activity::Activity;
use crate::catalog::Catalog;
use crate::product_cache::ProductCache;

/// Stock events a stream of many products may fall behind by before it is
/// told it lagged (`crate::routes::stock`). Such a stream drains it
/// continuously, coalescing per product, so only a client that stops
/// reading falls this far behind; 4,096 events of about a hundred bytes.
pub const STOCK_BROADCAST_CAPACITY: usize = 4096;

/// The channel of one key and how many [`Watch`]es hold it. Counted here,
/// under the map's lock, rather than read from the channel: a receiver
/// outlives its `Watch::drop`, so two watchers leaving together could each
/// see the other still there and leave the entry behind.
struct Entry<V> {
    tx: watch::Sender<Option<V>>,
    watchers: usize,
}

type Map<K, V> = Arc<Mutex<HashMap<K, Entry<V>>>>;

/// Latest value per key, for whoever currently watches that key.
pub struct Watchers<K, V> {
    map: Map<K, V>,
}

impl<K, V> Default for Watchers<K, V> {
    fn default() -> Self {
        Self {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<K: Eq + Hash + Clone, V> Watchers<K, V> {
    pub fn subscribe(&self, key: K) -> Watch<K, V> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(key.clone()).or_insert_with(|| Entry {
            tx: watch::channel(None).0,
            watchers: 0,
        });
        entry.watchers += 1;
        let rx = entry.tx.subscribe();
        Watch {
            rx,
            key,
            map: self.map.clone(),
        }
    }

    /// Delivers `value` if anyone watches `key`; otherwise drops it.
    pub fn publish(&self, key: &K, value: V) {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get(key) {
            entry.tx.send_replace(Some(value));
        }
    }

    pub fn watched(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// A subscription; unregisters its key when the last watcher goes.
pub struct Watch<K: Eq + Hash, V> {
    pub rx: watch::Receiver<Option<V>>,
    key: K,
    map: Map<K, V>,
}

impl<K: Eq + Hash, V> Drop for Watch<K, V> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(&self.key) {
            entry.watchers = entry.watchers.saturating_sub(1);
            if entry.watchers == 0 {
                map.remove(&self.key);
            }
        }
    }
}

pub struct Hub {
    pub orders: Watchers<Uuid, Order>,
    pub stock: Watchers<Uuid, StockEvent>,
    pub restocks: Watchers<Uuid, RestockResult>,
    /// Every product's stock events, in arrival order, for the streams of
    /// many products (`GET /v1/products/events`).
    pub all_stock: broadcast::Sender<StockEvent>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            orders: Watchers::default(),
            stock: Watchers::default(),
            restocks: Watchers::default(),
            all_stock: broadcast::channel(STOCK_BROADCAST_CAPACITY).0,
        }
    }
}

impl Hub {
    /// Feeds the hub from the result-event subscription until it ends.
    pub async fn run(
        self: Arc<Self>,
        client: async_nats::Client,
        subjects: Subjects,
        catalog: Arc<Catalog>,
        products: Arc<ProductCache>,
        activity: Arc<Activity>,
        faults: Arc<Faults>,
    ) {
        let mut subscription = match client.subscribe(subjects.events_all()).await {
            Ok(s) => s,
            Err(err) => {
                tracing::error!(error = %err, "cannot subscribe to result events; waiters will poll");
                return;
            }
        };
        while let Some(message) = subscription.next().await {
            let payload = &message.payload;
            match subjects.parse_event(message.subject.as_str()) {
                // As if NATS had lost it: waiters fall back to PostgreSQL.
                Some(EventSubject::Decisions) if faults.fail("hub_drop_decisions") => {}
                Some(subject @ (EventSubject::Decisions | EventSubject::OrderChanges)) => {
                    if let Ok(orders) = serde_json::from_slice::<Vec<Order>>(payload) {
                        // Confirms, cancels and expiries are not decisions.
                        if subject == EventSubject::Decisions {
                            activity.decided(&orders);
                        }
                        for order in &orders {
                            // Before anyone hears of it (see `ProductCache`).
                            if subject == EventSubject::Decisions {
                                products.saw_order(order);
                            } else {
                                products.order_changed(order);
                            }
                        }
                        for order in orders {
                            self.orders.publish(&order.id.clone(), order);
                        }
                    }
                }
                // As if NATS had lost it (core NATS delivers at most once).
                Some(EventSubject::Stock(_)) if faults.fail("hub_drop_stock") => {}
                Some(EventSubject::Stock(id)) => {
                    if let Ok(stock) = serde_json::from_slice::<StockEvent>(payload) {
                        catalog.observe_stock(id, stock.open_units());
                        products.observe_stock(&stock);
                        self.stock.publish(&id, stock);
                        // An error only says no stream listens.
                        let _ = self.all_stock.send(stock);
                    }
                }
                Some(EventSubject::Accepted(instance)) => activity.sample(instance, payload),
                Some(EventSubject::Catalog(id)) => {
                    // As if the announcement had come late.
                    faults.at("hub_catalog_late").await;
                    // Not its own: the instance that made the change dropped
                    // its entries before announcing it, and a second drop
                    // arriving later would only cost a read.
                    if payload.as_ref() != activity.instance().to_string().as_bytes() {
                        products.admin_changed(id);
                    }
                }
                Some(EventSubject::Restock(id)) => {
                    if let Ok(result) = serde_json::from_slice::<RestockResult>(payload) {
                        catalog.restock_applied(result.product_id, id);
                        products.evict(result.product_id);
                        self.restocks.publish(&id, result);
                    }
                }
                Some(EventSubject::Restocking(product_id)) => {
                    match std::str::from_utf8(payload)
                        .ok()
                        .and_then(|p| p.parse().ok())
                    {
                        Some(restock_id) => catalog.restocking(product_id, restock_id),
                        None => {
                            tracing::warn!(%product_id, "restock announcement without a restock id")
                        }
                    }
                }
                None => tracing::debug!(subject = %message.subject, "unknown event subject"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_to_watchers_and_forgets_unwatched_keys() {
        let w: Watchers<u32, &'static str> = Watchers::default();
        w.publish(&1, "nobody listens");
        let mut a = w.subscribe(1);
        let b = w.subscribe(1);
        assert_eq!(w.watched(), 1);
        w.publish(&1, "decided");
        a.rx.changed().await.unwrap();
        assert_eq!(*a.rx.borrow(), Some("decided"));
        drop(a);
        assert_eq!(w.watched(), 1);
        drop(b);
        assert_eq!(w.watched(), 0);
    }

    #[test]
    fn the_last_watcher_out_always_unregisters_its_key() {
        const THREADS: usize = 4;
        const ROUNDS: u32 = 20_000;
        let w: Arc<Watchers<u32, u32>> = Arc::new(Watchers::default());
        let barrier = Arc::new(std::sync::Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (w, barrier) = (w.clone(), barrier.clone());
                std::thread::spawn(move || {
                    // A fresh key per round: a leaked entry stays leaked.
                    for round in 0..ROUNDS {
                        let watch = w.subscribe(round);
                        barrier.wait();
                        drop(watch);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(w.watched(), 0, "entries left behind by concurrent drops");
    }
}
