//! [`PulsarProducer`]: one topic's pulsar producer, owned by a task that sends for every caller,
//! created lazily, re-created after it broke.
//!
//! The pulsar crate's producer needs `&mut` to send. A task owns it and takes send requests
//! from a channel, one after the other, handing each caller its receipt future: callers
//! pipeline their messages as one loop over `send_non_blocking` would, without a lock handed
//! from caller to caller (each hand-over waited for the next caller to be scheduled).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backstop_engine::broker::{BrokerError, MessageId, OutgoingMessage, Producer};
use backstop_engine::core::ErrorKind;
use pulsar::producer::{Message, SendFuture};
use pulsar::{ProducerOptions, TokioExecutor};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout_at, Instant};

use crate::client::ClientInner;
use crate::error::{broker_error, error_kind, is_transient_answer, needs_rebuild};
use crate::id::PulsarMessageId;

type Inner = pulsar::Producer<TokioExecutor>;

/// Requests queued for the producer task at most; senders wait beyond.
const REQUEST_QUEUE: usize = 1024;

enum Request {
    /// Create the pulsar producer if there is none.
    Ready {
        deadline: Instant,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
    /// Hand a message to the pulsar producer (creating one if needed); the answer is the
    /// receipt future and the generation of the producer used.
    Send {
        message: Box<Message>,
        deadline: Instant,
        reply: oneshot::Sender<Result<(SendFuture, u64), BrokerError>>,
    },
    /// A receipt of the producer of this generation failed with a Connection or Timeout error:
    /// drop it (if it is still the current one) so that the next send creates a new one.
    Invalidate { generation: u64 },
}

/// Publishes to one topic, implementing the engine's [`Producer`].
///
/// - Never batches: each message is its own broker entry (a consumer acking it cannot ack other
///   messages by accident), and the receipt names exactly this message.
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
        let producer = PulsarProducer {
            topic: topic.to_string(),
            operation_timeout: inner.options.operation_timeout,
            max_message_size: inner.options.max_message_size,
            requests,
        };
        tokio::spawn(
            ProducerTask {
                topic: topic.to_string(),
                inner,
                producer: None,
                generation: 0,
                queue,
            }
            .run(),
        );
        producer
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
    producer: Option<Inner>,
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
                    let result = self.ensure(deadline).await;
                    let _ = reply.send(result);
                }
                Request::Send {
                    message,
                    deadline,
                    reply,
                } => {
                    // The caller gave up (timed out or was cancelled): do not send behind its
                    // back.
                    if reply.is_closed() {
                        continue;
                    }
                    let result = self.enqueue(message, deadline).await;
                    let _ = reply.send(result);
                }
                Request::Invalidate { generation } => {
                    if self.generation == generation && self.producer.is_some() {
                        tracing::info!(topic = %self.topic, "dropping the producer; the next send re-creates it");
                        self.producer = None;
                    }
                }
            }
        }
    }

    async fn ensure(&mut self, deadline: Instant) -> Result<(), BrokerError> {
        if self.producer.is_none() {
            let producer = Box::pin(create(&self.inner, &self.topic, deadline)).await?;
            self.producer = Some(producer);
            self.generation += 1;
        }
        Ok(())
    }

    async fn enqueue(
        &mut self,
        message: Box<Message>,
        deadline: Instant,
    ) -> Result<(SendFuture, u64), BrokerError> {
        self.ensure(deadline).await?;
        let generation = self.generation;
        let Some(producer) = self.producer.as_mut() else {
            return Err(BrokerError::connection("producer vanished"));
        };
        // The crate's send future is large (about 17 KB): boxed, so that it is not copied
        // around with the futures that wait for it.
        let sent = timeout_at(deadline, Box::pin(producer.send_non_blocking(*message))).await;
        match sent {
            Ok(Ok(receipt)) => Ok((receipt, generation)),
            Ok(Err(e)) => {
                if needs_rebuild(error_kind(&e)) {
                    self.producer = None;
                }
                Err(broker_error(&format!("sending to `{}`", self.topic), &e))
            }
            Err(_) => {
                // the crate may still be trying to re-create its producer: start afresh
                self.producer = None;
                Err(BrokerError::timeout(format!(
                    "sending to `{}`: no answer within {:?}",
                    self.topic, self.inner.options.operation_timeout
                )))
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
        ordering_key: message.ordering_key,
        event_time: message.event_time_ms,
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
        let message = Box::new(to_pulsar(message));
        let (receipt, generation) = self
            .ask(deadline, "sending", |reply| Request::Send {
                message,
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
