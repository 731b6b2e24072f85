//! What the accept path knows about products without asking PostgreSQL:
//! that a product exists, its partition (both fixed for life), and whether it
//! was last seen sold out.
//!
//! "Sold out" is trusted only while fresh: it comes from the worker's stock
//! events or a database read and expires after `CHECKLINE_SOLD_OUT_TTL_MS`.
//! A restock is never hidden behind it: every API instance hears of a
//! restock (by its id) before the restock is queued, and keeps the product
//! open until that restock's own result arrives, whatever stock events about
//! other decisions say in between. Should the result event be missed (events
//! are core NATS), the next database read (the restock's `pending` row, or
//! its absence) settles it.
//!
//! [`fetch_product`] is the one read of a whole product from PostgreSQL,
//! for the handlers and the restock.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use checkline_shared::domain::Product;
use checkline_shared::partition::Partition;
use sqlx::PgPool;
use uuid::Uuid;

use crate::db::{product_columns, ProductRow};
use crate::error::ApiError;

#[derive(Debug, Clone)]
struct ProductInfo {
    partition: Partition,
    /// Last stock seen (events or database).
    stock: i64,
    seen_at: Instant,
    /// Restocks announced or read as pending and not yet seen applied, with
    /// when this instance learnt of each.
    restocks: HashMap<Uuid, Instant>,
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
    SoldOut { partition: Partition },
    /// Known; let the queue decide.
    Open { partition: Partition },
    /// Known, but its "sold out" (or its pending restocks) too old to answer
    /// with: ask the database.
    Stale { partition: Partition },
}

/// A product as read from PostgreSQL.
#[derive(Debug, Clone)]
pub struct ProductRead {
    pub partition: Partition,
    pub stock: i64,
    /// Its restocks still pending at the time of the read.
    pub pending_restocks: Vec<Uuid>,
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
        let Some(info) = products.get(&id) else {
            return Known::Unknown;
        };
        let partition = info.partition;
        if info.stock > 0 {
            return Known::Open { partition };
        }
        let fresh = info.seen_at.elapsed() <= self.sold_out_ttl;
        match (info.restocks.is_empty(), fresh) {
            (true, true) => Known::SoldOut { partition },
            // A restock on its way keeps the product open; once that has
            // lasted a while without its result, the database is asked
            // whether it is still pending.
            (false, _)
                if fresh
                    || info
                        .restocks
                        .values()
                        .any(|at| at.elapsed() <= self.sold_out_ttl) =>
            {
                Known::Open { partition }
            }
            _ => Known::Stale { partition },
        }
    }

    /// A read from PostgreSQL that started at `read_at`: it speaks for every
    /// restock announced before it, not for those announced since.
    pub fn observe_read(&self, id: Uuid, read: ProductRead, read_at: Instant) {
        let mut products = self.products.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut restocks: HashMap<Uuid, Instant> = read
            .pending_restocks
            .into_iter()
            .map(|r| (r, now))
            .collect();
        if let Some(known) = products.get(&id) {
            restocks.extend(
                known
                    .restocks
                    .iter()
                    .filter(|(_, at)| **at > read_at)
                    .map(|(r, at)| (*r, *at)),
            );
        }
        products.insert(
            id,
            ProductInfo {
                partition: read.partition,
                stock: read.stock,
                seen_at: now,
                restocks,
            },
        );
    }

    /// A stock event from a worker (after its commit).
    pub fn observe_stock(&self, id: Uuid, stock: i64) {
        let mut products = self.products.write().unwrap_or_else(|e| e.into_inner());
        if let Some(info) = products.get_mut(&id) {
            info.stock = stock;
            info.seen_at = Instant::now();
        }
    }

    /// A restock was applied (its result event).
    pub fn restock_applied(&self, id: Uuid, restock_id: Uuid) {
        let mut products = self.products.write().unwrap_or_else(|e| e.into_inner());
        if let Some(info) = products.get_mut(&id) {
            info.restocks.remove(&restock_id);
        }
    }

    /// A restock was announced: never answer "sold out" for this product
    /// until that restock is applied. (An unknown product is read from the
    /// database before any answer, and the read sees the restock.)
    pub fn restocking(&self, id: Uuid, restock_id: Uuid) {
        let mut products = self.products.write().unwrap_or_else(|e| e.into_inner());
        if let Some(info) = products.get_mut(&id) {
            info.restocks.insert(restock_id, Instant::now());
        }
    }
}

/// The product as PostgreSQL has it now, or `None` if there is none.
pub async fn fetch_product(pool: &PgPool, id: Uuid) -> Result<Option<Product>, ApiError> {
    let columns = product_columns();
    let row: Option<ProductRow> =
        sqlx::query_as(&format!("SELECT {columns} FROM products WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(Product::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(stock: i64, pending_restocks: Vec<Uuid>) -> ProductRead {
        ProductRead {
            partition: Partition::new(3),
            stock,
            pending_restocks,
        }
    }

    #[test]
    fn sold_out_is_trusted_only_while_fresh() {
        let catalog = Catalog::new(Duration::from_millis(50));
        let id = Uuid::new_v4();
        assert_eq!(catalog.lookup(id), Known::Unknown);
        catalog.observe_read(id, read(5, vec![]), Instant::now());
        assert_eq!(
            catalog.lookup(id),
            Known::Open {
                partition: Partition::new(3)
            }
        );
        catalog.observe_stock(id, 0);
        assert_eq!(
            catalog.lookup(id),
            Known::SoldOut {
                partition: Partition::new(3)
            }
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            catalog.lookup(id),
            Known::Stale {
                partition: Partition::new(3)
            }
        );
    }

    #[test]
    fn a_restock_keeps_the_product_open_until_its_own_result() {
        let catalog = Catalog::new(Duration::from_secs(60));
        let (id, restock) = (Uuid::new_v4(), Uuid::new_v4());
        catalog.observe_read(id, read(0, vec![]), Instant::now());
        catalog.restocking(id, restock);
        // Other decisions' stock events do not end it.
        catalog.observe_stock(id, 1);
        catalog.observe_stock(id, 0);
        assert_eq!(
            catalog.lookup(id),
            Known::Open {
                partition: Partition::new(3)
            }
        );
        // Nor does a read that started before the announcement.
        let before = Instant::now() - Duration::from_secs(1);
        catalog.observe_read(id, read(0, vec![]), before);
        assert_eq!(
            catalog.lookup(id),
            Known::Open {
                partition: Partition::new(3)
            }
        );
        catalog.restock_applied(id, Uuid::new_v4());
        assert_eq!(
            catalog.lookup(id),
            Known::Open {
                partition: Partition::new(3)
            }
        );
        catalog.restock_applied(id, restock);
        assert_eq!(
            catalog.lookup(id),
            Known::SoldOut {
                partition: Partition::new(3)
            }
        );
    }

    #[test]
    fn a_missed_result_is_settled_by_the_next_read() {
        let catalog = Catalog::new(Duration::from_millis(30));
        let (id, restock) = (Uuid::new_v4(), Uuid::new_v4());
        catalog.observe_read(id, read(0, vec![restock]), Instant::now());
        assert_eq!(
            catalog.lookup(id),
            Known::Open {
                partition: Partition::new(3)
            }
        );
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(
            catalog.lookup(id),
            Known::Stale {
                partition: Partition::new(3)
            }
        );
        // Still pending: open again; applied (absent from the read): sold out.
        catalog.observe_read(id, read(0, vec![restock]), Instant::now());
        assert_eq!(
            catalog.lookup(id),
            Known::Open {
                partition: Partition::new(3)
            }
        );
        catalog.observe_read(id, read(0, vec![]), Instant::now());
        assert_eq!(
            catalog.lookup(id),
            Known::SoldOut {
                partition: Partition::new(3)
            }
        );
    }
}
