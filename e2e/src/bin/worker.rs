//! The worker, as the end-to-end tests start it in a process of its own
//! (crash windows, pauses, scaling). Cargo hands an integration test only
//! its own package's binaries (`CARGO_BIN_EXE_*`), so this package builds
//! the worker's command line once more: the same call as
//! `worker/src/main.rs`, the same program.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    checkline_worker::cli::main().await
}
