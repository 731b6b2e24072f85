//! `GET /v1/admin/dead-letters` and `POST /v1/admin/dead-letters/{sequence}/replay`:
//! the queue messages that could never be processed, for the operations
//! console. They are read and replayed by `checkline_shared::deadletter`,
//! the same code as `checkline-worker dead-letters`; the module's docs say
//! why listing is bounded and why a replay interrupted half-way (published,
//! not removed) is harmless when retried.
//!
//! The API does not declare the dead-letter stream (the worker does, with
//! its size limit): before a worker first started there is no stream, and
//! so no dead letter.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use checkline_shared::deadletter::{self, DeadLetter, DeadLetterError};
use checkline_shared::partition::Partition;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract;
use crate::state::AppState;

/// The dead letters' routes, with their OpenAPI operations.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(replay))
}

/// Bytes of a payload shown in a listing; `payload_bytes` gives the size.
pub const PAYLOAD_SHOWN_MAX: usize = 4096;

/// One dead letter.
#[derive(Debug, Serialize, ToSchema)]
#[schema(
    as = DeadLetter,
    examples(json!({"sequence": 17, "reason": "unknown variant `mystery`, expected one of `orders`, `order`, `restock`, `line`, `settle`, `return` at line 1 column 17",
        "original_subject": "checkline.orders.p3.0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d",
        "original_sequence": 48211, "partition": 3, "stored_at": "2026-11-22T10:00:09.310Z",
        "payload": "{\"type\":\"mystery\"}", "payload_bytes": 18}))
)]
pub struct DeadLetterView {
    /// Its sequence in the dead-letter stream: what `replay` takes.
    #[schema(minimum = 1)]
    sequence: u64,
    /// Why it could not be processed.
    reason: String,
    /// The queue subject it was read from (and is replayed to).
    original_subject: String,
    /// Its sequence in the queue stream; null if not recorded.
    original_sequence: Option<u64>,
    /// The queue partition, read from `original_subject`; null if that is
    /// not a queue subject of this deployment.
    #[schema(value_type = Option<i32>, minimum = 0)]
    partition: Option<Partition>,
    /// When the dead-letter stream stored it.
    stored_at: DateTime<Utc>,
    /// The message as text (invalid UTF-8 replaced by U+FFFD), at most its
    /// first 4096 bytes.
    payload: String,
    /// The size of the whole message, in bytes.
    #[schema(minimum = 0)]
    payload_bytes: usize,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(letter: DeadLetter) -> Self {
        Self {
            sequence: letter.sequence,
            reason: letter.reason,
            original_subject: letter.original_subject,
            original_sequence: letter.original_sequence,
            partition: letter.partition,
            stored_at: letter.stored_at,
            payload: shown(&letter.payload, PAYLOAD_SHOWN_MAX),
            payload_bytes: letter.payload.len(),
        }
    }
}

/// The first `max` bytes of `payload` as text. A cut that would split a
/// UTF-8 character moves back to its start (at most 3 bytes), so that a
/// long text payload does not end in a replacement character.
fn shown(payload: &[u8], max: usize) -> String {
    let mut end = payload.len().min(max);
    let floor = end.saturating_sub(3);
    while end < payload.len() && end > floor && payload[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

/// The oldest dead letters.
#[derive(Serialize, ToSchema)]
#[schema(
    as = DeadLetterList,
    examples(json!({"items": [{"sequence": 17, "reason": "unknown variant `mystery`, expected one of `orders`, `order`, `restock`, `line`, `settle`, `return` at line 1 column 17",
        "original_subject": "checkline.orders.p3.0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d",
        "original_sequence": 48211, "partition": 3, "stored_at": "2026-11-22T10:00:09.310Z",
        "payload": "{\"type\":\"mystery\"}", "payload_bytes": 18}], "total": 1}))
)]
pub struct DeadLetterList {
    /// Oldest first, at most `limit`.
    items: Vec<DeadLetterView>,
    /// Dead letters in the stream (`items` may show fewer).
    #[schema(minimum = 0)]
    total: u64,
}

/// A dead letter published again.
#[derive(Serialize, ToSchema)]
#[schema(
    as = DeadLetterReplay,
    examples(json!({"sequence": 17, "subject": "checkline.orders.p3.0b7c1e52-3f0a-4c8e-9d1a-5e2f6a7b8c9d"}))
)]
pub struct Replayed {
    /// The dead letter's sequence (as in the path); it is removed.
    #[schema(minimum = 1)]
    sequence: u64,
    /// The queue subject it was published to: its original subject.
    subject: String,
}

/// A JetStream context for the call, or `503` at once while NATS is
/// disconnected (rather than waiting out a request timeout).
fn jetstream(state: &AppState) -> Result<async_nats::jetstream::Context, ApiError> {
    if state.client.connection_state() != async_nats::connection::State::Connected {
        return Err(unavailable());
    }
    let mut js = async_nats::jetstream::new(state.client.clone());
    js.set_timeout(state.config.common.publish_timeout);
    Ok(js)
}

fn unavailable() -> ApiError {
    ApiError::Unavailable("the queue is unavailable; retry later".into())
}

/// The problem a dead-letter failure answers.
fn problem(err: DeadLetterError) -> ApiError {
    match err {
        DeadLetterError::NotFound(_) => ApiError::DeadLetterNotFound,
        DeadLetterError::Stream(cause) => {
            tracing::warn!(error = %cause, "dead-letter stream unavailable");
            unavailable()
        }
        // Only checkline writes the stream, always with a queue subject.
        err @ DeadLetterError::NotReplayable { .. } => ApiError::internal(err),
    }
}

/// A path sequence: a positive integer, digits only.
fn parse_sequence(raw: &str) -> Result<u64, ApiError> {
    Some(raw)
        .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|r| r.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .ok_or_else(|| ApiError::InvalidRequest("the sequence must be a positive integer".into()))
}

#[utoipa::path(
    get,
    path = "/v1/admin/dead-letters",
    operation_id = "listDeadLetters",
    tag = "admin",
    summary = "List dead letters",
    description = "Requires the `admin` role. The oldest queue messages that could never be processed (they do not decode), which the workers set aside so that their partitions moved on. Replay one once a worker that understands it is deployed.",
    security(("bearerAuth" = [])),
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "How many to show, oldest first (default 50); anything else is `400 invalid_request`."),
    ),
    responses(
        (status = 200, description = "The oldest dead letters and how many there are.", body = DeadLetterList),
        (status = 400, response = crate::openapi::InvalidRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<DeadLetterList>, ApiError> {
    caller.require_admin()?;
    let limit = usize::try_from(extract::limit(&query)?).unwrap_or(0);
    let js = jetstream(&state)?;
    let Some(mut stream) = deadletter::open(&js, &state.subjects)
        .await
        .map_err(problem)?
    else {
        return Ok(Json(DeadLetterList {
            items: Vec::new(),
            total: 0,
        }));
    };
    let listing = deadletter::list(&mut stream, &state.subjects, limit)
        .await
        .map_err(problem)?;
    Ok(Json(DeadLetterList {
        items: listing.letters.into_iter().map(Into::into).collect(),
        total: listing.total,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/admin/dead-letters/{sequence}/replay",
    operation_id = "replayDeadLetter",
    tag = "admin",
    summary = "Replay a dead letter",
    description = "Requires the `admin` role; no body. Publishes the dead letter again to its original subject, where it joins the end of its product's queue, then removes it. A message that still cannot be processed is dead-lettered again, under a new sequence. Retrying a replay whose answer was lost is harmless: if the letter was removed the retry answers `404`; if it was published but not removed, the copy is published again, and the queue drops it as a duplicate (same `Nats-Msg-Id`) or the worker skips it (every order, restock and line is applied once).",
    security(("bearerAuth" = [])),
    params(("sequence" = u64, Path, minimum = 1, description = "The dead letter's `sequence`; anything but a positive integer is `400 invalid_request`.", example = 17)),
    responses(
        (status = 200, description = "Published again and removed.", body = Replayed),
        (status = 400, response = crate::openapi::InvalidSequence),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::DeadLetterNotFound),
    )
)]
pub async fn replay(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(sequence): Path<String>,
) -> Result<Json<Replayed>, ApiError> {
    caller.require_admin()?;
    let sequence = parse_sequence(&sequence)?;
    let js = jetstream(&state)?;
    let stream = deadletter::open(&js, &state.subjects)
        .await
        .map_err(problem)?
        .ok_or(ApiError::DeadLetterNotFound)?;
    let replayed = deadletter::replay(&state.publisher, &stream, &state.subjects, sequence)
        .await
        .map_err(problem)?;
    tracing::info!(
        sequence,
        subject = %replayed.subject,
        queue_sequence = replayed.queue_sequence,
        by = caller.subject.as_str(),
        "dead letter replayed"
    );
    Ok(Json(Replayed {
        sequence,
        subject: replayed.subject,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProblemCode;

    #[test]
    fn sequences_are_positive_integers() {
        assert_eq!(parse_sequence("17").unwrap(), 17);
        assert_eq!(parse_sequence(&u64::MAX.to_string()).unwrap(), u64::MAX);
        for bad in [
            "0",
            "",
            "-1",
            "+1",
            "1.0",
            "x",
            " 1",
            "18446744073709551616",
        ] {
            assert_eq!(
                parse_sequence(bad).unwrap_err().code(),
                ProblemCode::InvalidRequest,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn payloads_are_cut_at_a_character() {
        assert_eq!(shown(b"abc", 10), "abc");
        assert_eq!(shown(b"abcdef", 4), "abcd");
        // "é" is two bytes: a cut inside it moves before it.
        assert_eq!(shown("abé".as_bytes(), 3), "ab");
        assert_eq!(shown("abé".as_bytes(), 4), "abé");
        // Binary garbage is shown lossily, cut at most 3 bytes early.
        assert_eq!(shown(&[0xFF, 0x80, 0x80, 0x80, 0x80], 4), "\u{FFFD}");
        assert_eq!(shown(&[0xFF, 0xFE], 1), "\u{FFFD}");
        let long = "x".repeat(PAYLOAD_SHOWN_MAX + 10);
        assert_eq!(
            shown(long.as_bytes(), PAYLOAD_SHOWN_MAX).len(),
            PAYLOAD_SHOWN_MAX
        );
    }

    #[test]
    fn failures_are_problems() {
        assert_eq!(
            problem(DeadLetterError::NotFound(3)).code(),
            ProblemCode::DeadLetterNotFound
        );
        let down = problem(DeadLetterError::Stream("timed out".into()));
        assert_eq!(down.code(), ProblemCode::Unavailable);
        assert!(!down.to_string().contains("timed out"), "{down}");
        let odd = problem(DeadLetterError::NotReplayable {
            sequence: 3,
            why: "x".into(),
        });
        assert_eq!(odd.code(), ProblemCode::Internal);
    }
}
