//! [`PulsarSubscription`]: one pulsar crate consumer, owned by a task, behind channels.
//!
//! The pulsar crate's consumer needs `&mut` for everything and is a `Stream`; the engine wants
//! `&self` methods that run concurrently. So a task owns the consumer and:
//! - moves deliveries into a bounded channel that [`Subscription::receive`] reads (a tokio
//!   `mpsc::Receiver::recv`, which is cancel-safe: dropping `receive` loses nothing);
//! - applies acks (holding batched ones until their whole batch is acked) and nacks (after the
//!   spec's nack delay, which the pulsar crate does not have);
//! - rebuilds the consumer when its stream ends (its engine gave up reconnecting) or when a
//!   health check of an idle consumer fails, with exponential backoff, keeping acks and nacks
//!   that arrive meanwhile.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backstop_engine::broker::{
    BrokerError, MessageId, MessageMetadata, ReceivedMessage, Subscription, SubscriptionSpec,
    SubscriptionType,
};
use backstop_engine::core::ErrorKind;
use futures::{FutureExt, StreamExt};
use pulsar::proto::MessageIdData;
use pulsar::{Consumer, ConsumerOptions, SubType, TokioExecutor};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::{sleep_until, timeout, Instant};

use crate::client::ClientInner;
use crate::error::{broker_error, error_kind, is_transient_answer};
use crate::id::PulsarMessageId;
use crate::options;
use crate::tracking::{AckAction, BatchTracker, Delivery, DeliveryCounter};

type PulsarConsumer = Consumer<Vec<u8>, TokioExecutor>;

/// Capacity of the batch and redelivery tables of one subscription.
const TRACKING_CAPACITY: usize = 100_000;
/// Longest a health check of an idle consumer may take.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

enum Command {
    Ack(PulsarMessageId),
    Nack(PulsarMessageId),
    Close(oneshot::Sender<Result<(), BrokerError>>),
}

/// A consumer on one Pulsar subscription, implementing the engine's [`Subscription`].
///
/// Made by [`PulsarBroker::subscribe`](crate::PulsarBroker). Behaviour worth knowing:
/// - `receive` waits while the consumer is being rebuilt after a connection loss; it fails only
///   once the subscription is closed ([`ErrorKind::Fatal`]).
/// - `ack` and `nack` queue the request and return; they fail only for an id this adapter did
///   not make ([`ErrorKind::Invalid`]) or after `close` ([`ErrorKind::Fatal`]). Pulsar acks are
///   fire-and-forget: a lost ack means a redelivery, never a lost message.
/// - Messages of a producer-side batch from a foreign producer are acked at the broker only when
///   every message of the batch was acked here; a redelivered batch skips the messages already
///   acked.
/// - `redelivery_count` counts the deliveries of the message this subscription saw (the pulsar
///   crate hides the broker's count), so it restarts at 0 after a restart of the process.
pub struct PulsarSubscription {
    topic: String,
    subscription: String,
    commands: mpsc::UnboundedSender<Command>,
    deliveries: Mutex<mpsc::Receiver<ReceivedMessage>>,
    closed: Arc<AtomicBool>,
    operation_timeout: Duration,
}

impl std::fmt::Debug for PulsarSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarSubscription")
            .field("topic", &self.topic)
            .field("subscription", &self.subscription)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl PulsarSubscription {
    /// Subscribes (waiting at most the operation timeout) and starts the consumer task.
    pub(crate) async fn start(
        inner: Arc<ClientInner>,
        spec: &SubscriptionSpec,
    ) -> Result<PulsarSubscription, BrokerError> {
        if spec.topic.trim().is_empty() {
            return Err(BrokerError::new(ErrorKind::Invalid, "empty topic name"));
        }
        if spec.subscription.trim().is_empty() {
            return Err(BrokerError::new(
                ErrorKind::Invalid,
                "empty subscription name",
            ));
        }
        let built = build_consumer(inner.clone(), spec.clone()).await?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let out_capacity = (inner.options.receiver_queue_size as usize).clamp(1, 64);
        let (out, deliveries) = mpsc::channel(out_capacity);
        let closed = Arc::new(AtomicBool::new(false));
        let operation_timeout = inner.options.operation_timeout;
        let task = ConsumerTask {
            spec: spec.clone(),
            inner,
            consumer: None,
            partitions: Partitions::default(),
            commands: command_rx,
            out,
            staged: None,
            nacks: VecDeque::new(),
            pending_acks: Vec::new(),
            batches: BatchTracker::new(TRACKING_CAPACITY),
            counts: DeliveryCounter::new(TRACKING_CAPACITY),
            building: None,
            backoff: Duration::ZERO,
            rebuild_at: None,
            last_alive: Instant::now(),
        }
        .with_consumer(built);
        tokio::spawn(task.run());
        Ok(PulsarSubscription {
            topic: spec.topic.clone(),
            subscription: spec.subscription.clone(),
            commands,
            deliveries: Mutex::new(deliveries),
            closed,
            operation_timeout,
        })
    }

    /// The topic, as given in the spec.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The subscription name.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    fn closed_error(&self) -> BrokerError {
        BrokerError::new(
            ErrorKind::Fatal,
            format!(
                "subscription `{}` on `{}` is closed",
                self.subscription, self.topic
            ),
        )
    }

    fn command(&self, command: Command) -> Result<(), BrokerError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        self.commands.send(command).map_err(|_| self.closed_error())
    }

    fn parse(&self, id: &MessageId) -> Result<PulsarMessageId, BrokerError> {
        PulsarMessageId::from_message_id(id).map_err(|e| {
            BrokerError::new(
                ErrorKind::Invalid,
                format!("cannot ack/nack {id} on `{}`: {e}", self.topic),
            )
        })
    }
}

#[async_trait]
impl Subscription for PulsarSubscription {
    async fn receive(&self) -> Result<ReceivedMessage, BrokerError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        let mut deliveries = self.deliveries.lock().await;
        match deliveries.recv().await {
            // A message handed out after close would be handled while the broker already
            // gives it to another consumer: leave it unacked instead.
            Some(_) if self.closed.load(Ordering::Acquire) => Err(self.closed_error()),
            Some(message) => Ok(message),
            None => Err(self.closed_error()),
        }
    }

    async fn ack(&self, id: &MessageId) -> Result<(), BrokerError> {
        let id = self.parse(id)?;
        self.command(Command::Ack(id))
    }

    async fn nack(&self, id: &MessageId) -> Result<(), BrokerError> {
        let id = self.parse(id)?;
        self.command(Command::Nack(id))
    }

    async fn close(&self) -> Result<(), BrokerError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Close(reply)).is_err() {
            return Ok(()); // the task is gone: nothing left to close
        }
        // The task bounds its own work by the operation timeout; this is a backstop.
        match timeout(self.operation_timeout * 2, done).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(BrokerError::timeout(format!(
                "closing subscription `{}` on `{}` timed out",
                self.subscription, self.topic
            ))),
        }
    }
}

/// The partition topics a consumer reads, to route acks of partitioned topics.
#[derive(Default)]
struct Partitions {
    /// Partition index → the partition's topic name, as the pulsar crate names it.
    topics: HashMap<i32, String>,
    /// The name used for a non-partitioned topic.
    single: String,
    /// How many topics the consumer started with (a multi-topic consumer silently drops the
    /// ones whose stream failed; the health check notices).
    expected: usize,
}

impl Partitions {
    fn of(consumer: &PulsarConsumer) -> Partitions {
        let names = consumer.topics();
        let mut p = Partitions {
            single: names.first().cloned().unwrap_or_default(),
            expected: names.len(),
            topics: HashMap::new(),
        };
        if names.len() > 1 {
            for name in names {
                if let Some(i) = partition_index(&name) {
                    p.topics.insert(i, name);
                }
            }
        }
        p
    }

    fn is_multi(&self) -> bool {
        self.expected > 1
    }

    fn partition_of(&self, topic: &str) -> i32 {
        if self.is_multi() {
            partition_index(topic).unwrap_or(-1)
        } else {
            -1
        }
    }

    fn topic_for(&self, partition: i32) -> &str {
        self.topics
            .get(&partition)
            .map(String::as_str)
            .unwrap_or(&self.single)
    }
}

/// Whether a stream error is about one message that could not be decoded (rather than about
/// the consumer).
fn is_undecodable(error: &pulsar::Error) -> bool {
    matches!(
        error,
        pulsar::Error::Connection(pulsar::error::ConnectionError::Decoding(_))
            | pulsar::Error::Consumer(pulsar::error::ConsumerError::Connection(
                pulsar::error::ConnectionError::Decoding(_)
            ))
    ) || error_kind(error) == ErrorKind::Decode
}

/// `persistent://t/n/name-partition-3` → 3.
fn partition_index(topic: &str) -> Option<i32> {
    let (_, suffix) = topic.rsplit_once("-partition-")?;
    suffix.parse().ok()
}

struct Built {
    consumer: PulsarConsumer,
}

/// Builds a consumer, retrying transient failures until the operation timeout. The pulsar
/// crate's build runs in its own task: cancelling it midway could leave the crate's connection
/// manager waiting forever on a half-made connection.
async fn build_consumer(
    inner: Arc<ClientInner>,
    spec: SubscriptionSpec,
) -> Result<Built, BrokerError> {
    let opts = &inner.options;
    let deadline = Instant::now() + opts.operation_timeout;
    let context = format!(
        "subscribing `{}` to `{}` ({:?})",
        spec.subscription, spec.topic, spec.kind
    );
    let mut delay = opts.reconnect_min_backoff;
    loop {
        let builder = inner
            .client
            .consumer()
            .with_topic(spec.topic.clone())
            .with_subscription(spec.subscription.clone())
            .with_subscription_type(sub_type(spec.kind))
            .with_batch_size(opts.receiver_queue_size)
            .with_options(ConsumerOptions {
                durable: Some(true),
                initial_position: match opts.initial_position {
                    options::InitialPosition::Earliest => {
                        pulsar::consumer::InitialPosition::Earliest
                    }
                    options::InitialPosition::Latest => pulsar::consumer::InitialPosition::Latest,
                },
                // Twice the flow permits, so the crate's engine rarely blocks on a full queue
                // (while blocked it does not process acks).
                receiver_queue_size: Some(opts.receiver_queue_size.saturating_mul(2)),
                ..Default::default()
            });
        let attempt = tokio::spawn(async move { builder.build::<Vec<u8>>().await });
        let error = match tokio::time::timeout_at(deadline, attempt).await {
            Err(_) => {
                return Err(BrokerError::timeout(format!(
                    "{context}: no answer within {:?}",
                    opts.operation_timeout
                )))
            }
            Ok(Err(join)) => {
                return Err(BrokerError::new(
                    ErrorKind::Fatal,
                    format!("{context}: the pulsar client task failed: {join}"),
                ))
            }
            Ok(Ok(Ok(consumer))) => {
                inner.refresh_nodelay();
                return Ok(Built { consumer });
            }
            Ok(Ok(Err(e))) => e,
        };
        // A topic still loading may be ready soon; refusals and an unreachable broker fail now.
        if !is_transient_answer(&error) || Instant::now() + delay >= deadline {
            return Err(broker_error(&context, &error));
        }
        tracing::debug!(%error, ?delay, "{context}: retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(opts.reconnect_max_backoff);
    }
}

fn sub_type(kind: SubscriptionType) -> SubType {
    match kind {
        SubscriptionType::Shared => SubType::Shared,
        SubscriptionType::Exclusive => SubType::Exclusive,
        SubscriptionType::Failover => SubType::Failover,
        SubscriptionType::KeyShared => SubType::KeyShared,
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits for the next item of the consumer's stream, or forever without a consumer.
async fn next_item(
    consumer: &mut Option<PulsarConsumer>,
) -> Option<Result<pulsar::consumer::Message<Vec<u8>>, pulsar::Error>> {
    match consumer {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Waits for a running rebuild, or forever without one.
async fn join_build(
    building: &mut Option<tokio::task::JoinHandle<Result<Built, BrokerError>>>,
) -> Result<Built, BrokerError> {
    match building {
        Some(handle) => match handle.await {
            Ok(result) => result,
            Err(e) => Err(BrokerError::new(
                ErrorKind::Fatal,
                format!("consumer rebuild task failed: {e}"),
            )),
        },
        None => std::future::pending().await,
    }
}

struct ConsumerTask {
    spec: SubscriptionSpec,
    inner: Arc<ClientInner>,
    consumer: Option<PulsarConsumer>,
    partitions: Partitions,
    commands: mpsc::UnboundedReceiver<Command>,
    out: mpsc::Sender<ReceivedMessage>,
    /// A delivery taken from the consumer, waiting for room in `out`.
    staged: Option<ReceivedMessage>,
    /// Nacks waiting for their delay, in deadline order (the delay is the same for all).
    nacks: VecDeque<(Instant, PulsarMessageId)>,
    /// Acks that arrived while there was no consumer: (partition, id).
    pending_acks: Vec<(i32, MessageIdData)>,
    batches: BatchTracker,
    counts: DeliveryCounter,
    building: Option<tokio::task::JoinHandle<Result<Built, BrokerError>>>,
    backoff: Duration,
    rebuild_at: Option<Instant>,
    /// When the consumer last showed it was alive (a delivery or a passed health check).
    last_alive: Instant,
}

impl ConsumerTask {
    fn with_consumer(mut self, built: Built) -> Self {
        self.install(built);
        self
    }

    fn install(&mut self, built: Built) {
        self.partitions = Partitions::of(&built.consumer);
        self.consumer = Some(built.consumer);
        self.backoff = Duration::ZERO;
        self.rebuild_at = None;
        self.last_alive = Instant::now();
    }

    fn health_check_at(&self) -> Option<Instant> {
        (self.consumer.is_some() && self.staged.is_none())
            .then(|| self.last_alive + self.inner.options.health_check_interval)
    }

    async fn run(mut self) {
        loop {
            let nack_at = if self.consumer.is_some() {
                self.nacks.front().map(|(at, _)| *at)
            } else {
                None
            };
            let rebuild_at = if self.consumer.is_none() && self.building.is_none() {
                self.rebuild_at.or(Some(Instant::now()))
            } else {
                None
            };
            let health_at = self.health_check_at();
            let pulling = self.staged.is_none();
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    None => break, // the subscription was dropped
                    Some(Command::Ack(id)) => self.ack(id).await,
                    Some(Command::Nack(id)) => {
                        let at = Instant::now() + self.spec.nack_redelivery_delay;
                        self.nacks.push_back((at, id));
                    }
                    Some(Command::Close(reply)) => {
                        let result = self.close().await;
                        let _ = reply.send(result);
                        return;
                    }
                },
                permit = self.out.clone().reserve_owned(), if !pulling => match permit {
                    Ok(permit) => {
                        if let Some(message) = self.staged.take() {
                            permit.send(message);
                        }
                    }
                    Err(_) => break, // the subscription was dropped
                },
                item = next_item(&mut self.consumer), if pulling => {
                    self.on_item(item);
                    if !self.pending_acks.is_empty() && self.consumer.is_some() {
                        self.flush_pending_acks().await;
                    }
                }
                _ = sleep_opt(nack_at) => self.flush_nacks().await,
                built = join_build(&mut self.building) => {
                    self.building = None;
                    match built {
                        Ok(built) => {
                            tracing::info!(topic = %self.spec.topic, subscription = %self.spec.subscription, "consumer rebuilt");
                            self.install(built);
                            self.flush_pending_acks().await;
                        }
                        Err(error) => self.schedule_rebuild(Some(&error)),
                    }
                },
                _ = sleep_opt(rebuild_at) => {
                    let inner = self.inner.clone();
                    self.building = Some(tokio::spawn(build_consumer(inner, self.spec.clone())));
                },
                _ = sleep_opt(health_at) => self.health_check().await,
            }
        }
        if let Some(handle) = self.building.take() {
            handle.abort();
        }
    }

    fn on_item(&mut self, item: Option<Result<pulsar::consumer::Message<Vec<u8>>, pulsar::Error>>) {
        match item {
            Some(Ok(message)) => {
                self.last_alive = Instant::now();
                self.staged = self.convert(message);
            }
            Some(Err(error)) if is_undecodable(&error) => {
                // A message the crate could not decode (unknown compression, bad batch): it
                // stays unacked at the broker and comes back after the next reconnect.
                tracing::warn!(topic = %self.spec.topic, subscription = %self.spec.subscription, %error, "undecodable message skipped");
            }
            Some(Err(error)) => {
                // The crate's engine failed to re-subscribe (e.g. after a topic unload the
                // topic was still loading) and goes on without a consumer at the broker.
                tracing::warn!(topic = %self.spec.topic, subscription = %self.spec.subscription, %error, kind = %error_kind(&error), "consumer lost its subscription; rebuilding");
                self.drop_consumer();
            }
            None => {
                tracing::warn!(topic = %self.spec.topic, subscription = %self.spec.subscription, "consumer stream ended (connection lost); rebuilding");
                self.drop_consumer();
            }
        }
    }

    fn convert(&mut self, message: pulsar::consumer::Message<Vec<u8>>) -> Option<ReceivedMessage> {
        let partition = self.partitions.partition_of(&message.topic);
        let id = PulsarMessageId::from_delivery(
            &message.message_id.id,
            message.payload.metadata.num_messages_in_batch,
            partition,
        );
        match self.batches.on_delivery(&id) {
            Delivery::Deliver => {}
            // already acked: part of a batch redelivered for another message
            Delivery::Skip => return None,
            Delivery::Reack(entry) => {
                self.pending_acks.push((entry.partition, entry.to_data()));
                return None;
            }
        }
        let redelivery_count = self.counts.on_delivery(&id);
        let pulsar::Payload { metadata, data } = message.payload;
        let properties = metadata
            .properties
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        // Zero means "not set" in Pulsar's metadata.
        let event_time_ms = metadata.event_time.filter(|t| *t > 0);
        Some(ReceivedMessage {
            id: id.to_message_id(),
            topic: self.spec.topic.clone(),
            payload: data,
            key: metadata.partition_key,
            properties,
            redelivery_count,
            metadata: MessageMetadata {
                display_id: Some(id.to_string()),
                partition: (partition >= 0).then_some(partition),
                ordering_key: metadata.ordering_key,
                publish_time_ms: Some(metadata.publish_time),
                event_time_ms,
            },
        })
    }

    async fn ack(&mut self, id: PulsarMessageId) {
        self.counts.on_ack(&id);
        match self.batches.on_ack(&id) {
            AckAction::Hold => {}
            AckAction::Single(id) => self.send_ack(id.partition, id.to_data()).await,
            AckAction::Entry(entry) => self.send_ack(entry.partition, entry.to_data()).await,
        }
    }

    async fn send_ack(&mut self, partition: i32, data: MessageIdData) {
        let Some(consumer) = self.consumer.as_mut() else {
            self.pending_acks.push((partition, data));
            return;
        };
        let topic = self.partitions.topic_for(partition).to_string();
        if let Err(error) = consumer.ack_with_id(&topic, data.clone()).await {
            // The crate's engine is gone: keep the ack for the rebuilt consumer.
            tracing::warn!(topic = %self.spec.topic, %error, "ack failed; consumer will be rebuilt");
            self.pending_acks.push((partition, data));
            self.drop_consumer();
        }
    }

    async fn flush_pending_acks(&mut self) {
        for (partition, data) in std::mem::take(&mut self.pending_acks) {
            self.send_ack(partition, data).await;
        }
    }

    async fn flush_nacks(&mut self) {
        let now = Instant::now();
        // One redelivery request per entry: a nack of a batched message brings the whole batch
        // back (messages already acked are then skipped by the batch tracker).
        let mut due = BTreeSet::new();
        while let Some((at, id)) = self.nacks.front() {
            if *at > now {
                break;
            }
            due.insert(id.entry());
            self.nacks.pop_front();
        }
        for entry in due {
            let Some(consumer) = self.consumer.as_mut() else {
                return;
            };
            let topic = self.partitions.topic_for(entry.partition).to_string();
            if let Err(error) = consumer.nack_with_id(&topic, entry.to_data()).await {
                // Without its engine the consumer is rebuilt, and a new consumer gets every
                // unacked message anyway.
                tracing::warn!(topic = %self.spec.topic, %error, "nack failed; consumer will be rebuilt");
                self.drop_consumer();
            }
        }
    }

    async fn health_check(&mut self) {
        let Some(consumer) = self.consumer.as_mut() else {
            return;
        };
        let limit = self
            .inner
            .options
            .operation_timeout
            .min(HEALTH_CHECK_TIMEOUT);
        let lost_partitions = consumer.topics().len() < self.partitions.expected;
        // Consumer stats come from the broker: they fail when the broker no longer knows this
        // consumer, which a ping of the connection would not notice.
        let result = if lost_partitions {
            Err("a partition consumer stopped".to_string())
        } else {
            match timeout(limit, consumer.get_stats()).await {
                Ok(Ok(stats)) => match stats.iter().find_map(|s| s.error_code) {
                    None => Ok(()),
                    Some(code) => Err(format!(
                        "the broker does not know the consumer ({:?})",
                        pulsar::proto::ServerError::try_from(code)
                    )),
                },
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {limit:?}")),
            }
        };
        match result {
            Ok(()) => self.last_alive = Instant::now(),
            Err(reason) => {
                tracing::warn!(topic = %self.spec.topic, subscription = %self.spec.subscription, %reason, "consumer health check failed; rebuilding");
                self.drop_consumer();
            }
        }
    }

    /// Drops the consumer (its engine then closes it at the broker, so its unacked messages go
    /// back to the subscription) and schedules a rebuild.
    fn drop_consumer(&mut self) {
        self.consumer = None;
        self.schedule_rebuild(None);
    }

    fn schedule_rebuild(&mut self, error: Option<&BrokerError>) {
        let opts = &self.inner.options;
        self.backoff = if self.backoff.is_zero() {
            opts.reconnect_min_backoff
        } else {
            (self.backoff * 2).min(opts.reconnect_max_backoff)
        };
        if let Some(error) = error {
            tracing::warn!(topic = %self.spec.topic, subscription = %self.spec.subscription, %error, retry_in = ?self.backoff, "consumer rebuild failed");
        }
        self.rebuild_at = Some(Instant::now() + self.backoff);
    }

    async fn close(&mut self) -> Result<(), BrokerError> {
        if let Some(handle) = self.building.take() {
            handle.abort();
        }
        let Some(mut consumer) = self.consumer.take() else {
            return Ok(());
        };
        // Unblock the crate's engine if it waits for room in its queue, so that it processes
        // the acks queued behind the deliveries; the messages taken here were never handed out
        // and go back to the subscription when the consumer closes.
        for _ in 0..3 {
            while let Some(Some(_)) = consumer.next().now_or_never() {}
            tokio::task::yield_now().await;
        }
        let limit = self.inner.options.operation_timeout;
        match timeout(limit, consumer.close()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(broker_error(
                &format!("closing consumer on `{}`", self.spec.topic),
                &e,
            )),
            Err(_) => Err(BrokerError::timeout(format!(
                "closing consumer on `{}`: no answer within {limit:?}",
                self.spec.topic
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names() {
        assert_eq!(
            partition_index("persistent://public/default/t-partition-3"),
            Some(3)
        );
        assert_eq!(partition_index("persistent://public/default/t"), None);
        assert_eq!(partition_index("a-partition-x"), None);
    }
}
