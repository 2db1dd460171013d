//! Dead-letter properties in the Java client's vocabulary, so tools written for Java DLQs read
//! backstop's.

use std::collections::BTreeMap;

use backstop_engine::broker::{MessageId, OutgoingMessage, ReceivedMessage};

use crate::id::PulsarMessageId;

/// Property naming the topic a dead-lettered message came from (Java: `REAL_TOPIC`).
pub const PROPERTY_REAL_TOPIC: &str = "REAL_TOPIC";
/// Property holding the original message id, `ledger:entry:partition[:batchIndex]` (Java:
/// `ORIGIN_MESSAGE_ID`).
pub const PROPERTY_ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
/// Property holding how many times the message was delivered before (Java:
/// `RECONSUMETIMES`).
pub const PROPERTY_RECONSUME_TIMES: &str = "RECONSUMETIMES";

/// The message id as the Java client prints it (`ledger:entry:partition[:batchIndex]`), or
/// the id's hex when it is not one of this adapter's ids.
///
/// ```
/// use backstop_engine::broker::MessageId;
/// use backstop_pulsar::{origin_message_id, PulsarMessageId};
/// let id = PulsarMessageId { ledger_id: 12, entry_id: 0, partition: -1, batch_index: -1, batch_size: 0 };
/// assert_eq!(origin_message_id(&id.to_message_id()), "12:0:-1");
/// assert_eq!(origin_message_id(&MessageId(vec![0xab])), "ab");
/// ```
pub fn origin_message_id(id: &MessageId) -> String {
    match PulsarMessageId::from_message_id(id) {
        Ok(id) => id.to_string(),
        Err(_) => id.to_string(),
    }
}

/// The properties of a dead-letter copy of `origin`: its own properties, then `REAL_TOPIC`,
/// `ORIGIN_MESSAGE_ID` and `RECONSUMETIMES` (the origin's redelivery count), the last three
/// overriding properties of the same names.
///
/// ```
/// use backstop_engine::broker::ReceivedMessage;
/// use backstop_pulsar::{dlq_properties, PulsarMessageId};
/// let origin = ReceivedMessage {
///     id: PulsarMessageId { ledger_id: 3, entry_id: 9, partition: -1, batch_index: -1, batch_size: 0 }.to_message_id(),
///     topic: "user_updates".into(),
///     payload: b"{}".to_vec(),
///     key: None,
///     properties: [("trace".to_string(), "t1".to_string())].into(),
///     redelivery_count: 2,
/// };
/// let p = dlq_properties(&origin);
/// assert_eq!(p["REAL_TOPIC"], "user_updates");
/// assert_eq!(p["ORIGIN_MESSAGE_ID"], "3:9:-1");
/// assert_eq!(p["RECONSUMETIMES"], "2");
/// assert_eq!(p["trace"], "t1");
/// ```
pub fn dlq_properties(origin: &ReceivedMessage) -> BTreeMap<String, String> {
    let mut properties = origin.properties.clone();
    properties.insert(PROPERTY_REAL_TOPIC.to_string(), origin.topic.clone());
    properties.insert(
        PROPERTY_ORIGIN_MESSAGE_ID.to_string(),
        origin_message_id(&origin.id),
    );
    properties.insert(
        PROPERTY_RECONSUME_TIMES.to_string(),
        origin.redelivery_count.to_string(),
    );
    properties
}

/// A Java-style dead-letter copy of `origin`: the original payload and key, with
/// [`dlq_properties`]. (backstop's runtime publishes its own JSON dead-letter record instead;
/// this is for code that wants the plain Java shape.)
pub fn dead_letter_message(origin: &ReceivedMessage) -> OutgoingMessage {
    OutgoingMessage {
        payload: origin.payload.clone(),
        key: origin.key.clone(),
        properties: dlq_properties(origin),
    }
}
