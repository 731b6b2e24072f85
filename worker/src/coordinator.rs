//! Which partitions this worker runs: heartbeat, renew leases, follow the
//! assignment as workers come and go, and hand partitions over cleanly.
//!
//! The loop itself only does bounded work: the heartbeat, the renewals and
//! the listing of live workers run together, each under the lease operation
//! deadline. Acquisitions (whose fencing update may queue behind a paused
//! former owner's transaction) and hand-overs (which wait for a partition
//! task to stop) run beside it, so no single partition can keep the worker
//! from renewing the leases of the others.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::lease::{assignment, Lease, LeaseError, Leases};
use crate::partition::{self, Deps};
use checkline_shared::partition::Partition;

struct Owned {
    lease: Lease,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Owned {
    /// Lets the partition loop finish its batch and waits for it, for at
    /// most `deadline`; then aborts it.
    ///
    /// Aborting is safe at any await of the loop: its only durable effect is
    /// the batch transaction, which moves the cursor and writes the decisions
    /// together and checks the fencing token, so an aborted batch either
    /// committed whole or left nothing behind, and the next owner resumes
    /// from the committed cursor. What comes after a commit (result events,
    /// purges, requeues) is best effort and repeated or skipped harmlessly.
    async fn stop(self, deadline: Duration) -> Lease {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            tracing::warn!(
                partition = %self.lease.partition,
                ?deadline,
                "partition loop did not stop in time; aborting it"
            );
            task.abort();
        }
        self.lease
    }
}

/// Stops the partition loop and releases its lease, beside the coordinator.
fn release_in_background(
    deps: &Deps,
    leases: &Leases,
    entry: Owned,
    deadline: Duration,
) -> JoinHandle<()> {
    let (deps, leases) = (deps.clone(), leases.clone());
    tokio::spawn(async move {
        let lease = entry.stop(deadline).await;
        leases.release(&deps.pool, lease).await;
        deps.metrics.leases_released.fetch_add(1, Relaxed);
    })
}

/// Starts the loop of a partition whose acquisition ended with a lease.
fn start_acquired(
    deps: &Deps,
    owned: &mut BTreeMap<Partition, Owned>,
    p: Partition,
    acquired: Result<Result<Option<Lease>, LeaseError>, tokio::task::JoinError>,
) {
    match acquired {
        Ok(Ok(Some(lease))) => {
            tracing::info!(partition = %p, token = lease.token, "partition acquired");
            deps.metrics.leases_acquired.fetch_add(1, Relaxed);
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(partition::run(deps.clone(), p, lease.token, stopped));
            owned.insert(p, Owned { lease, stop, task });
        }
        Ok(Ok(None)) => tracing::debug!(partition = %p, "partition still held by another worker"),
        Ok(Err(err)) => tracing::warn!(partition = %p, error = %err, "cannot acquire partition"),
        Err(err) => tracing::warn!(partition = %p, error = %err, "acquisition failed"),
    }
}

/// Runs until `shutdown` resolves, then stops every partition loop (each
/// finishes its batch) and releases the leases at once.
pub async fn run(deps: Deps, leases: Leases, shutdown: impl Future<Output = ()>) {
    let config = deps.config.clone();
    let partitions = config.common.partitions;
    let mut owned: BTreeMap<Partition, Owned> = BTreeMap::new();
    let mut acquiring: BTreeMap<Partition, JoinHandle<Result<Option<Lease>, LeaseError>>> =
        BTreeMap::new();
    let mut releasing: BTreeMap<Partition, JoinHandle<()>> = BTreeMap::new();
    let mut ticker = tokio::time::interval(config.rebalance_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        releasing.retain(|_, task| !task.is_finished());

        // Acquisitions that completed since the last round.
        let done: Vec<Partition> = acquiring
            .iter()
            .filter(|(_, task)| task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in done {
            if let Some(task) = acquiring.remove(&p) {
                start_acquired(&deps, &mut owned, p, task.await);
            }
        }

        // Forget loops that ended (fenced).
        let ended: Vec<Partition> = owned
            .iter()
            .filter(|(_, entry)| entry.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in ended {
            if let Some(entry) = owned.remove(&p) {
                tracing::info!(partition = %p, "partition loop ended; releasing");
                let task = release_in_background(&deps, &leases, entry, config.handover_timeout);
                releasing.insert(p, task);
            }
        }

        // Heartbeat, renewals and the roll call at once, each bounded.
        let renewals = join_all(
            owned
                .iter_mut()
                .map(|(p, entry)| async { (*p, leases.renew(&mut entry.lease).await) }),
        );
        let (heartbeat, renewals, live) =
            tokio::join!(leases.heartbeat(), renewals, leases.live_workers());
        let heartbeat_ok = match heartbeat {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(error = %err, "heartbeat failed");
                false
            }
        };
        for (p, renewed) in renewals {
            let Err(err) = renewed else {
                continue;
            };
            tracing::warn!(partition = %p, error = %err, "lease lost; stopping the partition");
            deps.metrics.leases_lost.fetch_add(1, Relaxed);
            if let Some(entry) = owned.remove(&p) {
                let _ = entry.stop.send(true);
                entry.task.abort();
            }
        }
        deps.metrics
            .partitions_owned
            .store(owned.len() as u64, Relaxed);

        let live = match live {
            // The roll call ran beside this round's heartbeat and may have
            // missed it: a worker that just started would otherwise wait a
            // whole round to take its first partitions.
            Ok(mut live) if heartbeat_ok && !live.contains(&config.worker_id) => {
                live.push(config.worker_id.clone());
                live.sort();
                live
            }
            Ok(live) => live,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list workers; keeping the current partitions");
                continue;
            }
        };
        let wanted: BTreeSet<Partition> = assignment(partitions, &live, &config.worker_id)
            .into_iter()
            .collect();

        // Hand over what now belongs to another worker.
        let surplus: Vec<Partition> = owned
            .keys()
            .filter(|p| !wanted.contains(p))
            .copied()
            .collect();
        for p in surplus {
            if let Some(entry) = owned.remove(&p) {
                tracing::info!(partition = %p, "handing the partition over");
                let task = release_in_background(&deps, &leases, entry, config.handover_timeout);
                releasing.insert(p, task);
            }
        }

        // Take what is ours and free (not while its release is under way).
        for p in wanted {
            if owned.contains_key(&p) || acquiring.contains_key(&p) || releasing.contains_key(&p) {
                continue;
            }
            let (leases, pool) = (leases.clone(), deps.pool.clone());
            acquiring.insert(
                p,
                tokio::spawn(async move { leases.acquire(&pool, p).await }),
            );
        }
        // Start what was acquired in this round at once, not a round later
        // (a worker's start and every take-over would lose a rebalance
        // interval); an acquisition still stuck behind a lock after the
        // lease operation deadline stays in the background.
        let deadline = tokio::time::Instant::now() + config.lease_op_timeout;
        let pending: Vec<Partition> = acquiring.keys().copied().collect();
        for p in pending {
            let Some(task) = acquiring.get_mut(&p) else {
                continue;
            };
            if let Ok(result) = tokio::time::timeout_at(deadline, task).await {
                acquiring.remove(&p);
                start_acquired(&deps, &mut owned, p, result);
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
        let stopping = owned.into_values().map(|entry| async {
            let lease = entry.stop(config.handover_timeout).await;
            leases.release(&deps.pool, lease).await;
        });
        // Whatever an acquisition under way still takes is given back too.
        let acquired = acquiring.into_values().map(|task| async {
            if let Ok(Ok(Some(lease))) = task.await {
                leases.release(&deps.pool, lease).await;
            }
        });
        tokio::join!(
            join_all(stopping),
            join_all(acquired),
            join_all(releasing.into_values())
        );
        leases.leave().await;
    };
    if tokio::time::timeout(config.shutdown_timeout, hand_over)
        .await
        .is_err()
    {
        tracing::warn!("leases not released in time; they will expire");
    }
}
