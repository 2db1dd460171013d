//! The typed error for configuration that is rejected when it is built.

/// A setting was given a value it cannot take. Names the setting so the user can find it.
///
/// ```
/// use backstop_engine::core::BreakerConfig;
/// let err = BreakerConfig::builder().failure_threshold(0).build().unwrap_err();
/// assert_eq!(err.setting(), "failure_threshold");
/// assert!(err.to_string().contains("failure_threshold"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{setting}`: {reason}")]
pub struct ConfigError {
    setting: &'static str,
    reason: String,
}

impl ConfigError {
    /// A rejection of `setting`, with a reason a person can act on.
    pub fn new(setting: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            setting,
            reason: reason.into(),
        }
    }

    /// The name of the rejected setting (as in the builder and the macro arguments).
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// Why it was rejected.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Parses a duration as humantime (`"5s"`, `"1m 30s"`, `"250ms"`) or as plain seconds
/// (`"30"`, `"2.5"`), as the original Python settings were given.
///
/// ```
/// use backstop_engine::core::parse_duration;
/// use std::time::Duration;
/// assert_eq!(parse_duration("retry_delay", "5s").unwrap(), Duration::from_secs(5));
/// assert_eq!(parse_duration("retry_delay", "2.5").unwrap(), Duration::from_millis(2500));
/// assert!(parse_duration("retry_delay", "soon").is_err());
/// ```
pub fn parse_duration(
    setting: &'static str,
    text: &str,
) -> Result<std::time::Duration, ConfigError> {
    super::settings_text::duration_text(text).map_err(|reason| ConfigError::new(setting, reason))
}
