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
///     metadata: Default::default(),
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
        ordering_key: origin.metadata.ordering_key.clone(),
        event_time_ms: origin.metadata.event_time_ms,
        deliver_after: None,
    }
}

/// Property every dead-letter record of backstop's runtime carries (with the record's reason).
const PROPERTY_BACKSTOP_REASON: &str = "backstop.reason";

/// Puts the Java form into the `ORIGIN_MESSAGE_ID` of a dead-letter record from backstop's
/// runtime.
///
/// The runtime knows no broker, so it writes the origin's opaque [`MessageId`] as hex. When the
/// message is such a record (it has a `backstop.reason` property) or a retry-topic copy (it has
/// a `RETRY_TOPIC` property) and the value is the hex of one of this adapter's ids, it becomes
/// `ledger:entry:partition[:batchIndex]`, as the Java client writes it. Anything else is left as
/// it is.
///
/// ```
/// use std::collections::BTreeMap;
/// use backstop_pulsar::{java_origin_message_id, PulsarMessageId};
/// let id = PulsarMessageId { ledger_id: 5, entry_id: 8, partition: -1, batch_index: -1, batch_size: 0 };
/// let mut p = BTreeMap::from([
///     ("ORIGIN_MESSAGE_ID".to_string(), id.to_message_id().to_string()),
///     ("backstop.reason".to_string(), "exhausted".to_string()),
/// ]);
/// java_origin_message_id(&mut p);
/// assert_eq!(p["ORIGIN_MESSAGE_ID"], "5:8:-1");
/// ```
pub fn java_origin_message_id(properties: &mut BTreeMap<String, String>) {
    if !properties.contains_key(PROPERTY_BACKSTOP_REASON) && !properties.contains_key("RETRY_TOPIC")
    {
        return;
    }
    let Some(value) = properties.get_mut(PROPERTY_ORIGIN_MESSAGE_ID) else {
        return;
    };
    if let Some(id) =
        decode_hex(value).and_then(|bytes| PulsarMessageId::from_message_id(&MessageId(bytes)).ok())
    {
        *value = id.to_string();
    }
}

/// Bytes from lowercase or uppercase hex; `None` for anything else.
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_backstop_records_with_adapter_ids_are_rewritten() {
        let id = PulsarMessageId {
            ledger_id: 9,
            entry_id: 1,
            partition: 2,
            batch_index: 3,
            batch_size: 4,
        };
        let hex = id.to_message_id().to_string();
        let mut p = props(&[("ORIGIN_MESSAGE_ID", &hex), ("backstop.reason", "decode")]);
        java_origin_message_id(&mut p);
        assert_eq!(p["ORIGIN_MESSAGE_ID"], "9:1:2:3");

        // not a backstop record: untouched
        let mut p = props(&[("ORIGIN_MESSAGE_ID", &hex)]);
        java_origin_message_id(&mut p);
        assert_eq!(p["ORIGIN_MESSAGE_ID"], hex);

        // not one of our ids, or not hex at all: untouched
        for value in ["ab", "1:2:-1", "zz", "abc", "", "é1"] {
            let mut p = props(&[("ORIGIN_MESSAGE_ID", value), ("backstop.reason", "x")]);
            java_origin_message_id(&mut p);
            assert_eq!(p["ORIGIN_MESSAGE_ID"], value);
        }
        let mut p = props(&[("backstop.reason", "x")]);
        java_origin_message_id(&mut p);
        assert!(!p.contains_key("ORIGIN_MESSAGE_ID"));
    }
}
