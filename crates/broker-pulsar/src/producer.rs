//! [`PulsarProducer`]: one topic's pulsar producer, created lazily, re-created after it broke.

use std::sync::Arc;

use async_trait::async_trait;
use backstop_engine::broker::{BrokerError, MessageId, OutgoingMessage, Producer};
use backstop_engine::core::ErrorKind;
use pulsar::producer::{Message, SendFuture};
use pulsar::{ProducerOptions, TokioExecutor};
use tokio::sync::Mutex;
use tokio::time::{timeout_at, Instant};

use crate::client::ClientInner;
use crate::error::{broker_error, error_kind, is_transient_answer, needs_rebuild};
use crate::id::PulsarMessageId;

type Inner = pulsar::Producer<TokioExecutor>;

struct Slot {
    producer: Option<Inner>,
    /// Bumped whenever a new producer is installed, so that a failed send drops only the
    /// producer it used.
    generation: u64,
}

/// Publishes to one topic, implementing the engine's [`Producer`].
///
/// - Never batches: each message is its own broker entry (a consumer acking it cannot ack other
///   messages by accident), and the receipt names exactly this message.
/// - `send` waits for the broker's receipt, at most the operation timeout, and fails with
///   [`ErrorKind::Timeout`] past it (the message may still have been stored: at-least-once).
/// - After a Connection or Timeout error the pulsar producer is dropped and the next send
///   creates a new one.
/// - A payload larger than [`PulsarOptions::max_message_size`](crate::PulsarOptions) fails with
///   [`ErrorKind::Rejected`] without being sent.
/// - A dead-letter record of backstop's runtime gets its `ORIGIN_MESSAGE_ID` property in the
///   Java form ([`java_origin_message_id`](crate::java_origin_message_id)); other messages are
///   sent as they are.
pub struct PulsarProducer {
    topic: String,
    inner: Arc<ClientInner>,
    slot: Mutex<Slot>,
}

impl std::fmt::Debug for PulsarProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarProducer")
            .field("topic", &self.topic)
            .finish()
    }
}

impl PulsarProducer {
    pub(crate) fn new(inner: Arc<ClientInner>, topic: &str) -> PulsarProducer {
        PulsarProducer {
            topic: topic.to_string(),
            inner,
            slot: Mutex::new(Slot {
                producer: None,
                generation: 0,
            }),
        }
    }

    /// Creates the pulsar producer if there is none, within the operation timeout.
    pub async fn ensure_ready(&self) -> Result<(), BrokerError> {
        let deadline = Instant::now() + self.inner.options.operation_timeout;
        let ready = timeout_at(deadline, async {
            let mut slot = self.slot.lock().await;
            if slot.producer.is_none() {
                let producer = create(&self.inner, &self.topic, deadline).await?;
                slot.producer = Some(producer);
                slot.generation += 1;
            }
            Ok(())
        });
        match ready.await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out("creating the producer")),
        }
    }

    fn timed_out(&self, what: &str) -> BrokerError {
        BrokerError::timeout(format!(
            "{what} for `{}`: no answer within {:?}",
            self.topic, self.inner.options.operation_timeout
        ))
    }

    /// Drops the pulsar producer if it is still the one of `generation`.
    async fn invalidate(&self, generation: u64) {
        let mut slot = self.slot.lock().await;
        if slot.generation == generation && slot.producer.is_some() {
            tracing::info!(topic = %self.topic, "dropping the producer; the next send re-creates it");
            slot.producer = None;
        }
    }

    /// Hands the message to the pulsar producer (creating one if needed); returns the receipt
    /// future and the generation of the producer used.
    async fn enqueue(
        &self,
        message: Message,
        deadline: Instant,
        used: &mut Option<u64>,
    ) -> Result<SendFuture, BrokerError> {
        let mut slot = self.slot.lock().await;
        if slot.producer.is_none() {
            let producer = create(&self.inner, &self.topic, deadline).await?;
            slot.producer = Some(producer);
            slot.generation += 1;
        }
        let generation = slot.generation;
        *used = Some(generation);
        let Some(producer) = slot.producer.as_mut() else {
            return Err(BrokerError::connection("producer vanished"));
        };
        match producer.send_non_blocking(message).await {
            Ok(receipt) => Ok(receipt),
            Err(e) => {
                if needs_rebuild(error_kind(&e)) {
                    slot.producer = None;
                }
                Err(broker_error(&format!("sending to `{}`", self.topic), &e))
            }
        }
    }
}

/// Creates a non-batching producer; the crate's build runs in its own task (see
/// `build_consumer` for why), transient errors are retried until `deadline`.
async fn create(inner: &ClientInner, topic: &str, deadline: Instant) -> Result<Inner, BrokerError> {
    let context = format!("creating a producer for `{topic}`");
    let mut delay = inner.options.reconnect_min_backoff;
    loop {
        let builder = inner
            .client
            .producer()
            .with_topic(topic)
            .with_options(ProducerOptions {
                // batching off: batch_size, batch_byte_size and batch_timeout all None
                batch_size: None,
                batch_byte_size: None,
                batch_timeout: None,
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
        ..Default::default()
    }
}

#[async_trait]
impl Producer for PulsarProducer {
    fn topic(&self) -> &str {
        &self.topic
    }

    async fn send(&self, message: OutgoingMessage) -> Result<MessageId, BrokerError> {
        let max = self.inner.options.max_message_size;
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
        let deadline = Instant::now() + self.inner.options.operation_timeout;
        let mut used = None;
        let sent = timeout_at(deadline, async {
            let receipt = self
                .enqueue(to_pulsar(message), deadline, &mut used)
                .await?;
            receipt
                .await
                .map_err(|e| broker_error(&format!("sending to `{}`", self.topic), &e))
        })
        .await;
        let result = match sent {
            Ok(result) => result,
            Err(_) => Err(self.timed_out("sending")),
        };
        match result {
            Ok(receipt) => Ok(receipt
                .message_id
                .as_ref()
                .map(|id| PulsarMessageId::from_receipt(id).to_message_id())
                .unwrap_or_default()),
            Err(error) => {
                if let (true, Some(generation)) = (needs_rebuild(error.kind()), used) {
                    self.invalidate(generation).await;
                }
                Err(error)
            }
        }
    }
}
