//! `checkline-worker`: decides queued orders until SIGTERM or Ctrl-C.

use checkline_shared::config::Env;
use checkline_worker::WorkerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::from_process();
    checkline_shared::telemetry::init(&env)?;
    let config = WorkerConfig::from_env(&env)?;
    checkline_worker::run(config, checkline_shared::shutdown::signal()).await?;
    Ok(())
}
