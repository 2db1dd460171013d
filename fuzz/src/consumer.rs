//! The `consumer` target: an arbitrary config and arbitrary driver ops (deliveries, decodable
//! or poison; handler results of every kind for the runs in flight; DLQ confirmations and
//! failures; late results; clock jumps; shutdown), replayed by the testkit's
//! [`replay_consumer`] under the oracle (docs/architecture.md), which checks every action and event.
//!
//! After the ops, faults heal: every run in flight succeeds, every DLQ publish is confirmed,
//! the clock jumps to each wake-up and a half-open breaker gets a delivery to probe with. Then
//! nothing may be held, the breaker must be closed (unless shut down), and no timer may be
//! left.
//!
//! This module only decides what a case is: [`ConsumerSetup`] turns bytes into a valid config,
//! and [`op`] turns bytes into a [`ConsumerOp`] with weights (a derived impl would pick each op
//! equally often, so a case would shut down within about eight ops).
//!
//! ```
//! use backstop_fuzz::consumer::{run, ConsumerCase, ConsumerSetup};
//! use backstop_fuzz::BreakerSetup;
//! use backstop_testkit::replay::ConsumerOp;
//! use backstop_engine::core::ErrorKind;
//! let setup = ConsumerSetup {
//!     parallelism: 1, held_extra: 0, retries: 2, delay_ms: 100, backoff: None, dlq: true,
//!     breaker: BreakerSetup { threshold: 0, recovery_ms: 999, probes: 0, counted: 0 },
//!     mode: 0,
//! };
//! let ops = vec![
//!     ConsumerOp::Deliver { poison: false },
//!     ConsumerOp::Finish { pick: 0, result: Err(ErrorKind::Timeout) }, // opens the breaker
//!     ConsumerOp::JumpToTimeout, // the retry is due after 100 ms, but the breaker is open
//!     ConsumerOp::JumpToTimeout, // half-open after 1 s: the retry is the probe
//!     ConsumerOp::Finish { pick: 0, result: Ok(()) },
//! ];
//! let report = run(&ConsumerCase { setup, ops }).unwrap();
//! assert_eq!((report.stats.breaker_opened, report.stats.breaker_closed), (1, 1));
//! ```

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use backstop_engine::core::{ConsumerConfig, RetryPolicy, RetryStrategy};
use backstop_testkit::replay::{replay_consumer, ConsumerOp, ConsumerReport};

use super::{clock_step, result, BreakerSetup, Failure};

/// Exponential backoff settings.
#[derive(Arbitrary, Copy, Clone, Debug, PartialEq, Eq)]
pub struct BackoffSetup {
    /// Growth factor is `1 + factor % 4`.
    pub factor: u8,
    /// The cap is the retry delay plus `cap_extra_ms % 10_000` milliseconds.
    pub cap_extra_ms: u16,
    /// Jitter is `jitter_permille % 1001` thousandths.
    pub jitter_permille: u16,
}

/// The consumer settings a case draws.
#[derive(Arbitrary, Copy, Clone, Debug, PartialEq, Eq)]
pub struct ConsumerSetup {
    /// `max_parallelism` is `1 + parallelism % 6`.
    pub parallelism: u8,
    /// 0: `max_held` is the default (4 × parallelism); otherwise parallelism plus
    /// `held_extra % 6`.
    pub held_extra: u8,
    /// `max_retries` is `retries % 5`.
    pub retries: u8,
    /// `retry_delay` is `delay_ms % 5000` milliseconds (zero included).
    pub delay_ms: u16,
    /// Exponential backoff instead of a fixed delay.
    pub backoff: Option<BackoffSetup>,
    /// Whether a DLQ is configured.
    pub dlq: bool,
    /// The breaker.
    pub breaker: BreakerSetup,
    /// Where retries wait and whether keys keep their order, `mode % 4`: 0 in process,
    /// 1 in process with per-key order (`ordered`), 2 broker nacks, 3 a retry topic. The
    /// budget is the same under each (docs/retries.md).
    pub mode: u8,
}

impl ConsumerSetup {
    /// The retry strategy `mode` selects.
    pub fn strategy(&self) -> RetryStrategy {
        match self.mode % 4 {
            2 => RetryStrategy::Nack,
            3 => RetryStrategy::Topic,
            _ => RetryStrategy::InProcess,
        }
    }

    /// The validated config.
    pub fn config(&self) -> ConsumerConfig {
        let parallelism = 1 + u32::from(self.parallelism % 6);
        let max_held = match self.held_extra {
            0 => 0,
            n => parallelism + u32::from(n % 6),
        };
        let delay = Duration::from_millis(u64::from(self.delay_ms % 5000));
        let mut retry = RetryPolicy::builder()
            .max_retries(u32::from(self.retries % 5))
            .retry_delay(delay)
            .jitter_seed(u64::from(self.delay_ms));
        if let Some(b) = self.backoff {
            retry = retry.exponential(
                1 + u32::from(b.factor % 4),
                delay + Duration::from_millis(u64::from(b.cap_extra_ms % 10_000)),
                b.jitter_permille % 1001,
            );
        }
        ConsumerConfig::builder()
            .max_parallelism(parallelism)
            .max_held(max_held)
            .retry(
                retry
                    .build()
                    .expect("the harness only draws valid retry policies"),
            )
            .breaker(self.breaker.config())
            .dead_letter(self.dlq)
            .retry_strategy(self.strategy())
            .ordered(self.mode % 4 == 1)
            .build()
            .expect("the harness only draws valid consumer settings")
    }
}

/// One driver op from one selector byte plus its fields. Out of 256: deliveries 45 and keyed
/// deliveries 15 (one in eight poison; keys repeat, so an ordered consumer holds some behind
/// their key's retrying head), handler results 80, DLQ results 15, retry-topic results 10, clock steps 30, jumps to the next
/// wake-up 35, timeouts 10, late results 7, redeliveries 6, shutdown 3.
pub fn op(u: &mut Unstructured<'_>) -> arbitrary::Result<ConsumerOp> {
    Ok(match u8::arbitrary(u)? {
        0..=44 => ConsumerOp::Deliver {
            poison: u8::arbitrary(u)? < 32,
        },
        45..=59 => ConsumerOp::DeliverKeyed {
            poison: u8::arbitrary(u)? < 32,
            key: u.arbitrary()?,
        },
        60..=139 => ConsumerOp::Finish {
            pick: u.arbitrary()?,
            result: result(u)?,
        },
        140..=154 => ConsumerOp::DlqResult {
            pick: u.arbitrary()?,
            result: result(u)?,
        },
        155..=164 => ConsumerOp::RetryResult {
            pick: u.arbitrary()?,
            result: result(u)?,
        },
        165..=194 => ConsumerOp::Advance {
            millis: clock_step(u)?,
        },
        195..=229 => ConsumerOp::JumpToTimeout,
        230..=239 => ConsumerOp::Timeout,
        240..=246 => ConsumerOp::Late {
            pick: u.arbitrary()?,
        },
        247..=252 => ConsumerOp::Redeliver {
            pick: u.arbitrary()?,
            poison: u8::arbitrary(u)? < 16,
        },
        _ => ConsumerOp::Shutdown {
            grace_millis: u.arbitrary()?,
        },
    })
}

/// A whole case: settings and the ops to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerCase {
    /// The consumer's settings.
    pub setup: ConsumerSetup,
    /// The ops, in order.
    pub ops: Vec<ConsumerOp>,
}

impl<'a> Arbitrary<'a> for ConsumerCase {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let setup = u.arbitrary()?;
        let ops = super::ops(u, op)?;
        Ok(ConsumerCase { setup, ops })
    }

    fn arbitrary_take_rest(mut u: Unstructured<'a>) -> arbitrary::Result<Self> {
        Self::arbitrary(&mut u)
    }
}

/// Replays `case` under the oracle, then heals every fault and checks liveness.
pub fn run(case: &ConsumerCase) -> Result<ConsumerReport, Failure> {
    replay_consumer(case.setup.config(), &case.ops).map_err(Failure::from)
}

/// Decodes `data` into a [`ConsumerCase`] and [`run`]s it (undecodable bytes pass).
pub fn check(data: &[u8]) -> Result<(), Failure> {
    match super::decode::<ConsumerCase>(data) {
        Some(case) => run(&case).map(drop),
        None => Ok(()),
    }
}
