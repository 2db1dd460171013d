//! The retry policy: how many attempts a message or call gets and how long to wait between them.

use std::time::Duration;

use super::config_error::ConfigError;
use super::error::ErrorKind;

/// How the wait grows between attempts.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Backoff {
    /// Always `retry_delay` (the default, as in the original decorators).
    Fixed,
    /// `retry_delay * factor^(n-1)` for the n-th retry, capped at `max`, then reduced by a
    /// deterministic jitter of up to `jitter_permille`/1000 of itself.
    Exponential {
        /// Growth factor per retry (≥ 1).
        factor: u32,
        /// Upper bound of a single wait.
        max: Duration,
        /// How much of the wait may be shaved off by jitter, in thousandths (0..=1000).
        jitter_permille: u16,
    },
}

/// Retry settings; build with [`RetryPolicy::builder`].
///
/// ```
/// use backstop_engine::core::RetryPolicy;
/// use std::time::Duration;
/// let p = RetryPolicy::builder().max_retries(3).retry_delay(Duration::from_secs(5)).build()?;
/// assert_eq!(p.max_attempts(), 4);
/// assert_eq!(p.delay_before_retry(1, 42), Duration::from_secs(5));
/// # Ok::<(), backstop_engine::core::ConfigError>(())
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    max_retries: u32,
    retry_delay: Duration,
    backoff: Backoff,
    seed: u64,
}

impl Default for RetryPolicy {
    /// 3 retries, 5 s apart, fixed.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            retry_delay: Duration::from_secs(5),
            backoff: Backoff::Fixed,
            seed: 0,
        }
    }
}

impl RetryPolicy {
    /// A builder starting from the defaults.
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder {
            p: RetryPolicy::default(),
        }
    }

    /// Retries after the first attempt.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Attempts in all: `max_retries + 1`.
    pub fn max_attempts(&self) -> u32 {
        self.max_retries.saturating_add(1)
    }

    /// The base delay between attempts.
    pub fn retry_delay(&self) -> Duration {
        self.retry_delay
    }

    /// The backoff shape.
    pub fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// Whether, after `attempts_made` attempts of which the last failed with `kind`, another
    /// attempt is due.
    pub fn should_retry(&self, attempts_made: u32, kind: ErrorKind) -> bool {
        let limit = self.max_attempts();
        #[cfg(feature = "planted-bugs")]
        let limit = if crate::core::planted::active(crate::core::planted::Bug::OneRetryTooMany) {
            limit + 1
        } else {
            limit
        };
        kind.is_retryable() && attempts_made < limit
    }

    /// The wait before retry number `retry` (1 for the first retry). `key` identifies the message
    /// or call, so jitter is spread across messages yet the same on every replay.
    pub fn delay_before_retry(&self, retry: u32, key: u64) -> Duration {
        match self.backoff {
            Backoff::Fixed => self.retry_delay,
            Backoff::Exponential {
                factor,
                max,
                jitter_permille,
            } => {
                let mut d = self.retry_delay;
                for _ in 1..retry {
                    d = d.saturating_mul(factor);
                    if d >= max {
                        break;
                    }
                }
                let d = d.min(max);
                if jitter_permille == 0 {
                    return d;
                }
                let r = splitmix64(self.seed ^ splitmix64(key) ^ u64::from(retry));
                let shave = r % (u64::from(jitter_permille) + 1); // 0..=jitter_permille
                let nanos = d.as_nanos().min(u128::from(u64::MAX)) as u64;
                let kept = (u128::from(nanos) * u128::from(1000 - shave) / 1000) as u64;
                Duration::from_nanos(kept)
            }
        }
    }
}

/// Builds a validated [`RetryPolicy`].
#[derive(Clone, Debug)]
pub struct RetryPolicyBuilder {
    p: RetryPolicy,
}

impl RetryPolicyBuilder {
    /// Retries after the first attempt (0 disables retrying; at most 1000).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.p.max_retries = n;
        self
    }
    /// Base delay between attempts.
    pub fn retry_delay(mut self, d: Duration) -> Self {
        self.p.retry_delay = d;
        self
    }
    /// Exponential backoff with a cap and deterministic jitter.
    pub fn exponential(mut self, factor: u32, max: Duration, jitter_permille: u16) -> Self {
        self.p.backoff = Backoff::Exponential {
            factor,
            max,
            jitter_permille,
        };
        self
    }
    /// The seed jitter is derived from (with the message key and the attempt).
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.p.seed = seed;
        self
    }
    /// Validates and returns the policy.
    pub fn build(self) -> Result<RetryPolicy, ConfigError> {
        let p = self.p;
        if p.max_retries > 1000 {
            return Err(ConfigError::new("max_retries", "must be at most 1000"));
        }
        if p.retry_delay > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::new("retry_delay", "must be at most 24h"));
        }
        if let Backoff::Exponential {
            factor,
            max,
            jitter_permille,
        } = p.backoff
        {
            if factor == 0 {
                return Err(ConfigError::new("backoff_factor", "must be at least 1"));
            }
            if max < p.retry_delay {
                return Err(ConfigError::new(
                    "backoff_max",
                    "must be at least retry_delay",
                ));
            }
            if jitter_permille > 1000 {
                return Err(ConfigError::new("jitter", "must be at most 1000 permille"));
            }
        }
        Ok(p)
    }
}

/// A fixed, well-mixed hash (SplitMix64's finaliser); the core's only source of "randomness".
pub const fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_max_retries_plus_one() {
        let p = RetryPolicy::builder().max_retries(3).build().unwrap();
        assert!(p.should_retry(1, ErrorKind::Handler));
        assert!(p.should_retry(3, ErrorKind::Timeout));
        assert!(!p.should_retry(4, ErrorKind::Timeout));
        let none = RetryPolicy::builder().max_retries(0).build().unwrap();
        assert!(!none.should_retry(1, ErrorKind::Connection));
    }

    #[test]
    fn permanent_errors_are_never_retried() {
        let p = RetryPolicy::default();
        for k in [
            ErrorKind::Invalid,
            ErrorKind::Decode,
            ErrorKind::Rejected,
            ErrorKind::Fatal,
        ] {
            assert!(!p.should_retry(1, k), "{k}");
        }
    }

    #[test]
    fn fixed_delay_is_constant() {
        let p = RetryPolicy::builder()
            .retry_delay(Duration::from_millis(250))
            .build()
            .unwrap();
        for n in 1..10 {
            assert_eq!(
                p.delay_before_retry(n, n as u64),
                Duration::from_millis(250)
            );
        }
    }

    #[test]
    fn exponential_grows_caps_and_jitters_deterministically() {
        let p = RetryPolicy::builder()
            .retry_delay(Duration::from_secs(1))
            .exponential(2, Duration::from_secs(10), 0)
            .build()
            .unwrap();
        let ds: Vec<_> = (1..=6)
            .map(|n| p.delay_before_retry(n, 7).as_secs())
            .collect();
        assert_eq!(ds, vec![1, 2, 4, 8, 10, 10]);

        let j = RetryPolicy::builder()
            .retry_delay(Duration::from_secs(1))
            .exponential(2, Duration::from_secs(10), 500)
            .jitter_seed(99)
            .build()
            .unwrap();
        for n in 1..=6 {
            for key in 0..50 {
                let d = j.delay_before_retry(n, key);
                let full = p.delay_before_retry(n, key);
                assert!(d <= full && d >= full / 2, "{d:?} vs {full:?}");
                assert_eq!(d, j.delay_before_retry(n, key), "same inputs, same jitter");
            }
        }
        let spread: std::collections::BTreeSet<_> =
            (0..50).map(|k| j.delay_before_retry(3, k)).collect();
        assert!(spread.len() > 10, "jitter spreads messages apart");
    }

    #[test]
    fn invalid_policies_are_rejected_by_name() {
        let e = RetryPolicy::builder()
            .max_retries(5000)
            .build()
            .unwrap_err();
        assert_eq!(e.setting(), "max_retries");
        let e = RetryPolicy::builder()
            .retry_delay(Duration::from_secs(5))
            .exponential(2, Duration::from_secs(1), 0)
            .build()
            .unwrap_err();
        assert_eq!(e.setting(), "backoff_max");
        let e = RetryPolicy::builder()
            .exponential(0, Duration::from_secs(100), 0)
            .build()
            .unwrap_err();
        assert_eq!(e.setting(), "backoff_factor");
        let e = RetryPolicy::builder()
            .exponential(2, Duration::from_secs(100), 1001)
            .build()
            .unwrap_err();
        assert_eq!(e.setting(), "jitter");
    }
}
