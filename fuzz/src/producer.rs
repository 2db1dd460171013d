//! The `producer` target: an arbitrary config and arbitrary driver ops (calls; body, publish
//! and DLQ results of every kind; cancellations; late results; clock jumps), replayed by the
//! testkit's [`replay_producer`] under its oracle.
//!
//! After the ops, faults heal: every body and publish succeeds, every DLQ publish is confirmed,
//! the clock jumps to each wake-up, and probe calls close the breaker. Then no call may be in
//! progress, no timer left, and the breaker must be closed.
//!
//! As in [`consumer`](super::consumer), this module only decides what a case is: a valid config
//! from [`ProducerSetup`], and weighted ops from [`op`].
//!
//! ```
//! use backstop_fuzz::producer::{run, ProducerCase, ProducerSetup};
//! use backstop_fuzz::BreakerSetup;
//! use backstop_testkit::replay::ProducerOp;
//! use backstop_engine::core::ErrorKind;
//! let setup = ProducerSetup {
//!     retries: 1, delay_ms: 10, dlq: true,
//!     breaker: BreakerSetup { threshold: 5, recovery_ms: 0, probes: 0, counted: 0 },
//! };
//! let ops = vec![
//!     ProducerOp::Call,
//!     ProducerOp::Body { pick: 0, result: Ok(()) },
//!     ProducerOp::Publish { pick: 0, result: Err(ErrorKind::Rejected) }, // permanent
//!     ProducerOp::Dlq { pick: 0, result: Ok(()) },
//! ];
//! let report = run(&ProducerCase { setup, ops }).unwrap();
//! assert_eq!((report.stats.failed, report.stats.dlq_requested), (1, 1));
//! ```

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use backstop_engine::core::{ProducerConfig, RetryPolicy};
use backstop_testkit::replay::{replay_producer, ProducerOp, ProducerReport};

use super::{clock_step, result, BreakerSetup, Failure};

/// The producer settings a case draws.
#[derive(Arbitrary, Copy, Clone, Debug, PartialEq, Eq)]
pub struct ProducerSetup {
    /// `max_retries` is `retries % 5`.
    pub retries: u8,
    /// `retry_delay` is `delay_ms % 5000` milliseconds (zero included).
    pub delay_ms: u16,
    /// Whether a DLQ is configured.
    pub dlq: bool,
    /// The breaker.
    pub breaker: BreakerSetup,
}

impl ProducerSetup {
    /// The validated config.
    pub fn config(&self) -> ProducerConfig {
        let retry = RetryPolicy::builder()
            .max_retries(u32::from(self.retries % 5))
            .retry_delay(Duration::from_millis(u64::from(self.delay_ms % 5000)))
            .build()
            .expect("the harness only draws valid retry policies");
        ProducerConfig::builder()
            .retry(retry)
            .breaker(self.breaker.config())
            .dead_letter(self.dlq)
            .build()
            .expect("the harness only draws valid producer settings")
    }
}

/// Calls per case; further call selectors decode as a jump to the next wake-up. The oracle's
/// per-step checks are linear in the calls it tracks, so unbounded calls made long inputs
/// quadratic (hundreds of calls, a few hundred executions per second) without reaching new
/// behaviour.
pub const MAX_CALLS: usize = 40;

/// One driver op from one selector byte plus its fields. Out of 256: calls 50, body results
/// 50, publish results 40, DLQ results 20, clock steps 30, jumps to the next wake-up 35,
/// timeouts 5, late results 14, cancellations 12.
pub fn op(u: &mut Unstructured<'_>) -> arbitrary::Result<ProducerOp> {
    Ok(match u8::arbitrary(u)? {
        0..=49 => ProducerOp::Call,
        50..=99 => ProducerOp::Body {
            pick: u.arbitrary()?,
            result: result(u)?,
        },
        100..=139 => ProducerOp::Publish {
            pick: u.arbitrary()?,
            result: result(u)?,
        },
        140..=159 => ProducerOp::Dlq {
            pick: u.arbitrary()?,
            result: result(u)?,
        },
        160..=189 => ProducerOp::Advance {
            millis: clock_step(u)?,
        },
        190..=224 => ProducerOp::JumpToTimeout,
        225..=229 => ProducerOp::Timeout,
        230..=243 => ProducerOp::Late {
            pick: u.arbitrary()?,
        },
        _ => ProducerOp::Cancel {
            pick: u.arbitrary()?,
        },
    })
}

/// A whole case: settings and the ops to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerCase {
    /// The producer's settings.
    pub setup: ProducerSetup,
    /// The ops, in order.
    pub ops: Vec<ProducerOp>,
}

impl<'a> Arbitrary<'a> for ProducerCase {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let setup = u.arbitrary()?;
        let mut calls = 0;
        let ops = super::ops(u, |u| {
            Ok(match op(u)? {
                ProducerOp::Call if calls >= MAX_CALLS => ProducerOp::JumpToTimeout,
                ProducerOp::Call => {
                    calls += 1;
                    ProducerOp::Call
                }
                other => other,
            })
        })?;
        Ok(ProducerCase { setup, ops })
    }

    fn arbitrary_take_rest(mut u: Unstructured<'a>) -> arbitrary::Result<Self> {
        Self::arbitrary(&mut u)
    }
}

/// Replays `case` under the oracle, then heals every fault and checks liveness.
pub fn run(case: &ProducerCase) -> Result<ProducerReport, Failure> {
    replay_producer(case.setup.config(), &case.ops).map_err(Failure::from)
}

/// Decodes `data` into a [`ProducerCase`] and [`run`]s it (undecodable bytes pass).
pub fn check(data: &[u8]) -> Result<(), Failure> {
    match super::decode::<ProducerCase>(data) {
        Some(case) => run(&case).map(drop),
        None => Ok(()),
    }
}
