//! Dead-letter records that always fit the broker: a record whose payload, arguments or copied
//! properties would make the message larger than [`DLQ_MESSAGE_LIMIT`] is published anyway,
//! with those parts truncated and the original length and SHA-256 kept in properties. A DLQ
//! publish that the broker must refuse for its size would otherwise fail every time: a consumer
//! would nack and get the same message back forever.
//!
//! Properties set on a truncated record (all values are text):
//! - `backstop.payload_truncated` = `true`, `backstop.payload_length` = the original payload's
//!   length in bytes, `backstop.payload_sha256` = its SHA-256 (lowercase hex);
//! - `backstop.args_truncated`, `backstop.args_length`, `backstop.args_sha256` likewise for a
//!   task's arguments (their JSON text); the record's `args` then holds a prefix of that text
//!   as a JSON string;
//! - `backstop.truncated_properties` = the names of copied properties whose values were cut to
//!   [`PROPERTY_VALUE_LIMIT`] bytes (comma separated).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::dlq::DeadLetterRecord;
use crate::broker::{OutgoingMessage, ReceivedMessage};

/// The largest dead-letter message (body plus property keys and values) backstop publishes:
/// Pulsar's default `maxMessageSize` (5 MiB) less 64 KiB for the message's metadata.
pub const DLQ_MESSAGE_LIMIT: usize = 5 * 1024 * 1024 - 64 * 1024;

/// The longest property value copied into or written on a dead-letter message, in bytes.
pub const PROPERTY_VALUE_LIMIT: usize = 4 * 1024;

/// The SHA-256 of `bytes` in lowercase hex.
///
/// ```
/// use backstop_engine::runtime::sha256_hex;
/// assert_eq!(
///     sha256_hex(b"abc"),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The message for `record` (as [`DeadLetterRecord::to_message`]) made to fit [`DLQ_MESSAGE_LIMIT`].
pub(crate) fn fitted_message(
    record: DeadLetterRecord,
    origin: Option<&ReceivedMessage>,
) -> OutgoingMessage {
    fit_dead_letter(record, origin, DLQ_MESSAGE_LIMIT)
}

/// Bytes a message counts against the limit: body plus property keys and values.
pub fn message_size(m: &OutgoingMessage) -> usize {
    m.payload.len()
        + m.properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Cuts property values longer than [`PROPERTY_VALUE_LIMIT`], noting which.
fn cap_properties(properties: &mut BTreeMap<String, String>) {
    let mut cut = Vec::new();
    for (k, v) in properties.iter_mut() {
        if v.len() > PROPERTY_VALUE_LIMIT {
            *v = prefix(v, PROPERTY_VALUE_LIMIT).to_string();
            cut.push(prefix(k, 256).to_string());
        }
    }
    // Keys are not cut; a huge key (rare, foreign) is dropped with its value.
    let huge: Vec<String> = properties
        .keys()
        .filter(|k| k.len() > 1024)
        .cloned()
        .collect();
    for k in huge {
        properties.remove(&k);
        cut.push(format!("{}…", prefix(&k, 64)));
    }
    if !cut.is_empty() {
        let list = cut.join(",");
        properties.insert(
            "backstop.truncated_properties".into(),
            prefix(&list, PROPERTY_VALUE_LIMIT).to_string(),
        );
    }
}

/// [`fitted_message`] with an explicit `limit` (tests use small ones). Never panics; the result
/// is at most `limit` bytes whenever the record without payload and arguments fits.
pub fn fit_dead_letter(
    mut record: DeadLetterRecord,
    origin: Option<&ReceivedMessage>,
    limit: usize,
) -> OutgoingMessage {
    record.error = prefix(&record.error, PROPERTY_VALUE_LIMIT).to_string();
    let mut message = record.to_message(origin);
    cap_properties(&mut message.properties);
    if message_size(&message) <= limit {
        return message;
    }

    // What the record is without its payload and arguments; the rest of the budget is theirs.
    let payload: Option<Vec<u8>> = match (record.payload_text.take(), record.payload_bytes.take()) {
        (Some(t), _) => Some(t.into_bytes()),
        (None, Some(b)) => Some(b),
        (None, None) => None,
    };
    let args_text = record
        .args
        .take()
        .map(|a| serde_json::to_string(&a).unwrap_or_default());
    let mut extra = BTreeMap::new();
    if let Some(p) = &payload {
        extra.insert("backstop.payload_truncated".to_string(), "true".to_string());
        extra.insert("backstop.payload_length".to_string(), p.len().to_string());
        extra.insert("backstop.payload_sha256".to_string(), sha256_hex(p));
    }
    if let Some(a) = &args_text {
        extra.insert("backstop.args_truncated".to_string(), "true".to_string());
        extra.insert("backstop.args_length".to_string(), a.len().to_string());
        extra.insert("backstop.args_sha256".to_string(), sha256_hex(a.as_bytes()));
    }
    let mut base = record.to_message(origin);
    cap_properties(&mut base.properties);
    base.properties.extend(extra.clone());
    // Room for the JSON around each part ("payload_text":"..." is already counted as null).
    let budget = limit.saturating_sub(message_size(&base) + 64);
    let share = if payload.is_some() && args_text.is_some() {
        budget / 2
    } else {
        budget
    };

    if let Some(p) = &payload {
        match std::str::from_utf8(p) {
            // JSON escapes a character in at most 6 bytes (\u00XX).
            Ok(text) => record.payload_text = Some(prefix(text, share / 6).to_string()),
            // A byte is at most 4 bytes of a JSON array ("255,").
            Err(_) => record.payload_bytes = Some(p[..p.len().min(share / 4)].to_vec()),
        }
    }
    if let Some(a) = &args_text {
        record.args = Some(serde_json::Value::String(prefix(a, share / 6).to_string()));
    }
    let mut message = record.to_message(origin);
    cap_properties(&mut message.properties);
    message.properties.extend(extra);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> DeadLetterRecord {
        DeadLetterRecord {
            origin_topic: "orders".into(),
            subscription: Some("svc".into()),
            reason: "permanent".into(),
            error_kind: "invalid".into(),
            error: "bad".into(),
            attempts: 1,
            first_failure_ms: 1,
            last_failure_ms: 2,
            origin_message_id: Some("00ff".into()),
            payload_text: None,
            payload_bytes: None,
            args: None,
        }
    }

    #[test]
    fn small_records_are_untouched() {
        let r = record().with_payload(b"hello");
        let m = fit_dead_letter(r.clone(), None, 1 << 20);
        assert_eq!(m, r.to_message(None));
    }

    #[test]
    fn a_big_binary_payload_is_cut_keeping_length_and_hash() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 | 0x80).collect();
        let limit = 64 * 1024;
        let m = fit_dead_letter(record().with_payload(&payload), None, limit);
        assert!(message_size(&m) <= limit, "{}", message_size(&m));
        assert_eq!(m.properties["backstop.payload_truncated"], "true");
        assert_eq!(m.properties["backstop.payload_length"], "200000");
        assert_eq!(
            m.properties["backstop.payload_sha256"],
            sha256_hex(&payload)
        );
        let body: DeadLetterRecord = serde_json::from_slice(&m.payload).unwrap();
        let kept = body.payload_bytes.unwrap();
        assert!(!kept.is_empty() && payload.starts_with(&kept));
    }

    #[test]
    fn text_with_escapes_and_args_fit_too() {
        let text = "\u{1}\"é".repeat(50_000);
        let mut r = record().with_payload(text.as_bytes());
        r.args = Some(serde_json::json!({"blob": "x\n".repeat(100_000)}));
        let limit = 32 * 1024;
        let m = fit_dead_letter(r, None, limit);
        assert!(message_size(&m) <= limit, "{}", message_size(&m));
        let body: DeadLetterRecord = serde_json::from_slice(&m.payload).unwrap();
        assert!(text.starts_with(&body.payload_text.unwrap()));
        assert!(matches!(body.args, Some(serde_json::Value::String(_))));
        assert_eq!(m.properties["backstop.args_truncated"], "true");
    }

    #[test]
    fn huge_property_values_and_keys_are_cut() {
        let mut props = BTreeMap::new();
        props.insert("big".to_string(), "é".repeat(1_000_000));
        props.insert("k".repeat(5000), "x".into());
        props.insert("ok".to_string(), "small".into());
        cap_properties(&mut props);
        assert!(props["big"].len() <= PROPERTY_VALUE_LIMIT);
        assert!("é".repeat(1_000_000).starts_with(&props["big"]));
        assert_eq!(props["ok"], "small");
        assert!(props["backstop.truncated_properties"].contains("big"));
        assert!(!props.contains_key(&"k".repeat(5000)));
        let mut r = record().with_payload(b"p");
        r.error = "e".repeat(100_000);
        let m = fit_dead_letter(r, None, 64 * 1024);
        assert!(message_size(&m) <= 64 * 1024);
        assert!(m.properties["backstop.error"].len() <= PROPERTY_VALUE_LIMIT);
    }
}
