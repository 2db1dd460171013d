//! Which records a command looks at: `--reason`, `--kind`, `--key`, `--origin`, `--since`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{CliError, DlqRecord};

/// A conjunction of optional conditions; the empty filter matches every record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The record's reason (`exhausted`, `permanent`, `decode`).
    pub reason: Option<String>,
    /// The last error's kind (`timeout`, `connection`, `invalid`, ...).
    pub kind: Option<String>,
    /// The message key.
    pub key: Option<String>,
    /// The origin topic (short or full name).
    pub origin: Option<String>,
    /// Last failure at or after this time, ms since the Unix epoch. Records without failure
    /// times (Java/Python client records) do not match.
    pub since_ms: Option<u64>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `--since`: a duration back from `now_ms` (`90s`, `2h`) or an RFC 3339 time.
///
/// ```
/// use backstop_cli::filter::parse_since;
/// assert_eq!(parse_since("2s", 10_000).unwrap(), 8_000);
/// assert_eq!(parse_since("1970-01-01T00:00:05Z", 0).unwrap(), 5_000);
/// assert!(parse_since("yesterday-ish", 0).is_err());
/// ```
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64, CliError> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms.saturating_sub(d.as_millis() as u64));
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| {
            t.duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_millis() as u64
        })
        .map_err(|_| {
            CliError::Invalid(format!(
                "--since `{s}`: expected a duration (90s, 2h) or an RFC 3339 time"
            ))
        })
}

fn same_topic(a: &str, b: &str) -> bool {
    let full = |t: &str| {
        crate::topic::Topic::parse(t)
            .map(|t| t.full)
            .unwrap_or_else(|_| t.to_string())
    };
    full(a) == full(b)
}

impl Filter {
    /// True when no condition is set.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether `r` satisfies every condition set.
    pub fn matches(&self, r: &DlqRecord) -> bool {
        self.reason.as_deref().is_none_or(|x| x == r.reason)
            && self.kind.as_deref().is_none_or(|x| x == r.error_kind)
            && self
                .key
                .as_deref()
                .is_none_or(|x| r.key.as_deref() == Some(x))
            && self
                .origin
                .as_deref()
                .is_none_or(|x| same_topic(x, &r.origin_topic))
            && self
                .since_ms
                .is_none_or(|t| r.last_failure_ms.is_some_and(|l| l >= t))
    }
}
