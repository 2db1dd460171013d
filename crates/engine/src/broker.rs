//! The broker traits every adapter implements (Pulsar, in-memory), and the error they map into.
//!
//! Traits are object-safe (`async-trait`) so the runtime holds `Arc<dyn Broker>` and one
//! conformance suite runs against every adapter unchanged.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::core::ErrorKind;

/// A broker operation failed: its [`ErrorKind`] (what the core acts on) and a message for people.
///
/// ```
/// use backstop_engine::broker::BrokerError;
/// use backstop_engine::core::ErrorKind;
/// let e = BrokerError::new(ErrorKind::Timeout, "send timed out after 5s");
/// assert_eq!(e.kind(), ErrorKind::Timeout);
/// assert_eq!(e.to_string(), "timeout: send timed out after 5s");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct BrokerError {
    kind: ErrorKind,
    message: String,
}

impl BrokerError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> BrokerError {
        BrokerError {
            kind,
            message: message.into(),
        }
    }
    /// A Connection error.
    pub fn connection(message: impl Into<String>) -> BrokerError {
        BrokerError::new(ErrorKind::Connection, message)
    }
    /// A Timeout error.
    pub fn timeout(message: impl Into<String>) -> BrokerError {
        BrokerError::new(ErrorKind::Timeout, message)
    }
    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A message identifier assigned by the broker, opaque to backstop (bytes the adapter can parse
/// back). Shown as hex.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MessageId(pub Vec<u8>);

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A message to publish.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OutgoingMessage {
    /// The body.
    pub payload: Vec<u8>,
    /// Partition / routing key (Pulsar's partition key: picks the partition and, on a
    /// Key_Shared subscription, the consumer, unless an ordering key is set).
    pub key: Option<String>,
    /// String properties (Pulsar message properties).
    pub properties: BTreeMap<String, String>,
    /// Pulsar's ordering key: on a Key_Shared subscription, takes precedence over
    /// [`key`](Self::key) for choosing the consumer.
    pub ordering_key: Option<Vec<u8>>,
    /// The application's event time, in milliseconds since the Unix epoch.
    pub event_time_ms: Option<u64>,
    /// Deliver no earlier than this long after the broker accepted it (Pulsar's delayed
    /// delivery, `deliverAt`; honoured on Shared and Key_Shared subscriptions). `None`: at once.
    pub deliver_after: Option<std::time::Duration>,
}

impl OutgoingMessage {
    /// A message with this payload and nothing else.
    pub fn new(payload: impl Into<Vec<u8>>) -> OutgoingMessage {
        OutgoingMessage {
            payload: payload.into(),
            ..Default::default()
        }
    }
    /// Adds a property.
    pub fn with_property(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.properties.insert(k.into(), v.into());
        self
    }
    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Sets the ordering key.
    pub fn with_ordering_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }
    /// Sets the event time (ms since the Unix epoch).
    pub fn with_event_time_ms(mut self, ms: u64) -> Self {
        self.event_time_ms = Some(ms);
        self
    }
    /// Delays delivery by `d` after the broker accepts the message.
    pub fn with_deliver_after(mut self, d: std::time::Duration) -> Self {
        self.deliver_after = Some(d);
        self
    }
}

/// What a broker tells about a delivery beyond its id, key, properties and redelivery count.
/// Every field is optional: an adapter fills what its broker knows.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MessageMetadata {
    /// The message id in the broker's own notation (Pulsar: the Java client's
    /// `ledger:entry:partition[:batch]`); `None` when the adapter has none.
    pub display_id: Option<String>,
    /// The partition index the message came from (`None` for a non-partitioned topic).
    pub partition: Option<i32>,
    /// The ordering key set by the publisher.
    pub ordering_key: Option<Vec<u8>>,
    /// When the broker accepted the message, in milliseconds since the Unix epoch.
    pub publish_time_ms: Option<u64>,
    /// The event time set by the publisher, in milliseconds since the Unix epoch.
    pub event_time_ms: Option<u64>,
}

/// A message delivered to a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The broker's id; pass it back to ack or nack.
    pub id: MessageId,
    /// The topic it came from.
    pub topic: String,
    /// The body.
    pub payload: Vec<u8>,
    /// Key, if any.
    pub key: Option<String>,
    /// Properties.
    pub properties: BTreeMap<String, String>,
    /// How many times the broker delivered it before (0 on first delivery), where known.
    pub redelivery_count: u32,
    /// Everything else the broker tells about it.
    pub metadata: MessageMetadata,
}

/// Pulsar's subscription types. Shared is the default.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum SubscriptionType {
    /// Many consumers, messages spread round-robin, unordered.
    #[default]
    Shared,
    /// One consumer only; a second subscribe fails.
    Exclusive,
    /// One active consumer, others stand by.
    Failover,
    /// Many consumers; messages of one key go to one consumer.
    KeyShared,
}

impl std::str::FromStr for SubscriptionType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(
            match crate::core::settings_text::subscription_type_text(s)? {
                "Shared" => SubscriptionType::Shared,
                "Exclusive" => SubscriptionType::Exclusive,
                "Failover" => SubscriptionType::Failover,
                "KeyShared" => SubscriptionType::KeyShared,
                other => return Err(format!("no subscription type `{other}`")),
            },
        )
    }
}

/// What to subscribe to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// The topic.
    pub topic: String,
    /// The subscription name.
    pub subscription: String,
    /// The subscription type.
    pub kind: SubscriptionType,
    /// How long a nacked message waits before redelivery (a hint; adapters that cannot delay
    /// redeliver at once).
    pub nack_redelivery_delay: Duration,
}

impl SubscriptionSpec {
    /// A Shared subscription with a 1 s nack delay.
    pub fn new(topic: impl Into<String>, subscription: impl Into<String>) -> SubscriptionSpec {
        SubscriptionSpec {
            topic: topic.into(),
            subscription: subscription.into(),
            kind: SubscriptionType::Shared,
            nack_redelivery_delay: Duration::from_secs(1),
        }
    }
    /// Sets the subscription type.
    pub fn with_type(mut self, kind: SubscriptionType) -> Self {
        self.kind = kind;
        self
    }
}

/// A broker connection: makes producers and subscriptions.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A producer for `topic`.
    async fn producer(&self, topic: &str) -> Result<Arc<dyn Producer>, BrokerError>;
    /// Subscribes. Fails for a second Exclusive consumer on the same subscription.
    async fn subscribe(
        &self,
        spec: &SubscriptionSpec,
    ) -> Result<Arc<dyn Subscription>, BrokerError>;
    /// Makes sure messages published to `topic` from now on are kept until they are read
    /// through the durable subscription `subscription`, creating it if missing. Backstop calls
    /// it before the first dead-letter or parking record goes to a topic: on Pulsar a topic
    /// without a subscription (and without a retention policy) may delete what is written to
    /// it, as the Java client's `DeadLetterPolicy.initialSubscriptionName` also guards against.
    /// The default does nothing, for brokers that keep every message.
    async fn retain(&self, topic: &str, subscription: &str) -> Result<(), BrokerError> {
        let _ = (topic, subscription);
        Ok(())
    }
}

/// Publishes to one topic.
#[async_trait]
pub trait Producer: Send + Sync + 'static {
    /// The topic.
    fn topic(&self) -> &str;
    /// Publishes and waits for the broker's confirmation.
    async fn send(&self, message: OutgoingMessage) -> Result<MessageId, BrokerError>;
}

/// One consumer on a subscription. All methods take `&self`: receiving and acking run
/// concurrently.
#[async_trait]
pub trait Subscription: Send + Sync + 'static {
    /// The next delivery; waits until one arrives.
    ///
    /// Must be cancel-safe: the runtime waits on the main and the retry topic's subscription
    /// at once and drops the receive that loses the race, so dropping the future before it
    /// completes must not lose a delivery (it stays with the subscription for the next call).
    async fn receive(&self) -> Result<ReceivedMessage, BrokerError>;
    /// Acknowledges a delivery: it will not be delivered again.
    async fn ack(&self, id: &MessageId) -> Result<(), BrokerError>;
    /// Negatively acknowledges a delivery: it will be delivered again (to this or another
    /// consumer), after the spec's nack delay where supported.
    async fn nack(&self, id: &MessageId) -> Result<(), BrokerError>;
    /// Closes this consumer; unacked deliveries become available to others.
    async fn close(&self) -> Result<(), BrokerError>;
}
