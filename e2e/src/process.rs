//! Workers as real processes: the `checkline-worker` binary, started with a
//! test app's settings, signalled and killed like an operator would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::TestApp;

/// The `checkline-worker` binary of this workspace, built once per test run
/// with the profile the tests were built with. Cargo hands an integration
/// test only its own package's binaries (`CARGO_BIN_EXE_*`), so the harness
/// asks cargo for the worker's; when it is up to date that takes a moment.
pub fn worker_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let mut build = std::process::Command::new(env!("CARGO"));
        // Without the variables cargo set for this test (the package's name,
        // version, manifest): build scripts that watch them would otherwise
        // see them change, and every build after this one start over.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || ["CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE", "OUT_DIR"].contains(&&*name)
            {
                build.env_remove(&*name);
            }
        }
        build
            .args(["build", "--quiet", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
            // With this package selected too, features resolve as for the
            // tests, so the libraries already built are reused.
            .args(["-p", "checkline-worker", "-p", "checkline-e2e"])
            .args(["--bin", "checkline-worker"]);
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "cargo build of checkline-worker failed");
        // This test binary is target/<profile>/deps/<name>; the worker is
        // target/<profile>/checkline-worker.
        let exe = std::env::current_exe().expect("the test binary's path");
        exe.parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .join("checkline-worker")
    })
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
