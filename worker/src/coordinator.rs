//! Which partitions this worker runs: heartbeat, renew leases, follow the
//! assignment as workers come and go, and hand partitions over cleanly.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::lease::{assignment, Lease, Leases};
use crate::partition::{self, Deps};

struct Owned {
    lease: Lease,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Owned {
    /// Lets the partition loop finish its batch and waits for it.
    async fn stop(self) -> Lease {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.lease
    }
}

/// Runs until `shutdown` resolves, then stops every partition loop (each
/// finishes its batch) and releases the leases at once.
pub async fn run(deps: Deps, leases: Leases, shutdown: impl Future<Output = ()>) {
    let config = deps.config.clone();
    let partitions = config.common.partitions;
    let mut owned: BTreeMap<u32, Owned> = BTreeMap::new();
    let mut ticker = tokio::time::interval(config.rebalance_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        if let Err(err) = leases.heartbeat().await {
            tracing::warn!(error = %err, "heartbeat failed");
        }

        // Keep what is still ours; forget loops that ended (fenced) and
        // leases that could not be renewed (expired or taken).
        let held: Vec<u32> = owned.keys().copied().collect();
        for p in held {
            let Some(mut entry) = owned.remove(&p) else {
                continue;
            };
            if entry.task.is_finished() {
                tracing::info!(partition = p, "partition loop ended; releasing");
                leases.release(&deps.pool, entry.lease).await;
                deps.metrics.leases_released.fetch_add(1, Relaxed);
                continue;
            }
            match leases.renew(&mut entry.lease).await {
                Ok(()) => {
                    owned.insert(p, entry);
                }
                Err(err) => {
                    tracing::warn!(partition = p, error = %err, "lease lost; stopping the partition");
                    deps.metrics.leases_lost.fetch_add(1, Relaxed);
                    let _ = entry.stop.send(true);
                    entry.task.abort();
                }
            }
        }

        let live = match leases.live_workers().await {
            Ok(live) => live,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list workers; keeping the current partitions");
                continue;
            }
        };
        let wanted: BTreeSet<u32> = assignment(partitions, &live, &config.worker_id)
            .into_iter()
            .collect();

        // Hand over what now belongs to another worker.
        let surplus: Vec<u32> = owned
            .keys()
            .filter(|p| !wanted.contains(p))
            .copied()
            .collect();
        let mut stopping = Vec::new();
        for p in surplus {
            if let Some(entry) = owned.remove(&p) {
                let _ = entry.stop.send(true);
                stopping.push(entry);
            }
        }
        for entry in stopping {
            let lease = entry.stop().await;
            tracing::info!(partition = lease.partition, "partition handed over");
            leases.release(&deps.pool, lease).await;
            deps.metrics.leases_released.fetch_add(1, Relaxed);
        }

        // Take what is ours and free.
        for p in wanted {
            if owned.contains_key(&p) {
                continue;
            }
            match leases.acquire(&deps.pool, p).await {
                Ok(Some(lease)) => {
                    tracing::info!(partition = p, token = lease.token, "partition acquired");
                    deps.metrics.leases_acquired.fetch_add(1, Relaxed);
                    let (stop, stopped) = watch::channel(false);
                    let task = tokio::spawn(partition::run(deps.clone(), p, lease.token, stopped));
                    owned.insert(p, Owned { lease, stop, task });
                }
                Ok(None) => {
                    tracing::debug!(partition = p, "partition still held by another worker")
                }
                Err(err) => tracing::warn!(partition = p, error = %err, "cannot acquire partition"),
            }
        }
        deps.metrics
            .partitions_owned
            .store(owned.len() as u64, Relaxed);
    }

    // Shutdown: every loop finishes its batch, then the leases go at once so
    // the other workers need not wait for them to expire. Bounded: with NATS
    // or PostgreSQL down, the leases simply expire instead.
    for entry in owned.values() {
        let _ = entry.stop.send(true);
    }
    let hand_over = async {
        for (_, entry) in owned {
            let lease = entry.stop().await;
            leases.release(&deps.pool, lease).await;
        }
        leases.leave().await;
    };
    if tokio::time::timeout(config.shutdown_timeout, hand_over)
        .await
        .is_err()
    {
        tracing::warn!("leases not released in time; they will expire");
    }
}
