//! One look at the queue stream per interval for the whole worker, so that
//! every partition loop learns cheaply when the stream is gone or was
//! created anew under the same name (an ordered consumer would otherwise
//! carry on quietly on the new one, and a purge by the old cursor would hit
//! it). The look is a JetStream API request, which can take long under a
//! heavy publish load: it runs here, beside the loops, never inside them.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::GetStreamErrorKind, ErrorCode};
use checkline_shared::queue;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// What the last look saw.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// The stream's creation time, or `None` when it does not exist.
    pub created: Option<DateTime<Utc>>,
    pub at: Instant,
}

/// Starts looking every `interval` (each look bounded by `timeout`); ends
/// when every receiver is gone. A look NATS does not answer changes nothing.
pub fn spawn(
    js: jetstream::Context,
    name: String,
    interval: Duration,
    timeout: Duration,
) -> watch::Receiver<Option<Seen>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if tx.is_closed() {
                return;
            }
            let created = match tokio::time::timeout(timeout, js.get_stream(&name)).await {
                Ok(Ok(stream)) => Some(queue::utc(stream.cached_info().created)),
                Ok(Err(err))
                    if matches!(
                        err.kind(),
                        GetStreamErrorKind::JetStream(e)
                            if e.error_code() == ErrorCode::STREAM_NOT_FOUND
                    ) =>
                {
                    None
                }
                _ => continue,
            };
            let _ = tx.send(Some(Seen {
                created,
                at: Instant::now(),
            }));
        }
    });
    rx
}
