//! The `breaker` target: arbitrary acquire / result / release / timeout / clock ops replayed
//! against [`CircuitBreaker`] and, step by step, against [`Reference`], a minimal model of the
//! breaker contract (docs/architecture.md).
//!
//! After every op the two must agree on the state, the failure count, the probes in flight,
//! the wake-up time, whether a call would be admitted, which held permits are still current,
//! and the exact transitions (from, to, failures, time). Independently of the model, every
//! transition must follow a legal edge from the state before it, a closed breaker holds fewer
//! failures than its threshold, and half-open never holds more probes than it admits.
//!
//! ```
//! use backstop_fuzz::breaker::{run, BreakerCase, BreakerOp};
//! use backstop_fuzz::{AnyKind, BreakerSetup};
//! use backstop_engine::core::ErrorKind;
//! let setup = BreakerSetup { threshold: 0, recovery_ms: 999, probes: 0, counted: 0 };
//! let ops = vec![
//!     BreakerOp::Acquire,
//!     BreakerOp::Fail { permit: 0, kind: AnyKind(ErrorKind::Timeout) }, // threshold 1: opens
//!     BreakerOp::AdvanceToWake,                                         // half-open
//!     BreakerOp::Acquire,                                               // the probe
//!     BreakerOp::Succeed { permit: 0 },                                 // closes
//! ];
//! run(&BreakerCase { setup, ops }).unwrap();
//! ```

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use backstop_engine::core::{
    BreakerConfig, BreakerState, CircuitBreaker, ErrorKind, Permit, Refusal, Time, Transition,
};

use super::{AnyKind, BreakerSetup, Failure};

/// One input to the breaker. Permits are picked by index (modulo the number held) from the
/// permits acquired and not yet reported; an op that needs a permit when none is held does
/// nothing.
#[derive(Arbitrary, Copy, Clone, Debug, PartialEq, Eq)]
pub enum BreakerOp {
    /// `try_acquire(now)`; a granted permit is held until reported or released.
    Acquire,
    /// `on_success(now, permit)`.
    Succeed {
        /// Which held permit.
        permit: u8,
    },
    /// `on_failure(now, permit, kind)`.
    Fail {
        /// Which held permit.
        permit: u8,
        /// The failure's kind.
        kind: AnyKind,
    },
    /// `release(permit)`: the call never ran.
    Release {
        /// Which held permit.
        permit: u8,
    },
    /// `handle_timeout(now)`.
    Timeout,
    /// The clock moves forward by `ms` milliseconds.
    Advance {
        /// How far.
        ms: u16,
    },
    /// The clock moves to `poll_timeout()` (if any), then `handle_timeout`.
    AdvanceToWake,
    /// The clock jumps to just before the end of time, to exercise saturating deadlines.
    AdvanceToEndOfTime,
}

/// A whole case: settings and the ops to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakerCase {
    /// The breaker's settings.
    pub setup: BreakerSetup,
    /// The ops, in order.
    pub ops: Vec<BreakerOp>,
}

impl<'a> Arbitrary<'a> for BreakerCase {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let setup = u.arbitrary()?;
        let ops = super::ops(u, BreakerOp::arbitrary)?;
        Ok(BreakerCase { setup, ops })
    }

    fn arbitrary_take_rest(mut u: Unstructured<'a>) -> arbitrary::Result<Self> {
        Self::arbitrary(&mut u)
    }
}

/// What a case reached: how often each transition happened and how many results were stale.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct BreakerStats {
    /// Closed → open.
    pub opened: u64,
    /// Half-open → open (a probe failed).
    pub reopened: u64,
    /// Open → half-open.
    pub half_opened: u64,
    /// Half-open → closed.
    pub closed: u64,
    /// Probe permits granted.
    pub probes: u64,
    /// Refusals because every probe slot was taken.
    pub probe_busy: u64,
    /// Results and releases reported with a permit from before the last transition.
    pub stale: u64,
}

/// A slot in the reference model: the epoch it was taken in, and whether it is a probe.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
    probe: bool,
}

/// The contract, as plainly as it can be written: threshold consecutive counted failures open;
/// the recovery timeout turns open into half-open; half-open admits a fixed number of probes;
/// a probe success closes, a counted probe failure re-opens; other kinds neither count nor
/// reset (an uncounted probe result just frees its slot); results from an earlier epoch are
/// ignored.
#[derive(Clone, Debug)]
pub struct Reference {
    cfg: BreakerConfig,
    state: BreakerState,
    failures: u32,
    open_until: Time,
    epoch: u64,
    probes: u32,
    log: Vec<Transition>,
}

impl Reference {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Reference {
        Reference {
            cfg,
            state: BreakerState::Closed,
            failures: 0,
            open_until: Time::ZERO,
            epoch: 0,
            probes: 0,
            log: Vec::new(),
        }
    }

    fn go(&mut self, now: Time, to: BreakerState) {
        self.log.push(Transition {
            from: self.state,
            to,
            failures: self.failures,
            at: now,
        });
        self.state = to;
        self.epoch += 1;
        self.probes = 0;
    }

    fn trip(&mut self, now: Time) {
        self.open_until = now + self.cfg.recovery_timeout();
        self.go(now, BreakerState::Open);
    }

    /// Lets an expired open period end.
    pub fn tick(&mut self, now: Time) {
        if self.state == BreakerState::Open && now >= self.open_until {
            self.go(now, BreakerState::HalfOpen);
        }
    }

    /// Whether a call at `now` would be admitted.
    pub fn would_admit(&self, now: Time) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => now >= self.open_until,
            BreakerState::HalfOpen => self.probes < self.cfg.half_open_probes(),
        }
    }

    /// A call at `now`.
    pub fn acquire(&mut self, now: Time) -> Result<Ticket, Refusal> {
        self.tick(now);
        match self.state {
            BreakerState::Closed => Ok(Ticket {
                epoch: self.epoch,
                probe: false,
            }),
            BreakerState::Open => Err(Refusal::Open {
                until: self.open_until,
            }),
            BreakerState::HalfOpen if self.probes < self.cfg.half_open_probes() => {
                self.probes += 1;
                Ok(Ticket {
                    epoch: self.epoch,
                    probe: true,
                })
            }
            BreakerState::HalfOpen => Err(Refusal::ProbeBusy),
        }
    }

    /// The result of the call `t` was admitted for.
    pub fn result(&mut self, now: Time, t: Ticket, result: Result<(), ErrorKind>) {
        if t.epoch != self.epoch {
            return;
        }
        let state = self.state;
        match (state, result) {
            (BreakerState::Closed, Ok(())) => self.failures = 0,
            (BreakerState::HalfOpen, Ok(())) => {
                self.failures = 0;
                self.go(now, BreakerState::Closed);
            }
            (_, Err(kind)) if !self.cfg.counted().contains(kind) => {
                if state == BreakerState::HalfOpen && t.probe {
                    self.probes -= 1;
                }
            }
            (BreakerState::Closed, Err(_)) => {
                self.failures += 1;
                if self.failures >= self.cfg.failure_threshold() {
                    self.trip(now);
                }
            }
            (BreakerState::HalfOpen, Err(_)) => {
                self.failures += 1;
                self.trip(now);
            }
            // A current ticket cannot exist while open: opening starts a new epoch.
            (BreakerState::Open, _) => {}
        }
    }

    /// The call `t` was admitted for never ran.
    pub fn release(&mut self, t: Ticket) {
        if t.epoch == self.epoch && t.probe && self.state == BreakerState::HalfOpen {
            self.probes -= 1;
        }
    }

    /// When the model next needs a tick.
    pub fn wake_at(&self) -> Option<Time> {
        (self.state == BreakerState::Open).then_some(self.open_until)
    }

    /// Whether a ticket's result would still count.
    pub fn is_current(&self, t: Ticket) -> bool {
        t.epoch == self.epoch
    }
}

/// Whether `from → to` is an edge of the breaker's state graph.
pub fn legal_edge(from: BreakerState, to: BreakerState) -> bool {
    use BreakerState::*;
    matches!(
        (from, to),
        (Closed, Open) | (Open, HalfOpen) | (HalfOpen, Closed) | (HalfOpen, Open)
    )
}

struct Run {
    cb: CircuitBreaker,
    model: Reference,
    held: Vec<(Permit, Ticket)>,
    now: Time,
    step: Option<usize>,
    /// The state the emitted transitions have reached so far.
    reported: BreakerState,
    stats: BreakerStats,
}

impl Run {
    fn fail(&self, detail: String) -> Failure {
        Failure {
            step: self.step,
            now: self.now,
            detail,
        }
    }

    fn take(&mut self, pick: u8) -> Option<(Permit, Ticket)> {
        if self.held.is_empty() {
            return None;
        }
        let i = usize::from(pick) % self.held.len();
        let (p, t) = self.held.remove(i);
        if !self.model.is_current(t) {
            self.stats.stale += 1;
        }
        Some((p, t))
    }

    fn apply(&mut self, op: BreakerOp) -> Result<(), Failure> {
        match op {
            BreakerOp::Acquire => {
                let predicted = self.model.would_admit(self.now);
                let claimed = self.cb.would_admit(self.now);
                if predicted != claimed {
                    return Err(
                        self.fail(format!("would_admit says {claimed}, the model {predicted}"))
                    );
                }
                let got = self.cb.try_acquire(self.now);
                let want = self.model.acquire(self.now);
                match (got, want) {
                    (Ok(p), Ok(t)) if p.is_probe() == t.probe => {
                        self.stats.probes += u64::from(t.probe);
                        self.held.push((p, t));
                    }
                    (Err(a), Err(b)) if a == b => {
                        self.stats.probe_busy += u64::from(a == Refusal::ProbeBusy);
                    }
                    (got, want) => {
                        return Err(
                            self.fail(format!("try_acquire gave {got:?}, the model {want:?}"))
                        )
                    }
                }
                if got.is_ok() != claimed {
                    return Err(self.fail(format!(
                        "would_admit said {claimed} but try_acquire gave {got:?}"
                    )));
                }
            }
            BreakerOp::Succeed { permit } => {
                if let Some((p, t)) = self.take(permit) {
                    self.cb.on_success(self.now, p);
                    self.model.result(self.now, t, Ok(()));
                }
            }
            BreakerOp::Fail { permit, kind } => {
                if let Some((p, t)) = self.take(permit) {
                    self.cb.on_failure(self.now, p, kind.0);
                    self.model.result(self.now, t, Err(kind.0));
                }
            }
            BreakerOp::Release { permit } => {
                if let Some((p, t)) = self.take(permit) {
                    self.cb.release(p);
                    self.model.release(t);
                }
            }
            BreakerOp::Timeout => {
                self.cb.handle_timeout(self.now);
                self.model.tick(self.now);
            }
            BreakerOp::Advance { ms } => {
                self.now = self.now + Duration::from_millis(u64::from(ms));
            }
            BreakerOp::AdvanceToWake => {
                let wake = self.cb.poll_timeout();
                if wake != self.model.wake_at() {
                    return Err(self.fail(format!(
                        "poll_timeout is {wake:?}, the model {:?}",
                        self.model.wake_at()
                    )));
                }
                // An overdue wake-up (the clock ran past it without a timeout) fires now.
                if let Some(t) = wake {
                    self.now = self.now.max(t);
                }
                self.cb.handle_timeout(self.now);
                self.model.tick(self.now);
            }
            BreakerOp::AdvanceToEndOfTime => {
                self.now = self.now.max(Time::from_nanos(u64::MAX - 10_000_000_000));
            }
        }
        Ok(())
    }

    fn check(&mut self, generation_before: u32) -> Result<(), Failure> {
        let cfg = *self.cb.config();
        let mut emitted = Vec::new();
        while let Some(t) = self.cb.poll_transition() {
            emitted.push(t);
        }
        for t in &emitted {
            if t.from != self.reported || !legal_edge(t.from, t.to) {
                return Err(self.fail(format!(
                    "illegal transition {:?} → {:?} (state before: {:?})",
                    t.from, t.to, self.reported
                )));
            }
            self.reported = t.to;
            let counter = match (t.from, t.to) {
                (BreakerState::Closed, _) => &mut self.stats.opened,
                (BreakerState::Open, _) => &mut self.stats.half_opened,
                (_, BreakerState::Closed) => &mut self.stats.closed,
                _ => &mut self.stats.reopened,
            };
            *counter += 1;
        }
        let expected: Vec<Transition> = std::mem::take(&mut self.model.log);
        if emitted != expected {
            return Err(self.fail(format!("transitions {emitted:?}, the model {expected:?}")));
        }
        let bumps = self.cb.generation().wrapping_sub(generation_before);
        if bumps as usize != emitted.len() {
            return Err(self.fail(format!(
                "generation moved by {bumps} for {} transitions",
                emitted.len()
            )));
        }
        let (state, failures, probes) = (
            self.cb.state(),
            self.cb.failures(),
            self.cb.probes_in_flight(),
        );
        if state != self.reported {
            return Err(self.fail(format!(
                "state {state:?}, but the transitions say {:?}",
                self.reported
            )));
        }
        if (state, failures, probes) != (self.model.state, self.model.failures, self.model.probes) {
            return Err(self.fail(format!(
                "breaker {state:?} failures {failures} probes {probes}, model {:?} {} {}",
                self.model.state, self.model.failures, self.model.probes
            )));
        }
        if state == BreakerState::Closed && failures >= cfg.failure_threshold() {
            return Err(self.fail(format!(
                "closed with {failures} failures, threshold {}",
                cfg.failure_threshold()
            )));
        }
        if probes > cfg.half_open_probes() || (state != BreakerState::HalfOpen && probes != 0) {
            return Err(self.fail(format!("{probes} probes in flight while {state:?}")));
        }
        if self.cb.poll_timeout() != self.model.wake_at() {
            return Err(self.fail(format!(
                "poll_timeout {:?}, the model {:?}",
                self.cb.poll_timeout(),
                self.model.wake_at()
            )));
        }
        for (p, t) in &self.held {
            if self.cb.is_current(*p) != self.model.is_current(*t) {
                return Err(self.fail(format!(
                    "permit {p:?} current: {}, the model: {}",
                    self.cb.is_current(*p),
                    self.model.is_current(*t)
                )));
            }
        }
        Ok(())
    }
}

/// Replays `case`, checking after every op; the first disagreement is the error. Returns what
/// the case reached.
pub fn run(case: &BreakerCase) -> Result<BreakerStats, Failure> {
    let cfg = case.setup.config();
    let mut run = Run {
        cb: CircuitBreaker::new(cfg),
        model: Reference::new(cfg),
        held: Vec::new(),
        now: Time::ZERO,
        step: None,
        reported: BreakerState::Closed,
        stats: BreakerStats::default(),
    };
    run.check(0)?;
    for (i, op) in case.ops.iter().enumerate() {
        run.step = Some(i);
        let generation = run.cb.generation();
        run.apply(*op)?;
        run.check(generation)?;
    }
    Ok(run.stats)
}

/// Decodes `data` into a [`BreakerCase`] and [`run`]s it (undecodable bytes pass).
pub fn check(data: &[u8]) -> Result<(), Failure> {
    match super::decode::<BreakerCase>(data) {
        Some(case) => run(&case).map(drop),
        None => Ok(()),
    }
}
