//! `checkline-api`: serves the HTTP API until SIGTERM or Ctrl-C.

use checkline_api::{ApiConfig, Application};
use checkline_shared::config::Env;

/// Every request allocates and frees a few dozen small buffers (headers,
/// bodies, futures) across two worker threads; glibc's allocator spent about
/// a fifth of the API's CPU on them (BENCHMARKS.md, "The API's CPU per
/// order").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
