//! Fuzz harness for what backstop parses from other programs: dead-letter records (JSON body
//! and properties, possibly written by foreign tools), `ORIGIN_MESSAGE_ID` values and message
//! ids. Shared by the `dlq_record` and `message_id` cargo-fuzz targets and by
//! `cargo test -p backstop-pulsar --test fuzz_parsers` (which includes this file with `#[path]`):
//! it uses only `backstop_engine`, `backstop_pulsar` and `serde_json`.
//!
//! The rules: nothing panics; a record that parses can always be turned into a dead-letter
//! message that fits the limit it was given (whenever its fixed part does), keeping the
//! original payload's length and SHA-256; a message id survives decode → encode unchanged.

use std::collections::BTreeMap;

use backstop_engine::broker::MessageId;
use backstop_engine::runtime::{fit_dead_letter, message_size, sha256_hex, DeadLetterRecord};
use backstop_pulsar::{java_origin_message_id, PulsarMessageId};

/// A broken rule, with what broke it.
pub type Failure = String;

/// Splits `data` at its first `0xff` byte (or in the middle): (head, tail).
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    let at = data
        .iter()
        .position(|b| *b == 0xff)
        .unwrap_or(data.len() / 2);
    (&data[..at], &data[(at + 1).min(data.len())..])
}

/// Properties from bytes: `key=value` lines, values kept even when they were not UTF-8
/// (lossily, as a client library would have to).
fn properties(bytes: &[u8]) -> BTreeMap<String, String> {
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let text = String::from_utf8_lossy(line);
            text.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Dead-letter records: the head of `data` is a JSON body (a foreign or damaged record), the
/// tail a property list and the size limit.
pub fn check_dlq(data: &[u8]) -> Result<(), Failure> {
    let (body, tail) = split(data);
    let limit = 512 + usize::from(tail.first().copied().unwrap_or(0)) * 64;
    let mut props = properties(tail);
    // Property values as our own producers write them, and as anyone else might.
    props.insert("backstop.reason".into(), "exhausted".into());
    java_origin_message_id(&mut props);

    let Ok(record) = serde_json::from_slice::<DeadLetterRecord>(body) else {
        return Ok(()); // refusing garbage is fine; panicking is not
    };
    let original: Option<Vec<u8>> = record
        .payload_text
        .clone()
        .map(String::into_bytes)
        .or_else(|| record.payload_bytes.clone());
    let fixed = {
        let mut r = record.clone();
        r.payload_text = None;
        r.payload_bytes = None;
        r.args = None;
        let mut end = r.error.len().min(4096);
        while !r.error.is_char_boundary(end) {
            end -= 1;
        }
        r.error.truncate(end);
        message_size(&r.to_message(None))
    };
    let m = fit_dead_letter(record, None, limit);
    // The fixed part (topic, subscription, ids...) is never cut; whenever it leaves room
    // (with the truncation properties and JSON slack), the message fits.
    if fixed + 600 <= limit && message_size(&m) > limit {
        return Err(format!(
            "dead-letter message of {} bytes over the limit {limit} (fixed part {fixed})",
            message_size(&m)
        ));
    }
    if let (Some(p), Some(len)) = (&original, m.properties.get("backstop.payload_length")) {
        if len != &p.len().to_string() {
            return Err(format!(
                "payload length {len} recorded for {} bytes",
                p.len()
            ));
        }
        if m.properties.get("backstop.payload_sha256") != Some(&sha256_hex(p)) {
            return Err("payload SHA-256 not that of the original".into());
        }
    }
    serde_json::from_slice::<DeadLetterRecord>(&m.payload)
        .map_err(|e| format!("the fitted record does not parse back: {e}"))?;
    Ok(())
}

/// Message ids: any bytes as an engine id and as an `ORIGIN_MESSAGE_ID` text.
pub fn check_message_id(data: &[u8]) -> Result<(), Failure> {
    let id = MessageId(data.to_vec());
    if let Ok(p) = PulsarMessageId::from_message_id(&id) {
        if p.to_message_id() != id {
            return Err(format!("{p:?} does not encode back to {id}"));
        }
        let _ = p.to_string();
    }
    let mut props = BTreeMap::from([
        ("backstop.reason".to_string(), "exhausted".to_string()),
        (
            "ORIGIN_MESSAGE_ID".to_string(),
            String::from_utf8_lossy(data).into_owned(),
        ),
    ]);
    java_origin_message_id(&mut props);
    let mut props = BTreeMap::from([
        ("backstop.reason".to_string(), "exhausted".to_string()),
        ("ORIGIN_MESSAGE_ID".to_string(), id.to_string()),
    ]);
    java_origin_message_id(&mut props);
    Ok(())
}
