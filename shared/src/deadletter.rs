//! Reading and replaying dead letters: queue messages that could never be
//! processed, which the worker copied, with the reason, to the
//! `<PREFIX>_DEADLETTER` stream before its partition moved past them (the
//! worker's `deadletter` module writes them and declares the stream). Ops
//! list and replay them with `checkline-worker dead-letters` and the API's
//! `/v1/admin/dead-letters`, both through this module.
//!
//! Listing reads the stream with "next message at or after sequence N"
//! requests, so one call costs one request per letter returned (plus one),
//! however many deleted (replayed) sequences lie between them.
//!
//! A replay publishes the letter again to its original subject (through
//! the [`Publisher`], like every queue write), then deletes it. A replay
//! that fails between the two (the process dies, the delete times out)
//! leaves the letter in place, and retrying it publishes the same payload
//! twice. That is harmless: the copy carries a
//! `Nats-Msg-Id` derived from the letter, so the queue stream drops a
//! second copy inside its duplicate window; beyond the window, the worker
//! applies every queue entry once by the state of its row (a decided
//! order, an applied restock or return, a line past its state is skipped),
//! and a message that still does not decode is only dead-lettered again.

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self, ErrorCode};
use chrono::{DateTime, Utc};

use crate::partition::Partition;
use crate::queue::{self, Publisher};
use crate::subjects::Subjects;

/// Header: why the message could not be processed.
pub const REASON: &str = "Checkline-Reason";
/// Header: the queue subject the message was read from.
pub const ORIGINAL_SUBJECT: &str = "Checkline-Original-Subject";
/// Header: the message's sequence in the queue stream.
pub const ORIGINAL_SEQUENCE: &str = "Checkline-Original-Sequence";

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// NATS or the stream failed; the call may be retried.
    #[error("dead-letter stream: {0}")]
    Stream(String),
    /// No dead letter is stored at this sequence (never was, or replayed).
    #[error("no dead letter at sequence {0}")]
    NotFound(u64),
    /// The letter does not name a queue subject of this deployment, so
    /// there is nowhere to publish it back to.
    #[error("dead letter {sequence} cannot be replayed: {why}")]
    NotReplayable { sequence: u64, why: String },
}

fn stream_error(e: impl std::fmt::Display) -> DeadLetterError {
    DeadLetterError::Stream(e.to_string())
}

/// One dead letter, as ops see it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream (what `get` and `replay` take).
    pub sequence: u64,
    pub reason: String,
    /// Empty when the header is missing.
    pub original_subject: String,
    pub original_sequence: Option<u64>,
    /// The partition of the original subject, when it is a queue subject
    /// of this deployment.
    pub partition: Option<Partition>,
    /// When the dead-letter stream stored it.
    pub stored_at: DateTime<Utc>,
    pub payload: bytes::Bytes,
}

impl DeadLetter {
    fn from_message(message: StreamMessage, subjects: &Subjects) -> Self {
        let value = |name: &str| {
            message
                .headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        let original_subject = value(ORIGINAL_SUBJECT);
        Self {
            sequence: message.sequence,
            reason: value(REASON),
            original_sequence: value(ORIGINAL_SEQUENCE).parse().ok(),
            partition: subjects
                .parse_queue(&original_subject)
                .map(|(partition, _)| partition),
            original_subject,
            stored_at: queue::utc(message.time),
            payload: message.payload,
        }
    }
}

/// The dead-letter stream, or `None` while it does not exist (no worker
/// has started yet): then there are no dead letters.
pub async fn open(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<Option<Stream>, DeadLetterError> {
    match js.get_stream(subjects.dead_letter_stream()).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(e) => Err(stream_error(e)),
    }
}

/// Reads the dead letter at `sequence`.
pub async fn get(
    stream: &Stream,
    subjects: &Subjects,
    sequence: u64,
) -> Result<DeadLetter, DeadLetterError> {
    match stream.get_raw_message(sequence).await {
        Ok(message) => Ok(DeadLetter::from_message(message, subjects)),
        Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => {
            Err(DeadLetterError::NotFound(sequence))
        }
        Err(e) => Err(stream_error(e)),
    }
}

/// Some of the dead letters, and how many the stream holds.
#[derive(Debug)]
pub struct Listing {
    /// The oldest ones, oldest first.
    pub letters: Vec<DeadLetter>,
    /// Messages in the stream when the listing began.
    pub total: u64,
}

/// The oldest `limit` dead letters, oldest first. Costs at most `limit + 1`
/// requests to NATS (see the module docs).
pub async fn list(
    stream: &mut Stream,
    subjects: &Subjects,
    limit: usize,
) -> Result<Listing, DeadLetterError> {
    let state = stream.info().await.map_err(stream_error)?.state.clone();
    let mut letters = Vec::new();
    let mut next = state.first_sequence.max(1);
    let filter = subjects.dead_letters_all();
    while letters.len() < limit && state.messages > 0 {
        match stream.get_first_raw_message_by_subject(&filter, next).await {
            Ok(message) => {
                next = message.sequence.saturating_add(1);
                letters.push(DeadLetter::from_message(message, subjects));
            }
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => break,
            Err(e) => return Err(stream_error(e)),
        }
    }
    Ok(Listing {
        letters,
        total: state.messages,
    })
}

/// The `Nats-Msg-Id` of a letter's replayed copy: the same for every
/// attempt at replaying this letter, and different for any other letter,
/// even one at the same sequence of a stream created anew (the store time
/// differs).
fn replay_message_id(stream_name: &str, letter: &DeadLetter) -> String {
    format!(
        "{stream_name}:{}:{}:replay",
        letter.sequence,
        letter
            .stored_at
            .timestamp_nanos_opt()
            .unwrap_or(letter.stored_at.timestamp_micros())
    )
}

/// A dead letter published again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Where it went: its original subject.
    pub subject: String,
    /// Its new sequence in the queue stream (an earlier copy's, if the
    /// queue dropped this one as a duplicate).
    pub queue_sequence: u64,
}

/// Publishes a dead letter back to its original subject (for instance once
/// a worker that understands it is deployed), where it joins the end of its
/// product's queue, and removes it. Only queue subjects of this deployment
/// are published to. See the module docs for a replay interrupted
/// half-way.
pub async fn replay(
    publisher: &Publisher,
    stream: &Stream,
    subjects: &Subjects,
    sequence: u64,
) -> Result<Replayed, DeadLetterError> {
    let letter = get(stream, subjects, sequence).await?;
    if subjects.parse_queue(&letter.original_subject).is_none() {
        return Err(DeadLetterError::NotReplayable {
            sequence,
            why: format!(
                "its original subject {:?} is not a queue subject of prefix {:?}",
                letter.original_subject,
                subjects.prefix()
            ),
        });
    }
    let message_id = replay_message_id(&subjects.dead_letter_stream(), &letter);
    let published = publisher
        .publish_raw(&letter.original_subject, letter.payload, message_id)
        .await
        .map_err(stream_error)?;
    let deleted = stream.delete_message(sequence).await;
    if !matches!(deleted, Ok(true)) {
        // Gone meanwhile: another replay of the same letter removed it.
        if let Err(DeadLetterError::NotFound(_)) = get(stream, subjects, sequence).await {
            return Err(DeadLetterError::NotFound(sequence));
        }
        return Err(match deleted {
            Err(e) => stream_error(e),
            Ok(_) => DeadLetterError::Stream(format!(
                "dead letter {sequence} was published again but not removed"
            )),
        });
    }
    Ok(Replayed {
        subject: letter.original_subject,
        queue_sequence: published.sequence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(sequence: u64, stored_at: DateTime<Utc>) -> DeadLetter {
        DeadLetter {
            sequence,
            reason: String::new(),
            original_subject: String::new(),
            original_sequence: None,
            partition: None,
            stored_at,
            payload: bytes::Bytes::new(),
        }
    }

    #[test]
    fn a_replayed_copy_is_named_after_its_letter() {
        let at = DateTime::from_timestamp_nanos(1_700_000_000_123_456_789);
        let one = replay_message_id("X_DEADLETTER", &letter(7, at));
        assert_eq!(one, "X_DEADLETTER:7:1700000000123456789:replay");
        // Every attempt at the same letter: the same id.
        assert_eq!(one, replay_message_id("X_DEADLETTER", &letter(7, at)));
        // Another letter, or the same sequence stored at another time: not.
        assert_ne!(one, replay_message_id("X_DEADLETTER", &letter(8, at)));
        let later = DateTime::from_timestamp_nanos(1_700_000_001_000_000_000);
        assert_ne!(one, replay_message_id("X_DEADLETTER", &letter(7, later)));
    }
}
