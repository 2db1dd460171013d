//! The rules for one producer machine (a task's calls), checked from its inputs, actions and
//! events.

use std::collections::{BTreeMap, BTreeSet};

use backstop_engine::core::{
    BreakerState, DlqFate, DlqReason, ErrorKind, Key, ProducerAction, ProducerConfig,
    ProducerEvent, ProducerMachine, ProducerOutcome, Time,
};

use super::breaker::{check_transition, compare_logs, BreakerModel, Ticket};
use super::{violation, Rule, Violation};

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
/// the reference. Same feeding order as [`ConsumerOracle`](super::ConsumerOracle).
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
