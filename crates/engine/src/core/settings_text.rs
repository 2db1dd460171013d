//! How settings written as text are read: durations and subscription types. One definition for
//! the builders (at run time, through [`crate::core::parse_duration`] and
//! `SubscriptionType::from_str`) and for the `consumer`/`task` macros (at compile time: they
//! include this file as it is, so it depends on nothing but `std` and `humantime`, which both
//! crates have).

use std::time::Duration;

/// A duration as humantime (`"5s"`, `"1m 30s"`, `"250ms"`) or as plain seconds (`"30"`,
/// `"2.5"`). The error says what was wrong, without naming the setting.
pub(crate) fn duration_text(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() && (0.0..1e12).contains(&secs) {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("`{text}` is not a non-negative number of seconds"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. `5s` or `250ms`"))
}

/// The subscription type named by `text` (case, `-` and `_` ignored: `key_shared`,
/// `Key-Shared`, `KeyShared`), as the name of its `SubscriptionType` variant.
pub(crate) fn subscription_type_text(text: &str) -> Result<&'static str, String> {
    match text.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
        "shared" => Ok("Shared"),
        "exclusive" => Ok("Exclusive"),
        "failover" => Ok("Failover"),
        "keyshared" => Ok("KeyShared"),
        _ => Err(format!(
            "unknown subscription type `{text}` (shared, exclusive, failover, key_shared)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration_text("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(duration_text(" 2.5 "), Ok(Duration::from_millis(2500)));
        assert_eq!(duration_text("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(duration_text("-1").unwrap_err().contains("non-negative"));
        assert!(duration_text("soon")
            .unwrap_err()
            .contains("not a duration"));
    }

    #[test]
    fn subscription_types() {
        for (text, name) in [
            ("shared", "Shared"),
            ("Exclusive", "Exclusive"),
            ("fail_over", "Failover"),
            ("key_shared", "KeyShared"),
            ("Key-Shared", "KeyShared"),
        ] {
            assert_eq!(subscription_type_text(text), Ok(name), "{text}");
        }
        assert!(subscription_type_text("fanout")
            .unwrap_err()
            .contains("fanout"));
    }
}
