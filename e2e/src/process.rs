//! Workers as real processes: the `checkline-worker` binary, started with a
//! test app's settings, signalled and killed like an operator would.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The `checkline-worker` binary of this workspace, built once per test run
/// with the profile the tests were built with. Cargo hands an integration
/// test only its own package's binaries (`CARGO_BIN_EXE_*`), so the harness
/// asks cargo for the worker's; when it is up to date that takes a moment.
pub fn worker_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let mut build = std::process::Command::new(env!("CARGO"));
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
