//! Fault points for the fault tests. Release builds ignore them all.
//!
//! - `CHECKLINE_CRASH_AT=<point>` makes a debug build of the worker abort
//!   (as a SIGKILL would) the first time it reaches that point.
//! - `CHECKLINE_PAUSE_AT=<point>` makes it stop itself with SIGSTOP the
//!   first time (as a VM freeze or a long stall would); SIGCONT resumes it.
//! - `CHECKLINE_HANG_AT=<point>` makes the task that first reaches the point
//!   wait forever (as an await on a peer that never answers would), while the
//!   rest of the process carries on.
//!
//! Points, in the order a batch passes them:
//! - `mid_batch`: decisions written inside the transaction, not committed;
//! - `before_commit`: everything written, commit not yet sent;
//! - `after_commit`: committed, the cursor not yet advanced in memory and no
//!   result published (the moment a queue ack would be lost);
//! - `mid_publish`: some result events published, not all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

fn setting(var: &'static str, cell: &'static OnceLock<Option<String>>) -> Option<&'static str> {
    cell.get_or_init(|| {
        if cfg!(debug_assertions) {
            std::env::var(var).ok().filter(|p| !p.is_empty())
        } else {
            None
        }
    })
    .as_deref()
}

/// True the first time only, so that a resumed process runs normally.
fn first(fired: &AtomicBool) -> bool {
    !fired.swap(true, Ordering::Relaxed)
}

/// Aborts the process if `point` is the configured crash point, or stops it
/// if it is the configured pause point.
pub fn at(point: &str) {
    static CRASH: OnceLock<Option<String>> = OnceLock::new();
    static PAUSE: OnceLock<Option<String>> = OnceLock::new();
    static PAUSED: AtomicBool = AtomicBool::new(false);
    if setting("CHECKLINE_CRASH_AT", &CRASH) == Some(point) {
        eprintln!("crash point {point} reached: aborting");
        std::process::abort();
    }
    if setting("CHECKLINE_PAUSE_AT", &PAUSE) == Some(point) && first(&PAUSED) {
        eprintln!("pause point {point} reached: stopping");
        // SIGSTOP cannot be caught: every thread stops until SIGCONT, and
        // `kill` returns only then.
        let _ = std::process::Command::new("kill")
            .args(["-STOP", &std::process::id().to_string()])
            .status();
    }
}

/// Never returns if `point` is the configured hang point (the first time).
pub async fn hang(point: &str) {
    static HANG: OnceLock<Option<String>> = OnceLock::new();
    static HUNG: AtomicBool = AtomicBool::new(false);
    if setting("CHECKLINE_HANG_AT", &HANG) == Some(point) && first(&HUNG) {
        eprintln!("hang point {point} reached: waiting forever");
        std::future::pending::<()>().await;
    }
}
