//! The dead-letter record: what a DLQ message carries, as JSON body plus Pulsar-style properties.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::broker::{OutgoingMessage, ReceivedMessage};
use crate::core::{DlqInfo, ErrorKind};

/// The JSON body of a dead-letter message.
///
/// Consumers write the original payload (base64-free: as UTF-8 text when it is text, else as a
/// byte array) and producers write the call arguments. Times are milliseconds since the Unix
/// epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// Where the message was meant to go or came from.
    pub origin_topic: String,
    /// The subscription that gave up (consumers only).
    pub subscription: Option<String>,
    /// `exhausted`, `permanent` or `decode`.
    pub reason: String,
    /// The last error's kind label.
    pub error_kind: String,
    /// The last error's text.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// First failure, ms since the Unix epoch.
    pub first_failure_ms: u64,
    /// Last failure, ms since the Unix epoch.
    pub last_failure_ms: u64,
    /// The original message id (consumers).
    pub origin_message_id: Option<String>,
    /// The original payload as text, when it was UTF-8.
    pub payload_text: Option<String>,
    /// The original payload as bytes, when it was not UTF-8.
    pub payload_bytes: Option<Vec<u8>>,
    /// The task call's arguments (producers).
    pub args: Option<serde_json::Value>,
}

impl DeadLetterRecord {
    /// Fills the payload fields from raw bytes.
    pub fn with_payload(mut self, payload: &[u8]) -> Self {
        match std::str::from_utf8(payload) {
            Ok(s) => self.payload_text = Some(s.to_string()),
            Err(_) => self.payload_bytes = Some(payload.to_vec()),
        }
        self
    }

    /// The outgoing DLQ message: JSON body, properties for tools that read only properties
    /// (including the Java client's `REAL_TOPIC`, `ORIGIN_MESSAGE_ID` and `RECONSUMETIMES`), and
    /// the origin's key and properties kept (origin properties first, ours win on conflicts).
    pub fn to_message(&self, origin: Option<&ReceivedMessage>) -> OutgoingMessage {
        let mut properties: BTreeMap<String, String> =
            origin.map(|m| m.properties.clone()).unwrap_or_default();
        properties.insert("REAL_TOPIC".into(), self.origin_topic.clone());
        if let Some(id) = &self.origin_message_id {
            properties.insert("ORIGIN_MESSAGE_ID".into(), id.clone());
        }
        properties.insert("RECONSUMETIMES".into(), self.attempts.to_string());
        properties.insert("backstop.reason".into(), self.reason.clone());
        properties.insert("backstop.error_kind".into(), self.error_kind.clone());
        properties.insert("backstop.error".into(), self.error.clone());
        properties.insert("backstop.attempts".into(), self.attempts.to_string());
        properties.insert(
            "backstop.first_failure_ms".into(),
            self.first_failure_ms.to_string(),
        );
        properties.insert(
            "backstop.last_failure_ms".into(),
            self.last_failure_ms.to_string(),
        );
        if let Some(s) = &self.subscription {
            properties.insert("backstop.subscription".into(), s.clone());
        }
        OutgoingMessage {
            payload: serde_json::to_vec(self).unwrap_or_default(),
            key: origin.and_then(|m| m.key.clone()),
            properties,
            ordering_key: origin.and_then(|m| m.metadata.ordering_key.clone()),
            event_time_ms: origin.and_then(|m| m.metadata.event_time_ms),
            deliver_after: None,
        }
    }
}

/// Converts core times (ns since the runtime's epoch) to wall-clock ms, given the wall-clock
/// time of the runtime's epoch.
pub(crate) fn wall_ms(epoch_wall_ms: u64, t: crate::core::Time) -> u64 {
    epoch_wall_ms + t.as_nanos() / 1_000_000
}

pub(crate) fn record_from(
    info: &DlqInfo,
    origin_topic: &str,
    error_kind: ErrorKind,
    error: String,
    epoch_wall_ms: u64,
) -> DeadLetterRecord {
    DeadLetterRecord {
        origin_topic: origin_topic.to_string(),
        subscription: None,
        reason: info.reason.as_str().to_string(),
        error_kind: error_kind.as_str().to_string(),
        error,
        attempts: info.attempts,
        first_failure_ms: wall_ms(epoch_wall_ms, info.first_failure),
        last_failure_ms: wall_ms(epoch_wall_ms, info.last_failure),
        origin_message_id: None,
        payload_text: None,
        payload_bytes: None,
        args: None,
    }
}
