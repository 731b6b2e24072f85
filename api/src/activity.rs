//! The activity series: orders accepted and decided per second over the
//! last minutes, for the whole deployment, answered by any API instance
//! (`GET /v1/admin/activity`, `crate::routes::activity`).
//!
//! The operations console polls it every second or two during a sale, so
//! it is read from memory and fed by what the API already has, at no cost
//! to the order path: no query, no index, nothing in an order's
//! transactions.
//!
//! - **Decided**: every API instance receives every partition's decision
//!   events (`crate::hub`) and counts each decided order in the second of
//!   its `decided_at` (the database's clock in the batch transaction), so
//!   every instance puts it in the same second.
//! - **Accepted**: only the instance that accepted an order knows of it.
//!   Once a second, each instance takes the increase of its
//!   `checkline_orders_accepted_total` over the second that just ended
//!   (orders queued and answered `202`), adds it to its own series, and,
//!   when it is not zero, publishes it on `<prefix>.events.accepted.<instance>`
//!   (core NATS). Every other instance adds that sample to its series.
//!   An instance's own accepts never depend on NATS; its own samples
//!   coming back are skipped by their instance id.
//!
//! Each instance keeps the last [`SECONDS_MAX`] seconds in a ring of
//! per-second counts ([`Ring`]). It is an approximation for watching: a
//! lost event or sample undercounts, and an instance started a minute ago
//! knows only that minute. The exact counts are in PostgreSQL and in the
//! Prometheus counters (`checkline_orders_accepted_total` of each API,
//! `checkline_worker_decisions_total` of each worker).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use checkline_shared::domain::{Order, OrderStatus};
use checkline_shared::subjects::Subjects;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::metrics::Metrics;

/// The longest series answered, in seconds.
pub const SECONDS_MAX: usize = 600;

/// How far ahead of this instance's clock a sample may be stamped and still
/// keep its own second (another instance's clock running ahead). Further
/// ahead, it is counted in the current second: its count is kept, its
/// second is not to be trusted.
const AHEAD_SECS: i64 = 30;

/// Slots of the ring: the longest window, the seconds a sample may be
/// ahead, and the current second. A sample that far ahead never lands on a
/// second any answer still reads.
const SLOTS: usize = SECONDS_MAX + AHEAD_SECS as usize + 1;

/// Orders counted in one second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub accepted: u64,
    pub decided: u64,
}

/// One second of the series: its start (Unix seconds) and its counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Second {
    pub at: i64,
    pub counts: Counts,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The second this slot counts; an older second means the slot is free.
    second: i64,
    counts: Counts,
}

/// Per-second counts of the last [`SECONDS_MAX`] seconds, indexed by the
/// second modulo the ring's length. Each slot remembers which second it
/// holds, so a slot left over from an earlier lap reads as zero and is
/// reset by the first sample of its new second, and a late sample is added
/// to its own second as long as that second is in the window.
pub struct Ring {
    slots: Vec<Slot>,
}

impl Default for Ring {
    fn default() -> Self {
        Self {
            slots: vec![
                Slot {
                    second: i64::MIN,
                    counts: Counts::default(),
                };
                SLOTS
            ],
        }
    }
}

impl Ring {
    /// Adds `counts` to `second`, as seen at `now` (both Unix seconds).
    /// A sample older than the longest window is dropped (no answer would
    /// show it); one stamped more than [`AHEAD_SECS`] ahead is counted in
    /// `now`. Returns whether it was counted.
    pub fn add(&mut self, now: i64, second: i64, counts: Counts) -> bool {
        if second < now - SECONDS_MAX as i64 {
            return false;
        }
        let second = if second > now + AHEAD_SECS {
            now
        } else {
            second
        };
        let slot = &mut self.slots[index(second)];
        if slot.second < second {
            *slot = Slot {
                second,
                counts: Counts::default(),
            };
        } else if slot.second > second {
            // The slot holds a later lap: only if this clock went back.
            return false;
        }
        slot.counts.accepted = slot.counts.accepted.saturating_add(counts.accepted);
        slot.counts.decided = slot.counts.decided.saturating_add(counts.decided);
        true
    }

    /// The `n` seconds ending with `last`, oldest first; a second nothing
    /// was counted in reads as zero. `n` is at most [`SECONDS_MAX`].
    pub fn series(&self, last: i64, n: usize) -> Vec<Second> {
        let n = n.min(SECONDS_MAX) as i64;
        (last - n + 1..=last)
            .map(|at| {
                let slot = &self.slots[index(at)];
                Second {
                    at,
                    counts: if slot.second == at {
                        slot.counts
                    } else {
                        Counts::default()
                    },
                }
            })
            .collect()
    }
}

fn index(second: i64) -> usize {
    // SLOTS is far below i64::MAX, and rem_euclid is never negative.
    second.rem_euclid(SLOTS as i64) as usize
}

/// One instance's accepted orders of one second, as published on
/// `<prefix>.events.accepted.<instance>`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AcceptedSample {
    /// The second (Unix seconds, by the publisher's clock).
    pub second: i64,
    pub accepted: u64,
}

/// This instance's activity series and its identity among the instances.
pub struct Activity {
    ring: Mutex<Ring>,
    instance: Uuid,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            ring: Mutex::new(Ring::default()),
            instance: Uuid::new_v4(),
        }
    }
}

/// The current time, in Unix seconds.
fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Activity {
    /// This process's id in the samples it publishes.
    pub fn instance(&self) -> Uuid {
        self.instance
    }

    fn add(&self, second: i64, counts: Counts) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.add(now_secs(), second, counts);
    }

    /// Counts the decided orders of one decision event, each in the second
    /// of its `decided_at` (the receipt's second if it has none).
    pub fn decided(&self, orders: &[Order]) {
        let now = now_secs();
        // A batch's orders share a transaction and nearly always a second:
        // one lock per second, not per order.
        let mut seconds: Vec<(i64, u64)> = Vec::new();
        for order in orders.iter().filter(|o| o.status != OrderStatus::Pending) {
            let second = order.decided_at.map_or(now, |at| at.timestamp());
            match seconds.iter_mut().find(|(s, _)| *s == second) {
                Some((_, n)) => *n += 1,
                None => seconds.push((second, 1)),
            }
        }
        if seconds.is_empty() {
            return;
        }
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        for (second, decided) in seconds {
            ring.add(
                now,
                second,
                Counts {
                    accepted: 0,
                    decided,
                },
            );
        }
    }

    /// Adds another instance's sample; this instance's own, coming back
    /// through NATS, are already counted.
    pub fn sample(&self, from: Uuid, payload: &[u8]) {
        if from == self.instance {
            return;
        }
        match serde_json::from_slice::<AcceptedSample>(payload) {
            Ok(sample) => self.add(
                sample.second,
                Counts {
                    accepted: sample.accepted,
                    decided: 0,
                },
            ),
            Err(err) => {
                tracing::debug!(error = %err, instance = %from, "unreadable activity sample")
            }
        }
    }

    /// The last `n` complete seconds, oldest first (the current second is
    /// still being counted).
    pub fn series(&self, n: usize) -> Vec<Second> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.series(now_secs() - 1, n)
    }

    /// Once a second, counts this instance's accepted orders of the second
    /// that just ended and publishes them to the other instances. Runs
    /// until the task is aborted.
    pub async fn run(
        self: Arc<Self>,
        client: async_nats::Client,
        subjects: Subjects,
        metrics: Arc<Metrics>,
    ) {
        let subject = subjects.accepted_event(self.instance);
        let mut counted = metrics.orders_accepted.get();
        loop {
            tokio::time::sleep(until_next_second()).await;
            let total = metrics.orders_accepted.get();
            let accepted = total.saturating_sub(counted);
            counted = total;
            if accepted == 0 {
                continue;
            }
            // Woken just after a second began: the count is the previous
            // second's (all of it, if this task was late).
            let second = now_secs() - 1;
            self.add(
                second,
                Counts {
                    accepted,
                    decided: 0,
                },
            );
            checkline_shared::events::send(
                &client,
                subject.clone(),
                &AcceptedSample { second, accepted },
            )
            .await;
        }
    }
}

/// How long until just after the next whole second of the wall clock.
fn until_next_second() -> Duration {
    const MARGIN: Duration = Duration::from_millis(2);
    let into = chrono::Utc::now().timestamp_subsec_nanos().min(999_999_999);
    Duration::from_nanos(u64::from(1_000_000_000 - into)) + MARGIN
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    const NOW: i64 = 1_800_000_000;

    fn accepted(n: u64) -> Counts {
        Counts {
            accepted: n,
            decided: 0,
        }
    }

    fn decided(n: u64) -> Counts {
        Counts {
            accepted: 0,
            decided: n,
        }
    }

    fn totals(series: &[Second]) -> Counts {
        series.iter().fold(Counts::default(), |t, s| Counts {
            accepted: t.accepted + s.counts.accepted,
            decided: t.decided + s.counts.decided,
        })
    }

    #[test]
    fn samples_add_up_in_their_own_second() {
        let mut ring = Ring::default();
        assert!(ring.add(NOW, NOW - 3, accepted(2)));
        assert!(ring.add(NOW, NOW - 3, accepted(5)));
        assert!(ring.add(NOW, NOW - 3, decided(4)));
        assert!(ring.add(NOW, NOW - 1, decided(1)));
        let series = ring.series(NOW - 1, 10);
        assert_eq!(series.len(), 10);
        assert_eq!(series[0].at, NOW - 10);
        assert_eq!(series[9].at, NOW - 1);
        assert_eq!(
            series[7],
            Second {
                at: NOW - 3,
                counts: Counts {
                    accepted: 7,
                    decided: 4
                }
            }
        );
        assert_eq!(series[9].counts, decided(1));
    }

    #[test]
    fn seconds_without_samples_read_as_zero() {
        let ring = Ring::default();
        let series = ring.series(NOW - 1, SECONDS_MAX);
        assert_eq!(series.len(), SECONDS_MAX);
        assert!(series.iter().all(|s| s.counts == Counts::default()));
        // Consecutive seconds, oldest first.
        assert!(series.windows(2).all(|w| w[1].at == w[0].at + 1));
    }

    #[test]
    fn a_slot_of_an_earlier_lap_is_neither_read_nor_added_to() {
        let mut ring = Ring::default();
        ring.add(NOW, NOW - 5, accepted(9));
        // Many laps later, the same slot holds another second.
        let later = NOW + 3 * SLOTS as i64;
        assert_eq!(index(later - 5), index(NOW - 5));
        let series = ring.series(later - 1, SECONDS_MAX);
        assert_eq!(
            totals(&series),
            Counts::default(),
            "the old lap is not read"
        );
        ring.add(later, later - 5, accepted(1));
        let series = ring.series(later - 1, 10);
        assert_eq!(series[5].at, later - 5);
        assert_eq!(series[5].counts, accepted(1), "reset, not added to 9");
    }

    #[test]
    fn the_ring_wraps_around_second_after_second() {
        let mut ring = Ring::default();
        // Two and a half laps of one accepted order a second.
        let end = NOW + (SLOTS * 5 / 2) as i64;
        for second in NOW..end {
            ring.add(second + 1, second, accepted(1));
        }
        let series = ring.series(end - 1, SECONDS_MAX);
        assert!(series.iter().all(|s| s.counts == accepted(1)), "{series:?}");
    }

    #[test]
    fn late_samples_from_other_instances_count_within_the_window() {
        let mut ring = Ring::default();
        ring.add(NOW, NOW - 1, accepted(1));
        // Another instance's sample of a second ago arrives 2 s late, and
        // one from almost the whole window ago.
        assert!(ring.add(NOW + 2, NOW - 1, accepted(3)));
        assert!(ring.add(NOW, NOW - SECONDS_MAX as i64, accepted(6)));
        let series = ring.series(NOW - 1, SECONDS_MAX);
        assert_eq!(series[SECONDS_MAX - 1].counts, accepted(4));
        assert_eq!(series[0].at, NOW - SECONDS_MAX as i64);
        assert_eq!(series[0].counts, accepted(6));
        // Older than any window: dropped, and it disturbs nothing.
        assert!(!ring.add(NOW, NOW - SECONDS_MAX as i64 - 1, accepted(100)));
        assert_eq!(totals(&ring.series(NOW - 1, SECONDS_MAX)), accepted(10));
    }

    #[test]
    fn samples_from_a_clock_ahead_keep_every_second_in_the_window() {
        let mut ring = Ring::default();
        for second in NOW - SECONDS_MAX as i64..NOW {
            ring.add(NOW, second, decided(1));
        }
        // A little ahead: kept in its own second, which is read once the
        // clock gets there, and no second of the window is lost.
        assert!(ring.add(NOW, NOW + AHEAD_SECS, accepted(2)));
        // Far ahead: counted now.
        assert!(ring.add(NOW, NOW + 10_000, accepted(5)));
        let window = ring.series(NOW - 1, SECONDS_MAX);
        assert_eq!(totals(&window), decided(SECONDS_MAX as u64));
        let later = ring.series(NOW + AHEAD_SECS, AHEAD_SECS as usize + 1);
        assert_eq!(later[0].at, NOW);
        assert_eq!(later[0].counts, accepted(5));
        assert_eq!(later[AHEAD_SECS as usize].counts, accepted(2));
    }

    fn order(status: OrderStatus, decided_at: Option<i64>) -> Order {
        let at = |s: i64| DateTime::<Utc>::from_timestamp(s, 250_000_000).unwrap();
        Order {
            id: Uuid::new_v4(),
            customer_id: "alice".into(),
            product_id: Some(Uuid::nil()),
            quantity: Some(1),
            lines: Vec::new(),
            status,
            reason: None,
            rejected_product_id: None,
            unit_price_cents: None,
            total_cents: None,
            created_at: at(NOW),
            decided_at: decided_at.map(at),
            reserved_until: None,
        }
    }

    #[test]
    fn decisions_count_in_the_second_they_were_decided_and_samples_of_others_only() {
        let activity = Activity::default();
        let now = now_secs();
        activity.decided(&[
            order(OrderStatus::Confirmed, Some(now - 3)),
            order(OrderStatus::Rejected, Some(now - 3)),
            order(OrderStatus::Reserved, Some(now - 2)),
            order(OrderStatus::Pending, None),
        ]);
        let other = Uuid::new_v4();
        let sample = |n| {
            serde_json::to_vec(&AcceptedSample {
                second: now - 2,
                accepted: n,
            })
            .unwrap()
        };
        activity.sample(other, &sample(4));
        activity.sample(activity.instance(), &sample(100));
        activity.sample(other, b"not json");
        // The clock may have moved on a second since `now` was read.
        let series = activity.series(5);
        let at = |s: i64| series.iter().find(|p| p.at == s).unwrap().counts;
        assert_eq!(at(now - 3), decided(2));
        assert_eq!(
            at(now - 2),
            Counts {
                accepted: 4,
                decided: 1
            }
        );
    }

    #[test]
    fn a_sample_reads_back_as_published() {
        let json = serde_json::to_value(AcceptedSample {
            second: NOW,
            accepted: 3,
        })
        .unwrap();
        assert_eq!(json, serde_json::json!({"second": NOW, "accepted": 3}));
    }
}
