//! What the accept path knows about products without asking PostgreSQL:
//! that a product exists, its partition (both fixed for life), and whether it
//! was last seen sold out.
//!
//! "Sold out" is trusted only while fresh: it comes from the worker's stock
//! events or a database read, expires after `CHECKLINE_SOLD_OUT_TTL_MS`, and
//! is cleared the moment any API instance announces a restock (before the
//! restock is queued), so a restock is never hidden behind a stale flag.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
pub struct ProductInfo {
    pub partition: i32,
    /// Last stock seen (events or database).
    pub stock: i64,
    pub seen_at: Instant,
    /// A restock was announced and not yet seen applied.
    pub restocking: bool,
}

pub struct Catalog {
    products: RwLock<HashMap<Uuid, ProductInfo>>,
    sold_out_ttl: Duration,
}

/// What the catalog can say about a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Never seen: ask the database.
    Unknown,
    /// Known and, as far as anyone knows, sold out.
    SoldOut { partition: i32 },
    /// Known; let the queue decide.
    Open { partition: i32 },
    /// Known, but its "sold out" is too old to answer with: ask the database.
    Stale { partition: i32 },
}

impl Catalog {
    pub fn new(sold_out_ttl: Duration) -> Self {
        Self {
            products: RwLock::new(HashMap::new()),
            sold_out_ttl,
        }
    }

    pub fn lookup(&self, id: Uuid) -> Known {
        let products = self.products.read().unwrap_or_else(|e| e.into_inner());
        match products.get(&id) {
            None => Known::Unknown,
            Some(info) if info.stock > 0 || info.restocking => Known::Open {
                partition: info.partition,
            },
            Some(info) if info.seen_at.elapsed() <= self.sold_out_ttl => Known::SoldOut {
                partition: info.partition,
            },
            Some(info) => Known::Stale {
                partition: info.partition,
            },
        }
    }

    /// A fresh read from PostgreSQL.
    pub fn observe_row(&self, id: Uuid, partition: i32, stock: i64) {
        let mut products = self.products.write().unwrap_or_else(|e| e.into_inner());
        let restocking = products
            .get(&id)
            .is_some_and(|p| p.restocking && stock <= 0);
        products.insert(
            id,
            ProductInfo {
                partition,
                stock,
                seen_at: Instant::now(),
                restocking,
            },
        );
    }

    /// A stock event from a worker (after its commit).
    pub fn observe_stock(&self, id: Uuid, stock: i64) {
        let mut products = self.products.write().unwrap_or_else(|e| e.into_inner());
        if let Some(info) = products.get_mut(&id) {
            info.stock = stock;
            info.seen_at = Instant::now();
            if stock > 0 {
                info.restocking = false;
            }
        }
    }

    /// A restock was applied (its result event): stock events speak for the
    /// product again.
    pub fn restock_applied(&self, id: Uuid) {
        let mut products = self.products.write().unwrap_or_else(|e| e.into_inner());
        if let Some(info) = products.get_mut(&id) {
            info.restocking = false;
        }
    }

    /// A restock was announced: never answer "sold out" for this product
    /// until the restock is applied.
    pub fn restocking(&self, id: Uuid) {
        let mut products = self.products.write().unwrap_or_else(|e| e.into_inner());
        if let Some(info) = products.get_mut(&id) {
            info.restocking = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sold_out_is_trusted_only_while_fresh_and_not_restocking() {
        let catalog = Catalog::new(Duration::from_millis(50));
        let id = Uuid::new_v4();
        assert_eq!(catalog.lookup(id), Known::Unknown);
        catalog.observe_row(id, 3, 5);
        assert_eq!(catalog.lookup(id), Known::Open { partition: 3 });
        catalog.observe_stock(id, 0);
        assert_eq!(catalog.lookup(id), Known::SoldOut { partition: 3 });
        catalog.restocking(id);
        assert_eq!(catalog.lookup(id), Known::Open { partition: 3 });
        // A stale zero read while the restock is on its way keeps it open.
        catalog.observe_row(id, 3, 0);
        assert_eq!(catalog.lookup(id), Known::Open { partition: 3 });
        catalog.observe_stock(id, 4);
        catalog.observe_stock(id, 0);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(catalog.lookup(id), Known::Stale { partition: 3 });
    }
}
