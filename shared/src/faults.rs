//! Fault points for the tests: `CHECKLINE_FAULTS` names places in the code
//! where a debug build pauses or fails once, so that a test can drive an
//! interleaving that real traffic only hits by chance (a stock event landing
//! between two steps of a batch, an acknowledgement lost after the message
//! was stored).
//!
//! The value is a comma-separated list of `point` (fail there once) and
//! `point:MS` (pause there once for MS milliseconds). Release builds refuse
//! the variable, so no production process can carry a fault by mistake.
//! Every point fires once: the retry that follows is the normal path.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::config::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Fail,
    Pause(Duration),
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
                Some((point, ms)) => {
                    let ms: u64 = ms.parse().map_err(|_| {
                        ConfigError::new(
                            Self::VAR,
                            format!("{item:?}: expected point:MILLISECONDS"),
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

    fn take(&self, point: &str, want_pause: bool) -> Option<Fault> {
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        match armed.get(point) {
            Some(Fault::Pause(_)) if want_pause => armed.remove(point),
            Some(Fault::Fail) if !want_pause => armed.remove(point),
            _ => None,
        }
    }

    /// True the first time a failure armed at `point` is reached.
    pub fn fail(&self, point: &str) -> bool {
        if self.take(point, false).is_some() {
            tracing::warn!(point, "fault point: failing");
            return true;
        }
        false
    }

    /// Sleeps the first time a pause armed at `point` is reached.
    pub async fn pause(&self, point: &str) {
        if let Some(Fault::Pause(duration)) = self.take(point, true) {
            tracing::warn!(point, ?duration, "fault point: pausing");
            tokio::time::sleep(duration).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn points_fire_once() {
        let faults = Faults::parse(Some("a, b:5")).unwrap();
        assert!(!faults.fail("b"), "a pause is not a failure");
        assert!(faults.fail("a"));
        assert!(!faults.fail("a"));
        let started = std::time::Instant::now();
        faults.pause("b").await;
        assert!(started.elapsed() >= Duration::from_millis(5));
        assert!(!faults.fail("c"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        assert_eq!(Faults::parse(Some("a:x")).unwrap_err().var, Faults::VAR);
        assert_eq!(Faults::parse(Some("A")).unwrap_err().var, Faults::VAR);
        assert!(Faults::parse(None).is_ok());
        assert!(Faults::parse(Some("")).is_ok());
    }
}
