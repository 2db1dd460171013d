//! What a handler may know about the message it runs on, besides its decoded body.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::broker::{MessageId, ReceivedMessage};

/// One delivery of a message, as a handler sees it: key, ordering key, properties, message id,
/// topic and partition, redelivery count, this attempt's number, publish and event time.
///
/// Cheap to clone (the message is shared, not copied). A handler takes it as its second
/// argument:
///
/// ```
/// # async fn demo(bs: backstop_engine::runtime::Backstop) -> Result<(), Box<dyn std::error::Error>> {
/// use backstop_engine::runtime::{ConsumerSpec, Delivery, HandlerError};
/// #[derive(serde::Deserialize)]
/// struct UserUpdate { user_id: i64 }
/// let spec = ConsumerSpec::new("user_updates", "user_service").build()?;
/// let handle = bs
///     .spawn_consumer_with_delivery(spec, |m: UserUpdate, d: Delivery| async move {
///         tracing::info!(user = m.user_id, id = %d.message_id(), attempt = d.attempt(),
///                        redelivered = d.redelivery_count(), "handling");
///         Ok::<_, HandlerError>(())
///     })
///     .await?;
/// # handle.shutdown().await; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Delivery {
    msg: Arc<ReceivedMessage>,
    subscription: Arc<str>,
    attempt: u32,
}

impl Delivery {
    /// A delivery of `msg` on `subscription`, attempt `attempt` (1 for the first run).
    /// The runtime builds these; tests of a handler can build their own.
    pub fn new(msg: Arc<ReceivedMessage>, subscription: Arc<str>, attempt: u32) -> Delivery {
        Delivery {
            msg,
            subscription,
            attempt,
        }
    }

    /// The broker's opaque id (what acks use).
    pub fn id(&self) -> &MessageId {
        &self.msg.id
    }

    /// The message id for people and logs, in the broker's own notation: Pulsar's Java form
    /// `ledger:entry:partition[:batch]`; the in-memory broker's `topic:position:-1`; the opaque
    /// id in hex for an adapter that has no notation.
    pub fn message_id(&self) -> String {
        match &self.msg.metadata.display_id {
            Some(s) => s.clone(),
            None => self.msg.id.to_string(),
        }
    }

    /// The topic the subscription is on.
    pub fn topic(&self) -> &str {
        &self.msg.topic
    }

    /// The partition the message came from, for a partitioned topic.
    pub fn partition(&self) -> Option<i32> {
        self.msg.metadata.partition
    }

    /// The subscription.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// The message key (Pulsar's partition key), if the publisher set one.
    pub fn key(&self) -> Option<&str> {
        self.msg.key.as_deref()
    }

    /// The ordering key, if the publisher set one.
    pub fn ordering_key(&self) -> Option<&[u8]> {
        self.msg.metadata.ordering_key.as_deref()
    }

    /// The message properties.
    pub fn properties(&self) -> &BTreeMap<String, String> {
        &self.msg.properties
    }

    /// One property.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.msg.properties.get(name).map(String::as_str)
    }

    /// How many times the broker delivered this message before (0 on the first delivery).
    pub fn redelivery_count(&self) -> u32 {
        self.msg.redelivery_count
    }

    /// This run's number among all the handler runs of this message that backstop knows of: 1
    /// for the first run, 2 for the first retry, and so on, counting runs on earlier deliveries
    /// (broker redeliveries, retry copies: see docs/retries.md). `max_retries` limits the same
    /// count, so the last run a message gets is attempt `max_retries + 1`.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the broker accepted the message, where the broker tells.
    pub fn publish_time(&self) -> Option<SystemTime> {
        self.msg.metadata.publish_time_ms.map(from_ms)
    }

    /// The event time the publisher set, if any.
    pub fn event_time(&self) -> Option<SystemTime> {
        self.msg.metadata.event_time_ms.map(from_ms)
    }

    /// The raw payload (before decoding).
    pub fn payload(&self) -> &[u8] {
        &self.msg.payload
    }

    /// The whole delivery as the broker adapter gave it.
    pub fn message(&self) -> &ReceivedMessage {
        &self.msg
    }
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::MessageMetadata;

    #[test]
    fn accessors_read_the_message() {
        let msg = ReceivedMessage {
            id: MessageId(vec![0xab]),
            topic: "t".into(),
            payload: b"{}".to_vec(),
            key: Some("k".into()),
            properties: [("p".to_string(), "v".to_string())].into(),
            redelivery_count: 2,
            metadata: MessageMetadata {
                display_id: Some("1:2:3:4".into()),
                partition: Some(3),
                ordering_key: Some(b"o".to_vec()),
                publish_time_ms: Some(1_000),
                event_time_ms: Some(500),
            },
        };
        let d = Delivery::new(Arc::new(msg), Arc::from("s"), 3);
        assert_eq!(d.message_id(), "1:2:3:4");
        assert_eq!(d.key(), Some("k"));
        assert_eq!(d.ordering_key(), Some(&b"o"[..]));
        assert_eq!(d.property("p"), Some("v"));
        assert_eq!(d.redelivery_count(), 2);
        assert_eq!(d.attempt(), 3);
        assert_eq!(d.partition(), Some(3));
        assert_eq!(d.subscription(), "s");
        assert_eq!(d.publish_time(), Some(UNIX_EPOCH + Duration::from_secs(1)));
        assert_eq!(
            d.event_time(),
            Some(UNIX_EPOCH + Duration::from_millis(500))
        );
        let bare = Delivery::new(
            Arc::new(ReceivedMessage {
                metadata: MessageMetadata::default(),
                ..d.message().clone()
            }),
            Arc::from("s"),
            1,
        );
        assert_eq!(bare.message_id(), "ab", "hex without a broker notation");
        assert_eq!(bare.publish_time(), None);
    }
}
