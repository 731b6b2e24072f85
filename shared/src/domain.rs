//! Domain types. Outside input is parsed into these at the edge (the API), so
//! that nothing invalid reaches the queue, the worker or a NATS subject.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::partition::Partition;

/// Parses an id in the canonical 36-character hyphenated form.
///
/// Only this form is accepted: ids end up in NATS subjects and URLs, and one
/// spelling per id keeps caches and logs unambiguous.
pub fn parse_id(raw: &str) -> Option<Uuid> {
    let bytes = raw.as_bytes();
    if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
        return None;
    }
    Uuid::try_parse(raw).ok()
}

/// SHA-256 over the parts of a request that a retry must repeat: stored with
/// an order or restock under its idempotency key, so that the same key with a
/// different request is recognised. Each part is followed by a NUL byte, so
/// `["ab", "c"]` and `["a", "bc"]` differ.
pub fn request_hash(parts: &[&str]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hasher.finalize().to_vec()
}

/// The request hash of an order: the same lines in the same order and the
/// same `reserve_secs`. A v1 body and the same single line hash alike. Used
/// by the API when it stores an order and by the worker when it writes
/// again an accepted order whose row was lost.
pub fn order_request_hash(lines: &[(Uuid, i32)], reserve_secs: Option<i32>) -> Vec<u8> {
    let mut parts: Vec<String> = vec!["order".into()];
    for (product_id, quantity) in lines {
        parts.push(product_id.to_string());
        parts.push(quantity.to_string());
    }
    if let Some(secs) = reserve_secs {
        parts.push("reserve".into());
        parts.push(secs.to_string());
    }
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    request_hash(&parts)
}

/// The authenticated customer (the JWT `sub`): 1–64 chars of `[A-Za-z0-9_.@-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CustomerId(String);

impl CustomerId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Option<Self> {
        let ok = (1..=Self::MAX_LEN).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'));
        ok.then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client-chosen idempotency key: 1–255 visible ASCII characters (0x21–0x7E).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(raw: &str) -> Option<Self> {
        let ok = (1..=Self::MAX_LEN).contains(&raw.len())
            && raw.bytes().all(|b| (0x21..=0x7e).contains(&b));
        ok.then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where an order stands. `pending` moves to `reserved`, `confirmed`,
/// `rejected` or `cancelled`; `reserved` moves to `confirmed`, `expired` or
/// `cancelled`. Nothing moves back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "`pending` moves to `reserved`, `confirmed`, `rejected` or `cancelled`; \
        `reserved` moves to `confirmed`, `expired` or `cancelled`. Nothing moves back. \
        Final: `confirmed`, `rejected`, `expired`, `cancelled`."
    )
)]
#[serde(rename_all = "snake_case")]
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

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// No longer pending: `?wait=` returns here (`reserved` counts).
    pub fn is_decided(self) -> bool {
        self != Self::Pending
    }

    /// Nothing can happen to the order any more: its event stream ends.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Reserved)
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderLine {
    pub product_id: Uuid,
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub quantity: i32,
    /// Set when the line's units are taken; null before and when rejected.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub unit_price_cents: Option<i64>,
}

/// Why an order was rejected. These strings are part of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        as = RejectionReason,
        description = "Why an order was rejected. `sold_out`: stock was 0; `insufficient_stock`: 0 < stock < quantity; `limit_exceeded`: over `max_per_customer`; `product_unavailable`: the product is inactive; `idempotency_key_reused`: the same key was raced with a different body (such an order never takes stock)."
    )
)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Stock was 0 when the order's turn came.
    SoldOut,
    /// 0 < stock < quantity.
    InsufficientStock,
    /// The customer would exceed the product's `max_per_customer`.
    LimitExceeded,
    /// The product is inactive.
    ProductUnavailable,
    /// Another request with the same key but a different body took the key.
    IdempotencyKeyReused,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SoldOut => "sold_out",
            Self::InsufficientStock => "insufficient_stock",
            Self::LimitExceeded => "limit_exceeded",
            Self::ProductUnavailable => "product_unavailable",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "sold_out" => Some(Self::SoldOut),
            "insufficient_stock" => Some(Self::InsufficientStock),
            "limit_exceeded" => Some(Self::LimitExceeded),
            "product_unavailable" => Some(Self::ProductUnavailable),
            "idempotency_key_reused" => Some(Self::IdempotencyKeyReused),
            _ => None,
        }
    }
}

/// An order as the contract shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(
    description = "An order of one or several lines. Prices are set when its units are taken.",
    examples(
        json!({"id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "customer_id": "alice",
            "product_id": "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d", "quantity": 1,
            "lines": [{"product_id": "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d", "quantity": 1, "unit_price_cents": 19900}],
            "status": "confirmed", "reason": null, "rejected_product_id": null,
            "unit_price_cents": 19900, "total_cents": 19900,
            "created_at": "2026-11-22T10:00:01Z", "decided_at": "2026-11-22T10:00:01.042Z", "reserved_until": null}),
        json!({"id": "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f", "customer_id": "alice",
            "product_id": null, "quantity": null,
            "lines": [{"product_id": "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d", "quantity": 1, "unit_price_cents": 19900},
                      {"product_id": "7d1e2f3a-4b5c-4d6e-8f7a-9b0c1d2e3f4a", "quantity": 2, "unit_price_cents": 500}],
            "status": "reserved", "reason": null, "rejected_product_id": null,
            "unit_price_cents": null, "total_cents": 20900,
            "created_at": "2026-11-22T10:00:03Z", "decided_at": "2026-11-22T10:00:03.015Z",
            "reserved_until": "2026-11-22T10:05:03.015Z"}),
        json!({"id": "4d5e6f7a-8b9c-4d0e-8f1a-2b3c4d5e6f7a", "customer_id": "bob",
            "product_id": null, "quantity": null,
            "lines": [{"product_id": "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d", "quantity": 1, "unit_price_cents": null},
                      {"product_id": "7d1e2f3a-4b5c-4d6e-8f7a-9b0c1d2e3f4a", "quantity": 1, "unit_price_cents": null}],
            "status": "rejected", "reason": "sold_out", "rejected_product_id": "7d1e2f3a-4b5c-4d6e-8f7a-9b0c1d2e3f4a",
            "unit_price_cents": null, "total_cents": null,
            "created_at": "2026-11-22T10:00:04Z", "decided_at": "2026-11-22T10:00:04.020Z", "reserved_until": null})
    )
))]
pub struct Order {
    pub id: Uuid,
    /// The `sub` of the customer who placed the order.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.@-]{1,64}$")
    )]
    pub customer_id: String,
    /// The product of a one-line order; null for an order of several lines.
    pub product_id: Option<Uuid>,
    /// The quantity of a one-line order; null for an order of several lines.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub quantity: Option<i32>,
    /// The order's lines in request order (one for a one-line order).
    pub lines: Vec<OrderLine>,
    pub status: OrderStatus,
    /// Null unless the order is rejected.
    pub reason: Option<RejectReason>,
    /// The product of the first line that could not be served; null unless rejected.
    pub rejected_product_id: Option<Uuid>,
    /// Unit price of a one-line order once it took its units; null otherwise.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub unit_price_cents: Option<i64>,
    /// Sum over the lines of unit price times quantity, once the order took
    /// its units; null while pending and when rejected.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub total_cents: Option<i64>,
    pub created_at: DateTime<Utc>,
    /// When the order was decided (reserved, confirmed, rejected) or
    /// cancelled while pending; null while pending.
    pub decided_at: Option<DateTime<Utc>>,
    /// Until when a reserved order's units are held; null without a reservation.
    pub reserved_until: Option<DateTime<Utc>>,
}

/// A product as the contract shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(
    description = "A product on sale. `stock` reflects every decided order and applied restock.",
    examples(json!({"id": "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d", "sku": "FLASH-1",
        "name": "Flash phone", "price_cents": 19900, "stock": 100, "reserved": 4, "max_per_customer": 2,
        "active": true, "partition": 3, "updated_at": "2026-11-22T10:00:00Z"}))
))]
pub struct Product {
    /// Product id (canonical lowercase UUID).
    pub id: Uuid,
    /// Stock keeping unit; unique across products.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub sku: String,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub name: String,
    /// Unit price in integer cents.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 1_000_000_000_000_i64)
    )]
    pub price_cents: i64,
    /// Units currently available. Never negative; may exceed 10^9 after restocks.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub stock: i64,
    /// Units in other buyers' carts: held by orders not yet settled and
    /// reserved by orders not yet paid. They may come back.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub reserved: i64,
    /// Maximum units one customer may buy in total; null for no limit.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1_000_000))]
    pub max_per_customer: Option<i32>,
    /// Inactive products reject new orders with reason `product_unavailable`.
    pub active: bool,
    /// The queue partition this product's orders and restocks go through. Fixed at creation.
    #[cfg_attr(feature = "openapi", schema(value_type = i32, minimum = 0))]
    pub partition: Partition,
    /// Last change (RFC 3339, UTC).
    pub updated_at: DateTime<Utc>,
}

/// What stock subscribers receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(
    description = "Data of a `stock` server-sent event.",
    examples(json!({"product_id": "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d", "stock": 0, "sold_out": true,
        "reserved": 3, "next_release_at": "2026-11-22T14:05:00Z"}))
))]
pub struct StockEvent {
    pub product_id: Uuid,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub stock: i64,
    /// True when `stock` is 0.
    pub sold_out: bool,
    /// Units in other buyers' carts (see `Product.reserved`).
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    #[serde(default)]
    pub reserved: i64,
    /// While `stock` is 0 and `reserved` > 0: the earliest `reserved_until`
    /// of the reservations holding the product's units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_release_at: Option<DateTime<Utc>>,
    /// Of `reserved`, the units held by orders of several lines not settled
    /// yet: they come back at once if such an order fails, so while any
    /// are held the product is not sold out for new orders (they queue and
    /// wait for the outcome).
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held: i64,
    /// The product's version (its `updated_at`) after the change this
    /// event reports: a reader that holds a newer one ignores the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl StockEvent {
    pub fn new(product_id: Uuid, stock: i64) -> Self {
        Self::with_reserved(product_id, stock, 0, 0, None)
    }

    /// `next_release_at` is kept only while it means something: stock is 0
    /// and units are reserved.
    pub fn with_reserved(
        product_id: Uuid,
        stock: i64,
        held: i64,
        reserved: i64,
        next_release_at: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            product_id,
            stock,
            sold_out: stock <= 0,
            reserved,
            next_release_at: next_release_at.filter(|_| stock <= 0 && reserved > 0),
            held,
            updated_at: None,
        }
    }

    /// The same event, stamped with the product's version.
    pub fn at(self, updated_at: DateTime<Utc>) -> Self {
        Self {
            updated_at: Some(updated_at),
            ..self
        }
    }

    /// Units a new order may still get: free ones and held ones that may
    /// come back. The API's door refuses an order only when this is 0.
    pub fn open_units(&self) -> i64 {
        self.stock + self.held
    }
}

/// The answer to a restock, once applied (or still queued).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(
    description = "Outcome of a restock. With `200` the restock is applied and `stock` includes it; with `202` it is still queued and `stock` is the product's stock at the time of the answer.",
    examples(json!({"product_id": "0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d", "stock": 150}))
))]
pub struct RestockResult {
    pub product_id: Uuid,
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub stock: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_must_be_canonical() {
        assert!(parse_id("67e55044-10b1-426f-9247-bb680e5fe0c8").is_some());
        assert!(parse_id("67e5504410b1426f9247bb680e5fe0c8").is_none());
        assert!(parse_id("{67e55044-10b1-426f-9247-bb680e5fe0c8}").is_none());
        assert!(parse_id("67e55044-10b1-426f-9247-bb680e5fe0c.").is_none());
        assert!(parse_id("").is_none());
        assert!(parse_id("67e55044-10b1-426f-9247-bb680e5fe0c8 ").is_none());
    }

    #[test]
    fn request_hashes_separate_their_parts() {
        let hash = request_hash(&["order", "p", "1"]);
        assert_eq!(hash.len(), 32);
        assert_eq!(hash, request_hash(&["order", "p", "1"]));
        assert_ne!(hash, request_hash(&["order", "p", "2"]));
        assert_ne!(request_hash(&["ab", "c"]), request_hash(&["a", "bc"]));
    }

    #[test]
    fn customer_ids() {
        assert!(CustomerId::parse("alice").is_some());
        assert!(CustomerId::parse("a.b@c-d_e").is_some());
        assert!(CustomerId::parse("").is_none());
        assert!(CustomerId::parse("a b").is_none());
        assert!(CustomerId::parse("a*").is_none());
        assert!(CustomerId::parse(&"x".repeat(64)).is_some());
        assert!(CustomerId::parse(&"x".repeat(65)).is_none());
    }

    #[test]
    fn idempotency_keys() {
        assert!(IdempotencyKey::parse("k-1").is_some());
        assert!(IdempotencyKey::parse("!~").is_some());
        assert!(IdempotencyKey::parse("").is_none());
        assert!(IdempotencyKey::parse("has space").is_none());
        assert!(IdempotencyKey::parse("tab\t").is_none());
        assert!(IdempotencyKey::parse("é").is_none());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_some());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_none());
    }

    #[test]
    fn order_json_matches_the_contract() {
        let order = Order {
            id: Uuid::nil(),
            customer_id: "alice".into(),
            product_id: Some(Uuid::nil()),
            quantity: Some(1),
            lines: vec![OrderLine {
                product_id: Uuid::nil(),
                quantity: 1,
                unit_price_cents: None,
            }],
            status: OrderStatus::Rejected,
            reason: Some(RejectReason::SoldOut),
            rejected_product_id: Some(Uuid::nil()),
            unit_price_cents: None,
            total_cents: None,
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
            decided_at: None,
            reserved_until: None,
        };
        let json = serde_json::to_value(&order).unwrap();
        assert_eq!(json["status"], "rejected");
        assert_eq!(json["reason"], "sold_out");
        assert_eq!(json["created_at"], "1970-01-01T00:00:00Z");
        assert!(json["decided_at"].is_null());
    }

    #[test]
    fn a_stock_event_says_when_units_may_come_back_and_whether_the_door_is_open() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        // Sold out, one unit reserved: the release time is shown.
        let reserved = StockEvent::with_reserved(Uuid::nil(), 0, 0, 1, Some(at));
        assert!(reserved.sold_out);
        assert_eq!(reserved.next_release_at, Some(at));
        assert_eq!(reserved.open_units(), 0, "reserved units are nobody else's");
        // Units held by an unsettled cart may come back: orders may queue.
        let held = StockEvent::with_reserved(Uuid::nil(), 0, 2, 2, None);
        assert_eq!(held.open_units(), 2);
        let json = serde_json::to_value(held).unwrap();
        assert_eq!(json["held"], 2);
        assert!(json.get("next_release_at").is_none());
        // With stock left, no release time: it would mean nothing.
        let open = StockEvent::with_reserved(Uuid::nil(), 3, 0, 1, Some(at));
        assert_eq!(open.next_release_at, None);
        assert!(serde_json::to_value(open).unwrap().get("held").is_none());
    }

    proptest! {
        #[test]
        fn parsed_keys_are_visible_ascii(raw in "\\PC{0,300}") {
            if let Some(key) = IdempotencyKey::parse(&raw) {
                prop_assert!(key.as_str().bytes().all(|b| (0x21..=0x7e).contains(&b)));
                prop_assert!(!key.as_str().is_empty() && key.as_str().len() <= 255);
            }
        }

        #[test]
        fn parsed_ids_are_safe_in_subjects(raw in "\\PC{0,40}") {
            if let Some(id) = parse_id(&raw) {
                let text = id.to_string();
                prop_assert!(!text.contains(['.', '*', '>', ' ']));
            }
        }

        #[test]
        fn status_and_reason_strings_round_trip(i in 0usize..5) {
            let reasons = [RejectReason::SoldOut, RejectReason::InsufficientStock,
                RejectReason::LimitExceeded, RejectReason::ProductUnavailable,
                RejectReason::IdempotencyKeyReused];
            prop_assert_eq!(RejectReason::parse(reasons[i].as_str()), Some(reasons[i]));
            let s = OrderStatus::ALL[i % OrderStatus::ALL.len()];
            prop_assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
    }
}
