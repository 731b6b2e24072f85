//! `checkline-api`: serves the HTTP API until SIGTERM or Ctrl-C.

use checkline_api::{ApiConfig, Application};
use checkline_shared::config::Env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::from_process();
    checkline_shared::telemetry::init(&env)?;
    let config = ApiConfig::from_env(&env)?;
    let app = Application::build(config).await?;
    app.run_until_stopped(checkline_shared::shutdown::signal())
        .await?;
    Ok(())
}
