//! Reference models and invariant checkers for the core machines: the DESIGN.md §4 oracle,
//! shared by the property tests, the fuzz targets and the simulator.
//!
//! An oracle watches a machine from the outside. It keeps its own small model of what the
//! machine must do (a reference circuit breaker, and per delivery or call: attempts, the
//! earliest time of the next attempt, what must happen next) and checks every action and event
//! against it. The first broken rule comes back as a [`Violation`] that says what happened, to
//! which key, at what time, and which rule it broke.
//!
//! Feeding order, per input (a "step"):
//! 1. call the machine's `handle_*`, then tell the oracle about the same input, with the value
//!    the machine returned (e.g. [`ConsumerOracle::finished`]);
//! 2. drain every action into the oracle ([`ConsumerOracle::action`]), then every event
//!    ([`ConsumerOracle::event`]);
//! 3. call [`ConsumerOracle::end_step`] (and optionally [`ConsumerOracle::check_machine`]).
//!
//! [`CheckedConsumer`] and [`CheckedProducer`] do all of that around a machine.
//!
//! ```
//! use backstop_engine::core::oracle::CheckedConsumer;
//! use backstop_engine::core::{ConsumerAction, ConsumerConfig, Time};
//! let mut c = CheckedConsumer::new(ConsumerConfig::builder().build()?).unwrap();
//! let t = Time::ZERO;
//! let key = c.deliver(t, true).unwrap();
//! assert!(c.last_actions().contains(&ConsumerAction::Invoke { key, attempt: 1 }));
//! c.finish(t, key, Ok(())).unwrap();
//! assert!(c.last_actions().contains(&ConsumerAction::Ack { key }));
//! c.settle_check().unwrap(); // nothing held, breaker closed, no timer
//! # Ok::<(), backstop_engine::core::ConfigError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use super::breaker::{BreakerConfig, BreakerState, Transition};
use super::consumer::{
    ConsumerAction, ConsumerConfig, ConsumerEvent, ConsumerMachine, DlqInfo, DlqReason, NackReason,
};
use super::error::{ErrorKind, KindSet};
use super::producer::{
    DlqFate, ProducerAction, ProducerConfig, ProducerEvent, ProducerMachine, ProducerOutcome,
};
use super::slab::Key;
use super::time::Time;

/// Which rule a [`Violation`] broke.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// An action named a key the machine was never given.
    UnknownKey,
    /// The machine handed out a key that is already in use.
    DuplicateKey,
    /// An action for a delivery or call that already ended.
    AfterTerminal,
    /// A second terminal action (ack/nack twice, or both; a second `Complete`).
    DoubleTerminal,
    /// An ack without a successful attempt or a confirmed DLQ publish.
    AckWithoutSuccess,
    /// A nack of a message that succeeded or was dead-lettered.
    NackAfterSuccess,
    /// A nack nothing called for.
    UnexpectedNack,
    /// A nack with the wrong reason.
    WrongNackReason,
    /// An attempt number out of sequence.
    WrongAttempt,
    /// More than `max_retries + 1` attempts.
    TooManyAttempts,
    /// A handler run (or body run) that was not due: in flight already, succeeded, failed for
    /// good, poison, waiting on the DLQ, or during shutdown.
    InvokeNotDue,
    /// A retry before its delay passed.
    EarlyRetry,
    /// More than `max_parallelism` handler runs in flight.
    Parallelism,
    /// A handler run, body run or publish while the breaker is open.
    InvokeWhileOpen,
    /// More probes than the half-open state admits.
    TooManyProbes,
    /// A breaker transition along an edge that does not exist, or not from the current state.
    IllegalTransition,
    /// The machine's breaker disagrees with the reference breaker (state, transitions, failure
    /// count, probe flag, pause/resume).
    BreakerDiverged,
    /// A DLQ publish that was not due, or with wrong facts.
    BadDeadLetter,
    /// Pull credit over `max_held`, under-granted while closed, missing for the half-open probe,
    /// or requested during shutdown.
    Credit,
    /// Something that had to happen in this step did not (an ack after success, a DLQ publish
    /// or nack after the last attempt, a nack at shutdown, a `Drained` event, a call's next
    /// step).
    MissingOutcome,
    /// A ready message was not invoked although a slot and the breaker allowed it.
    Stalled,
    /// A `Drained` event while something is held, or twice.
    Drained,
    /// The machine accepted an input it should have ignored, or ignored one it should have
    /// accepted.
    InputMishandled,
    /// A producer outcome that does not match what happened.
    BadOutcome,
    /// An action nothing called for.
    UnexpectedAction,
    /// The machine's counters (held, in flight, credit) disagree with the model.
    Diverged,
    /// After everything healed and finished, something is still held, open or scheduled.
    NotSettled,
}

/// A broken rule: what, when, for which key, and a readable account.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// The `now` of the step it happened in.
    pub at: Time,
    /// The delivery or call concerned, if any.
    pub key: Option<Key>,
    /// What happened, in words.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} at {}", self.rule, self.at)?;
        if let Some(k) = self.key {
            write!(f, " for {k}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

fn violation(rule: Rule, at: Time, key: Option<Key>, detail: impl Into<String>) -> Violation {
    Violation {
        rule,
        at,
        key,
        detail: detail.into(),
    }
}

/// A slot taken in the [`BreakerModel`]: the epoch it was taken in and whether it is a probe.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The model's epoch (bumped at every transition) when the slot was taken.
    pub epoch: u64,
    /// Whether it is a half-open probe.
    pub probe: bool,
}

/// The reference circuit breaker: the DESIGN.md §2 rules written as plainly as possible,
/// independently of [`CircuitBreaker`](crate::core::CircuitBreaker).
///
/// ```
/// use backstop_engine::core::oracle::BreakerModel;
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
fn check_transition(
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

fn compare_logs(
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

// ---------------------------------------------------------------------------------------------
// Consumer
// ---------------------------------------------------------------------------------------------

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Ready now or waiting for its retry time.
    Idle,
    InFlight,
    DlqPending,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Expect {
    Nothing,
    Ack,
    Dlq(DlqReason),
    Nack(NackReason),
}

#[derive(Clone, Debug)]
struct Msg {
    phase: Phase,
    attempts: u32,
    poison: bool,
    succeeded: bool,
    dlq_confirmed: bool,
    last_kind: Option<ErrorKind>,
    first_failure: Option<Time>,
    not_before: Time,
    ticket: Option<Ticket>,
    expect: Expect,
    why: &'static str,
}

/// What a consumer oracle has seen so far (for tests that want to know their ops reached the
/// interesting cases).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Deliveries.
    pub delivered: u64,
    /// Handler runs.
    pub invoked: u64,
    /// Runs beyond the first of a message.
    pub retried: u64,
    /// Acks.
    pub acked: u64,
    /// Nacks.
    pub nacked: u64,
    /// DLQ publishes requested.
    pub dlq_requested: u64,
    /// DLQ publishes confirmed.
    pub dlq_confirmed: u64,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Times the breaker closed again.
    pub breaker_closed: u64,
    /// Half-open probes.
    pub probes: u64,
    /// Most handler runs in flight at once.
    pub max_in_flight: u32,
    /// Handler results the machine had to ignore (late or stale).
    pub late_results: u64,
}

/// The DESIGN.md §4 oracle for one [`ConsumerMachine`]. See the [module docs](self) for the
/// feeding order.
#[derive(Clone, Debug)]
pub struct ConsumerOracle {
    cfg: ConsumerConfig,
    breaker: BreakerModel,
    live: BTreeMap<Key, Msg>,
    done: BTreeSet<Key>,
    in_flight: u32,
    credit: u32,
    paused: bool,
    shutdown: Option<Time>,
    drained_seen: bool,
    reported: BreakerState,
    reported_log: Vec<(BreakerState, BreakerState)>,
    now: Time,
    stats: ConsumerStats,
}

impl ConsumerOracle {
    /// An oracle for a machine built from `cfg`, before its first step (the machine's initial
    /// credit request is fed as the first actions).
    pub fn new(cfg: ConsumerConfig) -> ConsumerOracle {
        ConsumerOracle {
            cfg,
            breaker: BreakerModel::new(cfg.breaker()),
            live: BTreeMap::new(),
            done: BTreeSet::new(),
            in_flight: 0,
            credit: 0,
            paused: false,
            shutdown: None,
            drained_seen: false,
            reported: BreakerState::Closed,
            reported_log: Vec::new(),
            now: Time::ZERO,
            stats: ConsumerStats::default(),
        }
    }

    /// What has been seen so far.
    pub fn stats(&self) -> &ConsumerStats {
        &self.stats
    }

    /// The reference breaker.
    pub fn breaker(&self) -> &BreakerModel {
        &self.breaker
    }

    /// Credit granted and not yet used, as the oracle counts it.
    pub fn credit(&self) -> u32 {
        self.credit
    }

    /// Deliveries held (not yet acked or nacked).
    pub fn held(&self) -> usize {
        self.live.len()
    }

    /// Handler runs in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    fn begin(&mut self, now: Time) {
        self.now = self.now.max(now);
        self.breaker.advance(self.now);
    }

    fn err(&self, rule: Rule, key: Option<Key>, detail: impl Into<String>) -> Violation {
        violation(rule, self.now, key, detail)
    }

    fn expect_nack_all(&mut self, why: &'static str) {
        for m in self.live.values_mut() {
            m.expect = Expect::Nack(NackReason::Shutdown);
            m.why = why;
        }
    }

    /// Input: the machine returned `key` for a delivery at `now`.
    pub fn delivered(&mut self, now: Time, key: Key, decoded: bool) -> Result<(), Violation> {
        self.begin(now);
        if self.live.contains_key(&key) || self.done.contains(&key) {
            return Err(self.err(
                Rule::DuplicateKey,
                Some(key),
                "the machine returned a key it already used",
            ));
        }
        self.credit = self.credit.saturating_sub(1);
        self.stats.delivered += 1;
        let (expect, why) = if self.shutdown.is_some() {
            (
                Expect::Nack(NackReason::Shutdown),
                "it was delivered during shutdown",
            )
        } else if !decoded {
            if self.cfg.dead_letter() {
                (Expect::Dlq(DlqReason::Decode), "it did not decode")
            } else {
                (
                    Expect::Nack(NackReason::NoDeadLetter),
                    "it did not decode and there is no DLQ",
                )
            }
        } else {
            (Expect::Nothing, "")
        };
        self.live.insert(
            key,
            Msg {
                phase: Phase::Idle,
                attempts: 0,
                poison: !decoded,
                succeeded: false,
                dlq_confirmed: false,
                last_kind: (!decoded).then_some(ErrorKind::Decode),
                first_failure: (!decoded).then_some(self.now),
                not_before: self.now,
                ticket: None,
                expect,
                why,
            },
        );
        Ok(())
    }

    /// Input: a handler run of `key` finished with `result`; `accepted` is what
    /// [`ConsumerMachine::handle_finished`] returned.
    pub fn finished(
        &mut self,
        now: Time,
        key: Key,
        result: Result<(), ErrorKind>,
        accepted: bool,
    ) -> Result<(), Violation> {
        self.begin(now);
        let now = self.now;
        let max_attempts = self.cfg.retry().max_attempts();
        let dlq = self.cfg.dead_letter();
        let shutting = self.shutdown.is_some();
        let retry = *self.cfg.retry();
        let Some(m) = self
            .live
            .get_mut(&key)
            .filter(|m| m.phase == Phase::InFlight)
        else {
            self.stats.late_results += 1;
            if accepted {
                return Err(self.err(
                    Rule::InputMishandled,
                    Some(key),
                    "the machine accepted the result of a run that was not in flight",
                ));
            }
            return Ok(());
        };
        if !accepted {
            return Err(violation(
                Rule::InputMishandled,
                now,
                Some(key),
                "the machine ignored the result of a run in flight",
            ));
        }
        self.in_flight -= 1;
        m.phase = Phase::Idle;
        if let Some(t) = m.ticket.take() {
            self.breaker.result(now, t, result);
        }
        match result {
            Ok(()) => {
                m.succeeded = true;
                m.expect = Expect::Ack;
                m.why = "its handler succeeded";
            }
            Err(kind) => {
                m.last_kind = Some(kind);
                m.first_failure.get_or_insert(now);
                let retryable = kind.is_retryable();
                if !retryable || m.attempts >= max_attempts {
                    let reason = if retryable {
                        DlqReason::Exhausted
                    } else {
                        DlqReason::Permanent
                    };
                    (m.expect, m.why) = if dlq {
                        (Expect::Dlq(reason), "it failed for good")
                    } else {
                        (
                            Expect::Nack(NackReason::NoDeadLetter),
                            "it failed for good and there is no DLQ",
                        )
                    };
                } else if shutting {
                    m.expect = Expect::Nack(NackReason::Shutdown);
                    m.why = "it failed during shutdown";
                } else {
                    m.not_before = now + retry.delay_before_retry(m.attempts, key.as_u64());
                }
            }
        }
        Ok(())
    }

    /// Input: the DLQ publish of `key` finished; `accepted` is what
    /// [`ConsumerMachine::handle_dlq_result`] returned.
    pub fn dlq_result(
        &mut self,
        now: Time,
        key: Key,
        result: Result<(), ErrorKind>,
        accepted: bool,
    ) -> Result<(), Violation> {
        self.begin(now);
        let Some(m) = self
            .live
            .get_mut(&key)
            .filter(|m| m.phase == Phase::DlqPending)
        else {
            if accepted {
                return Err(self.err(
                    Rule::InputMishandled,
                    Some(key),
                    "the machine accepted a DLQ result for a message not waiting on the DLQ",
                ));
            }
            return Ok(());
        };
        m.phase = Phase::Idle;
        match result {
            Ok(()) => {
                m.dlq_confirmed = true;
                m.expect = Expect::Ack;
                m.why = "its DLQ publish was confirmed";
                self.stats.dlq_confirmed += 1;
            }
            Err(_) => {
                m.expect = Expect::Nack(NackReason::DeadLetterFailed);
                m.why = "its DLQ publish failed";
            }
        }
        if !accepted {
            return Err(self.err(
                Rule::InputMishandled,
                Some(key),
                "the machine ignored the result of a pending DLQ publish",
            ));
        }
        Ok(())
    }

    /// Input: shutdown began at `now` with `deadline`.
    pub fn shutdown(&mut self, now: Time, deadline: Time) -> Result<(), Violation> {
        self.begin(now);
        let deadline = self.shutdown.map_or(deadline, |d| d.min(deadline));
        self.shutdown = Some(deadline);
        for m in self.live.values_mut() {
            if m.phase == Phase::Idle {
                m.expect = Expect::Nack(NackReason::Shutdown);
                m.why = "shutdown began and it was not in flight";
            }
        }
        self.check_deadline();
        Ok(())
    }

    /// Input: [`ConsumerMachine::handle_timeout`] at `now`.
    pub fn timeout(&mut self, now: Time) -> Result<(), Violation> {
        self.begin(now);
        self.check_deadline();
        Ok(())
    }

    fn check_deadline(&mut self) {
        if self.shutdown.is_some_and(|d| self.now >= d) {
            self.expect_nack_all("the shutdown deadline passed");
        }
    }

    /// Output: one action, in the order the machine emitted it.
    pub fn action(&mut self, a: &ConsumerAction) -> Result<(), Violation> {
        match *a {
            ConsumerAction::Request { count } => self.on_request(count),
            ConsumerAction::Invoke { key, attempt } => self.on_invoke(key, attempt),
            ConsumerAction::Ack { key } => self.on_ack(key),
            ConsumerAction::Nack { key, reason } => self.on_nack(key, reason),
            ConsumerAction::PublishDlq { key, info } => self.on_publish_dlq(key, info),
            ConsumerAction::Pause => {
                if self.paused || self.breaker.state() != BreakerState::Open {
                    return Err(self.err(
                        Rule::BreakerDiverged,
                        None,
                        format!(
                            "Pause while the reference breaker is {}{}",
                            self.breaker.state().as_str(),
                            if self.paused {
                                " and already paused"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
                self.paused = true;
                Ok(())
            }
            ConsumerAction::Resume => {
                if !self.paused || self.breaker.state() != BreakerState::Closed {
                    return Err(self.err(
                        Rule::BreakerDiverged,
                        None,
                        format!(
                            "Resume while the reference breaker is {}{}",
                            self.breaker.state().as_str(),
                            if self.paused { "" } else { " and not paused" }
                        ),
                    ));
                }
                self.paused = false;
                Ok(())
            }
        }
    }

    fn on_request(&mut self, count: u32) -> Result<(), Violation> {
        if self.shutdown.is_some() {
            return Err(self.err(Rule::Credit, None, "credit requested during shutdown"));
        }
        if count == 0 {
            return Err(self.err(Rule::Credit, None, "a request for zero deliveries"));
        }
        self.credit += count;
        let held = self.live.len() as u64;
        if held + u64::from(self.credit) > u64::from(self.cfg.max_held()) {
            return Err(self.err(
                Rule::Credit,
                None,
                format!(
                    "credit {} plus {} held exceeds max_held {}",
                    self.credit,
                    held,
                    self.cfg.max_held()
                ),
            ));
        }
        Ok(())
    }

    fn known(&self, key: Key) -> Result<(), Violation> {
        if self.done.contains(&key) {
            return Err(self.err(
                Rule::AfterTerminal,
                Some(key),
                "an action for a message already acked or nacked",
            ));
        }
        if !self.live.contains_key(&key) {
            return Err(self.err(
                Rule::UnknownKey,
                Some(key),
                "an action for a key never delivered",
            ));
        }
        Ok(())
    }

    fn on_invoke(&mut self, key: Key, attempt: u32) -> Result<(), Violation> {
        self.known(key)?;
        let now = self.now;
        let max_attempts = self.cfg.retry().max_attempts();
        let max_par = self.cfg.max_parallelism();
        let shutting = self.shutdown.is_some();
        let m = &self.live[&key];
        let e = |rule, detail: String| Err(violation(rule, now, Some(key), detail));
        if attempt > max_attempts {
            return e(
                Rule::TooManyAttempts,
                format!("attempt {attempt} of at most {max_attempts}"),
            );
        }
        if attempt != m.attempts + 1 {
            return e(
                Rule::WrongAttempt,
                format!("invoked as attempt {attempt} after {} attempts", m.attempts),
            );
        }
        let not_due = if shutting {
            Some("during shutdown".to_string())
        } else if m.phase == Phase::InFlight {
            Some("while its previous run is in flight".to_string())
        } else if m.phase == Phase::DlqPending {
            Some("while it waits on the DLQ".to_string())
        } else if m.poison {
            Some("although it did not decode".to_string())
        } else if m.succeeded {
            Some("after it succeeded".to_string())
        } else if m.expect != Expect::Nothing {
            Some(format!("although {}", m.why))
        } else {
            None
        };
        if let Some(why) = not_due {
            return e(Rule::InvokeNotDue, format!("attempt {attempt} {why}"));
        }
        if m.attempts > 0 && now < m.not_before {
            return e(
                Rule::EarlyRetry,
                format!(
                    "attempt {attempt} at {now}, its retry was not due before {}",
                    m.not_before
                ),
            );
        }
        if self.in_flight >= max_par {
            return e(
                Rule::Parallelism,
                format!(
                    "a run beyond max_parallelism {max_par} ({} in flight)",
                    self.in_flight
                ),
            );
        }
        match self.breaker.state() {
            BreakerState::Open => {
                return e(
                    Rule::InvokeWhileOpen,
                    format!("attempt {attempt} while the breaker is open"),
                )
            }
            BreakerState::HalfOpen if !self.breaker.admits() => {
                return e(
                    Rule::TooManyProbes,
                    format!(
                        "a probe beyond the {} half-open admits",
                        self.breaker.probe_limit()
                    ),
                )
            }
            _ => {}
        }
        let ticket = self.breaker.admit();
        if ticket.is_some_and(|t| t.probe) {
            self.stats.probes += 1;
        }
        let m = self.live.get_mut(&key).expect("checked above");
        m.ticket = ticket;
        m.phase = Phase::InFlight;
        m.attempts = attempt;
        self.in_flight += 1;
        self.stats.invoked += 1;
        if attempt > 1 {
            self.stats.retried += 1;
        }
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.in_flight);
        Ok(())
    }

    fn terminal_check(&self, key: Key, what: &str) -> Result<(), Violation> {
        if self.done.contains(&key) {
            return Err(self.err(
                Rule::DoubleTerminal,
                Some(key),
                format!("{what} of a message already acked or nacked"),
            ));
        }
        self.known(key)
    }

    fn finish_msg(&mut self, key: Key) {
        self.live.remove(&key);
        self.done.insert(key);
    }

    fn on_ack(&mut self, key: Key) -> Result<(), Violation> {
        self.terminal_check(key, "ack")?;
        let m = &self.live[&key];
        if !(m.succeeded || m.dlq_confirmed) {
            let state = match m.phase {
                Phase::InFlight => "while its handler runs",
                Phase::DlqPending => "before its DLQ publish was confirmed",
                Phase::Idle => "without a successful attempt or a confirmed DLQ publish",
            };
            return Err(self.err(
                Rule::AckWithoutSuccess,
                Some(key),
                format!("acked {state} (attempts {})", m.attempts),
            ));
        }
        self.finish_msg(key);
        self.stats.acked += 1;
        Ok(())
    }

    fn on_nack(&mut self, key: Key, reason: NackReason) -> Result<(), Violation> {
        self.terminal_check(key, "nack")?;
        let m = &self.live[&key];
        if m.succeeded || m.dlq_confirmed {
            return Err(self.err(
                Rule::NackAfterSuccess,
                Some(key),
                format!("nacked ({reason:?}) after it was handled"),
            ));
        }
        match m.expect {
            Expect::Nack(r) if r == reason => {}
            Expect::Nack(r) => {
                return Err(self.err(
                    Rule::WrongNackReason,
                    Some(key),
                    format!("nacked with {reason:?}, expected {r:?} because {}", m.why),
                ))
            }
            _ => {
                return Err(self.err(
                    Rule::UnexpectedNack,
                    Some(key),
                    format!(
                        "nacked ({reason:?}) after {} attempts with nothing calling for it",
                        m.attempts
                    ),
                ))
            }
        }
        if m.phase == Phase::InFlight {
            self.in_flight -= 1;
            if let Some(t) = m.ticket {
                self.breaker.release(t);
            }
        }
        self.finish_msg(key);
        self.stats.nacked += 1;
        Ok(())
    }

    fn on_publish_dlq(&mut self, key: Key, info: DlqInfo) -> Result<(), Violation> {
        self.known(key)?;
        let now = self.now;
        let dlq = self.cfg.dead_letter();
        let m = self.live.get_mut(&key).expect("checked above");
        let bad = |detail: String| Err(violation(Rule::BadDeadLetter, now, Some(key), detail));
        let Expect::Dlq(reason) = m.expect else {
            return bad(format!(
                "a DLQ publish ({}) nothing called for{}",
                info.reason.as_str(),
                if dlq { "" } else { ": no DLQ is configured" }
            ));
        };
        if info.reason != reason {
            return bad(format!(
                "DLQ reason {}, expected {}",
                info.reason.as_str(),
                reason.as_str()
            ));
        }
        if info.attempts != m.attempts
            || Some(info.kind) != m.last_kind
            || Some(info.first_failure) != m.first_failure
            || info.last_failure != now
        {
            return bad(format!(
                "DLQ record {info:?} does not match attempts {}, last kind {:?}, first failure {:?}, now {now}",
                m.attempts, m.last_kind, m.first_failure
            ));
        }
        m.phase = Phase::DlqPending;
        m.expect = Expect::Nothing;
        self.stats.dlq_requested += 1;
        Ok(())
    }

    /// Output: one event, in the order the machine emitted it (after the step's actions).
    pub fn event(&mut self, e: &ConsumerEvent) -> Result<(), Violation> {
        match e {
            ConsumerEvent::Breaker(t) => {
                check_transition(&mut self.reported, &mut self.reported_log, t, self.now)?;
                match t.to {
                    BreakerState::Open => self.stats.breaker_opened += 1,
                    BreakerState::Closed => self.stats.breaker_closed += 1,
                    BreakerState::HalfOpen => {}
                }
                Ok(())
            }
            ConsumerEvent::Invoked {
                key,
                attempt,
                probe,
            } => {
                if let Some(m) = self.live.get(key) {
                    if m.phase == Phase::InFlight && m.attempts == *attempt {
                        let want = m.ticket.is_some_and(|t| t.probe);
                        if want != *probe {
                            return Err(self.err(
                                Rule::BreakerDiverged,
                                Some(*key),
                                format!("run reported probe={probe}, the reference says {want}"),
                            ));
                        }
                    }
                }
                Ok(())
            }
            ConsumerEvent::Drained => {
                if self.drained_seen || self.shutdown.is_none() || !self.live.is_empty() {
                    return Err(self.err(
                        Rule::Drained,
                        None,
                        format!(
                            "Drained with {} held, shutdown {}, reported before: {}",
                            self.live.len(),
                            if self.shutdown.is_some() {
                                "begun"
                            } else {
                                "not begun"
                            },
                            self.drained_seen
                        ),
                    ));
                }
                self.drained_seen = true;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Whether some message could be invoked right now.
    fn eligible_now(&self) -> Option<Key> {
        self.live.iter().find_map(|(k, m)| {
            (m.phase == Phase::Idle
                && m.expect == Expect::Nothing
                && !m.poison
                && !m.succeeded
                && (m.attempts == 0 || m.not_before <= self.now))
                .then_some(*k)
        })
    }

    /// Ends the step: everything the step's input called for has happened, the breaker's
    /// reported transitions match the reference's, credit is right and no ready work is left
    /// idle.
    pub fn end_step(&mut self) -> Result<(), Violation> {
        if let Some((k, m)) = self.live.iter().find(|(_, m)| m.expect != Expect::Nothing) {
            let what = match m.expect {
                Expect::Ack => "an ack".to_string(),
                Expect::Dlq(r) => format!("a DLQ publish ({})", r.as_str()),
                Expect::Nack(r) => format!("a nack ({r:?})"),
                Expect::Nothing => unreachable!(),
            };
            return Err(self.err(
                Rule::MissingOutcome,
                Some(*k),
                format!(
                    "{what} was due because {} (attempt {} of {}), none came",
                    m.why,
                    m.attempts,
                    self.cfg.retry().max_attempts()
                ),
            ));
        }
        let model = self.breaker.take_transitions();
        compare_logs(model, &mut self.reported_log, self.now)?;
        if self.paused != (self.breaker.state() != BreakerState::Closed) {
            return Err(self.err(
                Rule::BreakerDiverged,
                None,
                format!(
                    "paused={} while the reference breaker is {}",
                    self.paused,
                    self.breaker.state().as_str()
                ),
            ));
        }
        let held = self.live.len() as u64;
        let max_held = u64::from(self.cfg.max_held());
        if self.shutdown.is_none() {
            match self.breaker.state() {
                BreakerState::Closed if held + u64::from(self.credit) < max_held => {
                    return Err(self.err(
                        Rule::Credit,
                        None,
                        format!(
                            "closed, but only {} credit with {held} held (max_held {max_held})",
                            self.credit
                        ),
                    ));
                }
                BreakerState::HalfOpen
                    if self.breaker.admits()
                        && held < max_held
                        && self.credit == 0
                        && self.eligible_now().is_none() =>
                {
                    return Err(self.err(
                        Rule::Credit,
                        None,
                        "half-open with a free probe slot but no credit to fetch a probe message",
                    ));
                }
                _ => {}
            }
            if self.breaker.admits() && self.in_flight < self.cfg.max_parallelism() {
                if let Some(k) = self.eligible_now() {
                    return Err(self.err(
                        Rule::Stalled,
                        Some(k),
                        format!(
                            "ready to run, {} of {} slots busy, breaker {}, yet not invoked",
                            self.in_flight,
                            self.cfg.max_parallelism(),
                            self.breaker.state().as_str()
                        ),
                    ));
                }
            }
        } else if self.live.is_empty() && !self.drained_seen {
            return Err(self.err(
                Rule::MissingOutcome,
                None,
                "shutdown and nothing held, but no Drained event",
            ));
        }
        Ok(())
    }

    /// Compares the machine's own counters with the model (call after [`end_step`](Self::end_step)).
    pub fn check_machine(&self, m: &ConsumerMachine) -> Result<(), Violation> {
        if m.breaker_state() != self.breaker.state()
            || m.breaker_failures() != self.breaker.failures()
        {
            return Err(self.err(
                Rule::BreakerDiverged,
                None,
                format!(
                    "machine breaker {} with {} failures, reference {} with {}",
                    m.breaker_state().as_str(),
                    m.breaker_failures(),
                    self.breaker.state().as_str(),
                    self.breaker.failures()
                ),
            ));
        }
        if m.in_flight() != self.in_flight
            || m.held() != self.live.len()
            || m.credit() != self.credit
            || m.is_paused() != self.paused
        {
            return Err(self.err(
                Rule::Diverged,
                None,
                format!(
                    "machine in_flight {} held {} credit {} paused {}, model {} {} {} {}",
                    m.in_flight(),
                    m.held(),
                    m.credit(),
                    m.is_paused(),
                    self.in_flight,
                    self.live.len(),
                    self.credit,
                    self.paused
                ),
            ));
        }
        Ok(())
    }

    /// Liveness, once faults have healed and every run and publish finished: nothing held, and
    /// (unless shut down) the breaker closed; no timer left (`poll_timeout` is the machine's).
    pub fn check_settled(&self, poll_timeout: Option<Time>) -> Result<(), Violation> {
        if let Some((k, m)) = self.live.iter().next() {
            return Err(self.err(
                Rule::NotSettled,
                Some(*k),
                format!(
                    "still held ({:?}, {} attempts, {} held in all)",
                    m.phase,
                    m.attempts,
                    self.live.len()
                ),
            ));
        }
        if self.shutdown.is_none() && self.breaker.state() != BreakerState::Closed {
            return Err(self.err(
                Rule::NotSettled,
                None,
                format!("breaker still {}", self.breaker.state().as_str()),
            ));
        }
        if let Some(t) = poll_timeout {
            return Err(self.err(
                Rule::NotSettled,
                None,
                format!("idle, yet a timer is set for {t}"),
            ));
        }
        if self.shutdown.is_some() && !self.drained_seen {
            return Err(self.err(Rule::NotSettled, None, "shut down without a Drained event"));
        }
        Ok(())
    }
}

/// A [`ConsumerMachine`] with its [`ConsumerOracle`]: every input is checked, every output
/// drained into the oracle, and the step's actions and events kept for the driver to act on.
#[derive(Clone, Debug)]
pub struct CheckedConsumer {
    machine: ConsumerMachine,
    oracle: ConsumerOracle,
    actions: Vec<ConsumerAction>,
    events: Vec<ConsumerEvent>,
}

impl CheckedConsumer {
    /// A fresh machine and oracle; the machine's initial credit request is checked.
    pub fn new(cfg: ConsumerConfig) -> Result<CheckedConsumer, Violation> {
        let mut c = CheckedConsumer {
            machine: ConsumerMachine::new(cfg),
            oracle: ConsumerOracle::new(cfg),
            actions: Vec::new(),
            events: Vec::new(),
        };
        c.step()?;
        Ok(c)
    }

    /// The machine (read-only: inputs go through this wrapper).
    pub fn machine(&self) -> &ConsumerMachine {
        &self.machine
    }

    /// Mutable access for `poll_timeout`, which prunes stale timers.
    pub fn poll_timeout(&mut self) -> Option<Time> {
        self.machine.poll_timeout()
    }

    /// The oracle.
    pub fn oracle(&self) -> &ConsumerOracle {
        &self.oracle
    }

    /// The actions of the last step.
    pub fn last_actions(&self) -> &[ConsumerAction] {
        &self.actions
    }

    /// The events of the last step.
    pub fn last_events(&self) -> &[ConsumerEvent] {
        &self.events
    }

    fn step(&mut self) -> Result<(), Violation> {
        self.actions.clear();
        self.events.clear();
        while let Some(a) = self.machine.poll_action() {
            self.actions.push(a);
            self.oracle.action(&a)?;
        }
        while let Some(e) = self.machine.poll_event() {
            self.events.push(e);
            self.oracle.event(&e)?;
        }
        self.oracle.end_step()?;
        self.oracle.check_machine(&self.machine)
    }

    /// A delivery.
    pub fn deliver(&mut self, now: Time, decoded: bool) -> Result<Key, Violation> {
        let key = self.machine.handle_delivered(now, decoded);
        self.oracle.delivered(now, key, decoded)?;
        self.step()?;
        Ok(key)
    }

    /// A handler result; returns whether the machine accepted it.
    pub fn finish(
        &mut self,
        now: Time,
        key: Key,
        result: Result<(), ErrorKind>,
    ) -> Result<bool, Violation> {
        let accepted = self.machine.handle_finished(now, key, result);
        self.oracle.finished(now, key, result, accepted)?;
        self.step()?;
        Ok(accepted)
    }

    /// A DLQ publish result; returns whether the machine accepted it.
    pub fn dlq_result(
        &mut self,
        now: Time,
        key: Key,
        result: Result<(), ErrorKind>,
    ) -> Result<bool, Violation> {
        let accepted = self.machine.handle_dlq_result(now, key, result);
        self.oracle.dlq_result(now, key, result, accepted)?;
        self.step()?;
        Ok(accepted)
    }

    /// Shutdown with `deadline`.
    pub fn shutdown(&mut self, now: Time, deadline: Time) -> Result<(), Violation> {
        self.machine.handle_shutdown(now, deadline);
        self.oracle.shutdown(now, deadline)?;
        self.step()
    }

    /// A timeout at `now`.
    pub fn timeout(&mut self, now: Time) -> Result<(), Violation> {
        self.machine.handle_timeout(now);
        self.oracle.timeout(now)?;
        self.step()
    }

    /// [`ConsumerOracle::check_settled`] with the machine's `poll_timeout`.
    pub fn settle_check(&mut self) -> Result<(), Violation> {
        let t = self.machine.poll_timeout();
        self.oracle.check_settled(t)
    }
}

// ---------------------------------------------------------------------------------------------
// Producer
// ---------------------------------------------------------------------------------------------

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum PPhase {
    Waiting,
    Body,
    Publish,
    DlqPending,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum PExpect {
    Nothing,
    /// A new attempt is due: RunBody / Publish, or Complete(CircuitOpen).
    Start,
    /// The body succeeded under a current permit: Publish (same attempt).
    PublishSame,
    /// The body succeeded but the breaker moved: Publish under a fresh permit, or
    /// Complete(CircuitOpen).
    PublishFresh,
    Dlq(DlqReason),
    Complete(ProducerOutcome),
}

#[derive(Clone, Debug)]
struct PCall {
    phase: PPhase,
    attempts: u32,
    body_done: bool,
    not_before: Time,
    last_kind: Option<ErrorKind>,
    first_failure: Option<Time>,
    ticket: Option<Ticket>,
    expect: PExpect,
}

/// What a producer oracle has seen so far.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Calls.
    pub calls: u64,
    /// Body runs.
    pub bodies: u64,
    /// Publishes.
    pub publishes: u64,
    /// Calls completed as sent.
    pub sent: u64,
    /// Calls completed as failed.
    pub failed: u64,
    /// Calls refused by the breaker.
    pub circuit_open: u64,
    /// DLQ publishes requested.
    pub dlq_requested: u64,
    /// Times the breaker opened.
    pub breaker_opened: u64,
    /// Calls cancelled by their caller.
    pub cancelled: u64,
}

/// The oracle for one [`ProducerMachine`]: every call ends in exactly one `Complete` with the
/// right outcome, attempts ≤ `max_retries + 1`, retries not early, the body never re-run after
/// it succeeded, no `RunBody` or `Publish` while the breaker refuses, and the breaker moves like
/// the reference. Same feeding order as [`ConsumerOracle`].
#[derive(Clone, Debug)]
pub struct ProducerOracle {
    cfg: ProducerConfig,
    breaker: BreakerModel,
    live: BTreeMap<Key, PCall>,
    done: BTreeSet<Key>,
    reported: BreakerState,
    reported_log: Vec<(BreakerState, BreakerState)>,
    now: Time,
    stats: ProducerStats,
}

impl ProducerOracle {
    /// An oracle for a machine built from `cfg`.
    pub fn new(cfg: ProducerConfig) -> ProducerOracle {
        ProducerOracle {
            cfg,
            breaker: BreakerModel::new(cfg.breaker()),
            live: BTreeMap::new(),
            done: BTreeSet::new(),
            reported: BreakerState::Closed,
            reported_log: Vec::new(),
            now: Time::ZERO,
            stats: ProducerStats::default(),
        }
    }

    /// What has been seen so far.
    pub fn stats(&self) -> &ProducerStats {
        &self.stats
    }

    /// The reference breaker.
    pub fn breaker(&self) -> &BreakerModel {
        &self.breaker
    }

    /// Calls in progress.
    pub fn in_progress(&self) -> usize {
        self.live.len()
    }

    fn err(&self, rule: Rule, key: Option<Key>, detail: impl Into<String>) -> Violation {
        violation(rule, self.now, key, detail)
    }

    fn begin(&mut self, now: Time) {
        self.now = self.now.max(now);
        self.breaker.advance(self.now);
    }

    /// After an input: retries that are due must start (or be refused) in this step.
    fn due(&mut self) {
        let now = self.now;
        for c in self.live.values_mut() {
            if c.phase == PPhase::Waiting && c.expect == PExpect::Nothing && c.not_before <= now {
                c.expect = PExpect::Start;
            }
        }
    }

    /// Input: the machine returned `key` for a call at `now`.
    pub fn call(&mut self, now: Time, key: Key) -> Result<(), Violation> {
        self.begin(now);
        if self.live.contains_key(&key) || self.done.contains(&key) {
            return Err(self.err(Rule::DuplicateKey, Some(key), "a call key used twice"));
        }
        self.stats.calls += 1;
        self.live.insert(
            key,
            PCall {
                phase: PPhase::Waiting,
                attempts: 0,
                body_done: false,
                not_before: self.now,
                last_kind: None,
                first_failure: None,
                ticket: None,
                expect: PExpect::Start,
            },
        );
        self.due();
        Ok(())
    }

    /// An input the machine must ignore: it changes nothing but the clock.
    fn mishandled(&mut self, key: Key, accepted: bool, what: &str) -> Result<(), Violation> {
        self.due();
        if accepted {
            Err(self.err(
                Rule::InputMishandled,
                Some(key),
                format!("the machine accepted a {what} result for a call not in that stage"),
            ))
        } else {
            Ok(())
        }
    }

    fn failed(&mut self, key: Key, kind: ErrorKind) {
        let now = self.now;
        let max_attempts = self.cfg.retry().max_attempts();
        let retry = *self.cfg.retry();
        let dlq = self.cfg.dead_letter();
        let Some(c) = self.live.get_mut(&key) else {
            return;
        };
        if let Some(t) = c.ticket.take() {
            self.breaker.result(now, t, Err(kind));
        }
        c.last_kind = Some(kind);
        c.first_failure.get_or_insert(now);
        c.phase = PPhase::Waiting;
        let retryable = kind.is_retryable();
        if retryable && c.attempts < max_attempts {
            c.not_before = now + retry.delay_before_retry(c.attempts, key.as_u64());
            return;
        }
        let reason = if retryable {
            DlqReason::Exhausted
        } else {
            DlqReason::Permanent
        };
        c.expect = if dlq {
            PExpect::Dlq(reason)
        } else {
            PExpect::Complete(ProducerOutcome::Failed {
                kind,
                attempts: c.attempts,
                dlq: DlqFate::NotConfigured,
            })
        };
    }

    /// Input: the body of `key` finished; `accepted` is what the machine returned.
    pub fn body_result(
        &mut self,
        now: Time,
        key: Key,
        result: Result<(), ErrorKind>,
        accepted: bool,
    ) -> Result<(), Violation> {
        self.begin(now);
        if self.live.get(&key).map(|c| c.phase) != Some(PPhase::Body) {
            return self.mishandled(key, accepted, "body");
        }
        if !accepted {
            return Err(self.err(Rule::InputMishandled, Some(key), "a body result ignored"));
        }
        match result {
            Ok(()) => {
                let epoch = self.breaker.epoch();
                let c = self.live.get_mut(&key).expect("checked above");
                c.body_done = true;
                c.phase = PPhase::Waiting;
                c.expect = if c.ticket.is_some_and(|t| t.epoch == epoch) {
                    PExpect::PublishSame
                } else {
                    // The old permit is stale: it neither counts nor holds a probe slot.
                    c.ticket = None;
                    PExpect::PublishFresh
                };
            }
            Err(kind) => self.failed(key, kind),
        }
        self.due();
        Ok(())
    }

    /// Input: the publish of `key` finished; `accepted` is what the machine returned.
    pub fn publish_result(
        &mut self,
        now: Time,
        key: Key,
        result: Result<(), ErrorKind>,
        accepted: bool,
    ) -> Result<(), Violation> {
        self.begin(now);
        if self.live.get(&key).map(|c| c.phase) != Some(PPhase::Publish) {
            return self.mishandled(key, accepted, "publish");
        }
        if !accepted {
            return Err(self.err(Rule::InputMishandled, Some(key), "a publish result ignored"));
        }
        match result {
            Ok(()) => {
                let c = self.live.get_mut(&key).expect("checked above");
                if let Some(t) = c.ticket.take() {
                    self.breaker.result(now, t, Ok(()));
                }
                c.phase = PPhase::Waiting;
                c.expect = PExpect::Complete(ProducerOutcome::Sent {
                    attempts: c.attempts,
                });
            }
            Err(kind) => self.failed(key, kind),
        }
        self.due();
        Ok(())
    }

    /// Input: the DLQ publish of `key` finished; `accepted` is what the machine returned.
    pub fn dlq_result(
        &mut self,
        now: Time,
        key: Key,
        result: Result<(), ErrorKind>,
        accepted: bool,
    ) -> Result<(), Violation> {
        self.begin(now);
        if self.live.get(&key).map(|c| c.phase) != Some(PPhase::DlqPending) {
            return self.mishandled(key, accepted, "DLQ");
        }
        if !accepted {
            return Err(self.err(Rule::InputMishandled, Some(key), "a DLQ result ignored"));
        }
        let c = self.live.get_mut(&key).expect("checked above");
        c.phase = PPhase::Waiting;
        c.expect = PExpect::Complete(ProducerOutcome::Failed {
            kind: c.last_kind.unwrap_or(ErrorKind::Fatal),
            attempts: c.attempts,
            dlq: match result {
                Ok(()) => DlqFate::Published,
                Err(k) => DlqFate::Failed(k),
            },
        });
        self.due();
        Ok(())
    }

    /// Input: the caller of `key` went away; `accepted` is what the machine returned.
    pub fn cancelled(&mut self, now: Time, key: Key, accepted: bool) -> Result<(), Violation> {
        self.begin(now);
        match self.live.remove(&key) {
            Some(c) => {
                if let Some(t) = c.ticket {
                    self.breaker.release(t);
                }
                self.done.insert(key);
                self.stats.cancelled += 1;
                if !accepted {
                    return Err(self.err(Rule::InputMishandled, Some(key), "a cancel ignored"));
                }
            }
            None => self.mishandled(key, accepted, "cancel")?,
        }
        self.due();
        Ok(())
    }

    /// Input: [`ProducerMachine::handle_timeout`] at `now`.
    pub fn timeout(&mut self, now: Time) -> Result<(), Violation> {
        self.begin(now);
        self.due();
        Ok(())
    }

    fn known(&self, key: Key) -> Result<(), Violation> {
        if self.done.contains(&key) {
            return Err(self.err(
                Rule::AfterTerminal,
                Some(key),
                "an action for a call already completed",
            ));
        }
        if !self.live.contains_key(&key) {
            return Err(self.err(Rule::UnknownKey, Some(key), "an action for an unknown call"));
        }
        Ok(())
    }

    /// Takes a breaker slot for a new attempt (or a fresh permit for a publish), or says why not.
    fn take_slot(&mut self, key: Key, what: &str) -> Result<Ticket, Violation> {
        match self.breaker.admit() {
            Some(t) => Ok(t),
            None => {
                let rule = if self.breaker.state() == BreakerState::Open {
                    Rule::InvokeWhileOpen
                } else {
                    Rule::TooManyProbes
                };
                Err(self.err(
                    rule,
                    Some(key),
                    format!(
                        "{what} while the breaker is {}",
                        self.breaker.state().as_str()
                    ),
                ))
            }
        }
    }

    fn new_attempt(&mut self, key: Key, attempt: u32, what: &str) -> Result<(), Violation> {
        let now = self.now;
        let max = self.cfg.retry().max_attempts();
        let c = &self.live[&key];
        if attempt > max {
            return Err(self.err(
                Rule::TooManyAttempts,
                Some(key),
                format!("{what} attempt {attempt} of at most {max}"),
            ));
        }
        if attempt != c.attempts + 1 {
            return Err(self.err(
                Rule::WrongAttempt,
                Some(key),
                format!("{what} as attempt {attempt} after {} attempts", c.attempts),
            ));
        }
        if c.expect != PExpect::Start {
            return Err(self.err(
                Rule::InvokeNotDue,
                Some(key),
                format!(
                    "{what} attempt {attempt} that was not due ({:?}, {:?})",
                    c.phase, c.expect
                ),
            ));
        }
        if now < c.not_before {
            return Err(self.err(
                Rule::EarlyRetry,
                Some(key),
                format!("{what} attempt {attempt} before {}", c.not_before),
            ));
        }
        let t = self.take_slot(key, what)?;
        let c = self.live.get_mut(&key).expect("checked above");
        c.ticket = Some(t);
        c.attempts = attempt;
        c.expect = PExpect::Nothing;
        Ok(())
    }

    /// Output: one action.
    pub fn action(&mut self, a: &ProducerAction) -> Result<(), Violation> {
        match *a {
            ProducerAction::RunBody { call, attempt } => {
                self.known(call)?;
                if self.live[&call].body_done {
                    return Err(self.err(
                        Rule::InvokeNotDue,
                        Some(call),
                        "the body re-run after it succeeded",
                    ));
                }
                self.new_attempt(call, attempt, "RunBody")?;
                self.live.get_mut(&call).expect("known").phase = PPhase::Body;
                self.stats.bodies += 1;
                Ok(())
            }
            ProducerAction::Publish { call, attempt } => {
                self.known(call)?;
                let c = &self.live[&call];
                if !c.body_done {
                    return Err(self.err(
                        Rule::UnexpectedAction,
                        Some(call),
                        "Publish before the body succeeded",
                    ));
                }
                match c.expect {
                    PExpect::Start => self.new_attempt(call, attempt, "Publish")?,
                    PExpect::PublishSame | PExpect::PublishFresh => {
                        if attempt != c.attempts {
                            return Err(self.err(
                                Rule::WrongAttempt,
                                Some(call),
                                format!("Publish as attempt {attempt} in attempt {}", c.attempts),
                            ));
                        }
                        if c.expect == PExpect::PublishFresh {
                            let t = self.take_slot(call, "Publish")?;
                            self.live.get_mut(&call).expect("known").ticket = Some(t);
                        }
                        self.live.get_mut(&call).expect("known").expect = PExpect::Nothing;
                    }
                    other => {
                        return Err(self.err(
                            Rule::UnexpectedAction,
                            Some(call),
                            format!("Publish nothing called for ({other:?})"),
                        ))
                    }
                }
                self.live.get_mut(&call).expect("known").phase = PPhase::Publish;
                self.stats.publishes += 1;
                Ok(())
            }
            ProducerAction::PublishDlq { call, info } => {
                self.known(call)?;
                let now = self.now;
                let c = self.live.get_mut(&call).expect("known");
                let PExpect::Dlq(reason) = c.expect else {
                    return Err(violation(
                        Rule::BadDeadLetter,
                        now,
                        Some(call),
                        format!("a DLQ publish nothing called for ({:?})", c.expect),
                    ));
                };
                if info.reason != reason
                    || info.attempts != c.attempts
                    || Some(info.kind) != c.last_kind
                    || Some(info.first_failure) != c.first_failure
                    || info.last_failure != now
                {
                    return Err(violation(
                        Rule::BadDeadLetter,
                        now,
                        Some(call),
                        format!(
                            "DLQ record {info:?}, expected reason {reason:?}, attempts {}, kind {:?}, first failure {:?}",
                            c.attempts, c.last_kind, c.first_failure
                        ),
                    ));
                }
                c.phase = PPhase::DlqPending;
                c.expect = PExpect::Nothing;
                self.stats.dlq_requested += 1;
                Ok(())
            }
            ProducerAction::Complete { call, outcome } => self.on_complete(call, outcome),
        }
    }

    fn on_complete(&mut self, call: Key, outcome: ProducerOutcome) -> Result<(), Violation> {
        if self.done.contains(&call) {
            return Err(self.err(
                Rule::DoubleTerminal,
                Some(call),
                format!("a second Complete ({outcome:?})"),
            ));
        }
        self.known(call)?;
        let c = &self.live[&call];
        match outcome {
            ProducerOutcome::CircuitOpen { attempts } => {
                if !matches!(c.expect, PExpect::Start | PExpect::PublishFresh) {
                    return Err(self.err(
                        Rule::BadOutcome,
                        Some(call),
                        format!(
                            "CircuitOpen when no breaker permit was asked for ({:?})",
                            c.expect
                        ),
                    ));
                }
                if self.breaker.admits() {
                    return Err(self.err(
                        Rule::BadOutcome,
                        Some(call),
                        format!(
                            "CircuitOpen while the reference breaker ({}) admits",
                            self.breaker.state().as_str()
                        ),
                    ));
                }
                if attempts != c.attempts {
                    return Err(self.err(
                        Rule::BadOutcome,
                        Some(call),
                        format!(
                            "CircuitOpen after {attempts} attempts, model {}",
                            c.attempts
                        ),
                    ));
                }
                self.stats.circuit_open += 1;
            }
            other => {
                if c.expect != PExpect::Complete(other) {
                    return Err(self.err(
                        Rule::BadOutcome,
                        Some(call),
                        format!("Complete({other:?}), expected {:?}", c.expect),
                    ));
                }
                match other {
                    ProducerOutcome::Sent { .. } => self.stats.sent += 1,
                    _ => self.stats.failed += 1,
                }
            }
        }
        self.live.remove(&call);
        self.done.insert(call);
        Ok(())
    }

    /// Output: one event (after the step's actions).
    pub fn event(&mut self, e: &ProducerEvent) -> Result<(), Violation> {
        if let ProducerEvent::Breaker(t) = e {
            check_transition(&mut self.reported, &mut self.reported_log, t, self.now)?;
            if t.to == BreakerState::Open {
                self.stats.breaker_opened += 1;
            }
        }
        Ok(())
    }

    /// Ends the step: everything due happened; the breaker matches the reference.
    pub fn end_step(&mut self) -> Result<(), Violation> {
        if let Some((k, c)) = self.live.iter().find(|(_, c)| c.expect != PExpect::Nothing) {
            return Err(self.err(
                Rule::MissingOutcome,
                Some(*k),
                format!(
                    "{:?} was due (attempt {} of {}, phase {:?}), nothing came",
                    c.expect,
                    c.attempts,
                    self.cfg.retry().max_attempts(),
                    c.phase
                ),
            ));
        }
        let model = self.breaker.take_transitions();
        compare_logs(model, &mut self.reported_log, self.now)
    }

    /// Compares the machine's counters with the model.
    pub fn check_machine(&self, m: &ProducerMachine) -> Result<(), Violation> {
        if m.breaker_state() != self.breaker.state()
            || m.breaker_failures() != self.breaker.failures()
        {
            return Err(self.err(
                Rule::BreakerDiverged,
                None,
                format!(
                    "machine breaker {} with {} failures, reference {} with {}",
                    m.breaker_state().as_str(),
                    m.breaker_failures(),
                    self.breaker.state().as_str(),
                    self.breaker.failures()
                ),
            ));
        }
        if m.calls_in_progress() != self.live.len() {
            return Err(self.err(
                Rule::Diverged,
                None,
                format!(
                    "machine has {} calls in progress, model {}",
                    m.calls_in_progress(),
                    self.live.len()
                ),
            ));
        }
        Ok(())
    }

    /// Liveness: no call in progress and no timer left.
    pub fn check_settled(&self, poll_timeout: Option<Time>) -> Result<(), Violation> {
        if let Some((k, c)) = self.live.iter().next() {
            return Err(self.err(
                Rule::NotSettled,
                Some(*k),
                format!(
                    "call still in progress ({:?}, {} attempts)",
                    c.phase, c.attempts
                ),
            ));
        }
        if let Some(t) = poll_timeout {
            return Err(self.err(
                Rule::NotSettled,
                None,
                format!("idle, yet a timer is set for {t}"),
            ));
        }
        Ok(())
    }
}

/// A [`ProducerMachine`] with its [`ProducerOracle`], like [`CheckedConsumer`].
#[derive(Clone, Debug)]
pub struct CheckedProducer {
    machine: ProducerMachine,
    oracle: ProducerOracle,
    actions: Vec<ProducerAction>,
    events: Vec<ProducerEvent>,
}

impl CheckedProducer {
    /// A fresh machine and oracle.
    pub fn new(cfg: ProducerConfig) -> CheckedProducer {
        CheckedProducer {
            machine: ProducerMachine::new(cfg),
            oracle: ProducerOracle::new(cfg),
            actions: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The machine.
    pub fn machine(&self) -> &ProducerMachine {
        &self.machine
    }

    /// The machine's next deadline.
    pub fn poll_timeout(&mut self) -> Option<Time> {
        self.machine.poll_timeout()
    }

    /// The oracle.
    pub fn oracle(&self) -> &ProducerOracle {
        &self.oracle
    }

    /// The actions of the last step.
    pub fn last_actions(&self) -> &[ProducerAction] {
        &self.actions
    }

    /// The events of the last step.
    pub fn last_events(&self) -> &[ProducerEvent] {
        &self.events
    }

    fn step(&mut self) -> Result<(), Violation> {
        self.actions.clear();
        self.events.clear();
        while let Some(a) = self.machine.poll_action() {
            self.actions.push(a);
            self.oracle.action(&a)?;
        }
        while let Some(e) = self.machine.poll_event() {
            self.events.push(e);
            self.oracle.event(&e)?;
        }
        self.oracle.end_step()?;
        self.oracle.check_machine(&self.machine)
    }

    /// A call.
    pub fn call(&mut self, now: Time) -> Result<Key, Violation> {
        let key = self.machine.handle_call(now);
        self.oracle.call(now, key)?;
        self.step()?;
        Ok(key)
    }

    /// A body result.
    pub fn body(
        &mut self,
        now: Time,
        key: Key,
        r: Result<(), ErrorKind>,
    ) -> Result<bool, Violation> {
        let ok = self.machine.handle_body_result(now, key, r);
        self.oracle.body_result(now, key, r, ok)?;
        self.step()?;
        Ok(ok)
    }

    /// A publish result.
    pub fn publish(
        &mut self,
        now: Time,
        key: Key,
        r: Result<(), ErrorKind>,
    ) -> Result<bool, Violation> {
        let ok = self.machine.handle_publish_result(now, key, r);
        self.oracle.publish_result(now, key, r, ok)?;
        self.step()?;
        Ok(ok)
    }

    /// A DLQ publish result.
    pub fn dlq(
        &mut self,
        now: Time,
        key: Key,
        r: Result<(), ErrorKind>,
    ) -> Result<bool, Violation> {
        let ok = self.machine.handle_dlq_result(now, key, r);
        self.oracle.dlq_result(now, key, r, ok)?;
        self.step()?;
        Ok(ok)
    }

    /// The caller went away.
    pub fn cancel(&mut self, now: Time, key: Key) -> Result<bool, Violation> {
        let ok = self.machine.handle_cancelled(now, key);
        self.oracle.cancelled(now, key, ok)?;
        self.step()?;
        Ok(ok)
    }

    /// A timeout.
    pub fn timeout(&mut self, now: Time) -> Result<(), Violation> {
        self.machine.handle_timeout(now);
        self.oracle.timeout(now)?;
        self.step()
    }

    /// [`ProducerOracle::check_settled`] with the machine's `poll_timeout`.
    pub fn settle_check(&mut self) -> Result<(), Violation> {
        let t = self.machine.poll_timeout();
        self.oracle.check_settled(t)
    }
}
