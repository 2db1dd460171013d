//! A message of a dead-letter topic, read as a [`DlqRecord`]: backstop's JSON records (see
//! `backstop_engine::runtime::DeadLetterRecord`) and the Java/Python clients' dead-letter copies
//! (original payload, `REAL_TOPIC` and `ORIGIN_MESSAGE_ID` properties).

use std::collections::BTreeMap;

use backstop_engine::broker::{OutgoingMessage, ReceivedMessage};
use backstop_engine::runtime::DeadLetterRecord;
use backstop_pulsar::origin_message_id;
use serde::Serialize;

/// Property counting how many times a message was redriven (written by the redrive, kept by
/// backstop's and the Java client's dead-lettering, read by the loop guard).
pub const PROPERTY_REDRIVE_COUNT: &str = "backstop.redrive.count";
/// Property naming the DLQ record a redriven message came from (`<dlq topic>@<id>`), so a
/// consumer can recognise the duplicate a killed redrive may publish.
pub const PROPERTY_REDRIVE_SOURCE: &str = "backstop.redrive.source";

/// Properties of the dead-lettering itself, dropped when a record is republished.
const DLQ_PROPERTIES: &[&str] = &[
    "REAL_TOPIC",
    "ORIGIN_MESSAGE_ID",
    "RECONSUMETIMES",
    "DELAY_TIME",
    "RETRY_TOPIC",
    "backstop.reason",
    "backstop.error_kind",
    "backstop.error",
    "backstop.attempts",
    "backstop.first_failure_ms",
    "backstop.last_failure_ms",
    "backstop.subscription",
    PROPERTY_REDRIVE_SOURCE,
];

/// Who wrote a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    /// backstop's runtime (JSON body, `backstop.*` properties).
    Backstop,
    /// A Java or Python client's dead-letter policy (original body, `REAL_TOPIC`).
    Java,
}

/// One dead-letter record, whoever wrote it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DlqRecord {
    /// The DLQ message's id, `ledger:entry:partition[:batchIndex]`.
    pub id: String,
    /// Who wrote it.
    pub format: RecordFormat,
    /// The topic the message came from (or was meant for).
    pub origin_topic: String,
    /// The subscription that gave up, when known.
    pub subscription: Option<String>,
    /// `exhausted`, `permanent`, `decode` (backstop); `exhausted` for Java/Python records
    /// (their policy dead-letters after the last redelivery).
    pub reason: String,
    /// The last error's kind (`unknown` for Java/Python records).
    pub error_kind: String,
    /// The last error's text, when known.
    pub error: Option<String>,
    /// Attempts made, when known.
    pub attempts: Option<u32>,
    /// First failure, ms since the Unix epoch, when known.
    pub first_failure_ms: Option<u64>,
    /// Last failure, ms since the Unix epoch, when known.
    pub last_failure_ms: Option<u64>,
    /// The original message's id, when known.
    pub origin_message_id: Option<String>,
    /// The key the message had.
    pub key: Option<String>,
    /// How many times it was redriven before.
    pub redrive_count: u32,
    /// The message's own properties (the dead-lettering's removed).
    pub properties: BTreeMap<String, String>,
    /// The body a redrive publishes.
    #[serde(skip)]
    pub payload: Vec<u8>,
}

impl DlqRecord {
    /// Reads a DLQ message; the error says why it is neither kind of record.
    pub fn from_message(m: &ReceivedMessage) -> Result<DlqRecord, String> {
        let p = &m.properties;
        let id = origin_message_id(&m.id);
        let redrive_count = match p.get(PROPERTY_REDRIVE_COUNT) {
            None => 0,
            Some(v) => v
                .parse()
                .map_err(|_| format!("property {PROPERTY_REDRIVE_COUNT}=`{v}` is not a count"))?,
        };
        let properties: BTreeMap<String, String> = p
            .iter()
            .filter(|(k, _)| !DLQ_PROPERTIES.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if p.contains_key("backstop.reason") {
            let r: DeadLetterRecord = serde_json::from_slice(&m.payload).map_err(|e| {
                format!("has a backstop.reason property but its body is not a backstop dead-letter record ({e})")
            })?;
            let payload = match (&r.payload_text, &r.payload_bytes, &r.args) {
                (Some(t), _, _) => t.clone().into_bytes(),
                (None, Some(b), _) => b.clone(),
                (None, None, Some(a)) => serde_json::to_vec(a).map_err(|e| e.to_string())?,
                (None, None, None) => {
                    return Err("backstop dead-letter record without payload or arguments".into())
                }
            };
            return Ok(DlqRecord {
                id,
                format: RecordFormat::Backstop,
                origin_topic: r.origin_topic,
                subscription: r.subscription,
                reason: r.reason,
                error_kind: r.error_kind,
                error: Some(r.error),
                attempts: Some(r.attempts),
                first_failure_ms: Some(r.first_failure_ms),
                last_failure_ms: Some(r.last_failure_ms),
                origin_message_id: p.get("ORIGIN_MESSAGE_ID").cloned().or(r.origin_message_id),
                key: m.key.clone(),
                redrive_count,
                properties,
                payload,
            });
        }
        if let Some(origin) = p.get("REAL_TOPIC") {
            return Ok(DlqRecord {
                id,
                format: RecordFormat::Java,
                origin_topic: origin.clone(),
                subscription: None,
                reason: "exhausted".into(),
                error_kind: "unknown".into(),
                error: None,
                attempts: None,
                first_failure_ms: None,
                last_failure_ms: None,
                origin_message_id: p.get("ORIGIN_MESSAGE_ID").cloned(),
                key: m.key.clone(),
                redrive_count,
                properties,
                payload: m.payload.clone(),
            });
        }
        Err("not a dead-letter record: no backstop.reason property (backstop) and no REAL_TOPIC property (Java/Python client)".into())
    }

    /// The message a redrive publishes: the original body, key and properties, the redrive count
    /// plus one and the source record.
    pub fn redrive_message(&self, dlq_topic: &str) -> OutgoingMessage {
        let mut properties = self.properties.clone();
        properties.insert(
            PROPERTY_REDRIVE_COUNT.into(),
            (self.redrive_count + 1).to_string(),
        );
        properties.insert(
            PROPERTY_REDRIVE_SOURCE.into(),
            format!("{dlq_topic}@{}", self.id),
        );
        OutgoingMessage {
            payload: self.payload.clone(),
            key: self.key.clone(),
            properties,
            ..Default::default()
        }
    }

    /// The message a loop-guarded record is parked as: the DLQ message as it was (body rebuilt
    /// from the record is not needed: the original body and all properties are kept).
    pub fn park_message(m: &ReceivedMessage, dlq_topic: &str) -> OutgoingMessage {
        let mut properties = m.properties.clone();
        properties.insert(
            "backstop.parked_from".into(),
            format!("{dlq_topic}@{}", origin_message_id(&m.id)),
        );
        OutgoingMessage {
            payload: m.payload.clone(),
            key: m.key.clone(),
            properties,
            ordering_key: m.metadata.ordering_key.clone(),
            event_time_ms: m.metadata.event_time_ms,
            deliver_after: None,
        }
    }

    /// A payload preview: text (lossy), at most `chars` characters.
    pub fn preview(&self, chars: usize) -> String {
        let text = String::from_utf8_lossy(&self.payload);
        let mut s: String = text.chars().take(chars).collect();
        if text.chars().count() > chars {
            s.push('…');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_engine::broker::MessageId;

    fn received(payload: Vec<u8>, props: &[(&str, &str)]) -> ReceivedMessage {
        ReceivedMessage {
            id: MessageId(vec![1]),
            topic: "d".into(),
            payload,
            key: Some("k1".into()),
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            redelivery_count: 0,
            metadata: Default::default(),
        }
    }

    fn backstop_record() -> DeadLetterRecord {
        DeadLetterRecord {
            origin_topic: "orders".into(),
            subscription: Some("billing".into()),
            reason: "exhausted".into(),
            error_kind: "timeout".into(),
            error: "slow".into(),
            attempts: 4,
            first_failure_ms: 1,
            last_failure_ms: 2,
            origin_message_id: Some("ab".into()),
            payload_text: None,
            payload_bytes: None,
            args: None,
        }
        .with_payload(b"hello")
    }

    #[test]
    fn backstop_records_are_read_and_republished_with_origin_properties_only() {
        let origin = received(b"hello".to_vec(), &[("trace", "t1")]);
        let mut out = backstop_record().to_message(Some(&origin));
        out.properties
            .insert(PROPERTY_REDRIVE_COUNT.into(), "1".into());
        let m = received(out.payload, &[]);
        let m = ReceivedMessage {
            properties: out.properties,
            ..m
        };
        let r = DlqRecord::from_message(&m).unwrap();
        assert_eq!(r.format, RecordFormat::Backstop);
        assert_eq!(r.origin_topic, "orders");
        assert_eq!(r.error_kind, "timeout");
        assert_eq!(r.redrive_count, 1);
        let again = r.redrive_message("orders-DLQ");
        assert_eq!(again.payload, b"hello");
        assert_eq!(again.key.as_deref(), Some("k1"));
        assert_eq!(again.properties["trace"], "t1");
        assert_eq!(again.properties[PROPERTY_REDRIVE_COUNT], "2");
        assert!(again.properties[PROPERTY_REDRIVE_SOURCE].starts_with("orders-DLQ@"));
        assert!(!again.properties.contains_key("REAL_TOPIC"));
        assert!(!again.properties.contains_key("backstop.reason"));
    }

    #[test]
    fn java_records_keep_their_body_and_foreign_payloads_are_refused() {
        let m = received(
            b"raw".to_vec(),
            &[("REAL_TOPIC", "persistent://public/default/o"), ("x", "1")],
        );
        let r = DlqRecord::from_message(&m).unwrap();
        assert_eq!(r.format, RecordFormat::Java);
        assert_eq!(r.redrive_message("d").payload, b"raw");
        assert_eq!(r.redrive_message("d").properties["x"], "1");

        let plain = received(b"{}".to_vec(), &[]);
        assert!(DlqRecord::from_message(&plain)
            .unwrap_err()
            .contains("not a dead-letter record"));
        let fake = received(b"not json".to_vec(), &[("backstop.reason", "exhausted")]);
        assert!(DlqRecord::from_message(&fake)
            .unwrap_err()
            .contains("not a backstop dead-letter record"));
        let bad_count = received(
            b"x".to_vec(),
            &[("REAL_TOPIC", "o"), (PROPERTY_REDRIVE_COUNT, "many")],
        );
        assert!(DlqRecord::from_message(&bad_count).is_err());
    }
}
