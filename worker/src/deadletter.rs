//! Dead letters: queue messages that can never be processed (they do not
//! decode) are copied, with the reason, to the `<PREFIX>_DEADLETTER` stream
//! before the partition's cursor moves past them, so they do not block their
//! partition and are never lost. The stream refuses new dead letters when
//! full (`discard=new`, `CHECKLINE_DEAD_LETTER_MAX_BYTES`) rather than drop
//! old ones; the partition then waits at the message, retrying, until ops
//! make room. Transient failures are retried instead and never end up here.
//!
//! This module writes them and declares the stream; reading and replaying
//! them is `checkline_shared::deadletter`, shared with the API. Ops list,
//! inspect and replay them with `checkline-worker dead-letters` or the API's
//! `/v1/admin/dead-letters`.

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, stream};
use checkline_shared::deadletter::{DeadLetterError, ORIGINAL_SEQUENCE, ORIGINAL_SUBJECT, REASON};
use checkline_shared::partition::Partition;
use checkline_shared::queue;
use checkline_shared::subjects::Subjects;

fn err(e: impl std::fmt::Display) -> DeadLetterError {
    DeadLetterError::Stream(e.to_string())
}

/// Creates the dead-letter stream if missing, holding at most `max_bytes`
/// on `replicas` servers.
pub async fn ensure_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    max_bytes: i64,
    replicas: usize,
) -> Result<stream::Stream, DeadLetterError> {
    let config = stream::Config {
        name: subjects.dead_letter_stream(),
        description: Some("checkline queue messages that could not be processed".into()),
        subjects: vec![subjects.dead_letters_all()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        // Full means refuse, never drop: a refused dead letter keeps its
        // partition waiting at it; a dropped one would be lost.
        discard: stream::DiscardPolicy::New,
        max_bytes,
        // A dead letter is an accepted order that could not be decided: it
        // is kept on as many servers as the queue it came from.
        num_replicas: replicas,
        ..Default::default()
    };
    match js.create_stream(config.clone()).await {
        Ok(stream) => Ok(stream),
        Err(_) => {
            // It exists: it keeps its messages and takes the current limits
            // (streams made before dropped their oldest letters when full).
            js.update_stream(config.clone()).await.map_err(|e| {
                DeadLetterError::Stream(format!("{e}{}", queue::replicas_hint(replicas)))
            })?;
            js.get_stream(&config.name).await.map_err(err)
        }
    }
}

/// Copies a message to the dead-letter stream and waits for the
/// acknowledgement, for at most `limit`. Deduplicated on the original stream
/// sequence, so a replayed batch does not dead-letter the same message twice.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    js: &jetstream::Context,
    subjects: &Subjects,
    partition: Partition,
    original_subject: &str,
    original_sequence: u64,
    payload: bytes::Bytes,
    reason: &str,
    limit: std::time::Duration,
) -> Result<(), DeadLetterError> {
    let mut headers = HeaderMap::new();
    headers.insert(REASON, reason);
    headers.insert(ORIGINAL_SUBJECT, original_subject);
    headers.insert(ORIGINAL_SEQUENCE, original_sequence.to_string().as_str());
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{}:{original_sequence}", subjects.stream_name()).as_str(),
    );
    let stored = async {
        js.publish_with_headers(subjects.dead_letter_subject(partition), headers, payload)
            .await
            .map_err(err)?
            .await
            .map_err(err)
    };
    tokio::time::timeout(limit, stored)
        .await
        .map_err(|_| DeadLetterError::Stream(format!("no acknowledgement within {limit:?}")))??;
    Ok(())
}
