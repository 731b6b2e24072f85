//! NATS: the connection and the JetStream stream that holds every partition's
//! queue. The stream is declared here, once, and created or updated
//! idempotently by both binaries at start-up.

use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{self, HeaderMap};
use async_nats::jetstream::{self, stream};

use crate::config::CommonConfig;
use crate::faults::Faults;
use crate::messages::{QueueMessage, REQUEST_ID_HEADER};
use crate::partition::Partition;
use crate::subjects::Subjects;

/// Oldest server we accept: `sync_interval`, per-subject purge filters and
/// atomic batches are needed, and Debian's 2.9 lacks them.
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 12);

#[derive(Debug, thiserror::Error)]
pub enum QueueSetupError {
    #[error("CHECKLINE_NATS_URL: cannot connect: {0}")]
    Connect(#[source] async_nats::ConnectError),
    #[error("CHECKLINE_NATS_URL: nats-server {found} is too old, {}.{} or newer is required", MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1)]
    ServerTooOld { found: String },
    #[error("cannot create stream {name}: {source}{}", replicas_hint(*.replicas))]
    Stream {
        name: String,
        replicas: usize,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
}

/// What to add to a refused stream or bucket when it asked for replicas: a
/// single server, or a cluster with fewer live servers, cannot place them.
pub fn replicas_hint(replicas: usize) -> String {
    if replicas > 1 {
        format!(" (CHECKLINE_STREAM_REPLICAS={replicas} needs a JetStream cluster with at least {replicas} servers up)")
    } else {
        String::new()
    }
}

/// Limits of the queue stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Bytes the stream may hold before publishes are refused (discard=new):
    /// refusing new orders is recoverable, dropping accepted ones is not.
    pub max_bytes: i64,
    /// Window in which JetStream drops a republished message with the same
    /// `Nats-Msg-Id`; the database is the guard beyond it.
    pub duplicate_window: Duration,
    /// Copies of every message, each on its own server (`CHECKLINE_STREAM_REPLICAS`).
    pub replicas: usize,
}

impl StreamLimits {
    pub fn from_config(config: &CommonConfig) -> Self {
        Self {
            max_bytes: config.stream_max_bytes,
            duplicate_window: config.duplicate_window,
            replicas: config.stream_replicas,
        }
    }
}

/// Connects to NATS, retrying while it is not up yet (bounded by the start-up
/// timeout) and reconnecting forever afterwards.
///
/// Any of `CHECKLINE_NATS_URL`'s servers will do. The client also takes the
/// servers a cluster announces, so one given server is enough: when it goes
/// away, the client reconnects to another member (and resubscribes), and the
/// requests in flight meanwhile time out like any other NATS outage.
pub async fn connect(
    config: &CommonConfig,
    client_name: &str,
) -> Result<async_nats::Client, QueueSetupError> {
    let deadline = tokio::time::Instant::now() + config.startup_timeout;
    let mut delay = Duration::from_millis(100);
    let client = loop {
        let attempt = async_nats::ConnectOptions::new()
            .name(client_name)
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None)
            .connect(config.nats_servers.clone())
            .await;
        match attempt {
            Ok(client) => break client,
            Err(err) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(error = %err, retry_in = ?delay, "nats not ready");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(err) => return Err(QueueSetupError::Connect(err)),
        }
    };
    let version = client.server_info().version;
    if !version_at_least(&version, MIN_SERVER_VERSION) {
        return Err(QueueSetupError::ServerTooOld { found: version });
    }
    Ok(client)
}

fn version_at_least(version: &str, (major, minor): (u64, u64)) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

/// The queue stream's definition.
pub fn stream_config(subjects: &Subjects, limits: StreamLimits) -> stream::Config {
    stream::Config {
        name: subjects.stream_name(),
        description: Some(
            "checkline order queue: one subject per product, grouped in partitions".into(),
        ),
        subjects: vec![subjects.orders_all()],
        storage: stream::StorageType::File,
        // Limits retention with no age limit: messages stay until the worker
        // that decided them purges them (see worker::partition). Work-queue
        // retention would tie deletion to acks, which the worker replaces with
        // a cursor in PostgreSQL.
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        max_bytes: limits.max_bytes,
        max_messages: -1,
        max_age: Duration::ZERO,
        duplicate_window: limits.duplicate_window,
        num_replicas: limits.replicas,
        // The accept path writes a batch of orders spanning many products
        // (one message per product) as one atomic batch: stored as one
        // write, acknowledged once, all or nothing (`Publisher::publish_atomic`).
        allow_atomic_publish: true,
        ..Default::default()
    }
}

/// Runs a start-up step against JetStream until it succeeds or `limit` has
/// passed, and then returns its last error.
///
/// A cluster answers some requests with a timeout or "unavailable" for a few
/// seconds: while it elects a leader, while it places a new stream's
/// replicas, or while several processes declare the same stream at once.
/// None of that should stop a binary that would have started a moment later.
pub async fn retry_at_startup<T, E, F, Fut>(
    limit: Duration,
    what: &str,
    mut step: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut delay = Duration::from_millis(100);
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(err) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(error = %err, retry_in = ?delay, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(err) => return Err(err),
        }
    }
}

/// JetStream's times (a message's store time, a stream's creation) as UTC.
pub fn utc(time: async_nats::datetime::DateTime) -> chrono::DateTime<chrono::Utc> {
    let nanos = i64::try_from(time.unix_timestamp_nanos()).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_nanos(nanos)
}

/// Creates the stream, or updates it to the current definition.
///
/// `first_sequence` is used only when the stream does not exist: a stream
/// created anew (NATS lost its store, an operator deleted it) continues the
/// sequence after the highest partition cursor ([`crate::db::next_queue_sequence`])
/// instead of starting over at 1, so queue positions stay comparable across
/// the loss and no cursor or purge can mistake a new message for an old
/// one. An existing stream keeps its own first sequence.
pub async fn ensure_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    limits: StreamLimits,
    first_sequence: u64,
) -> Result<stream::Stream, QueueSetupError> {
    let mut config = stream_config(subjects, limits);
    let name = config.name.clone();
    let stream_error = |source| QueueSetupError::Stream {
        name: name.clone(),
        replicas: limits.replicas,
        source,
    };
    match js.get_stream(&name).await {
        Ok(existing) => {
            config.first_sequence = existing.cached_info().config.first_sequence;
            // Create comes first: JetStream accepts a create with an
            // identical configuration, so only a changed definition costs an
            // update.
            if let Err(create_error) = js.create_stream(config.clone()).await {
                tracing::debug!(error = %create_error, stream = %name, "create refused; updating");
                js.update_stream(config).await.map_err(stream_error)?;
            }
        }
        Err(err)
            if matches!(
                err.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(e)
                    if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            config.first_sequence = Some(first_sequence).filter(|s| *s > 1);
            match js.create_stream(config).await {
                // Created anew after a loss, the stream continues the sequence.
                Ok(_) if first_sequence > 1 => {
                    tracing::warn!(stream = %name, first_sequence, "queue stream created anew")
                }
                Ok(_) => tracing::info!(stream = %name, "queue stream created"),
                // Another process may have created it meanwhile: take that;
                // if there is none, this refusal (no storage left, say) is
                // the reason to report.
                Err(create_error) => {
                    if js.get_stream(&name).await.is_err() {
                        return Err(stream_error(create_error));
                    }
                }
            }
        }
        Err(err) => {
            return Err(stream_error(
                jetstream::context::CreateStreamError::with_source(
                    jetstream::context::CreateStreamErrorKind::JetStreamUnavailable,
                    err,
                ),
            ))
        }
    }
    js.get_stream(&name).await.map_err(|e| {
        stream_error(jetstream::context::CreateStreamError::with_source(
            jetstream::context::CreateStreamErrorKind::JetStreamUnavailable,
            e,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comparison() {
        assert!(version_at_least("2.15.1", (2, 12)));
        assert!(version_at_least("2.12.0", (2, 12)));
        assert!(!version_at_least("2.9.10", (2, 12)));
        assert!(version_at_least("3.0.0-beta", (2, 12)));
        assert!(!version_at_least("garbage", (2, 12)));
    }
}

/// Why a queue publish did not get its acknowledgement.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publish not acknowledged within {0:?}")]
    Timeout(Duration),
    #[error("publish failed: {0}")]
    Failed(String),
}

/// A stored (or deduplicated) queue message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Its stream sequence (the earlier copy's, for a duplicate).
    pub sequence: u64,
    /// JetStream already held a message with this `Nats-Msg-Id` inside the
    /// duplicate window and dropped this one.
    pub duplicate: bool,
}

/// Every write to the queue goes through a `Publisher`: the API's accepted
/// orders and restocks, its background requeues, the worker's sweep of
/// stranded rows, and dead letters replayed. It names the subject (the
/// product's queue in its partition), sets `Nats-Msg-Id` and the request
/// id, and waits for JetStream's acknowledgement, which under
/// `sync_interval: always` means the message is on disk.
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    client: async_nats::Client,
    subjects: Subjects,
    timeout: Duration,
    batch_max: usize,
    faults: Arc<Faults>,
}

/// JetStream's own bound on an atomic batch.
pub const ATOMIC_BATCH_MAX: usize = 1_000;

impl Publisher {
    /// `timeout` bounds each publish, from send to acknowledgement
    /// (`CHECKLINE_PUBLISH_TIMEOUT_MS`). Atomic batches hold up to
    /// [`ATOMIC_BATCH_MAX`] messages and no fault point is armed; see
    /// [`Publisher::from_config`].
    pub fn new(js: jetstream::Context, subjects: Subjects, timeout: Duration) -> Self {
        Self {
            client: js.client(),
            js,
            subjects,
            timeout,
            batch_max: ATOMIC_BATCH_MAX,
            faults: Arc::default(),
        }
    }

    /// A publisher with the binary's settings: the publish timeout, the
    /// atomic batch size (`CHECKLINE_QUEUE_BATCH_MAX`) and the fault points.
    pub fn from_config(js: jetstream::Context, subjects: Subjects, config: &CommonConfig) -> Self {
        Self {
            batch_max: config.queue_batch_max.clamp(1, ATOMIC_BATCH_MAX),
            faults: config.faults.clone(),
            ..Self::new(js, subjects, config.publish_timeout)
        }
    }

    /// How long a publish may wait for its acknowledgement.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The most messages [`Publisher::publish_atomic`] takes at once.
    pub fn batch_max(&self) -> usize {
        self.batch_max
    }

    /// Publishes `message` to its product's queue in `partition`.
    /// `Nats-Msg-Id` is the message's own
    /// ([`QueueMessage::message_id`]), so a republish inside the duplicate
    /// window is dropped by the server; the caller decides what a duplicate
    /// means for it.
    pub async fn publish(
        &self,
        partition: Partition,
        message: &QueueMessage,
        request_id: Option<&str>,
    ) -> Result<Published, PublishError> {
        self.send(partition, message, message.message_id(), request_id)
            .await
    }

    /// Publishes `messages` (at most [`Publisher::batch_max`]), each to its
    /// product's queue, as one JetStream atomic batch: the server stages
    /// them, checks them all, and stores them together as one write with one
    /// acknowledgement, or stores none. A batch that cannot be stored whole
    /// (a message lost on the way, a duplicate `Nats-Msg-Id`, the stream
    /// full) is refused whole: [`PublishError::Failed`]. A timeout leaves it
    /// unknown, as for a single message. A lone message is published on its
    /// own (no staging needed).
    ///
    /// Every message but the last is sent without waiting (the server
    /// answers only the commit); they travel on one connection, in order,
    /// and the server refuses the commit if any is missing.
    pub async fn publish_atomic(
        &self,
        messages: &[(Partition, QueueMessage)],
        request_id: Option<&str>,
    ) -> Result<(), PublishError> {
        self.atomic(messages, None, request_id).await
    }

    /// [`Publisher::publish_atomic`] for copies of messages that cannot be
    /// in the queue any more (see [`Publisher::publish_copy`] for their
    /// ids): the lines of an order of several lines that the stranded
    /// sweep publishes again, together.
    pub async fn publish_atomic_copy(
        &self,
        messages: &[(Partition, QueueMessage)],
        copy: i64,
    ) -> Result<(), PublishError> {
        self.atomic(messages, Some(copy), None).await
    }

    async fn atomic(
        &self,
        messages: &[(Partition, QueueMessage)],
        copy: Option<i64>,
        request_id: Option<&str>,
    ) -> Result<(), PublishError> {
        let id_of = |message: &QueueMessage| match copy {
            Some(copy) => format!("{}.{copy}", message.message_id()),
            None => message.message_id(),
        };
        match messages {
            [] => Ok(()),
            [(partition, message)] => {
                let published = self
                    .send(*partition, message, id_of(message), request_id)
                    .await?;
                if published.duplicate {
                    return Err(PublishError::Failed(
                        "JetStream dropped the message as a duplicate".into(),
                    ));
                }
                Ok(())
            }
            _ if messages.len() > self.batch_max => Err(PublishError::Failed(format!(
                "{} messages exceed the atomic batch bound of {}",
                messages.len(),
                self.batch_max
            ))),
            [staged @ .., (last_partition, last)] => {
                let batch_id = uuid::Uuid::now_v7().simple().to_string();
                let attempt = async {
                    let gap = staged.len() >= 2 && self.faults.fail("queue_batch_gap");
                    for (i, (partition, message)) in staged.iter().enumerate() {
                        // Test only: one message of the middle lost on its way.
                        if gap && i == 1 {
                            continue;
                        }
                        let mut headers = message_headers(id_of(message), request_id);
                        batch_headers(&mut headers, &batch_id, i + 1);
                        self.client
                            .publish_with_headers(
                                self.subjects
                                    .product_queue(*partition, message.product_id()),
                                headers,
                                message.encode().into(),
                            )
                            .await
                            .map_err(|e| PublishError::Failed(e.to_string()))?;
                    }
                    let count = messages.len();
                    let mut commit = jetstream::message::PublishMessage::build()
                        .payload(last.encode().into())
                        .message_id(id_of(last))
                        .header(header::NATS_BATCH_ID, batch_id.as_str())
                        .header(header::NATS_BATCH_SEQUENCE, count.to_string().as_str())
                        .header(header::NATS_BATCH_COMMIT, header::NATS_BATCH_COMMIT_FINAL);
                    if let Some(request_id) = request_id {
                        commit = commit.header(REQUEST_ID_HEADER, request_id);
                    }
                    let subject = self
                        .subjects
                        .product_queue(*last_partition, last.product_id());
                    let ack = self
                        .js
                        .send_publish(subject, commit)
                        .await
                        .map_err(|e| PublishError::Failed(e.to_string()))?
                        .await
                        .map_err(|e| PublishError::Failed(e.to_string()))?;
                    match ack.batch_size {
                        Some(stored) if stored == count as u64 => Ok(()),
                        stored => Err(PublishError::Failed(format!(
                            "atomic batch of {count} acknowledged with {stored:?} messages"
                        ))),
                    }
                };
                tokio::time::timeout(self.timeout, attempt)
                    .await
                    .unwrap_or(Err(PublishError::Timeout(self.timeout)))
            }
        }
    }

    /// Publishes a copy of `message` that replaces one which cannot be in the
    /// queue any more (its publish failed, or its stream was lost). The copy
    /// carries an id of its own, `<message id>.<copy>`: JetStream remembers
    /// the ids of messages since purged or lost with their stream, and must
    /// not drop the copy as their duplicate.
    pub async fn publish_copy(
        &self,
        partition: Partition,
        message: &QueueMessage,
        copy: i64,
    ) -> Result<Published, PublishError> {
        let id = format!("{}.{copy}", message.message_id());
        self.send(partition, message, id, None).await
    }

    /// Publishes `payload` as it is to `subject`, which must be a product's
    /// queue subject of this deployment, with `message_id`: a dead letter
    /// published back where it came from (its bytes may not decode, so it
    /// is not a [`QueueMessage`]).
    pub async fn publish_raw(
        &self,
        subject: &str,
        payload: bytes::Bytes,
        message_id: String,
    ) -> Result<Published, PublishError> {
        if self.subjects.parse_queue(subject).is_none() {
            return Err(PublishError::Failed(format!(
                "{subject:?} is not a queue subject of prefix {:?}",
                self.subjects.prefix()
            )));
        }
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(message_id);
        self.store(subject.to_owned(), publish).await
    }

    async fn send(
        &self,
        partition: Partition,
        message: &QueueMessage,
        message_id: String,
        request_id: Option<&str>,
    ) -> Result<Published, PublishError> {
        let subject = self.subjects.product_queue(partition, message.product_id());
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(message.encode().into())
            .message_id(message_id);
        if let Some(request_id) = request_id {
            publish = publish.header(REQUEST_ID_HEADER, request_id);
        }
        self.store(subject, publish).await
    }

    /// Sends one message and waits, for at most the timeout, for JetStream
    /// to store it.
    async fn store(
        &self,
        subject: String,
        publish: jetstream::message::PublishMessage,
    ) -> Result<Published, PublishError> {
        let attempt = async {
            let ack = self
                .js
                .send_publish(subject, publish)
                .await
                .map_err(|e| PublishError::Failed(e.to_string()))?;
            ack.await.map_err(|e| PublishError::Failed(e.to_string()))
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(ack)) => Ok(Published {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(PublishError::Timeout(self.timeout)),
        }
    }
}

fn message_headers(message_id: String, request_id: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::NATS_MESSAGE_ID, message_id.as_str());
    if let Some(request_id) = request_id {
        headers.insert(REQUEST_ID_HEADER, request_id);
    }
    headers
}

fn batch_headers(headers: &mut HeaderMap, batch_id: &str, sequence: usize) {
    headers.insert(header::NATS_BATCH_ID, batch_id);
    headers.insert(header::NATS_BATCH_SEQUENCE, sequence.to_string().as_str());
}
