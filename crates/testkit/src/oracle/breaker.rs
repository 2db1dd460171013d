//! The reference circuit breaker and the checks on reported transitions.

use std::time::Duration;

use backstop_engine::core::{BreakerConfig, BreakerState, ErrorKind, KindSet, Time, Transition};

use super::{violation, Rule, Violation};

/// A slot taken in the [`BreakerModel`]: the epoch it was taken in and whether it is a probe.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The model's epoch (bumped at every transition) when the slot was taken.
    pub epoch: u64,
    /// Whether it is a half-open probe.
    pub probe: bool,
}

/// The reference circuit breaker: the breaker rules (docs/architecture.md) written as plainly as possible,
/// independently of [`CircuitBreaker`](backstop_engine::core::CircuitBreaker).
///
/// ```
/// use backstop_testkit::oracle::BreakerModel;
/// use backstop_engine::core::{BreakerConfig, BreakerState, ErrorKind, Time};
/// let mut b = BreakerModel::new(&BreakerConfig::default());
/// for _ in 0..5 {
///     let t = b.admit().unwrap();
///     b.result(Time::ZERO, t, Err(ErrorKind::Timeout));
/// }
/// assert_eq!(b.state(), BreakerState::Open);
/// b.advance(Time::from_secs(30));
/// assert_eq!(b.state(), BreakerState::HalfOpen);
/// ```
#[derive(Clone, Debug)]
pub struct BreakerModel {
    threshold: u32,
    recovery: Duration,
    probe_limit: u32,
    counted: KindSet,
    state: BreakerState,
    failures: u32,
    reopen_at: Time,
    epoch: u64,
    probes: u32,
    log: Vec<(BreakerState, BreakerState)>,
}

impl BreakerModel {
    /// A closed breaker with `cfg`'s settings.
    pub fn new(cfg: &BreakerConfig) -> BreakerModel {
        BreakerModel {
            threshold: cfg.failure_threshold(),
            recovery: cfg.recovery_timeout(),
            probe_limit: cfg.half_open_probes(),
            counted: cfg.counted(),
            state: BreakerState::Closed,
            failures: 0,
            reopen_at: Time::ZERO,
            epoch: 0,
            probes: 0,
            log: Vec::new(),
        }
    }

    /// The state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Consecutive counted failures.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Probes out in half-open.
    pub fn probes_in_flight(&self) -> u32 {
        self.probes
    }

    /// Probes the half-open state admits.
    pub fn probe_limit(&self) -> u32 {
        self.probe_limit
    }

    /// The current epoch (bumped at every transition).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// When an open breaker turns half-open, or `None` when not open.
    pub fn reopen_at(&self) -> Option<Time> {
        (self.state == BreakerState::Open).then_some(self.reopen_at)
    }

    /// Lets time pass: open turns half-open once the recovery timeout is over.
    pub fn advance(&mut self, now: Time) {
        if self.state == BreakerState::Open && now >= self.reopen_at {
            self.go(BreakerState::HalfOpen);
        }
    }

    /// Whether a call would be admitted now (after [`advance`](Self::advance)).
    pub fn admits(&self) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => self.probes < self.probe_limit,
        }
    }

    /// Takes a slot if one is free.
    pub fn admit(&mut self) -> Option<Ticket> {
        if !self.admits() {
            return None;
        }
        let probe = self.state == BreakerState::HalfOpen;
        if probe {
            self.probes += 1;
        }
        Some(Ticket {
            epoch: self.epoch,
            probe,
        })
    }

    /// The call behind `ticket` finished. Tickets from before the last transition change
    /// nothing.
    pub fn result(&mut self, now: Time, ticket: Ticket, result: Result<(), ErrorKind>) {
        if ticket.epoch != self.epoch {
            return;
        }
        match (self.state, result) {
            (BreakerState::Closed, Ok(())) => self.failures = 0,
            (BreakerState::Closed, Err(k)) if self.counted.contains(k) => {
                self.failures += 1;
                if self.failures >= self.threshold {
                    self.open(now);
                }
            }
            (BreakerState::HalfOpen, Ok(())) => {
                self.failures = 0;
                self.go(BreakerState::Closed);
            }
            (BreakerState::HalfOpen, Err(k)) if self.counted.contains(k) => {
                self.failures += 1;
                self.open(now);
            }
            (BreakerState::HalfOpen, Err(_)) => self.release(ticket),
            _ => {}
        }
    }

    /// A consumer's DLQ, parking or retry-topic record publish finally failed with `kind`. The
    /// rule: only a transient kind (Connection, Timeout — [`ErrorKind::is_transient`]) is a
    /// broker outage, and it counts as a failed call of the current epoch that is not a probe
    /// (subject to the counted set, like any failure). Nothing else, and no confirmed record,
    /// moves the breaker.
    pub fn record_failed(&mut self, now: Time, kind: ErrorKind) {
        if !kind.is_transient() {
            return;
        }
        let ticket = Ticket {
            epoch: self.epoch,
            probe: false,
        };
        self.result(now, ticket, Err(kind));
    }

    /// The call behind `ticket` never ran to a result: free its probe slot.
    pub fn release(&mut self, ticket: Ticket) {
        if ticket.epoch == self.epoch && ticket.probe && self.state == BreakerState::HalfOpen {
            self.probes -= 1;
        }
    }

    /// Transitions since the last call, oldest first.
    pub fn take_transitions(&mut self) -> Vec<(BreakerState, BreakerState)> {
        std::mem::take(&mut self.log)
    }

    fn open(&mut self, now: Time) {
        self.reopen_at = now + self.recovery;
        self.go(BreakerState::Open);
    }

    fn go(&mut self, to: BreakerState) {
        self.log.push((self.state, to));
        self.state = to;
        self.epoch += 1;
        self.probes = 0;
    }
}

/// Whether `from → to` is an edge of the breaker.
pub fn legal_edge(from: BreakerState, to: BreakerState) -> bool {
    use BreakerState::*;
    matches!(
        (from, to),
        (Closed, Open) | (Open, HalfOpen) | (HalfOpen, Closed) | (HalfOpen, Open)
    )
}

/// Checks one reported transition against the last reported state.
pub(super) fn check_transition(
    reported: &mut BreakerState,
    log: &mut Vec<(BreakerState, BreakerState)>,
    t: &Transition,
    now: Time,
) -> Result<(), Violation> {
    if t.from != *reported || !legal_edge(t.from, t.to) {
        return Err(violation(
            Rule::IllegalTransition,
            now,
            None,
            format!(
                "breaker reported {} → {} while it was {}",
                t.from.as_str(),
                t.to.as_str(),
                reported.as_str()
            ),
        ));
    }
    *reported = t.to;
    log.push((t.from, t.to));
    Ok(())
}

pub(super) fn compare_logs(
    model: Vec<(BreakerState, BreakerState)>,
    reported: &mut Vec<(BreakerState, BreakerState)>,
    now: Time,
) -> Result<(), Violation> {
    let reported = std::mem::take(reported);
    if model != reported {
        let show = |v: &[(BreakerState, BreakerState)]| {
            if v.is_empty() {
                return "none".to_string();
            }
            v.iter()
                .map(|(a, b)| format!("{} → {}", a.as_str(), b.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(violation(
            Rule::BreakerDiverged,
            now,
            None,
            format!(
                "breaker transitions in this step: machine reported [{}], reference breaker made [{}]",
                show(&reported),
                show(&model)
            ),
        ));
    }
    Ok(())
}
