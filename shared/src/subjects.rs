//! Every NATS subject, stream name and key-value bucket used by checkline
//! (the API's Redis keys are in `checkline_api::redis`).
//!
//! Ids that go into subjects are `Uuid`s, whose text form never contains the
//! subject metacharacters `.`, `*`, `>` or whitespace; raw client input never
//! reaches a subject.

use uuid::Uuid;

use crate::partition::Partition;

/// Names derived from the deployment prefix (`CHECKLINE_PREFIX`).
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// `prefix` must already be validated by [`crate::config::validate_prefix`].
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The JetStream stream holding every partition's queue.
    pub fn stream_name(&self) -> String {
        format!("{}_ORDERS", self.prefix.to_ascii_uppercase())
    }

    /// The key-value bucket holding partition leases and worker heartbeats.
    pub fn lease_bucket(&self) -> String {
        format!("{}_LEASES", self.prefix.to_ascii_uppercase())
    }

    /// The stream holding messages that could never be processed.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}_DEADLETTER", self.prefix.to_ascii_uppercase())
    }

    /// Where a partition's dead letters go.
    pub fn dead_letter_subject(&self, partition: Partition) -> String {
        format!("{}.deadletter.p{partition}", self.prefix)
    }

    pub fn dead_letters_all(&self) -> String {
        format!("{}.deadletter.>", self.prefix)
    }

    /// All queue subjects: `<prefix>.orders.p<partition>.<product_id>`.
    pub fn orders_all(&self) -> String {
        format!("{}.orders.>", self.prefix)
    }

    /// One partition's queue, every product in it.
    pub fn partition_filter(&self, partition: Partition) -> String {
        format!("{}.orders.p{partition}.*", self.prefix)
    }

    /// One product's queue subject.
    pub fn product_queue(&self, partition: Partition, product_id: Uuid) -> String {
        format!("{}.orders.p{partition}.{product_id}", self.prefix)
    }

    /// The partition and product of a subject written by
    /// [`Subjects::product_queue`] (with this prefix); `None` for any other
    /// subject.
    pub fn parse_queue(&self, subject: &str) -> Option<(Partition, Uuid)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".orders.p")?;
        let (partition, product_id) = rest.split_once('.')?;
        let parsed = (
            Partition::new(partition.parse::<u16>().ok()?),
            Uuid::try_parse(product_id).ok()?,
        );
        // Only the form `product_queue` writes (no `+3`, `03`, upper case).
        (self.product_queue(parsed.0, parsed.1) == subject).then_some(parsed)
    }

    /// All result events (core NATS, not persisted).
    pub fn events_all(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// The decisions of one committed batch (a JSON array of orders).
    pub fn decisions_event(&self, partition: Partition) -> String {
        format!("{}.events.decisions.p{partition}", self.prefix)
    }

    /// Orders changed outside a partition's batch: confirmed, cancelled or
    /// expired. Read like the partitions' decisions.
    pub fn order_changes_event(&self) -> String {
        format!("{}.events.decisions.changes", self.prefix)
    }

    pub fn stock_event(&self, product_id: Uuid) -> String {
        format!("{}.events.stock.{product_id}", self.prefix)
    }

    /// Announced by the API before it queues a restock, so that every API
    /// instance stops answering "sold out" for the product.
    pub fn restocking_event(&self, product_id: Uuid) -> String {
        format!("{}.events.restocking.{product_id}", self.prefix)
    }

    /// A product was created or changed by an admin (not its stock): every
    /// API instance reads it again before serving it from memory.
    pub fn catalog_event(&self, product_id: Uuid) -> String {
        format!("{}.events.catalog.{product_id}", self.prefix)
    }

    pub fn restock_event(&self, restock_id: Uuid) -> String {
        format!("{}.events.restock.{restock_id}", self.prefix)
    }

    /// Orders one API instance accepted in one second (its activity
    /// sample), for every API instance's activity series.
    pub fn accepted_event(&self, instance: Uuid) -> String {
        format!("{}.events.accepted.{instance}", self.prefix)
    }
}

/// What a result event subject refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSubject {
    /// A partition's batch decided these orders.
    Decisions,
    /// Orders changed outside a batch (confirmed, cancelled, expired).
    OrderChanges,
    Stock(Uuid),
    Restock(Uuid),
    Restocking(Uuid),
    /// A product created or changed by an admin.
    Catalog(Uuid),
    /// An API instance's accepted orders of one second.
    Accepted(Uuid),
}

impl Subjects {
    /// Parses a subject produced by the `*_event` methods.
    pub fn parse_event(&self, subject: &str) -> Option<EventSubject> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".events.")?;
        let (kind, id) = rest.split_once('.')?;
        if kind == "decisions" {
            return Some(if id == "changes" {
                EventSubject::OrderChanges
            } else {
                EventSubject::Decisions
            });
        }
        let id = Uuid::try_parse(id).ok()?;
        match kind {
            "stock" => Some(EventSubject::Stock(id)),
            "restock" => Some(EventSubject::Restock(id)),
            "restocking" => Some(EventSubject::Restocking(id)),
            "accepted" => Some(EventSubject::Accepted(id)),
            "catalog" => Some(EventSubject::Catalog(id)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let s = Subjects::new("checkline");
        let id = Uuid::nil();
        assert_eq!(s.stream_name(), "CHECKLINE_ORDERS");
        assert_eq!(
            s.product_queue(Partition::new(3), id),
            "checkline.orders.p3.00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            s.partition_filter(Partition::new(3)),
            "checkline.orders.p3.*"
        );
        assert_eq!(
            s.parse_event(&s.decisions_event(Partition::new(2))),
            Some(EventSubject::Decisions)
        );
        assert_eq!(
            s.parse_event(&s.stock_event(id)),
            Some(EventSubject::Stock(id))
        );
        assert_eq!(
            s.parse_event(&s.restock_event(id)),
            Some(EventSubject::Restock(id))
        );
        assert_eq!(
            s.parse_event(&s.order_changes_event()),
            Some(EventSubject::OrderChanges)
        );
        assert_eq!(
            s.parse_event(&s.accepted_event(id)),
            Some(EventSubject::Accepted(id))
        );
        assert_eq!(
            s.parse_event(&s.catalog_event(id)),
            Some(EventSubject::Catalog(id))
        );
        assert_eq!(s.parse_event("other.events.order.x"), None);
    }

    #[test]
    fn queue_subjects_parse_back() {
        let s = Subjects::new("checkline");
        let id = Uuid::now_v7();
        let p = Partition::new(12);
        assert_eq!(s.parse_queue(&s.product_queue(p, id)), Some((p, id)));
        let upper = id.to_string().to_uppercase();
        for other in [
            format!("other.orders.p12.{id}"),
            format!("checkline.orders.p012.{id}"),
            format!("checkline.orders.p+12.{id}"),
            format!("checkline.orders.p12.{upper}"),
            format!("checkline.orders.p12.{id}.x"),
            format!("checkline.orders.px.{id}"),
            "checkline.orders.p12".to_owned(),
            s.dead_letter_subject(p),
        ] {
            assert_eq!(s.parse_queue(&other), None, "{other}");
        }
    }
}
