//! Product reads under an order load, and whether they were fresh.
//!
//! - [`read_until`] is one reader: it alternates `GET /v1/products/{id}`
//!   and the list page that holds the product until the run ends, keeping a
//!   [`ReadRecord`] (32 bytes) per read: when it was sent and answered (the
//!   generator's wall clock), the status, the stock and `updated_at` shown.
//! - [`db`] reads the product's stock changes from PostgreSQL and measures
//!   the clock difference between the generator and the database.
//! - [`timeline`] rebuilds the stock over time and judges every read
//!   against the freshness bound (pure); [`report`] holds the figures.

pub mod db;
pub mod report;
pub mod timeline;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde::Deserialize;
use uuid::Uuid;

use crate::client::{error_chain, transport_error_kind, ApiClient, Reply};

/// Page size of the list reads (`GET /v1/products?limit=50`).
pub const LIST_LIMIT: u32 = 50;
/// Most pages walked to find the one that holds the product.
const PAGES_MAX: usize = 10_000;
/// Pause after a read that got no answer, so that a refused connection does
/// not spin.
const NO_ANSWER_PAUSE: Duration = Duration::from_millis(10);

/// Which call a read was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReadKind {
    /// `GET /v1/products/{id}`.
    Product,
    /// `GET /v1/products?limit=50[&cursor=...]`, the page with the product.
    List,
}

/// One answered read, kept compact: a 30 s run at 60,000 reads/s keeps
/// 1.8 million of them (58 MB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRecord {
    /// When the request was sent: microseconds since the Unix epoch (UTC).
    pub sent_us: i64,
    /// The stock shown, or [`ReadRecord::NOT_SHOWN`].
    stock: i64,
    /// `updated_at` shown, microseconds since the epoch, or `NOT_SHOWN`.
    updated_us: i64,
    /// From sending to having read the whole body.
    pub latency_us: u32,
    pub status: u16,
    pub kind: ReadKind,
}

impl ReadRecord {
    /// No product shown: a non-2xx answer, an unreadable body, or a page
    /// without the product. Stock is never negative, and no row was
    /// updated at the start of time.
    const NOT_SHOWN: i64 = i64::MIN;

    pub fn new(
        kind: ReadKind,
        sent_us: i64,
        latency: Duration,
        status: u16,
        shown: Option<Shown>,
    ) -> Self {
        let (stock, updated_us) = shown.map_or((Self::NOT_SHOWN, Self::NOT_SHOWN), |shown| {
            (shown.stock, shown.updated_us)
        });
        Self {
            sent_us,
            stock,
            updated_us,
            latency_us: u32::try_from(latency.as_micros()).unwrap_or(u32::MAX),
            status,
            kind,
        }
    }

    /// When the whole answer was in.
    pub fn received_us(&self) -> i64 {
        self.sent_us.saturating_add(i64::from(self.latency_us))
    }

    /// The product as the read showed it.
    pub fn shown(&self) -> Option<Shown> {
        (self.stock != Self::NOT_SHOWN).then_some(Shown {
            stock: self.stock,
            updated_us: self.updated_us,
        })
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// What a read showed of the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown {
    pub stock: i64,
    pub updated_us: i64,
}

/// The fields of a `Product` a read looks at.
#[derive(Debug, Deserialize)]
struct ShownProduct {
    id: Uuid,
    stock: i64,
    updated_at: DateTime<Utc>,
}

impl ShownProduct {
    fn shown(&self) -> Shown {
        Shown {
            stock: self.stock,
            updated_us: self.updated_at.timestamp_micros(),
        }
    }
}

/// `GET /v1/products` (the fields a read looks at).
#[derive(Debug, Deserialize)]
struct ShownPage {
    items: Vec<ShownProduct>,
    next_cursor: Option<String>,
}

/// What one reader did.
#[derive(Debug, Default)]
pub struct ReaderOutcome {
    pub records: Vec<ReadRecord>,
    /// Reads left without an HTTP answer, by transport error kind.
    pub no_answer: BTreeMap<&'static str, u64>,
    /// The first read left without an answer.
    pub first_error: Option<String>,
}

/// Where the readers read.
#[derive(Debug, Clone)]
pub struct ReadTarget {
    pub product: Uuid,
    /// The cursor of the list page that holds the product (`None`: the
    /// first page).
    pub page_cursor: Option<String>,
}

/// One reader at API `api`: reads until `deadline`, the product first if
/// `product_first`, then the page, and so on.
pub async fn read_until(
    client: ApiClient,
    api: usize,
    target: ReadTarget,
    deadline: Instant,
    product_first: bool,
) -> ReaderOutcome {
    let mut outcome = ReaderOutcome::default();
    let mut kind = if product_first {
        ReadKind::Product
    } else {
        ReadKind::List
    };
    while Instant::now() < deadline {
        let sent_us = Utc::now().timestamp_micros();
        let reply = match kind {
            ReadKind::Product => client.get_product(api, target.product).await,
            ReadKind::List => {
                client
                    .list_products(api, LIST_LIMIT, target.page_cursor.as_deref())
                    .await
            }
        };
        match reply {
            Ok(reply) => {
                let shown = shown_in(&reply, kind, target.product);
                outcome.records.push(ReadRecord::new(
                    kind,
                    sent_us,
                    reply.latency,
                    reply.status.as_u16(),
                    shown,
                ));
            }
            Err(err) => {
                *outcome
                    .no_answer
                    .entry(transport_error_kind(&err))
                    .or_default() += 1;
                if outcome.first_error.is_none() {
                    outcome.first_error = Some(error_chain(&err));
                }
                tokio::time::sleep(NO_ANSWER_PAUSE).await;
            }
        }
        kind = match kind {
            ReadKind::Product => ReadKind::List,
            ReadKind::List => ReadKind::Product,
        };
    }
    outcome
}

/// The product as a `200` answer of `kind` showed it.
fn shown_in(reply: &Reply, kind: ReadKind, product: Uuid) -> Option<Shown> {
    if reply.status != StatusCode::OK {
        return None;
    }
    match kind {
        ReadKind::Product => reply
            .json::<ShownProduct>()
            .ok()
            .filter(|shown| shown.id == product)
            .map(|shown| shown.shown()),
        ReadKind::List => reply
            .json::<ShownPage>()
            .ok()?
            .items
            .iter()
            .find(|item| item.id == product)
            .map(ShownProduct::shown),
    }
}

/// Walks the catalogue from its first page to the one that holds
/// `product`: that page's cursor (`None` for the first page).
pub async fn locate_page(client: &ApiClient, product: Uuid) -> Result<Option<String>> {
    let mut cursor: Option<String> = None;
    for _ in 0..PAGES_MAX {
        let reply = client
            .first_answer(|api| client.list_products(api, LIST_LIMIT, cursor.as_deref()))
            .await
            .map_err(|err| anyhow::anyhow!("GET /v1/products failed: {}", error_chain(&err)))?;
        if reply.status != StatusCode::OK {
            bail!("GET /v1/products answered {}", reply.describe_with_body());
        }
        let page: ShownPage = reply.json()?;
        if page.items.iter().any(|item| item.id == product) {
            return Ok(cursor);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    bail!("product {product} is on no page of GET /v1/products?limit={LIST_LIMIT}")
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
            latency: Duration::from_micros(1500),
            sent_at: Instant::now(),
            received_at: Instant::now(),
        }
    }

    const ID: &str = "0192f3a4-0000-7000-8000-000000000001";

    fn product(id: &str, stock: i64) -> String {
        format!(
            r#"{{"id":"{id}","sku":"S","name":"n","price_cents":1,"stock":{stock},
                "max_per_customer":null,"active":true,"partition":0,
                "updated_at":"2026-11-22T10:00:00.000250Z"}}"#
        )
    }

    #[test]
    fn a_record_is_compact() {
        assert!(std::mem::size_of::<ReadRecord>() <= 32);
    }

    #[test]
    fn reads_find_the_product_in_either_answer() {
        let id = Uuid::parse_str(ID).unwrap();
        let shown = shown_in(&reply(200, &product(ID, 7)), ReadKind::Product, id).unwrap();
        assert_eq!(shown.stock, 7);
        let at = DateTime::parse_from_rfc3339("2026-11-22T10:00:00.000250Z").unwrap();
        assert_eq!(shown.updated_us, at.timestamp_micros());

        let other = "0192f3a4-0000-7000-8000-000000000002";
        let page = format!(
            r#"{{"items":[{},{}],"next_cursor":null}}"#,
            product(other, 1),
            product(ID, 9)
        );
        let shown = shown_in(&reply(200, &page), ReadKind::List, id).unwrap();
        assert_eq!(shown.stock, 9);

        let without = format!(r#"{{"items":[{}],"next_cursor":null}}"#, product(other, 1));
        assert_eq!(shown_in(&reply(200, &without), ReadKind::List, id), None);
        assert_eq!(
            shown_in(&reply(503, &product(ID, 7)), ReadKind::Product, id),
            None
        );
        assert_eq!(shown_in(&reply(200, "{}"), ReadKind::Product, id), None);
    }

    #[test]
    fn records_keep_what_was_shown() {
        let shown = Shown {
            stock: 0,
            updated_us: 42,
        };
        let record = ReadRecord::new(
            ReadKind::List,
            1_000,
            Duration::from_micros(250),
            200,
            Some(shown),
        );
        assert_eq!(record.shown(), Some(shown), "a stock of 0 is shown");
        assert_eq!(record.received_us(), 1_250);
        assert!(record.is_success());
        let refused = ReadRecord::new(ReadKind::Product, 1_000, Duration::ZERO, 503, None);
        assert_eq!(refused.shown(), None);
        assert!(!refused.is_success());
    }
}
