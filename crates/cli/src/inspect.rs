//! `dlq peek` and `dlq stats`: read the backlog of the tool's subscription without acking.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::filter::now_ms;
use crate::scan::Scan;
use crate::{CliError, DlqRecord, Filter};

/// One message as `peek` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeekItem {
    /// The record, or `None` when the message is not a dead-letter record.
    #[serde(flatten)]
    pub record: Option<DlqRecord>,
    /// Why the message is not a dead-letter record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unrecognized: Option<String>,
    /// The DLQ message id (also for unrecognized messages).
    pub dlq_id: String,
    /// The payload, as text, cut to the preview length.
    pub payload_preview: String,
}

/// Reads up to `n` records matching `filter` (unrecognized messages are shown when the filter
/// is empty). Acks nothing.
pub async fn peek(
    mut scan: Scan,
    filter: &Filter,
    n: usize,
    preview: usize,
) -> Result<Vec<PeekItem>, CliError> {
    let mut out = Vec::new();
    while out.len() < n {
        let Some(m) = scan.next().await? else { break };
        let dlq_id = backstop_pulsar::origin_message_id(&m.id);
        match DlqRecord::from_message(&m) {
            Ok(r) if filter.matches(&r) => out.push(PeekItem {
                payload_preview: r.preview(preview),
                record: Some(r),
                unrecognized: None,
                dlq_id,
            }),
            Ok(_) => {}
            Err(why) if filter.is_empty() => out.push(PeekItem {
                record: None,
                unrecognized: Some(why),
                dlq_id,
                payload_preview: String::from_utf8_lossy(&m.payload)
                    .chars()
                    .take(preview)
                    .collect(),
            }),
            Err(_) => {}
        }
    }
    if out.len() < n {
        if let Some(w) = scan.incomplete() {
            eprintln!("backstop: warning: {w}");
        }
    }
    scan.close().await?;
    Ok(out)
}

fn time(ms: Option<u64>) -> String {
    ms.map(|ms| {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    })
    .unwrap_or_else(|| "unknown".into())
}

/// The human form of one peeked message.
pub fn render_peek(i: usize, item: &PeekItem) -> String {
    let Some(r) = &item.record else {
        return format!(
            "#{i} {}  UNRECOGNIZED: {}\n   payload: {}\n",
            item.dlq_id,
            item.unrecognized.as_deref().unwrap_or(""),
            item.payload_preview
        );
    };
    let mut s = format!(
        "#{i} {}  [{:?}] reason={} kind={} attempts={} redrives={}\n",
        r.id,
        r.format,
        r.reason,
        r.error_kind,
        r.attempts
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into()),
        r.redrive_count
    );
    s += &format!(
        "   origin: {} (subscription {}, message {})\n",
        r.origin_topic,
        r.subscription.as_deref().unwrap_or("?"),
        r.origin_message_id.as_deref().unwrap_or("?")
    );
    if let Some(k) = &r.key {
        s += &format!("   key: {k}\n");
    }
    s += &format!(
        "   failed: first {}, last {}\n",
        time(r.first_failure_ms),
        time(r.last_failure_ms)
    );
    if let Some(e) = &r.error {
        s += &format!("   error: {e}\n");
    }
    if !r.properties.is_empty() {
        s += &format!("   properties: {:?}\n", r.properties);
    }
    s += &format!("   payload: {}\n", item.payload_preview);
    s
}

/// Counts of a DLQ's backlog.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Messages read.
    pub total: u64,
    /// Records matching the filter.
    pub matching: u64,
    /// Messages that are not dead-letter records.
    pub unrecognized: u64,
    /// Matching records by reason.
    pub by_reason: BTreeMap<String, u64>,
    /// Matching records by error kind.
    pub by_kind: BTreeMap<String, u64>,
    /// Matching records by origin topic.
    pub by_origin: BTreeMap<String, u64>,
    /// Matching records by subscription (`unknown` for Java/Python records).
    pub by_subscription: BTreeMap<String, u64>,
    /// Matching records by writer (`backstop`, `java`).
    pub by_format: BTreeMap<String, u64>,
    /// Matching records by age of their last failure.
    pub by_age: BTreeMap<String, u64>,
    /// Set when the scan may not have covered the whole backlog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The age bucket of a last failure at `last_ms`, seen at `now_ms`.
pub fn age_bucket(last_ms: Option<u64>, now_ms: u64) -> &'static str {
    let Some(t) = last_ms else { return "unknown" };
    let age = now_ms.saturating_sub(t) / 1000;
    match age {
        0..60 => "<1m",
        60..3600 => "1m-1h",
        3600..86_400 => "1h-1d",
        86_400..604_800 => "1d-7d",
        _ => ">7d",
    }
}

/// Counts the whole backlog. Acks nothing.
pub async fn stats(mut scan: Scan, filter: &Filter) -> Result<Stats, CliError> {
    let mut s = Stats::default();
    let now = now_ms();
    while let Some(m) = scan.next().await? {
        s.total += 1;
        let r = match DlqRecord::from_message(&m) {
            Ok(r) => r,
            Err(_) => {
                s.unrecognized += 1;
                continue;
            }
        };
        if !filter.matches(&r) {
            continue;
        }
        s.matching += 1;
        *s.by_reason.entry(r.reason.clone()).or_default() += 1;
        *s.by_kind.entry(r.error_kind.clone()).or_default() += 1;
        *s.by_origin.entry(r.origin_topic.clone()).or_default() += 1;
        *s.by_subscription
            .entry(r.subscription.clone().unwrap_or_else(|| "unknown".into()))
            .or_default() += 1;
        let format = serde_json::to_value(r.format).ok();
        let format = format.as_ref().and_then(|v| v.as_str()).unwrap_or("?");
        *s.by_format.entry(format.to_string()).or_default() += 1;
        *s.by_age
            .entry(age_bucket(r.last_failure_ms, now).to_string())
            .or_default() += 1;
    }
    s.warning = scan.incomplete();
    scan.close().await?;
    Ok(s)
}

/// The human form of the counts.
pub fn render_stats(topic: &str, s: &Stats) -> String {
    let mut out = format!(
        "{topic}: {} message(s), {} matching, {} unrecognized\n",
        s.total, s.matching, s.unrecognized
    );
    if let Some(w) = &s.warning {
        out += &format!("WARNING: {w}\n");
    }
    for (title, map) in [
        ("reason", &s.by_reason),
        ("error kind", &s.by_kind),
        ("origin topic", &s.by_origin),
        ("subscription", &s.by_subscription),
        ("written by", &s.by_format),
        ("age of last failure", &s.by_age),
    ] {
        out += &format!("by {title}:\n");
        for (k, v) in map {
            out += &format!("  {v:>8}  {k}\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_buckets() {
        let now = 10_000_000_000;
        assert_eq!(age_bucket(None, now), "unknown");
        assert_eq!(age_bucket(Some(now - 5_000), now), "<1m");
        assert_eq!(age_bucket(Some(now - 120_000), now), "1m-1h");
        assert_eq!(age_bucket(Some(now - 7_200_000), now), "1h-1d");
        assert_eq!(age_bucket(Some(now - 2 * 86_400_000), now), "1d-7d");
        assert_eq!(age_bucket(Some(now - 30 * 86_400_000), now), ">7d");
        assert_eq!(age_bucket(Some(now + 5), now), "<1m");
    }
}
