//! `checkline-worker`: decides queued orders until SIGTERM or Ctrl-C; see
//! [`checkline_worker::cli`] for its commands.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    checkline_worker::cli::main().await
}
