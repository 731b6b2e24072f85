//! What travels through NATS.
//!
//! - [`QueueMessage`]: a JetStream message on a partition's per-product
//!   subject. Its position in the stream is its place in the product's queue.
//! - Result events are core NATS messages published by the worker after it has
//!   committed: the `Order` itself, a `StockEvent` or a `RestockResult`. They
//!   are notifications only; a missed one costs latency (readers fall back to
//!   PostgreSQL), never correctness.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::Order;

/// Header that carries the HTTP request id into the worker's span.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A queued unit of work for one product.
///
/// The order or restock row already exists in PostgreSQL (written by the API
/// before publishing); the worker decides from the row, and the message
/// fixes its place in the queue. A one-line order's first message also
/// carries what writes its row again should a PostgreSQL failover lose it
/// ([`QueuedOrder::key`]). The remaining fields are for observability and
/// for tools that inspect the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum QueueMessage {
    /// Orders of one product accepted together, in arrival order: one
    /// message (and so one fsync) for many orders.
    Orders {
        product_id: Uuid,
        orders: Vec<QueuedOrder>,
    },
    /// One order, as republished by a retry or the stranded-order sweep.
    Order {
        order_id: Uuid,
        product_id: Uuid,
        customer_id: String,
        quantity: i32,
        accepted_at: DateTime<Utc>,
        /// As in [`QueuedOrder`]: carried when the accept's own publish
        /// failed and the order goes out alone; not by the sweep, which
        /// republishes rows it has just read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reserve_secs: Option<i32>,
    },
    Restock {
        restock_id: Uuid,
        product_id: Uuid,
        quantity: i64,
    },
    /// One line of an order of several lines, at its place in its product's
    /// queue. All lines of an order are published in one atomic write, so
    /// the stream gives the order one position on every product it names.
    Line {
        order_id: Uuid,
        line_no: i32,
        product_id: Uuid,
        customer_id: String,
        quantity: i32,
    },
    /// The order of a held line has settled: at this entry's turn the held
    /// units are taken for good or go back to stock.
    Settle {
        order_id: Uuid,
        line_no: i32,
        product_id: Uuid,
    },
    /// Units of a reserved order that expired or was cancelled, going back
    /// to stock at this entry's turn.
    Return {
        return_id: Uuid,
        order_id: Uuid,
        product_id: Uuid,
        quantity: i32,
    },
}

/// One order inside a [`QueueMessage::Orders`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedOrder {
    pub order_id: Uuid,
    pub customer_id: String,
    pub quantity: i32,
    /// The order's idempotency key. With it (and `reserve_secs`) the worker
    /// writes the order again, pending, if its row is missing: an accept
    /// whose commit an asynchronous failover lost. Absent in messages from
    /// before it was carried; such an order cannot be written again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_secs: Option<i32>,
}

impl QueueMessage {
    /// The message that carries one order on its own: an order published
    /// again by a retry, a requeue or the stranded-order sweep.
    ///
    /// `None` for an order of several lines: its lines travel together
    /// ([`QueueMessage::cart_lines`]).
    pub fn lone_order(order: &Order) -> Option<Self> {
        Some(QueueMessage::Order {
            order_id: order.id,
            product_id: order.product_id?,
            customer_id: order.customer_id.clone(),
            quantity: order.quantity?,
            accepted_at: order.created_at,
            key: None,
            reserve_secs: None,
        })
    }

    /// The entries of every line of an order of several lines, in line
    /// order: to be published as one atomic write.
    pub fn cart_lines(order: &Order) -> Vec<Self> {
        order
            .lines
            .iter()
            .enumerate()
            .map(|(i, line)| QueueMessage::Line {
                order_id: order.id,
                line_no: i32::try_from(i).unwrap_or(i32::MAX),
                product_id: line.product_id,
                customer_id: order.customer_id.clone(),
                quantity: line.quantity,
            })
            .collect()
    }

    /// The id JetStream deduplicates on (`Nats-Msg-Id`) within its window.
    ///
    /// Each kind has its own id space: a lone republish of an order (`o.`)
    /// must never make JetStream drop a group that contains it (`g.`, named
    /// after its first order; a group is only ever published once, by the
    /// batch that wrote its orders), and the reverse.
    pub fn message_id(&self) -> String {
        match self {
            Self::Orders { orders, product_id } => orders.first().map_or_else(
                || format!("g.{product_id}"),
                |o| format!("g.{}", o.order_id),
            ),
            Self::Order { order_id, .. } => format!("o.{order_id}"),
            Self::Restock { restock_id, .. } => format!("r.{restock_id}"),
            Self::Line {
                order_id, line_no, ..
            } => format!("l.{order_id}.{line_no}"),
            Self::Settle {
                order_id, line_no, ..
            } => format!("s.{order_id}.{line_no}"),
            Self::Return { return_id, .. } => format!("x.{return_id}"),
        }
    }

    pub fn product_id(&self) -> Uuid {
        match self {
            Self::Orders { product_id, .. }
            | Self::Order { product_id, .. }
            | Self::Restock { product_id, .. }
            | Self::Line { product_id, .. }
            | Self::Settle { product_id, .. }
            | Self::Return { product_id, .. } => *product_id,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tags() {
        let msg = QueueMessage::Restock {
            restock_id: Uuid::nil(),
            product_id: Uuid::nil(),
            quantity: 5,
        };
        let bytes = msg.encode();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["type"], "restock");
        assert_eq!(QueueMessage::decode(&bytes).unwrap(), msg);
        assert!(QueueMessage::decode(b"{\"type\":\"other\"}").is_err());
    }

    #[test]
    fn a_group_and_a_lone_order_never_share_a_message_id() {
        let id = Uuid::now_v7();
        let lone = QueueMessage::Order {
            order_id: id,
            product_id: Uuid::nil(),
            customer_id: "c".into(),
            quantity: 1,
            accepted_at: Utc::now(),
            key: None,
            reserve_secs: None,
        };
        let group = QueueMessage::Orders {
            product_id: Uuid::nil(),
            orders: vec![QueuedOrder {
                order_id: id,
                customer_id: "c".into(),
                quantity: 1,
                key: Some("k".into()),
                reserve_secs: None,
            }],
        };
        assert_ne!(lone.message_id(), group.message_id());
    }

    #[test]
    fn a_queued_order_reads_with_or_without_its_key() {
        // As published before orders carried their key.
        let old = br#"{"type":"orders","product_id":"00000000-0000-0000-0000-000000000000","orders":[{"order_id":"00000000-0000-0000-0000-000000000000","customer_id":"c","quantity":2}]}"#;
        let QueueMessage::Orders { orders, .. } = QueueMessage::decode(old).unwrap() else {
            panic!("an orders message");
        };
        assert_eq!(
            (orders[0].key.as_deref(), orders[0].reserve_secs),
            (None, None)
        );

        let new = QueueMessage::Orders {
            product_id: Uuid::nil(),
            orders: vec![QueuedOrder {
                order_id: Uuid::nil(),
                customer_id: "c".into(),
                quantity: 2,
                key: Some("k-1".into()),
                reserve_secs: Some(300),
            }],
        };
        let json: serde_json::Value = serde_json::from_slice(&new.encode()).unwrap();
        assert_eq!(json["orders"][0]["key"], "k-1");
        assert_eq!(json["orders"][0]["reserve_secs"], 300);
        assert_eq!(QueueMessage::decode(&new.encode()).unwrap(), new);
        // Nothing is written for what is absent.
        let mut bare = new;
        if let QueueMessage::Orders { orders, .. } = &mut bare {
            orders[0].reserve_secs = None;
        }
        let json: serde_json::Value = serde_json::from_slice(&bare.encode()).unwrap();
        assert!(json["orders"][0].get("reserve_secs").is_none());
    }
}
