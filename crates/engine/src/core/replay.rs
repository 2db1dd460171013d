//! Replays a sequence of driver operations against a machine under its [`oracle`](super::oracle),
//! then heals everything and checks that it settles: the shared engine of the property tests,
//! the planted-bug proofs and the fuzz targets.
//!
//! Every op is valid in every state (a `pick` chooses among whatever is running, modulo its
//! count; ops with nothing to act on are skipped), so any sequence, random or fuzzed, is a
//! legal run. A replay stops at the first [`Violation`].
//!
//! ```
//! use backstop_engine::core::replay::{replay_consumer, ConsumerOp};
//! use backstop_engine::core::{ConsumerConfig, ErrorKind};
//! let cfg = ConsumerConfig::builder().max_parallelism(2).dead_letter(true).build()?;
//! let ops = [
//!     ConsumerOp::Deliver { poison: false },
//!     ConsumerOp::Finish { pick: 0, result: Err(ErrorKind::Timeout) },
//!     ConsumerOp::JumpToTimeout,
//!     ConsumerOp::Deliver { poison: true },
//! ];
//! let report = replay_consumer(cfg, &ops).unwrap();
//! assert_eq!(report.stats.delivered, 2);
//! assert_eq!(report.stats.acked, 2); // the retry succeeded, the poison one was dead-lettered
//! # Ok::<(), backstop_engine::core::ConfigError>(())
//! ```

use std::time::Duration;

use super::breaker::BreakerState;
use super::consumer::{ConsumerAction, ConsumerConfig};
use super::error::ErrorKind;
use super::oracle::{CheckedConsumer, CheckedProducer, ConsumerStats, ProducerStats, Violation};
use super::producer::{ProducerAction, ProducerConfig};
use super::slab::Key;
use super::time::Time;

/// How many extra deliveries (or calls) the settling phase may make to give a half-open
/// breaker its probe.
const SETTLE_EXTRA: u32 = 16;
/// An upper bound on settling steps (a machine that never settles is a violation, not a hang).
const SETTLE_STEPS: u32 = 100_000;

/// One thing a consumer's driver can do.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ConsumerOp {
    /// A delivery (skipped when the machine has granted no credit).
    Deliver {
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

fn take(v: &mut Vec<Key>, pick: u8) -> Option<Key> {
    if v.is_empty() {
        None
    } else {
        Some(v.remove(usize::from(pick) % v.len()))
    }
}

fn peek(v: &[Key], pick: u8) -> Option<Key> {
    (!v.is_empty()).then(|| v[usize::from(pick) % v.len()])
}

/// A consumer under its oracle, with the driver's view of what is running.
struct ConsumerDriver {
    c: CheckedConsumer,
    now: Time,
    running: Vec<Key>,
    dlq: Vec<Key>,
    ended: Vec<Key>,
}

impl ConsumerDriver {
    fn absorb(&mut self) {
        for a in self.c.last_actions() {
            match *a {
                ConsumerAction::Invoke { key, .. } => self.running.push(key),
                ConsumerAction::PublishDlq { key, .. } => self.dlq.push(key),
                ConsumerAction::Ack { key } | ConsumerAction::Nack { key, .. } => {
                    self.running.retain(|k| *k != key);
                    self.dlq.retain(|k| *k != key);
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

/// Replays `ops` against a fresh [`ConsumerMachine`](crate::core::ConsumerMachine) with `cfg`
/// under a [`ConsumerOracle`](super::oracle::ConsumerOracle), then settles it (all runs and DLQ
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
                        rule: super::oracle::Rule::NotSettled,
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

/// Replays `ops` against a fresh [`ProducerMachine`](crate::core::ProducerMachine) under a
/// [`ProducerOracle`](super::oracle::ProducerOracle), then settles it (every body, publish and
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
