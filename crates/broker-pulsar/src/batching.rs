//! [`PulsarBatching`]: the producer-side batching settings of the adapter, their defaults and
//! their validation (kept apart from the connection settings in `options`).

use std::time::Duration;

use crate::options::ConfigError;

/// How the adapter's producers batch messages (one broker entry holding several messages).
///
/// On by default with a small window, like the Java client: a batch is sent when it holds
/// [`max_messages`](PulsarBatching::max_messages) messages or
/// [`max_bytes`](PulsarBatching::max_bytes) payload bytes, or
/// [`max_delay`](PulsarBatching::max_delay) after its first message, whichever comes first.
/// Each send still completes only when the broker confirmed the batch holding *its* message, and
/// returns that message's own id (with its batch index); when a batch fails, every send of it
/// fails with the typed error of the batch.
///
/// Not batched, whatever the settings:
/// - messages with a key (partition key or ordering key): the pulsar crate writes no key on a
///   batch's envelope, and a Key_Shared subscription dispatches a whole entry by the envelope's
///   key, so keyed messages travel as single entries (the broker then routes each by its key);
/// - delayed messages ([`deliver_after`](backstop_engine::broker::OutgoingMessage::deliver_after)):
///   the broker delays a whole entry by its envelope's delivery time;
/// - messages whose payload and properties exceed [`max_bytes`](PulsarBatching::max_bytes)
///   (so a batch stays well under the broker's maximum message size);
/// - messages for a topic listed with [`PulsarBatching::without_topic`].
///
/// [`max_pending_bytes`](PulsarBatching::max_pending_bytes) bounds a producer's memory when the
/// broker is slower than the callers: a send waits (within the operation timeout) until the
/// payload bytes of the sends it waits behind fall below it. It applies with batching on or off.
///
/// ```
/// use std::time::Duration;
/// use backstop_pulsar::{PulsarBatching, PulsarOptions};
/// let options = PulsarOptions::default().with_batching(
///     PulsarBatching::default()
///         .with_max_delay(Duration::from_micros(500))
///         .without_topic("payments"),
/// );
/// assert!(options.validate().is_ok());
/// assert!(options.batching.batches_topic("orders"));
/// assert!(!options.batching.batches_topic("persistent://public/default/payments"));
/// let off = PulsarOptions::default().with_batching(PulsarBatching::disabled());
/// assert!(!off.batching.batches_topic("orders"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PulsarBatching {
    /// Whether producers batch at all. Default `true`.
    pub enabled: bool,
    /// Longest time a message waits for its batch to fill. Default 1 ms (the Java client's
    /// `batchingMaxPublishDelay`).
    pub max_delay: Duration,
    /// Most messages in one batch. Default 1,000 (the Java client's `batchingMaxMessages`).
    pub max_messages: u32,
    /// A batch is sent once its payload bytes reach this; larger messages are not batched.
    /// Default 128 KiB (the Java client's `batchingMaxBytes`). Used as at most a quarter of
    /// [`PulsarOptions::max_message_size`](crate::PulsarOptions::max_message_size), so that a
    /// batch (which may pass this limit by one message) stays below what the broker accepts.
    pub max_bytes: usize,
    /// Payload bytes one producer holds for sends not yet confirmed (queued, batching or in
    /// flight); further sends wait for room. Default 16 MiB.
    pub max_pending_bytes: usize,
    /// Topics whose producers never batch, as given to `producer()` (short names are compared
    /// in their `persistent://public/default/` form).
    pub unbatched_topics: Vec<String>,
}

impl Default for PulsarBatching {
    fn default() -> Self {
        PulsarBatching {
            enabled: true,
            max_delay: Duration::from_millis(1),
            max_messages: 1000,
            max_bytes: 128 * 1024,
            max_pending_bytes: 16 * 1024 * 1024,
            unbatched_topics: Vec::new(),
        }
    }
}

/// The full name of a topic given in short form (`name`, `tenant/ns/name`).
pub(crate) fn full_topic_name(topic: &str) -> String {
    if topic.contains("://") {
        return topic.to_string();
    }
    match topic.matches('/').count() {
        0 => format!("persistent://public/default/{topic}"),
        _ => format!("persistent://{topic}"),
    }
}

impl PulsarBatching {
    /// Batching off for every producer (each message its own broker entry).
    pub fn disabled() -> Self {
        PulsarBatching {
            enabled: false,
            ..PulsarBatching::default()
        }
    }

    /// Sets [`PulsarBatching::enabled`].
    pub fn with_enabled(mut self, on: bool) -> Self {
        self.enabled = on;
        self
    }
    /// Sets [`PulsarBatching::max_delay`].
    pub fn with_max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }
    /// Sets [`PulsarBatching::max_messages`].
    pub fn with_max_messages(mut self, n: u32) -> Self {
        self.max_messages = n;
        self
    }
    /// Sets [`PulsarBatching::max_bytes`].
    pub fn with_max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }
    /// Sets [`PulsarBatching::max_pending_bytes`].
    pub fn with_max_pending_bytes(mut self, bytes: usize) -> Self {
        self.max_pending_bytes = bytes;
        self
    }
    /// Adds a topic whose producer never batches (e.g. the topic of a task that wants one entry
    /// per message).
    pub fn without_topic(mut self, topic: impl Into<String>) -> Self {
        self.unbatched_topics.push(topic.into());
        self
    }

    /// Whether the producer of `topic` batches.
    pub fn batches_topic(&self, topic: &str) -> bool {
        if !self.enabled {
            return false;
        }
        let full = full_topic_name(topic);
        !self
            .unbatched_topics
            .iter()
            .any(|t| full_topic_name(t) == full)
    }

    /// Checks the settings.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_pending_bytes == 0 {
            return Err(ConfigError::Zero("batching.max_pending_bytes"));
        }
        if !self.enabled {
            return Ok(());
        }
        if self.max_delay.is_zero() {
            return Err(ConfigError::ZeroDuration("batching.max_delay"));
        }
        if self.max_messages == 0 {
            return Err(ConfigError::Zero("batching.max_messages"));
        }
        if self.max_bytes == 0 {
            return Err(ConfigError::Zero("batching.max_bytes"));
        }
        Ok(())
    }

    /// [`max_bytes`](PulsarBatching::max_bytes) as used: at most a quarter of
    /// `max_message_size` (and at least 1).
    pub(crate) fn effective_max_bytes(&self, max_message_size: usize) -> usize {
        self.max_bytes.min(max_message_size / 4).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_on() {
        let b = PulsarBatching::default();
        assert!(b.enabled);
        assert_eq!(b.validate(), Ok(()));
        assert!(b.batches_topic("t"));
    }

    #[test]
    fn bad_settings_are_named() {
        let b = PulsarBatching::default();
        assert_eq!(
            b.clone().with_max_delay(Duration::ZERO).validate(),
            Err(ConfigError::ZeroDuration("batching.max_delay"))
        );
        assert_eq!(
            b.clone().with_max_messages(0).validate(),
            Err(ConfigError::Zero("batching.max_messages"))
        );
        assert_eq!(
            b.clone().with_max_pending_bytes(0).validate(),
            Err(ConfigError::Zero("batching.max_pending_bytes"))
        );
        assert_eq!(b.clone().with_max_bytes(1 << 20).validate(), Ok(()));
        assert_eq!(
            b.clone()
                .with_max_bytes(1 << 20)
                .effective_max_bytes(1 << 20),
            1 << 18
        );
        assert_eq!(b.effective_max_bytes(5 << 20), 128 * 1024);
        // off: the batch settings do not matter
        assert_eq!(
            PulsarBatching::disabled().with_max_messages(0).validate(),
            Ok(())
        );
    }

    #[test]
    fn topics_compare_in_full_form() {
        let b = PulsarBatching::default()
            .without_topic("a")
            .without_topic("t1/ns/b");
        assert!(!b.batches_topic("persistent://public/default/a"));
        assert!(!b.batches_topic("a"));
        assert!(!b.batches_topic("persistent://t1/ns/b"));
        assert!(b.batches_topic("b"));
        assert!(b.batches_topic("non-persistent://public/default/a"));
    }
}
