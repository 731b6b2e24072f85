//! Logging: `tracing` to stderr, human-readable or JSON lines.

use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, Env};

/// Installs the global subscriber. `CHECKLINE_LOG` is an `EnvFilter`
/// directive (default `info`); `CHECKLINE_LOG_FORMAT` is `text` or `json`.
pub fn init(env: &Env) -> Result<(), ConfigError> {
    let filter = EnvFilter::try_new(env.string("CHECKLINE_LOG", "info"))
        .map_err(|e| ConfigError::new("CHECKLINE_LOG", e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match env.string("CHECKLINE_LOG_FORMAT", "text").as_str() {
        "text" => builder.try_init(),
        "json" => builder.json().flatten_event(true).try_init(),
        other => {
            return Err(ConfigError::new(
                "CHECKLINE_LOG_FORMAT",
                format!("expected text or json, got {other:?}"),
            ))
        }
    };
    // Already installed (tests build several apps in one process): keep it.
    let _ = result;
    Ok(())
}
