//! Workers as real processes: the worker's program, started with a test
//! app's settings, signalled and killed like an operator would.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use checkline_e2e::TestApp;

/// The worker's program (`src/bin/worker.rs`), built by cargo with the
/// tests.
pub fn worker_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_checkline-e2e-worker"))
}

/// Starts `checkline-worker` as a process with the app's worker settings
/// and `extra` on top; it is killed when the handle is dropped.
pub fn spawn_worker(app: &TestApp, id: &str, extra: &[(&str, &str)]) -> Child {
    Command::new(worker_binary())
        .envs(app.worker_vars(id))
        .envs(extra.iter().copied())
        .env("CHECKLINE_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("worker binary starts")
}

/// Sends the signal `name` (`KILL`, `STOP`, `CONT`, `TERM`) to the process.
pub fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Each partition's owner, from PostgreSQL.
pub async fn owners(app: &TestApp) -> BTreeMap<i32, Option<String>> {
    sqlx::query_as::<_, (i32, Option<String>)>(
        "SELECT partition, owner FROM partition_cursors ORDER BY partition",
    )
    .fetch_all(&app.env.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// Waits until the owners satisfy `done`; returns how long it took.
pub async fn wait_owners(
    app: &TestApp,
    limit: Duration,
    done: impl Fn(&BTreeMap<i32, Option<String>>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let current = owners(app).await;
        if done(&current) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "ownership did not settle: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
