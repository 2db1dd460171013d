//! Consumer replays: the ops a consumer's driver can do, and the replay under the oracle.

use std::time::Duration;

use backstop_engine::core::{BreakerState, ConsumerAction, ConsumerConfig, ErrorKind, Key, Time};

use crate::oracle::{CheckedConsumer, ConsumerStats, Violation};

use super::{peek, take, SETTLE_EXTRA, SETTLE_STEPS};

/// One thing a consumer's driver can do.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ConsumerOp {
    /// A delivery (skipped when the machine has granted no credit).
    Deliver {
        /// Whether the payload fails to decode.
        poison: bool,
    },
    /// A delivery with an ordering key (skipped when the machine has granted no credit).
    DeliverKeyed {
        /// Whether the payload fails to decode.
        poison: bool,
        /// Its ordering key (modulo 4, so keys repeat).
        key: u8,
    },
    /// The broker delivers again a message whose delivery already ended: after a nack, or a
    /// duplicate after a lost ack (skipped without credit or when nothing ended).
    Redeliver {
        /// Which ended delivery's message (modulo the number ended).
        pick: u8,
        /// Whether the payload fails to decode.
        poison: bool,
    },
    /// One of the running handlers finishes.
    Finish {
        /// Which (modulo the number running).
        pick: u8,
        /// Its result.
        result: Result<(), ErrorKind>,
    },
    /// One of the pending DLQ publishes finishes.
    DlqResult {
        /// Which (modulo the number pending).
        pick: u8,
        /// Its result.
        result: Result<(), ErrorKind>,
    },
    /// One of the pending retry-topic publishes finishes.
    RetryResult {
        /// Which (modulo the number pending).
        pick: u8,
        /// Its result.
        result: Result<(), ErrorKind>,
    },
    /// A result for a delivery that already ended (a late or duplicate report).
    Late {
        /// Which (modulo the number ended).
        pick: u8,
    },
    /// Time passes with no input.
    Advance {
        /// How long.
        millis: u16,
    },
    /// `handle_timeout` at the current time.
    Timeout,
    /// Time jumps to `poll_timeout`, then `handle_timeout` (skipped when there is none).
    JumpToTimeout,
    /// Graceful shutdown with a grace period.
    Shutdown {
        /// The grace period.
        grace_millis: u16,
    },
}

/// What a consumer replay did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ConsumerReport {
    /// The oracle's counts, after settling.
    pub stats: ConsumerStats,
    /// Ops applied (not skipped).
    pub applied: usize,
    /// Steps the settling phase took.
    pub settle_steps: u32,
    /// The final time.
    pub end: Time,
}

/// A consumer under its oracle, with the driver's view of what is running.
struct ConsumerDriver {
    c: CheckedConsumer,
    now: Time,
    running: Vec<Key>,
    dlq: Vec<Key>,
    retry: Vec<Key>,
    ended: Vec<Key>,
}

impl ConsumerDriver {
    fn absorb(&mut self) {
        for a in self.c.last_actions() {
            match *a {
                ConsumerAction::Invoke { key, .. } => self.running.push(key),
                ConsumerAction::PublishDlq { key, .. } => self.dlq.push(key),
                ConsumerAction::PublishRetry { key, .. } => self.retry.push(key),
                ConsumerAction::Ack { key } | ConsumerAction::Nack { key, .. } => {
                    self.running.retain(|k| *k != key);
                    self.dlq.retain(|k| *k != key);
                    self.retry.retain(|k| *k != key);
                    self.ended.push(key);
                }
                _ => {}
            }
        }
    }

    /// Applies `op`; `Ok(false)` when it was skipped.
    fn apply(&mut self, op: ConsumerOp) -> Result<bool, Violation> {
        let now = self.now;
        match op {
            ConsumerOp::Deliver { poison } => {
                if self.c.machine().credit() == 0 {
                    return Ok(false);
                }
                self.c.deliver(now, !poison)?;
            }
            ConsumerOp::DeliverKeyed { poison, key } => {
                if self.c.machine().credit() == 0 {
                    return Ok(false);
                }
                self.c
                    .deliver_keyed(now, !poison, Some(u64::from(key % 4)))?;
            }
            ConsumerOp::Redeliver { pick, poison } => {
                if self.c.machine().credit() == 0 {
                    return Ok(false);
                }
                let Some(k) = peek(&self.ended, pick) else {
                    return Ok(false);
                };
                // The broker redelivers a message once its delivery ended, not while it is held.
                let oracle = self.c.oracle();
                if oracle.message_of(k).is_some_and(|m| oracle.message_held(m)) {
                    return Ok(false);
                }
                self.c.redeliver(now, !poison, k)?;
            }
            ConsumerOp::Finish { pick, result } => {
                let Some(k) = take(&mut self.running, pick) else {
                    return Ok(false);
                };
                self.c.finish(now, k, result)?;
            }
            ConsumerOp::DlqResult { pick, result } => {
                let Some(k) = take(&mut self.dlq, pick) else {
                    return Ok(false);
                };
                self.c.dlq_result(now, k, result)?;
            }
            ConsumerOp::RetryResult { pick, result } => {
                let Some(k) = take(&mut self.retry, pick) else {
                    return Ok(false);
                };
                self.c.retry_result(now, k, result)?;
            }
            ConsumerOp::Late { pick } => {
                let Some(k) = peek(&self.ended, pick) else {
                    return Ok(false);
                };
                if pick % 2 == 0 {
                    self.c.finish(now, k, Ok(()))?;
                } else {
                    self.c.dlq_result(now, k, Ok(()))?;
                }
            }
            ConsumerOp::Advance { millis } => {
                self.now = now + Duration::from_millis(u64::from(millis));
                return Ok(true);
            }
            ConsumerOp::Timeout => self.c.timeout(now)?,
            ConsumerOp::JumpToTimeout => {
                let Some(t) = self.c.poll_timeout() else {
                    return Ok(false);
                };
                self.now = now.max(t);
                self.c.timeout(self.now)?;
            }
            ConsumerOp::Shutdown { grace_millis } => {
                let deadline = now + Duration::from_millis(u64::from(grace_millis));
                self.c.shutdown(now, deadline)?;
            }
        }
        self.absorb();
        Ok(true)
    }

    /// Heals: every run and DLQ publish succeeds, time runs to each deadline, a half-open breaker
    /// gets a delivery to probe with. Then checks that everything settled.
    fn settle(&mut self) -> Result<u32, Violation> {
        let mut extra = 0;
        for step in 0..SETTLE_STEPS {
            let now = self.now;
            let m = self.c.machine();
            if let Some(k) = self.running.first().copied() {
                self.running.remove(0);
                self.c.finish(now, k, Ok(()))?;
            } else if let Some(k) = self.dlq.first().copied() {
                self.dlq.remove(0);
                self.c.dlq_result(now, k, Ok(()))?;
            } else if let Some(k) = self.retry.first().copied() {
                self.retry.remove(0);
                self.c.retry_result(now, k, Ok(()))?;
            } else if !m.is_shutting_down()
                && m.breaker_state() == BreakerState::HalfOpen
                && m.credit() > 0
                && extra < SETTLE_EXTRA
            {
                extra += 1;
                self.c.deliver(now, true)?;
            } else if let Some(t) = self.c.poll_timeout() {
                self.now = now.max(t);
                self.c.timeout(self.now)?;
            } else {
                self.c.settle_check()?;
                return Ok(step);
            }
            self.absorb();
        }
        self.c.settle_check()?;
        Ok(SETTLE_STEPS)
    }
}

/// Replays `ops` against a fresh [`ConsumerMachine`](backstop_engine::core::ConsumerMachine) with `cfg`
/// under a [`ConsumerOracle`](crate::oracle::ConsumerOracle), then settles it (all runs and DLQ
/// publishes succeed, time advances to every deadline) and checks liveness.
pub fn replay_consumer(
    cfg: ConsumerConfig,
    ops: &[ConsumerOp],
) -> Result<ConsumerReport, Violation> {
    let mut d = ConsumerDriver {
        c: CheckedConsumer::new(cfg)?,
        now: Time::ZERO,
        running: Vec::new(),
        dlq: Vec::new(),
        retry: Vec::new(),
        ended: Vec::new(),
    };
    let mut applied = 0;
    for op in ops {
        if d.apply(*op)? {
            applied += 1;
        }
    }
    let settle_steps = d.settle()?;
    Ok(ConsumerReport {
        stats: *d.c.oracle().stats(),
        applied,
        settle_steps,
        end: d.now,
    })
}
