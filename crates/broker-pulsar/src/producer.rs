//! [`PulsarProducer`]: one topic's pulsar producer, owned by a task that sends for every caller,
//! created lazily, re-created after it broke.
//!
//! The pulsar crate's producer needs `&mut` to send. A task owns it and takes send requests
//! from a channel, one after the other, handing each caller its receipt future: callers
//! pipeline their messages as one loop over `send_non_blocking` would, without a lock handed
//! from caller to caller (each hand-over waited for the next caller to be scheduled).
//!
//! The task owns up to two pulsar producers for its topic (two lanes): a batching one for the
//! messages that may share a batch, and a non-batching one for those that must not (keyed
//! messages, large ones, or every message when batching is off for the topic); see
//! [`PulsarBatching`](crate::PulsarBatching).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backstop_engine::broker::{BrokerError, MessageId, OutgoingMessage, Producer};
use backstop_engine::core::ErrorKind;
use pulsar::producer::{Message, SendFuture};
use pulsar::{ProducerOptions, TokioExecutor};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::{timeout_at, Instant};

use crate::client::ClientInner;
use crate::error::{broker_error, error_kind, is_transient_answer, needs_rebuild};
use crate::id::PulsarMessageId;

type Inner = pulsar::Producer<TokioExecutor>;

/// Requests queued for the producer task at most; senders wait beyond.
const REQUEST_QUEUE: usize = 1024;

/// Which of the task's two pulsar producers a message goes through.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Lane {
    /// The non-batching producer: each message is its own broker entry.
    Single = 0,
    /// The batching producer.
    Batched = 1,
}

enum Request {
    /// Create the pulsar producer of the topic's default lane if there is none.
    Ready {
        deadline: Instant,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
    /// Hand a message to the pulsar producer (creating one if needed); the answer is the
    /// receipt future and the generation of the producer used.
    Send {
        message: Box<Message>,
        lane: Lane,
        deadline: Instant,
        reply: oneshot::Sender<Result<(SendFuture, u64), BrokerError>>,
    },
    /// A receipt of the producer of this generation failed with a Connection or Timeout error:
    /// drop it (if it is still the current one) so that the next send creates a new one.
    Invalidate { generation: u64 },
}

/// Bytes a message is counted for in the pending-bytes bound and the batching decision.
fn message_bytes(message: &OutgoingMessage) -> usize {
    let properties: usize = message
        .properties
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    message.payload.len() + properties + message.key.as_ref().map_or(0, |k| k.len())
}

/// Publishes to one topic, implementing the engine's [`Producer`].
///
/// - Batches unkeyed messages by default ([`PulsarBatching`](crate::PulsarBatching): 1 ms,
///   1,000 messages, 128 KiB); keyed messages, large ones and topics with batching off go as
///   single entries. A send completes when the broker confirmed the entry holding its message
///   and returns that message's id (with its batch index and the batch size when batched); a
///   failed batch fails each of its sends with the batch's error (typed as any send error).
/// - Memory is bounded: sends wait (within the operation timeout) while the unconfirmed sends
///   of this producer hold [`max_pending_bytes`](crate::PulsarBatching::max_pending_bytes).
/// - `send` waits for the broker's receipt, at most the operation timeout, and fails with
///   [`ErrorKind::Timeout`] past it (the message may still have been stored: at-least-once).
///   A message whose caller gave up before its turn came is not sent.
/// - After a Connection or Timeout error the pulsar producer is dropped and the next send
///   creates a new one.
/// - A payload larger than [`PulsarOptions::max_message_size`](crate::PulsarOptions) fails with
///   [`ErrorKind::Rejected`] without being sent.
/// - A dead-letter record of backstop's runtime gets its `ORIGIN_MESSAGE_ID` property in the
///   Java form ([`java_origin_message_id`](crate::java_origin_message_id)); other messages are
///   sent as they are.
pub struct PulsarProducer {
    topic: String,
    operation_timeout: Duration,
    max_message_size: usize,
    /// Largest message that may go into a batch; `None`: this producer never batches.
    batch_max_bytes: Option<usize>,
    /// Permits are payload bytes of unconfirmed sends.
    room: Arc<Semaphore>,
    max_pending_bytes: usize,
    waited_for_room: AtomicU64,
    requests: mpsc::Sender<Request>,
}

impl std::fmt::Debug for PulsarProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarProducer")
            .field("topic", &self.topic)
            .finish()
    }
}

impl PulsarProducer {
    /// A producer for `topic` and its task (which ends when the producer is dropped). Must be
    /// called inside a tokio runtime.
    pub(crate) fn new(inner: Arc<ClientInner>, topic: &str) -> PulsarProducer {
        let (requests, queue) = mpsc::channel(REQUEST_QUEUE);
        let batching = &inner.options.batching;
        let batch_max_bytes = batching
            .batches_topic(topic)
            .then(|| batching.effective_max_bytes(inner.options.max_message_size));
        let max_pending_bytes = batching.max_pending_bytes.min(Semaphore::MAX_PERMITS);
        let producer = PulsarProducer {
            topic: topic.to_string(),
            operation_timeout: inner.options.operation_timeout,
            max_message_size: inner.options.max_message_size,
            batch_max_bytes,
            room: Arc::new(Semaphore::new(max_pending_bytes)),
            max_pending_bytes,
            waited_for_room: AtomicU64::new(0),
            requests,
        };
        let default_lane = if batch_max_bytes.is_some() {
            Lane::Batched
        } else {
            Lane::Single
        };
        tokio::spawn(
            ProducerTask {
                topic: topic.to_string(),
                inner,
                lanes: [None, None],
                default_lane,
                generation: 0,
                queue,
            }
            .run(),
        );
        producer
    }

    /// Whether this producer batches messages that may be batched (unkeyed, not large).
    pub fn batching(&self) -> bool {
        self.batch_max_bytes.is_some()
    }

    /// Payload bytes of sends not confirmed yet (queued, batching or in flight); never more
    /// than [`max_pending_bytes`](crate::PulsarBatching::max_pending_bytes).
    pub fn pending_bytes(&self) -> usize {
        self.max_pending_bytes
            .saturating_sub(self.room.available_permits())
    }

    /// How many sends had to wait for room under the pending-bytes bound (back-pressure).
    pub fn sends_waited_for_room(&self) -> u64 {
        self.waited_for_room.load(Ordering::Relaxed)
    }

    /// The lane of a message: batched only when this producer batches, the message has no key
    /// (a batch envelope carries none, see `PulsarBatching`), no delivery time (the broker
    /// delays a whole entry by its envelope) and it is small enough.
    fn lane_of(&self, message: &Message, bytes: usize) -> Lane {
        match self.batch_max_bytes {
            Some(max)
                if bytes <= max
                    && message.partition_key.is_none()
                    && message.ordering_key.is_none()
                    && message.deliver_at_time.is_none() =>
            {
                Lane::Batched
            }
            _ => Lane::Single,
        }
    }

    /// Creates the pulsar producer if there is none, within the operation timeout.
    pub async fn ensure_ready(&self) -> Result<(), BrokerError> {
        let deadline = Instant::now() + self.operation_timeout;
        self.ask(deadline, "creating the producer", |reply| Request::Ready {
            deadline,
            reply,
        })
        .await
    }

    fn timed_out(&self, what: &str) -> BrokerError {
        BrokerError::timeout(format!(
            "{what} for `{}`: no answer within {:?}",
            self.topic, self.operation_timeout
        ))
    }

    /// Sends a request to the task and waits for its answer until `deadline`.
    async fn ask<T>(
        &self,
        deadline: Instant,
        what: &str,
        request: impl FnOnce(oneshot::Sender<Result<T, BrokerError>>) -> Request,
    ) -> Result<T, BrokerError> {
        let (reply, answer) = oneshot::channel();
        let gone = || {
            BrokerError::new(
                ErrorKind::Fatal,
                format!("{what} for `{}`: the producer task stopped", self.topic),
            )
        };
        let asked = timeout_at(deadline, async {
            self.requests
                .send(request(reply))
                .await
                .map_err(|_| gone())?;
            answer.await.map_err(|_| gone())?
        });
        match asked.await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out(what)),
        }
    }
}

/// Owns the pulsar producer; serves the requests one after the other.
struct ProducerTask {
    topic: String,
    inner: Arc<ClientInner>,
    /// The pulsar producer of each lane (indexed by `Lane as usize`) and its generation.
    lanes: [Option<(Inner, u64)>; 2],
    /// The lane `Ready` prepares.
    default_lane: Lane,
    /// Bumped whenever a new producer is installed, so that a failed send drops only the
    /// producer it used.
    generation: u64,
    queue: mpsc::Receiver<Request>,
}

impl ProducerTask {
    async fn run(mut self) {
        while let Some(request) = self.queue.recv().await {
            match request {
                Request::Ready { deadline, reply } => {
                    if reply.is_closed() {
                        continue;
                    }
                    let result = self.ensure(self.default_lane, deadline).await;
                    let _ = reply.send(result.map(|_| ()));
                }
                Request::Send {
                    message,
                    lane,
                    deadline,
                    reply,
                } => {
                    // The caller gave up (timed out or was cancelled): do not send behind its
                    // back.
                    if reply.is_closed() {
                        continue;
                    }
                    let result = self.enqueue(message, lane, deadline).await;
                    let _ = reply.send(result);
                }
                Request::Invalidate { generation } => {
                    for lane in &mut self.lanes {
                        if lane.as_ref().is_some_and(|(_, g)| *g == generation) {
                            tracing::info!(topic = %self.topic, "dropping the producer; the next send re-creates it");
                            *lane = None;
                        }
                    }
                }
            }
        }
    }

    /// The producer of `lane`, created if there is none; with its generation.
    async fn ensure(
        &mut self,
        lane: Lane,
        deadline: Instant,
    ) -> Result<(&mut Inner, u64), BrokerError> {
        let slot = &mut self.lanes[lane as usize];
        if slot.is_none() {
            let producer = Box::pin(create(
                &self.inner,
                &self.topic,
                lane == Lane::Batched,
                deadline,
            ))
            .await?;
            self.generation += 1;
            *slot = Some((producer, self.generation));
        }
        match slot.as_mut() {
            Some((producer, generation)) => Ok((producer, *generation)),
            None => Err(BrokerError::connection("producer vanished")),
        }
    }

    async fn enqueue(
        &mut self,
        message: Box<Message>,
        lane: Lane,
        deadline: Instant,
    ) -> Result<(SendFuture, u64), BrokerError> {
        let (producer, generation) = self.ensure(lane, deadline).await?;
        // The crate's send future is large (about 17 KB): boxed, so that it is not copied
        // around with the futures that wait for it.
        let sent = timeout_at(deadline, Box::pin(producer.send_non_blocking(*message))).await;
        match sent {
            Ok(Ok(receipt)) => Ok((receipt, generation)),
            Ok(Err(e)) => {
                if needs_rebuild(error_kind(&e)) {
                    self.lanes[lane as usize] = None;
                }
                Err(broker_error(&format!("sending to `{}`", self.topic), &e))
            }
            Err(_) => {
                // the crate may still be trying to re-create its producer: start afresh
                self.lanes[lane as usize] = None;
                Err(BrokerError::timeout(format!(
                    "sending to `{}`: no answer within {:?}",
                    self.topic, self.inner.options.operation_timeout
                )))
            }
        }
    }
}

/// Creates a batching or non-batching producer; the crate's build runs in its own task (see
/// `build_consumer` for why), transient errors are retried until `deadline`.
async fn create(
    inner: &ClientInner,
    topic: &str,
    batched: bool,
    deadline: Instant,
) -> Result<Inner, BrokerError> {
    let context = format!("creating a producer for `{topic}`");
    let batching = &inner.options.batching;
    // batching off: batch_size, batch_byte_size and batch_timeout all None
    let (batch_size, batch_byte_size, batch_timeout) = if batched {
        (
            Some(batching.max_messages),
            Some(batching.effective_max_bytes(inner.options.max_message_size)),
            Some(batching.max_delay),
        )
    } else {
        (None, None, None)
    };
    let mut delay = inner.options.reconnect_min_backoff;
    loop {
        let builder = inner
            .client
            .producer()
            .with_topic(topic)
            .with_options(ProducerOptions {
                batch_size,
                batch_byte_size,
                batch_timeout,
                // wait for room in the connection's queue (bounded by our timeout) rather than
                // failing with SlowDown at once
                block_queue_if_full: true,
                ..Default::default()
            });
        let attempt = tokio::spawn(async move { builder.build().await });
        let error = match timeout_at(deadline, attempt).await {
            Err(_) => {
                return Err(BrokerError::timeout(format!(
                    "{context}: no answer within {:?}",
                    inner.options.operation_timeout
                )))
            }
            Ok(Err(join)) => {
                return Err(BrokerError::new(
                    ErrorKind::Fatal,
                    format!("{context}: the pulsar client task failed: {join}"),
                ))
            }
            Ok(Ok(Ok(producer))) => {
                inner.refresh_nodelay();
                return Ok(producer);
            }
            Ok(Ok(Err(e))) => e,
        };
        if !is_transient_answer(&error) || Instant::now() + delay >= deadline {
            return Err(broker_error(&context, &error));
        }
        tracing::debug!(%error, ?delay, "{context}: retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(inner.options.reconnect_max_backoff);
    }
}

fn to_pulsar(message: OutgoingMessage) -> Message {
    let mut properties = message.properties;
    crate::dlq::java_origin_message_id(&mut properties);
    Message {
        payload: message.payload,
        properties: properties.into_iter().collect(),
        partition_key: message.key,
        ordering_key: message.ordering_key,
        event_time: message.event_time_ms,
        deliver_at_time: message.deliver_after.map(|d| {
            let at = std::time::SystemTime::now() + d;
            at.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |t| t.as_millis() as i64)
        }),
        ..Default::default()
    }
}

#[async_trait]
impl Producer for PulsarProducer {
    fn topic(&self) -> &str {
        &self.topic
    }

    async fn send(&self, message: OutgoingMessage) -> Result<MessageId, BrokerError> {
        let max = self.max_message_size;
        if message.payload.len() > max {
            return Err(BrokerError::new(
                ErrorKind::Rejected,
                format!(
                    "message of {} bytes for `{}` exceeds the maximum message size of {max} bytes",
                    message.payload.len(),
                    self.topic
                ),
            ));
        }
        let deadline = Instant::now() + self.operation_timeout;
        let bytes = message_bytes(&message);
        let message = Box::new(to_pulsar(message));
        let lane = self.lane_of(&message, bytes);
        // Back-pressure: hold this message's bytes until its receipt (dropped at return).
        let cost = u32::try_from(bytes.clamp(1, self.max_pending_bytes)).unwrap_or(u32::MAX);
        let _room = match self.room.clone().try_acquire_many_owned(cost) {
            Ok(permit) => permit,
            Err(_) => {
                self.waited_for_room.fetch_add(1, Ordering::Relaxed);
                match timeout_at(deadline, self.room.clone().acquire_many_owned(cost)).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => {
                        return Err(BrokerError::new(
                            ErrorKind::Fatal,
                            format!("sending to `{}`: the producer closed", self.topic),
                        ))
                    }
                    Err(_) => {
                        return Err(BrokerError::timeout(format!(
                            "sending to `{}`: {} bytes still unconfirmed after {:?} (max_pending_bytes {})",
                            self.topic,
                            self.pending_bytes(),
                            self.operation_timeout,
                            self.max_pending_bytes
                        )))
                    }
                }
            }
        };
        let (receipt, generation) = self
            .ask(deadline, "sending", |reply| Request::Send {
                message,
                lane,
                deadline,
                reply,
            })
            .await?;
        let result = match timeout_at(deadline, receipt).await {
            Ok(Ok(receipt)) => Ok(receipt),
            Ok(Err(e)) => Err(broker_error(&format!("sending to `{}`", self.topic), &e)),
            Err(_) => Err(self.timed_out("sending")),
        };
        match result {
            Ok(receipt) => Ok(receipt
                .message_id
                .as_ref()
                .map(|id| PulsarMessageId::from_receipt(id).to_message_id())
                .unwrap_or_default()),
            Err(error) => {
                if needs_rebuild(error.kind()) {
                    let _ = self.requests.send(Request::Invalidate { generation }).await;
                }
                Err(error)
            }
        }
    }
}
