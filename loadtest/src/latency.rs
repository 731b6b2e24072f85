//! Latency histograms (microsecond resolution) and their summaries.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest trackable latency: one hour, in microseconds. Longer values are
/// clamped to it.
const MAX_TRACKABLE_MICROS: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// Records latencies in microseconds.
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    pub fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, MAX_TRACKABLE_MICROS, SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
        Self { histogram }
    }

    pub fn record(&mut self, latency: Duration) {
        self.record_micros(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// Negative spans (clock skew between servers) count as zero.
    pub fn record_chrono(&mut self, latency: chrono::TimeDelta) {
        self.record(latency.to_std().unwrap_or(Duration::ZERO));
    }

    pub fn record_micros(&mut self, micros: u64) {
        self.histogram.saturating_record(micros);
    }

    pub fn summary(&self) -> LatencySummary {
        let histogram = &self.histogram;
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let at = |quantile: f64| Some(micros_to_ms(histogram.value_at_quantile(quantile)));
        LatencySummary {
            count: histogram.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: Some(micros_to_ms(histogram.max())),
            mean_ms: Some(round_ms(histogram.mean() / 1000.0)),
        }
    }
}

/// Percentiles in milliseconds; `None` when nothing was recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: Option<f64>,
}

impl LatencySummary {
    /// The columns of a table row: p50, p90, p99, p99.9, max.
    pub fn columns(&self) -> [String; 5] {
        [
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
        ]
        .map(format_ms)
    }
}

/// Microseconds to milliseconds, kept at microsecond precision.
pub fn micros_to_ms(micros: u64) -> f64 {
    // u64 -> f64 loses precision only past 2^53 µs (285 years).
    round_ms(micros as f64 / 1000.0)
}

fn round_ms(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// A millisecond figure for the table: two decimals, `-` when absent.
pub fn format_ms(ms: Option<f64>) -> String {
    match ms {
        Some(ms) => format!("{ms:.2}"),
        None => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_summary_has_no_figures() {
        let summary = LatencyRecorder::new().summary();
        assert_eq!(summary, LatencySummary::default());
        assert_eq!(
            summary.columns(),
            ["-", "-", "-", "-", "-"].map(String::from)
        );
    }

    #[test]
    fn percentiles_in_milliseconds() {
        let mut recorder = LatencyRecorder::new();
        // 1 ms .. 1000 ms, one sample each.
        for ms in 1..=1000u64 {
            recorder.record(Duration::from_millis(ms));
        }
        let summary = recorder.summary();
        assert_eq!(summary.count, 1000);
        let close = |value: Option<f64>, expected: f64| {
            let value = value.unwrap();
            assert!(
                (value - expected).abs() <= expected * 0.001 + 0.001,
                "{value} vs {expected}"
            );
        };
        close(summary.p50_ms, 500.0);
        close(summary.p90_ms, 900.0);
        close(summary.p99_ms, 990.0);
        close(summary.p999_ms, 999.0);
        close(summary.max_ms, 1000.0);
        close(summary.mean_ms, 500.5);
    }

    #[test]
    fn sub_millisecond_and_clamped_values() {
        let mut recorder = LatencyRecorder::new();
        recorder.record(Duration::from_micros(250));
        assert_eq!(recorder.summary().max_ms, Some(0.25));
        recorder.record(Duration::from_secs(10 * 3600));
        let max = recorder.summary().max_ms.unwrap();
        assert!((max - 3_600_000.0).abs() / 3_600_000.0 < 0.001, "{max}");
        recorder.record_chrono(chrono::TimeDelta::milliseconds(-5));
        assert_eq!(recorder.summary().count, 3);
    }

    #[test]
    fn formatting() {
        assert_eq!(format_ms(None), "-");
        assert_eq!(format_ms(Some(0.25)), "0.25");
        assert_eq!(format_ms(Some(12.0)), "12.00");
        assert_eq!(format_ms(Some(1234.5678)), "1234.57");
        assert_eq!(micros_to_ms(1_234_567), 1234.567);
        assert_eq!(micros_to_ms(0), 0.0);
    }
}
