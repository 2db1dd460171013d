//! The fuzz harness for backstop's sans-IO core, shared by the cargo-fuzz targets and by
//! `cargo test` (`crates/testkit/tests/fuzz_generators.rs` includes this file as a module, so
//! paths inside it are relative: `super::`, never `crate::`).
//!
//! A case is a config and a list of ops decoded from the fuzzer's bytes, in the style of
//! quinn's `fuzz/fuzz_targets/streams.rs`, replayed against the real state machine and checked
//! after every step. The first broken rule comes back as a [`Failure`]; the fuzz targets turn
//! it into a panic (a crash for libFuzzer).
//!
//! | module | its one job |
//! |---|---|
//! | [`breaker`] | the circuit breaker, step by step against a small reference model |
//! | [`consumer`] | consumer cases for the testkit's oracle-checked `replay_consumer` |
//! | [`producer`] | producer cases for the testkit's oracle-checked `replay_producer` |
//!
//! ```
//! // Any bytes decode to some case; a case either passes or names the first broken rule.
//! assert!(backstop_fuzz::breaker::check(&[7, 1, 2, 3, 4, 5, 6, 7, 8]).is_ok());
//! assert!(backstop_fuzz::consumer::check(b"any bytes at all").is_ok());
//! ```

#![deny(missing_docs)]

pub mod breaker;
pub mod consumer;
pub mod producer;

use std::fmt;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use backstop_engine::core::{BreakerConfig, ErrorKind, KindSet, Time};
use backstop_testkit::oracle::Violation;

/// An [`ErrorKind`] drawn uniformly from [`ErrorKind::ALL`], so new kinds are fuzzed without
/// touching the harness (and without the engine's `arbitrary` feature).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AnyKind(pub ErrorKind);

impl<'a> Arbitrary<'a> for AnyKind {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(AnyKind(*u.choose(&ErrorKind::ALL)?))
    }

    fn size_hint(_depth: usize) -> (usize, Option<usize>) {
        (0, Some(1))
    }
}

/// A handler, body or publish result from one byte: half `Ok`, a quarter Connection or
/// Timeout (the kinds breakers count by default, so that runs of consecutive failures, and
/// thus an open breaker, are common), a quarter any kind.
pub fn result(u: &mut Unstructured<'_>) -> arbitrary::Result<Result<(), ErrorKind>> {
    let b = u8::arbitrary(u)?;
    Ok(match b {
        0..=127 => Ok(()),
        128..=191 if b % 2 == 0 => Err(ErrorKind::Connection),
        128..=191 => Err(ErrorKind::Timeout),
        _ => Err(ErrorKind::ALL[usize::from(b) % ErrorKind::ALL.len()]),
    })
}

/// A clock step in milliseconds: half the time short (under 256 ms: around retry delays and
/// handler runs), half the time up to about a minute (past recovery timeouts and deadlines).
pub fn clock_step(u: &mut Unstructured<'_>) -> arbitrary::Result<u16> {
    Ok(if bool::arbitrary(u)? {
        u16::arbitrary(u)?
    } else {
        u16::from(u8::arbitrary(u)?)
    })
}

/// Decodes ops with `op`, one after the other, until the bytes run out.
///
/// The derived `Vec` impls spend a byte per element on "is there another?" (or take the length
/// from the end of the data), so uniformly random bytes, as the `cargo test` driver makes them,
/// would give cases about one op long; this way every byte goes into ops.
pub fn ops<'a, T>(
    u: &mut Unstructured<'a>,
    mut op: impl FnMut(&mut Unstructured<'a>) -> arbitrary::Result<T>,
) -> arbitrary::Result<Vec<T>> {
    let mut ops = Vec::new();
    while !u.is_empty() {
        ops.push(op(u)?);
    }
    Ok(ops)
}

/// The breaker settings every target draws: small numbers, so that opening, half-opening and
/// closing all happen within a few dozen ops.
#[derive(Arbitrary, Copy, Clone, Debug, PartialEq, Eq)]
pub struct BreakerSetup {
    /// Failure threshold is `1 + threshold % 6`.
    pub threshold: u8,
    /// Recovery timeout is `1 + recovery_ms % 4000` milliseconds.
    pub recovery_ms: u16,
    /// Half-open probes are `1 + probes % 3` (the default is one; the config allows more).
    pub probes: u8,
    /// Counted kinds as a bit set over [`ErrorKind::ALL`]; 0 means the default (Connection and
    /// Timeout).
    pub counted: u8,
}

impl BreakerSetup {
    /// The failure threshold.
    pub fn threshold(&self) -> u32 {
        1 + u32::from(self.threshold % 6)
    }

    /// The recovery timeout.
    pub fn recovery(&self) -> Duration {
        Duration::from_millis(1 + u64::from(self.recovery_ms % 4000))
    }

    /// Probes admitted while half-open.
    pub fn probes(&self) -> u32 {
        1 + u32::from(self.probes % 3)
    }

    /// The counted kinds.
    pub fn counted(&self) -> KindSet {
        if self.counted == 0 {
            return KindSet::EXPECTED;
        }
        let kinds: Vec<ErrorKind> = ErrorKind::ALL
            .into_iter()
            .enumerate()
            .filter(|(i, _)| (u32::from(self.counted) >> i) & 1 != 0)
            .map(|(_, k)| k)
            .collect();
        KindSet::of(&kinds)
    }

    /// The validated config.
    pub fn config(&self) -> BreakerConfig {
        BreakerConfig::builder()
            .failure_threshold(self.threshold())
            .recovery_timeout(self.recovery())
            .half_open_probes(self.probes())
            .counted(self.counted())
            .build()
            .expect("the harness only draws valid breaker settings")
    }
}

/// The first broken rule of a case: where, when, and what went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Index of the op being replayed, when the target knows it (the breaker target does; the
    /// oracle-checked replays report the time and the key instead).
    pub step: Option<usize>,
    /// The driver's clock at that point.
    pub now: Time,
    /// What went wrong.
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.step {
            Some(i) => write!(f, "op #{i} at {}: {}", self.now, self.detail),
            None => write!(f, "at {}: {}", self.now, self.detail),
        }
    }
}

impl std::error::Error for Failure {}

impl From<Violation> for Failure {
    fn from(v: Violation) -> Failure {
        Failure {
            step: None,
            now: v.at,
            detail: v.to_string(),
        }
    }
}

/// Decodes `data` into a case the way libFuzzer's typed targets do
/// ([`Arbitrary::arbitrary_take_rest`]); `None` when the bytes do not form one.
pub fn decode<'a, T: Arbitrary<'a>>(data: &'a [u8]) -> Option<T> {
    T::arbitrary_take_rest(Unstructured::new(data)).ok()
}

/// Switches on the planted bug named by the `BACKSTOP_PLANT` environment variable (the names of
/// `backstop_engine::core::planted::Bug`'s variants), for proving the targets find it. Without
/// the `planted-bugs` feature this does nothing.
pub fn plant_from_env() {
    #[cfg(feature = "planted-bugs")]
    {
        use backstop_engine::core::planted::{self, Bug};
        let bug = match std::env::var("BACKSTOP_PLANT").as_deref() {
            Ok("AckBeforeDlqConfirmed") => Some(Bug::AckBeforeDlqConfirmed),
            Ok("OneRetryTooMany") => Some(Bug::OneRetryTooMany),
            Ok("BreakerNoReset") => Some(Bug::BreakerNoReset),
            Ok("ParallelismOffByOne") => Some(Bug::ParallelismOffByOne),
            Ok(other) => panic!("BACKSTOP_PLANT: unknown bug `{other}`"),
            Err(_) => None,
        };
        planted::set(bug);
    }
}
