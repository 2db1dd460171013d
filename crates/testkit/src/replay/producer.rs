//! Producer replays: the ops a task's driver can do, and the replay under the oracle.

use std::time::Duration;

use backstop_engine::core::{BreakerState, ErrorKind, Key, ProducerAction, ProducerConfig, Time};

use crate::oracle::{CheckedProducer, ProducerStats, Violation};

use super::{peek, take, SETTLE_EXTRA, SETTLE_STEPS};

/// One thing a producer's driver can do.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ProducerOp {
    /// A new call.
    Call,
    /// One of the running bodies finishes.
    Body {
        /// Which (modulo the number running).
        pick: u8,
        /// Its result.
        result: Result<(), ErrorKind>,
    },
    /// One of the running publishes finishes.
    Publish {
        /// Which.
        pick: u8,
        /// Its result.
        result: Result<(), ErrorKind>,
    },
    /// One of the pending DLQ publishes finishes.
    Dlq {
        /// Which.
        pick: u8,
        /// Its result.
        result: Result<(), ErrorKind>,
    },
    /// The caller of one call in progress goes away.
    Cancel {
        /// Which (modulo the number in progress).
        pick: u8,
    },
    /// A result for a call that already completed.
    Late {
        /// Which.
        pick: u8,
    },
    /// Time passes with no input.
    Advance {
        /// How long.
        millis: u16,
    },
    /// `handle_timeout` at the current time.
    Timeout,
    /// Time jumps to `poll_timeout`, then `handle_timeout`.
    JumpToTimeout,
}

/// What a producer replay did.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ProducerReport {
    /// The oracle's counts, after settling.
    pub stats: ProducerStats,
    /// Ops applied (not skipped).
    pub applied: usize,
    /// Steps the settling phase took.
    pub settle_steps: u32,
    /// The final time.
    pub end: Time,
}

/// A producer under its oracle, with the driver's view of what is running.
struct ProducerDriver {
    p: CheckedProducer,
    now: Time,
    bodies: Vec<Key>,
    publishes: Vec<Key>,
    dlq: Vec<Key>,
    live: Vec<Key>,
    ended: Vec<Key>,
}

impl ProducerDriver {
    fn forget(&mut self, key: Key) {
        self.bodies.retain(|k| *k != key);
        self.publishes.retain(|k| *k != key);
        self.dlq.retain(|k| *k != key);
        self.live.retain(|k| *k != key);
        self.ended.push(key);
    }

    fn absorb(&mut self) {
        let actions: Vec<ProducerAction> = self.p.last_actions().to_vec();
        for a in actions {
            match a {
                ProducerAction::RunBody { call, .. } => self.bodies.push(call),
                ProducerAction::Publish { call, .. } => self.publishes.push(call),
                ProducerAction::PublishDlq { call, .. } => self.dlq.push(call),
                ProducerAction::Complete { call, .. } => self.forget(call),
            }
        }
    }

    fn apply(&mut self, op: ProducerOp) -> Result<bool, Violation> {
        let now = self.now;
        match op {
            ProducerOp::Call => {
                let k = self.p.call(now)?;
                self.live.push(k);
            }
            ProducerOp::Body { pick, result } => {
                let Some(k) = take(&mut self.bodies, pick) else {
                    return Ok(false);
                };
                self.p.body(now, k, result)?;
            }
            ProducerOp::Publish { pick, result } => {
                let Some(k) = take(&mut self.publishes, pick) else {
                    return Ok(false);
                };
                self.p.publish(now, k, result)?;
            }
            ProducerOp::Dlq { pick, result } => {
                let Some(k) = take(&mut self.dlq, pick) else {
                    return Ok(false);
                };
                self.p.dlq(now, k, result)?;
            }
            ProducerOp::Cancel { pick } => {
                let Some(k) = peek(&self.live, pick) else {
                    return Ok(false);
                };
                self.p.cancel(now, k)?;
                self.forget(k);
            }
            ProducerOp::Late { pick } => {
                let Some(k) = peek(&self.ended, pick) else {
                    return Ok(false);
                };
                match pick % 3 {
                    0 => self.p.body(now, k, Ok(()))?,
                    1 => self.p.publish(now, k, Ok(()))?,
                    _ => self.p.dlq(now, k, Ok(()))?,
                };
            }
            ProducerOp::Advance { millis } => {
                self.now = now + Duration::from_millis(u64::from(millis));
                return Ok(true);
            }
            ProducerOp::Timeout => self.p.timeout(now)?,
            ProducerOp::JumpToTimeout => {
                let Some(t) = self.p.poll_timeout() else {
                    return Ok(false);
                };
                self.now = now.max(t);
                self.p.timeout(self.now)?;
            }
        }
        self.absorb();
        Ok(true)
    }

    fn settle(&mut self) -> Result<u32, Violation> {
        let mut extra = 0;
        for step in 0..SETTLE_STEPS {
            let now = self.now;
            if let Some(k) = take(&mut self.bodies, 0) {
                self.p.body(now, k, Ok(()))?;
            } else if let Some(k) = take(&mut self.publishes, 0) {
                self.p.publish(now, k, Ok(()))?;
            } else if let Some(k) = take(&mut self.dlq, 0) {
                self.p.dlq(now, k, Ok(()))?;
            } else if let Some(t) = self.p.poll_timeout() {
                self.now = now.max(t);
                self.p.timeout(self.now)?;
            } else if self.p.machine().breaker_state() != BreakerState::Closed
                && extra < SETTLE_EXTRA
            {
                extra += 1;
                let k = self.p.call(now)?;
                self.live.push(k);
            } else {
                self.p.settle_check()?;
                if self.p.machine().breaker_state() != BreakerState::Closed {
                    return Err(Violation {
                        rule: crate::oracle::Rule::NotSettled,
                        at: now,
                        key: None,
                        detail: format!(
                            "breaker still {} after {SETTLE_EXTRA} probe calls",
                            self.p.machine().breaker_state().as_str()
                        ),
                    });
                }
                return Ok(step);
            }
            self.absorb();
        }
        self.p.settle_check()?;
        Ok(SETTLE_STEPS)
    }
}

/// Replays `ops` against a fresh [`ProducerMachine`](backstop_engine::core::ProducerMachine) under a
/// [`ProducerOracle`](crate::oracle::ProducerOracle), then settles it (every body, publish and
/// DLQ publish succeeds, time advances, probe calls close the breaker) and checks liveness.
pub fn replay_producer(
    cfg: ProducerConfig,
    ops: &[ProducerOp],
) -> Result<ProducerReport, Violation> {
    let mut d = ProducerDriver {
        p: CheckedProducer::new(cfg),
        now: Time::ZERO,
        bodies: Vec::new(),
        publishes: Vec::new(),
        dlq: Vec::new(),
        live: Vec::new(),
        ended: Vec::new(),
    };
    let mut applied = 0;
    for op in ops {
        if d.apply(*op)? {
            applied += 1;
        }
    }
    let settle_steps = d.settle()?;
    Ok(ProducerReport {
        stats: *d.p.oracle().stats(),
        applied,
        settle_steps,
        end: d.now,
    })
}
