//! Partition ownership: leases in a NATS key-value bucket, fenced in
//! PostgreSQL.
//!
//! Every worker heartbeats `w.<worker_id>` and the live workers (sorted by
//! id) split the partitions round-robin: partition `p` belongs to
//! `live[p % live.len()]`, so W workers hold P partitions within one of
//! each other. A worker owns a partition only while it holds the lease key
//! `p.<partition>`, created only if absent and renewed by revision; keys it
//! stops renewing (a crash, a pause, a network split) expire after the
//! bucket's TTL and another worker takes the partition over.
//!
//! A lease alone cannot stop a paused former owner from committing late, so
//! each acquisition also bumps the partition's `fencing_token` in PostgreSQL,
//! and every batch transaction checks it: a worker that lost its lease can
//! never commit again for that partition.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use checkline_shared::partition::Partition;
use checkline_shared::queue;
use checkline_shared::subjects::Subjects;
use futures::TryStreamExt;
use sqlx::PgPool;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease bucket: {0}")]
    Bucket(String),
    #[error("lease store: {0}")]
    Store(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0} timed out")]
    Timeout(&'static str),
}

/// Runs one lease operation within `limit`: a NATS or PostgreSQL that stops
/// answering must not hold up the coordinator.
async fn bounded<T>(
    limit: Duration,
    what: &'static str,
    op: impl std::future::Future<Output = Result<T, LeaseError>>,
) -> Result<T, LeaseError> {
    tokio::time::timeout(limit, op)
        .await
        .unwrap_or(Err(LeaseError::Timeout(what)))
}

/// This worker's view of the lease bucket.
#[derive(Clone)]
pub struct Leases {
    store: kv::Store,
    worker_id: String,
    /// Deadline of each operation.
    op_timeout: Duration,
}

/// A held partition lease.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    pub partition: Partition,
    revision: u64,
    /// The partition's fencing token in PostgreSQL while this lease is held.
    pub token: i64,
}

impl Leases {
    /// Opens (or creates) the bucket `<PREFIX>_LEASES` with the given TTL;
    /// every later operation is bounded by `op_timeout`.
    pub async fn open(
        js: &jetstream::Context,
        subjects: &Subjects,
        worker_id: &str,
        ttl: Duration,
        op_timeout: Duration,
        replicas: usize,
    ) -> Result<Self, LeaseError> {
        let bucket = subjects.lease_bucket();
        let config = kv::Config {
            bucket: bucket.clone(),
            description: "checkline partition leases and worker heartbeats".into(),
            history: 1,
            max_age: ttl,
            // On disk, so that the bucket (and the leases in it) outlive a
            // NATS restart; the fencing token keeps any take-over safe anyway.
            storage: jetstream::stream::StorageType::File,
            // In a cluster, on as many servers as the queue: a lease must
            // outlive the server that stored it, or a partition would have
            // no owner until the bucket's server came back.
            num_replicas: replicas,
            ..Default::default()
        };
        // An existing bucket takes the current definition (a TTL or a
        // replica count changed since it was made).
        let store = match js.create_key_value(config.clone()).await {
            Ok(store) => store,
            Err(_) => js.update_key_value(config).await.map_err(|e| {
                LeaseError::Bucket(format!("{e}{}", queue::replicas_hint(replicas)))
            })?,
        };
        Ok(Self {
            store,
            worker_id: worker_id.to_owned(),
            op_timeout,
        })
    }

    /// Announces that this worker is alive (for the TTL).
    pub async fn heartbeat(&self) -> Result<(), LeaseError> {
        bounded(self.op_timeout, "heartbeat", async {
            self.store
                .put(
                    format!("w.{}", self.worker_id),
                    Bytes::from(self.worker_id.clone()),
                )
                .await
                .map_err(|e| LeaseError::Store(e.to_string()))?;
            Ok(())
        })
        .await
    }

    /// Live workers, sorted.
    pub async fn live_workers(&self) -> Result<Vec<String>, LeaseError> {
        let keys: Vec<String> = bounded(self.op_timeout, "listing the workers", async {
            self.store
                .keys()
                .await
                .map_err(|e| LeaseError::Store(e.to_string()))?
                .try_collect()
                .await
                .map_err(|e| LeaseError::Store(e.to_string()))
        })
        .await?;
        let mut workers: Vec<String> = keys
            .into_iter()
            .filter_map(|k| k.strip_prefix("w.").map(str::to_owned))
            .collect();
        workers.sort();
        Ok(workers)
    }

    /// Takes the partition if nobody holds it, and fences out any former
    /// owner. `None` when another worker holds it. Bounded: the fencing
    /// update may queue behind a paused former owner's transaction, which
    /// the session's lock timeout (and, past it, this deadline) cuts short.
    pub async fn acquire(
        &self,
        pool: &PgPool,
        partition: Partition,
    ) -> Result<Option<Lease>, LeaseError> {
        let create = self.store.create(
            format!("p.{partition}"),
            Bytes::from(self.worker_id.clone()),
        );
        let created = tokio::time::timeout(self.op_timeout, create)
            .await
            .map_err(|_| LeaseError::Timeout("creating the lease"))?;
        let revision = match created {
            Ok(revision) => revision,
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => return Ok(None),
            Err(err) => return Err(LeaseError::Store(err.to_string())),
        };
        let token = sqlx::query_scalar::<_, i64>(
            "UPDATE partition_cursors SET fencing_token = fencing_token + 1, owner = $2, updated_at = now() \
             WHERE partition = $1 RETURNING fencing_token",
        )
        .bind(partition)
        .bind(&self.worker_id)
        .fetch_one(pool);
        let token = match tokio::time::timeout(self.op_timeout, token).await {
            Ok(Ok(token)) => token,
            failed => {
                // Without a token the lease is useless: give it back rather
                // than sit on it until it expires. (Had the update committed
                // after all, it only fenced out an owner whose lease was gone.)
                let _ = tokio::time::timeout(
                    self.op_timeout,
                    self.store
                        .delete_expect_revision(format!("p.{partition}"), Some(revision)),
                )
                .await;
                return Err(match failed {
                    Ok(Err(err)) => err.into(),
                    _ => LeaseError::Timeout("fencing the partition"),
                });
            }
        };
        Ok(Some(Lease {
            partition,
            revision,
            token,
        }))
    }

    /// Extends the lease; an error means it is lost (expired, or taken).
    pub async fn renew(&self, lease: &mut Lease) -> Result<(), LeaseError> {
        let update = self.store.update(
            format!("p.{}", lease.partition),
            Bytes::from(self.worker_id.clone()),
            lease.revision,
        );
        lease.revision = bounded(self.op_timeout, "renewing the lease", async {
            update.await.map_err(|e| LeaseError::Store(e.to_string()))
        })
        .await?;
        Ok(())
    }

    /// Gives the partition up at once (its loop has stopped). Bounded; when
    /// it cannot finish, the lease simply expires.
    pub async fn release(&self, pool: &PgPool, lease: Lease) {
        let delete = self
            .store
            .delete_expect_revision(format!("p.{}", lease.partition), Some(lease.revision));
        match tokio::time::timeout(self.op_timeout, delete).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::debug!(partition = %lease.partition, error = %err, "lease already gone")
            }
            Err(_) => tracing::warn!(
                partition = %lease.partition,
                "lease release timed out; it will expire"
            ),
        }
        let clear = sqlx::query(
            "UPDATE partition_cursors SET owner = NULL, updated_at = now() \
             WHERE partition = $1 AND fencing_token = $2",
        )
        .bind(lease.partition)
        .bind(lease.token)
        .execute(pool);
        let _ = tokio::time::timeout(self.op_timeout, clear).await;
    }

    /// Removes this worker's heartbeat, so the others rebalance at once.
    pub async fn leave(&self) {
        let _ = tokio::time::timeout(
            self.op_timeout,
            self.store.delete(format!("w.{}", self.worker_id)),
        )
        .await;
    }
}

/// The partitions `worker` should own among `live` workers (sorted).
pub fn assignment(partitions: u32, live: &[String], worker: &str) -> Vec<Partition> {
    let Some(me) = live.iter().position(|w| w == worker) else {
        return Vec::new();
    };
    Partition::all(partitions)
        .enumerate()
        .filter(|(i, _)| i % live.len() == me)
        .map(|(_, p)| p)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every partition has exactly one owner, and shares differ by at
        /// most one.
        #[test]
        fn assignment_is_a_fair_partition(partitions in 1u32..64, workers in 1usize..10) {
            let live: Vec<String> = (0..workers).map(|i| format!("w{i:02}")).collect();
            let shares: Vec<Vec<Partition>> = live.iter().map(|w| assignment(partitions, &live, w)).collect();
            let mut all: Vec<Partition> = shares.iter().flatten().copied().collect();
            all.sort_unstable();
            prop_assert_eq!(all, Partition::all(partitions).collect::<Vec<_>>());
            let sizes: Vec<usize> = shares.iter().map(Vec::len).collect();
            let (min, max) = (sizes.iter().min().copied().unwrap_or(0), sizes.iter().max().copied().unwrap_or(0));
            prop_assert!(max - min <= 1);
        }
    }

    #[test]
    fn a_worker_not_yet_live_owns_nothing() {
        let live = vec!["a".to_string()];
        assert!(assignment(8, &live, "b").is_empty());
        assert_eq!(
            assignment(3, &live, "a"),
            Partition::all(3).collect::<Vec<_>>()
        );
    }
}
