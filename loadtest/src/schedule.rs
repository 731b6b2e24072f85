//! Arrival-rate arithmetic for open-loop load.
//!
//! In open mode request `i` (0-based) is due at `release + i / rate`: the
//! schedule is computed from the release instant, never from the previous
//! send, so a late send does not push every later one back. Latency is
//! measured from the due time, so time spent waiting to be sent (a busy
//! generator, a full in-flight cap) shows up in the figures instead of being
//! hidden — no coordinated omission.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// When request `index` is due, relative to the release, at `rate` requests
/// per second. Exact to the nanosecond (integer arithmetic, rounded down).
pub fn due_offset(index: u64, rate: u32) -> Duration {
    let rate = u128::from(rate.max(1));
    let nanos = u128::from(index) * NANOS_PER_SEC / rate;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Requests in an open-loop run of `duration_secs` at `rate` per second.
pub fn requests_for(rate: u32, duration_secs: u64) -> u64 {
    u64::from(rate).saturating_mul(duration_secs)
}

/// How long sending `requests` at `rate` per second takes: the due time of
/// the last one plus one interval.
pub fn schedule_length(requests: u64, rate: u32) -> Duration {
    due_offset(requests, rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_offsets_are_evenly_spaced_from_the_release() {
        assert_eq!(due_offset(0, 1000), Duration::ZERO);
        assert_eq!(due_offset(1, 1000), Duration::from_millis(1));
        assert_eq!(due_offset(1500, 1000), Duration::from_millis(1500));
        assert_eq!(due_offset(3, 1), Duration::from_secs(3));
        // 1/3 s is not a whole number of nanoseconds: rounded down, and the
        // error does not accumulate (each offset is computed from the release).
        assert_eq!(due_offset(1, 3), Duration::from_nanos(333_333_333));
        assert_eq!(due_offset(2, 3), Duration::from_nanos(666_666_666));
        assert_eq!(due_offset(3, 3), Duration::from_secs(1));
        assert_eq!(due_offset(40_000, 40_000), Duration::from_secs(1));
        assert_eq!(due_offset(1, 40_000), Duration::from_micros(25));
        // A zero rate is treated as one per second rather than dividing by 0.
        assert_eq!(due_offset(2, 0), Duration::from_secs(2));
    }

    #[test]
    fn offsets_never_decrease() {
        for rate in [1, 7, 999, 40_000, 1_000_000] {
            let mut previous = Duration::ZERO;
            for index in 0..5_000u64 {
                let offset = due_offset(index, rate);
                assert!(offset >= previous, "rate {rate}, index {index}");
                previous = offset;
            }
        }
    }

    #[test]
    fn request_counts() {
        assert_eq!(requests_for(5000, 10), 50_000);
        assert_eq!(requests_for(1, 1), 1);
        assert_eq!(requests_for(u32::MAX, u64::MAX), u64::MAX);
        assert_eq!(schedule_length(50_000, 5000), Duration::from_secs(10));
        assert_eq!(schedule_length(0, 5000), Duration::ZERO);
    }
}
