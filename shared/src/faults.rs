//! Fault points for the tests: `CHECKLINE_FAULTS` names places in the code
//! where a debug build pauses or fails once, so that a test can drive an
//! interleaving that real traffic only hits by chance (a stock event landing
//! between two steps of a batch, an acknowledgement lost after the message
//! was stored).
//!
//! The value is a comma-separated list of
//! - `point`: fail there once (where the code asks [`Faults::fail`]);
//! - `point:MS`: pause there once for MS milliseconds;
//! - `point:hang`: the task that first gets there waits forever (an await on
//!   a peer that never answers), while the rest of the process carries on;
//! - `point:stop`: the process stops itself with SIGSTOP there, once (a VM
//!   freeze, a long stall); SIGCONT resumes it;
//! - `point:crash`: the process aborts there, as a SIGKILL would.
//!
//! The last four act where the code calls [`Faults::at`]. Release builds
//! refuse the variable, so no production process can carry a fault by
//! mistake. Every point fires once: the retry that follows is the normal
//! path.
//!
//! Points: the API's `hub_drop_stock` (the next stock event is dropped, as
//! if lost), `hub_drop_decisions` (the same for the next decisions event),
//! `hub_catalog_late` (the hub waits before it takes a catalog event),
//! `accept_batch_start`, `accept_after_door`,
//! `accept_second_lookup`, `accept_ack_lost`, `restock_before_enqueue`,
//! `restock_publish`, `requeue_publish`; the queue publisher's `queue_batch_gap`
//! (one message in the middle of an atomic batch never sent, so that the
//! server refuses the batch); the worker's, in the order a batch
//! passes them, `mid_batch` (decisions written, not committed),
//! `before_commit`, `after_commit` (committed, nothing published: the moment
//! a queue ack would be lost), `publish` (before the result events) and
//! `mid_publish` (some result events published, not all); and the partition
//! loop's `consumer_deaf` (the first consumer it opens never delivers).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::config::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Fail,
    Pause(Duration),
    Hang,
    Stop,
    Crash,
}

/// The armed fault points of one process (or of one in-process test app).
#[derive(Debug, Default)]
pub struct Faults {
    armed: Mutex<HashMap<String, Fault>>,
}

impl Faults {
    pub const VAR: &'static str = "CHECKLINE_FAULTS";

    /// Parses `CHECKLINE_FAULTS`; empty or unset arms nothing.
    pub fn parse(value: Option<&str>) -> Result<Self, ConfigError> {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(Self::default());
        };
        if !cfg!(debug_assertions) {
            return Err(ConfigError::new(
                Self::VAR,
                "fault points exist only in debug builds",
            ));
        }
        let mut armed = HashMap::new();
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (point, fault) = match item.split_once(':') {
                None => (item, Fault::Fail),
                Some((point, "hang")) => (point, Fault::Hang),
                Some((point, "stop")) => (point, Fault::Stop),
                Some((point, "crash")) => (point, Fault::Crash),
                Some((point, ms)) => {
                    let ms: u64 = ms.parse().map_err(|_| {
                        ConfigError::new(
                            Self::VAR,
                            format!(
                                "{item:?}: expected point, point:MILLISECONDS, point:hang, \
                                 point:stop or point:crash"
                            ),
                        )
                    })?;
                    (point, Fault::Pause(Duration::from_millis(ms)))
                }
            };
            if point.is_empty() || !point.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                return Err(ConfigError::new(
                    Self::VAR,
                    format!("{item:?}: a point is a lowercase name"),
                ));
            }
            armed.insert(point.to_owned(), fault);
        }
        Ok(Self {
            armed: Mutex::new(armed),
        })
    }

    /// Disarms and returns the fault at `point` if it is a failure
    /// (`fail`) or anything else (`!fail`).
    fn take(&self, point: &str, fail: bool) -> Option<Fault> {
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        match armed.get(point) {
            Some(Fault::Fail) if fail => armed.remove(point),
            Some(Fault::Fail) | None => None,
            Some(_) if !fail => armed.remove(point),
            Some(_) => None,
        }
    }

    /// True the first time a failure armed at `point` is reached.
    pub fn fail(&self, point: &str) -> bool {
        if self.take(point, true).is_some() {
            tracing::warn!(point, "fault point: failing");
            return true;
        }
        false
    }

    /// Pauses, hangs, stops or aborts the first time `point` is reached,
    /// as armed.
    pub async fn at(&self, point: &str) {
        match self.take(point, false) {
            Some(Fault::Pause(duration)) => {
                tracing::warn!(point, ?duration, "fault point: pausing");
                tokio::time::sleep(duration).await;
            }
            Some(Fault::Hang) => {
                tracing::warn!(point, "fault point: waiting forever");
                std::future::pending::<()>().await;
            }
            Some(Fault::Stop) => {
                eprintln!("fault point {point}: stopping the process");
                // SIGSTOP cannot be caught: every thread stops until
                // SIGCONT, and `kill` returns only then.
                let _ = std::process::Command::new("kill")
                    .args(["-STOP", &std::process::id().to_string()])
                    .status();
            }
            Some(Fault::Crash) => {
                eprintln!("fault point {point}: aborting");
                std::process::abort();
            }
            Some(Fault::Fail) | None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn points_fire_once() {
        let faults = Faults::parse(Some("a, b:5, c:hang")).unwrap();
        assert!(!faults.fail("b"), "a pause is not a failure");
        assert!(faults.fail("a"));
        assert!(!faults.fail("a"));
        let started = std::time::Instant::now();
        faults.at("a").await;
        faults.at("b").await;
        assert!(started.elapsed() >= Duration::from_millis(5));
        let hung = tokio::time::timeout(Duration::from_millis(20), faults.at("c")).await;
        assert!(hung.is_err(), "a hang point waits");
        faults.at("c").await;
        assert!(!faults.fail("d"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        assert_eq!(Faults::parse(Some("a:x")).unwrap_err().var, Faults::VAR);
        assert_eq!(Faults::parse(Some("A")).unwrap_err().var, Faults::VAR);
        assert_eq!(Faults::parse(Some("a:later")).unwrap_err().var, Faults::VAR);
        assert!(Faults::parse(None).is_ok());
        assert!(Faults::parse(Some("")).is_ok());
    }
}
