//! What can go wrong with a partition's batch transaction. Its own module,
//! below both `store` (the batch) and `carts` (the lines of orders of
//! several lines), which return it.

use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The cursor is not where this worker left it: another worker applied
    /// messages of this partition. Nothing was written; resume from the
    /// database's cursor.
    #[error("partition cursor moved: expected {expected}")]
    CursorMoved { expected: u64 },
    /// Another worker took the partition over (its fencing token is newer).
    /// Nothing was written; this worker must stop consuming the partition.
    #[error("partition fenced: token {token} is no longer current")]
    Fenced { token: i64 },
    /// The database refused the batch's stock change although the in-memory
    /// decision allowed it. Nothing was written; this is a bug, never an
    /// oversell.
    #[error("stock guard refused the batch for product {product_id}")]
    StockGuard { product_id: Uuid },
    /// Some of the batch's orders were no longer pending when their
    /// decisions were written: a cancel got in between the read and the
    /// write. Nothing was written; the batch is read again, and no longer
    /// finds the cancelled order.
    #[error("{decided} of {expected} orders were still pending at the decision")]
    DecidedElsewhere { expected: usize, decided: usize },
    /// The batch took longer than `CHECKLINE_BATCH_TIMEOUT_MS` and was
    /// given up: its transaction is dropped with its connection.
    #[error("batch not done within {0:?}; given up")]
    TimedOut(std::time::Duration),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl StoreError {
    /// Worth retrying the same batch (after a backoff): the database or the
    /// network failed, not the batch.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Db(err) => checkline_shared::db::is_transient(err),
            Self::DecidedElsewhere { .. } | Self::TimedOut(_) => true,
            Self::CursorMoved { .. } | Self::Fenced { .. } | Self::StockGuard { .. } => false,
        }
    }
}
