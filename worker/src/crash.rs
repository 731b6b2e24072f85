//! Crash points for the fault tests: `CHECKLINE_CRASH_AT=<point>` makes a
//! debug build of the worker abort (as a SIGKILL would) the first time it
//! reaches that point. Release builds ignore it.
//!
//! Points, in the order a batch passes them:
//! - `mid_batch`: decisions written inside the transaction, not committed;
//! - `before_commit`: everything written, commit not yet sent;
//! - `after_commit`: committed, the cursor not yet advanced in memory and no
//!   result published (the moment a queue ack would be lost);
//! - `mid_publish`: some result events published, not all.

use std::sync::OnceLock;

fn configured() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| {
            if cfg!(debug_assertions) {
                std::env::var("CHECKLINE_CRASH_AT")
                    .ok()
                    .filter(|p| !p.is_empty())
            } else {
                None
            }
        })
        .as_deref()
}

/// Aborts the process if `point` is the configured crash point.
pub fn at(point: &str) {
    if configured() == Some(point) {
        eprintln!("crash point {point} reached: aborting");
        std::process::abort();
    }
}
