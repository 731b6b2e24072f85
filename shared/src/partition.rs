//! Queue partitions.
//!
//! Every product is assigned a partition at creation; its orders and restocks
//! travel through that partition's queue subjects, and one worker at a time
//! decides them. A partition is a number in `0..CHECKLINE_PARTITIONS`, stored
//! as PostgreSQL `integer` (products, orders, restocks, partition_cursors)
//! and written into subjects and lease keys as its decimal form. This type is
//! the one place that number changes representation.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One queue partition.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, sqlx::Type,
)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct Partition(i32);

impl Partition {
    /// Partition number `n`. Deployments have at most
    /// [`PARTITIONS_MAX`](crate::config::PARTITIONS_MAX) partitions, so every
    /// real one fits.
    pub const fn new(n: u16) -> Self {
        Self(n as i32)
    }

    /// Every partition of a deployment with `count` partitions, in order.
    pub fn all(count: u32) -> impl Iterator<Item = Partition> {
        (0..i32::try_from(count).unwrap_or(i32::MAX)).map(Partition)
    }

    /// Its number, as the database stores it.
    pub const fn get(self) -> i32 {
        self.0
    }

    /// Its position in a table with one entry per partition. A negative
    /// number (which the database's CHECK constraint refuses) indexes
    /// nothing: it maps past the end of every table.
    pub fn index(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_counts_from_zero() {
        let all: Vec<i32> = Partition::all(4).map(Partition::get).collect();
        assert_eq!(all, [0, 1, 2, 3]);
        assert_eq!(Partition::all(0).count(), 0);
    }

    #[test]
    fn formats_and_indexes_as_its_number() {
        let p = Partition::new(7);
        assert_eq!(p.to_string(), "7");
        assert_eq!(p.index(), 7);
        assert_eq!(Partition(-1).index(), usize::MAX);
        assert_eq!(serde_json::to_string(&p).unwrap(), "7");
    }
}
