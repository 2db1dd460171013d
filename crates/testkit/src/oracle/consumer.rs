//! The rules for one consumer machine, checked from its inputs, actions and events.

use std::collections::{BTreeMap, BTreeSet};

use backstop_engine::core::{
    BreakerState, ConsumerAction, ConsumerConfig, ConsumerEvent, ConsumerMachine, DlqInfo,
    DlqReason, ErrorKind, Key, NackReason, RetryStrategy, Time,
};

use super::breaker::{check_transition, compare_logs, BreakerModel, Ticket};
use super::{violation, Rule, Violation};

// ---------------------------------------------------------------------------------------------
// Consumer
// ---------------------------------------------------------------------------------------------

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Ready now or waiting for its retry time.
    Idle,
    InFlight,
    DlqPending,
    RetryPending,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Expect {
    Nothing,
    Ack,
    Dlq(DlqReason),
    Nack(NackReason),
    RetryCopy,
}

#[derive(Clone, Debug)]
struct Msg {
    phase: Phase,
    attempts: u32,
    poison: bool,
    succeeded: bool,
    dlq_confirmed: bool,
    retry_confirmed: bool,
    last_kind: Option<ErrorKind>,
    first_failure: Option<Time>,
    not_before: Time,
    ticket: Option<Ticket>,
    expect: Expect,
    why: &'static str,
    /// The message this delivery is of, when the driver names it.
    message: Option<u64>,
    /// Ordered consumers: the ordering key it queues under (deliveries that may run only).
    okey: Option<u64>,
    /// Arrival order.
    arrival: u64,
    /// Ordered: it was held behind an earlier delivery of its key at the end of some step.
    waited_behind: bool,
}

/// One message across all its deliveries.
#[derive(Copy, Clone, Debug, Default)]
struct Ledger {
    /// Runs charged to its budget (before it first succeeded).
    charged: u32,
    /// Whether a run of it succeeded (later runs are duplicates of a lost ack).
    succeeded: bool,
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
    /// Deliveries of a message delivered before (named by the driver).
    pub redelivered: u64,
    /// Deliveries that arrived with their attempt budget already spent.
    pub arrived_spent: u64,
    /// Handler runs of a message after it had succeeded (duplicates of a lost ack: counted, not
    /// charged to its budget).
    pub duplicate_runs: u64,
    /// Retry-topic copies confirmed.
    pub retry_copies: u64,
    /// Deliveries of an ordered consumer that queued under an ordering key.
    pub keyed: u64,
    /// Handler runs of an ordered consumer's keyed message that had to wait behind an earlier
    /// delivery of its key at some point.
    pub held_behind_key: u64,
}

/// The oracle (docs/architecture.md, "The invariants") for one [`ConsumerMachine`]. See the [module docs](super) for the
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
    ledger: BTreeMap<u64, Ledger>,
    message_of: BTreeMap<Key, u64>,
    arrivals: u64,
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
            ledger: BTreeMap::new(),
            message_of: BTreeMap::new(),
            arrivals: 0,
        }
    }

    /// The message a delivery `key` was of, if the driver named it
    /// ([`delivered_message`](Self::delivered_message)).
    pub fn message_of(&self, key: Key) -> Option<u64> {
        self.message_of.get(&key).copied()
    }

    /// Whether a delivery of `message` is still held (neither acked nor nacked).
    pub fn message_held(&self, message: u64) -> bool {
        self.live.values().any(|m| m.message == Some(message))
    }

    /// The prior-run count a driver that knows everything passes for a new delivery of
    /// `message`: the runs charged to its budget, or 0 once it succeeded (a redelivery after
    /// success is a duplicate of a lost ack, counted, not charged).
    pub fn prior_runs_of(&self, message: u64) -> u32 {
        self.ledger
            .get(&message)
            .map_or(0, |l| if l.succeeded { 0 } else { l.charged })
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

    /// Input: the machine returned `key` for a delivery at `now`
    /// ([`ConsumerMachine::handle_delivered`]).
    pub fn delivered(&mut self, now: Time, key: Key, decoded: bool) -> Result<(), Violation> {
        self.delivered_inner(now, key, decoded, 0, None, None)
    }

    /// Input: the machine returned `key` for a delivery with `prior_runs` earlier runs
    /// ([`ConsumerMachine::handle_redelivered`]), of a message the oracle does not track.
    pub fn delivered_after(
        &mut self,
        now: Time,
        key: Key,
        decoded: bool,
        prior_runs: u32,
    ) -> Result<(), Violation> {
        self.delivered_inner(now, key, decoded, prior_runs, None, None)
    }

    /// Like [`delivered_after`](Self::delivered_after), with the ordering key an ordered
    /// consumer queues the delivery under (as its `Received` event reports it), so
    /// [`Rule::KeyOrder`] is checked for observed consumers too.
    pub fn delivered_observed(
        &mut self,
        now: Time,
        key: Key,
        decoded: bool,
        prior_runs: u32,
        ordering_key: Option<u64>,
    ) -> Result<(), Violation> {
        self.delivered_inner(now, key, decoded, prior_runs, None, ordering_key)
    }

    /// Input: the machine returned `key` for a delivery of `message` (the driver's name for the
    /// message, the same across its redeliveries) with `prior_runs` earlier runs. The oracle
    /// then also checks the budget across deliveries: at most `max_retries + 1` runs of the
    /// message before it succeeds ([`Rule::BudgetAcrossRedeliveries`]); runs after a success
    /// are duplicates, counted in [`ConsumerStats::duplicate_runs`].
    pub fn delivered_message(
        &mut self,
        now: Time,
        key: Key,
        decoded: bool,
        message: u64,
        prior_runs: u32,
    ) -> Result<(), Violation> {
        self.delivered_keyed(now, key, decoded, message, prior_runs, None)
    }

    /// Like [`delivered_message`](Self::delivered_message), with the delivery's ordering key
    /// as given to [`ConsumerMachine::handle_delivery`]. For an ordered consumer the oracle
    /// then checks [`Rule::KeyOrder`]: a delivery of a key runs only when no earlier delivery
    /// of that key is held.
    pub fn delivered_keyed(
        &mut self,
        now: Time,
        key: Key,
        decoded: bool,
        message: u64,
        prior_runs: u32,
        ordering_key: Option<u64>,
    ) -> Result<(), Violation> {
        if self.ledger.contains_key(&message) {
            self.stats.redelivered += 1;
        }
        self.ledger.entry(message).or_default();
        self.delivered_inner(now, key, decoded, prior_runs, Some(message), ordering_key)
    }

    fn delivered_inner(
        &mut self,
        now: Time,
        key: Key,
        decoded: bool,
        prior_runs: u32,
        message: Option<u64>,
        ordering_key: Option<u64>,
    ) -> Result<(), Violation> {
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
        let mut spent = false;
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
        } else if prior_runs >= self.cfg.retry().max_attempts() {
            spent = true;
            self.stats.arrived_spent += 1;
            if self.cfg.dead_letter() {
                (
                    Expect::Dlq(DlqReason::Exhausted),
                    "its budget was spent on earlier deliveries",
                )
            } else {
                (
                    Expect::Nack(NackReason::NoDeadLetter),
                    "its budget was spent on earlier deliveries and there is no DLQ",
                )
            }
        } else {
            (Expect::Nothing, "")
        };
        if let Some(msg) = message {
            self.message_of.insert(key, msg);
        }
        let failed_before = !decoded || spent;
        let joins = self.cfg.ordered() && expect == Expect::Nothing;
        self.arrivals += 1;
        if joins && ordering_key.is_some() {
            self.stats.keyed += 1;
        }
        self.live.insert(
            key,
            Msg {
                phase: Phase::Idle,
                attempts: prior_runs,
                poison: !decoded,
                succeeded: false,
                dlq_confirmed: false,
                retry_confirmed: false,
                last_kind: if !decoded {
                    Some(ErrorKind::Decode)
                } else if spent {
                    Some(ErrorKind::Handler)
                } else {
                    None
                },
                first_failure: failed_before.then_some(self.now),
                not_before: self.now,
                ticket: None,
                expect,
                why,
                message,
                okey: ordering_key.filter(|_| joins),
                arrival: self.arrivals,
                waited_behind: false,
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
        let strategy = self.cfg.retry_strategy();
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
                if let Some(l) = m.message.and_then(|msg| self.ledger.get_mut(&msg)) {
                    l.succeeded = true;
                }
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
                } else if strategy == RetryStrategy::Nack {
                    m.expect = Expect::Nack(NackReason::Retry);
                    m.why = "its retry goes through the broker (nack strategy)";
                } else if strategy == RetryStrategy::Topic {
                    m.expect = Expect::RetryCopy;
                    m.why = "its retry goes through the retry topic";
                    m.not_before = now + retry.delay_before_retry(m.attempts, key.as_u64());
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
        self.publish_result(now, key, result, accepted, Publish::Dlq)
    }

    /// Input: the retry-topic publish of `key` finished; `accepted` is what
    /// [`ConsumerMachine::handle_retry_result`] returned.
    pub fn retry_result(
        &mut self,
        now: Time,
        key: Key,
        result: Result<(), ErrorKind>,
        accepted: bool,
    ) -> Result<(), Violation> {
        self.publish_result(now, key, result, accepted, Publish::Retry)
    }

    /// The rules both publishes a message can wait on share: only a message waiting on that
    /// publish takes its result; confirmed, it must be acked; failed, nacked, and the failure
    /// counts for the breaker.
    fn publish_result(
        &mut self,
        now: Time,
        key: Key,
        result: Result<(), ErrorKind>,
        accepted: bool,
        which: Publish,
    ) -> Result<(), Violation> {
        self.begin(now);
        let Some(m) = self.live.get_mut(&key).filter(|m| m.phase == which.phase()) else {
            if accepted {
                return Err(self.err(Rule::InputMishandled, Some(key), which.not_waiting()));
            }
            return Ok(());
        };
        m.phase = Phase::Idle;
        match (result, which) {
            (Ok(()), Publish::Dlq) => {
                m.dlq_confirmed = true;
                m.expect = Expect::Ack;
                m.why = "its DLQ publish was confirmed";
                self.stats.dlq_confirmed += 1;
            }
            (Ok(()), Publish::Retry) => {
                m.retry_confirmed = true;
                m.expect = Expect::Ack;
                m.why = "its retry-topic copy was confirmed";
                self.stats.retry_copies += 1;
            }
            (Err(kind), _) => {
                (m.expect, m.why) = match which {
                    Publish::Dlq => (
                        Expect::Nack(NackReason::DeadLetterFailed),
                        "its DLQ publish failed",
                    ),
                    Publish::Retry => (
                        Expect::Nack(NackReason::RetryFailed),
                        "its retry-topic publish failed",
                    ),
                };
                if accepted {
                    self.breaker.record_failed(now, kind);
                }
            }
        }
        if !accepted {
            return Err(self.err(Rule::InputMishandled, Some(key), which.ignored()));
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
            ConsumerAction::PublishRetry {
                key,
                runs,
                delay_ms,
            } => self.on_publish_retry(key, runs, delay_ms),
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
        if let Some(l) = m.message.and_then(|msg| self.ledger.get(&msg)) {
            if !l.succeeded && l.charged >= max_attempts {
                return e(
                    Rule::BudgetAcrossRedeliveries,
                    format!(
                        "run {} of message {} over all its deliveries, at most {max_attempts}",
                        l.charged + 1,
                        m.message.unwrap_or_default()
                    ),
                );
            }
        }
        if let Some(k) = m.okey {
            if let Some((earlier, _)) = self
                .live
                .iter()
                .find(|(_, o)| o.okey == Some(k) && o.arrival < m.arrival)
            {
                return e(
                    Rule::KeyOrder,
                    format!(
                        "attempt {attempt} while {earlier}, delivered earlier with the same ordering key, is still held"
                    ),
                );
            }
        }
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
        } else if m.phase == Phase::RetryPending || m.retry_confirmed {
            Some("while its retry copy carries it".to_string())
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
        if m.waited_behind {
            self.stats.held_behind_key += 1;
        }
        if let Some(l) = m.message.and_then(|msg| self.ledger.get_mut(&msg)) {
            if l.succeeded {
                self.stats.duplicate_runs += 1;
            } else {
                l.charged += 1;
            }
        }
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
        if !(m.succeeded || m.dlq_confirmed || m.retry_confirmed) {
            let state = match m.phase {
                Phase::InFlight => "while its handler runs",
                Phase::DlqPending => "before its DLQ publish was confirmed",
                Phase::RetryPending => "before its retry copy was confirmed",
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
        if m.succeeded || m.dlq_confirmed || m.retry_confirmed {
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

    fn on_publish_retry(&mut self, key: Key, runs: u32, delay_ms: u64) -> Result<(), Violation> {
        self.known(key)?;
        let now = self.now;
        let m = self.live.get_mut(&key).expect("checked above");
        let bad = |detail: String| Err(violation(Rule::UnexpectedAction, now, Some(key), detail));
        if m.expect != Expect::RetryCopy {
            return bad(format!(
                "a retry-topic publish nothing called for (attempts {})",
                m.attempts
            ));
        }
        // Due no earlier than the policy says, and less than a millisecond later.
        let due = now + std::time::Duration::from_millis(delay_ms);
        if runs != m.attempts
            || due < m.not_before
            || due >= m.not_before + std::time::Duration::from_millis(1)
        {
            return bad(format!(
                "retry copy with runs {runs} due {delay_ms} ms after {now}, expected runs {} due at {}",
                m.attempts, m.not_before
            ));
        }
        m.phase = Phase::RetryPending;
        m.expect = Expect::Nothing;
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
                && (m.attempts == 0 || m.not_before <= self.now)
                && !self.blocked(m))
            .then_some(*k)
        })
    }

    /// Ordered: whether an earlier delivery of `m`'s key is still held.
    fn blocked(&self, m: &Msg) -> bool {
        m.okey.is_some_and(|k| {
            self.live
                .values()
                .any(|o| o.okey == Some(k) && o.arrival < m.arrival)
        })
    }

    /// Ends the step: everything the step's input called for has happened, the breaker's
    /// reported transitions match the reference's, credit is right and no ready work is left
    /// idle.
    pub fn end_step(&mut self) -> Result<(), Violation> {
        if self.cfg.ordered() {
            let behind: Vec<Key> = self
                .live
                .iter()
                .filter(|(_, m)| self.blocked(m))
                .map(|(k, _)| *k)
                .collect();
            for k in behind {
                if let Some(m) = self.live.get_mut(&k) {
                    m.waited_behind = true;
                }
            }
        }
        if let Some((k, m)) = self.live.iter().find(|(_, m)| m.expect != Expect::Nothing) {
            let what = match m.expect {
                Expect::Ack => "an ack".to_string(),
                Expect::Dlq(r) => format!("a DLQ publish ({})", r.as_str()),
                Expect::Nack(r) => format!("a nack ({r:?})"),
                Expect::RetryCopy => "a retry-topic publish".to_string(),
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

/// A publish a message can wait on before it is settled.
#[derive(Clone, Copy)]
enum Publish {
    /// Its dead-letter (or parking) record.
    Dlq,
    /// Its retry-topic copy.
    Retry,
}

impl Publish {
    fn phase(self) -> Phase {
        match self {
            Publish::Dlq => Phase::DlqPending,
            Publish::Retry => Phase::RetryPending,
        }
    }

    fn not_waiting(self) -> &'static str {
        match self {
            Publish::Dlq => {
                "the machine accepted a DLQ result for a message not waiting on the DLQ"
            }
            Publish::Retry => {
                "the machine accepted a retry result for a message not waiting on one"
            }
        }
    }

    fn ignored(self) -> &'static str {
        match self {
            Publish::Dlq => "the machine ignored the result of a pending DLQ publish",
            Publish::Retry => "the machine ignored the result of a pending retry publish",
        }
    }
}
