//! The consumer machine: one subscription's deliveries in; invoke, ack, nack, dead-letter,
//! pause, resume and credit requests out.
//!
//! # Contract
//!
//! The machine is sans-IO in the style of quinn-proto: every `handle_*` call carries `now`;
//! afterwards the driver drains [`ConsumerMachine::poll_action`] and
//! [`ConsumerMachine::poll_event`] until they return `None`, performs the actions, and sleeps
//! until [`ConsumerMachine::poll_timeout`], when it calls [`ConsumerMachine::handle_timeout`].
//!
//! Guarantees (DESIGN.md §2 and §4):
//! - never more than `max_parallelism` [`ConsumerAction::Invoke`] without a matching
//!   [`ConsumerMachine::handle_finished`]; a message waiting for its retry holds no slot;
//! - at most `max_retries + 1` attempts, each retry no earlier than its delay;
//! - [`ConsumerAction::Ack`] only after a successful attempt or a confirmed DLQ publish;
//! - exhausted or permanently failed messages go to the DLQ if there is one, else are nacked;
//!   undecodable ones go straight to the DLQ with reason [`DlqReason::Decode`];
//! - while the breaker is open nothing is invoked; half-open admits one probe;
//! - shutdown nacks everything not in flight, lets in-flight work finish until the deadline, then
//!   nacks the rest. Every delivery ends in exactly one terminal action (ack or nack).
//!
//! ```
//! use backstop_engine::core::*;
//! let cfg = ConsumerConfig::builder().max_parallelism(2).build()?;
//! let mut m = ConsumerMachine::new(cfg);
//! let now = Time::ZERO;
//! let key = m.handle_delivered(now, true);
//! let mut invoked = None;
//! while let Some(a) = m.poll_action() {
//!     if let ConsumerAction::Invoke { key, attempt } = a { invoked = Some((key, attempt)); }
//! }
//! assert_eq!(invoked, Some((key, 1)));
//! m.handle_finished(now, key, Ok(()));
//! assert!(std::iter::from_fn(|| m.poll_action()).any(|a| a == ConsumerAction::Ack { key }));
//! # Ok::<(), ConfigError>(())
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use super::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Permit, Transition};
use super::config_error::ConfigError;
use super::error::ErrorKind;
use super::retry::RetryPolicy;
use super::slab::{Key, Slab};
use super::time::Time;
use super::timers::Timers;

/// Consumer settings; build with [`ConsumerConfig::builder`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ConsumerConfig {
    max_parallelism: u32,
    max_held: u32,
    retry: RetryPolicy,
    breaker: BreakerConfig,
    dlq: bool,
}

impl ConsumerConfig {
    /// A builder: parallelism 1, retries and breaker at their defaults, no DLQ.
    ///
    /// ```
    /// use backstop_engine::core::ConsumerConfig;
    /// let cfg = ConsumerConfig::builder().max_parallelism(5).dead_letter(true).build()?;
    /// assert_eq!(cfg.max_parallelism(), 5);
    /// assert!(ConsumerConfig::builder().max_parallelism(0).build().is_err());
    /// # Ok::<(), backstop_engine::core::ConfigError>(())
    /// ```
    pub fn builder() -> ConsumerConfigBuilder {
        ConsumerConfigBuilder {
            cfg: ConsumerConfig {
                max_parallelism: 1,
                max_held: 0,
                retry: RetryPolicy::default(),
                breaker: BreakerConfig::default(),
                dlq: false,
            },
        }
    }
    /// Handler invocations allowed in flight at once.
    pub fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }
    /// Deliveries held at once (in flight, ready, waiting for a retry or for the DLQ).
    pub fn max_held(&self) -> u32 {
        self.max_held
    }
    /// The retry policy.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }
    /// The breaker settings.
    pub fn breaker(&self) -> &BreakerConfig {
        &self.breaker
    }
    /// Whether a dead-letter topic is configured.
    pub fn dead_letter(&self) -> bool {
        self.dlq
    }
}

/// Builds a validated [`ConsumerConfig`].
#[derive(Clone, Debug)]
pub struct ConsumerConfigBuilder {
    cfg: ConsumerConfig,
}

impl ConsumerConfigBuilder {
    /// Handler invocations in flight at once (1..=10_000).
    pub fn max_parallelism(mut self, n: u32) -> Self {
        self.cfg.max_parallelism = n;
        self
    }
    /// Deliveries held at once; 0 (the default) means `4 × max_parallelism`. Must be at least
    /// `max_parallelism`.
    pub fn max_held(mut self, n: u32) -> Self {
        self.cfg.max_held = n;
        self
    }
    /// The retry policy.
    pub fn retry(mut self, p: RetryPolicy) -> Self {
        self.cfg.retry = p;
        self
    }
    /// The breaker settings.
    pub fn breaker(mut self, b: BreakerConfig) -> Self {
        self.cfg.breaker = b;
        self
    }
    /// Whether failed messages are published to a dead-letter topic.
    pub fn dead_letter(mut self, on: bool) -> Self {
        self.cfg.dlq = on;
        self
    }
    /// Validates and returns the config.
    pub fn build(self) -> Result<ConsumerConfig, ConfigError> {
        let mut c = self.cfg;
        if c.max_parallelism == 0 || c.max_parallelism > 10_000 {
            return Err(ConfigError::new(
                "max_parallelism",
                "must be between 1 and 10000",
            ));
        }
        if c.max_held == 0 {
            c.max_held = c.max_parallelism.saturating_mul(4);
        }
        if c.max_held < c.max_parallelism {
            return Err(ConfigError::new(
                "max_held",
                "must be at least max_parallelism",
            ));
        }
        Ok(c)
    }
}

/// Why a message is dead-lettered.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DlqReason {
    /// Every attempt failed with retryable errors.
    Exhausted,
    /// An attempt failed with a permanent error kind.
    Permanent,
    /// The payload did not decode (poison).
    Decode,
}

impl DlqReason {
    /// Label for logs and the DLQ record.
    pub const fn as_str(self) -> &'static str {
        match self {
            DlqReason::Exhausted => "exhausted",
            DlqReason::Permanent => "permanent",
            DlqReason::Decode => "decode",
        }
    }
}

/// The facts the DLQ record is built from (the driver adds payload and error text).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DlqInfo {
    /// Why.
    pub reason: DlqReason,
    /// Kind of the last failure.
    pub kind: ErrorKind,
    /// Attempts made.
    pub attempts: u32,
    /// When the first attempt failed (delivery time for poison).
    pub first_failure: Time,
    /// When the last attempt failed.
    pub last_failure: Time,
}

/// Why a message was nacked (redelivered by the broker).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum NackReason {
    /// Failed for good and no DLQ is configured.
    NoDeadLetter,
    /// The DLQ publish failed.
    DeadLetterFailed,
    /// Shutting down.
    Shutdown,
}

/// What the driver must do.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConsumerAction {
    /// Pull up to `count` more deliveries from the broker.
    Request {
        /// How many.
        count: u32,
    },
    /// Run the handler on the message (attempt numbers start at 1).
    Invoke {
        /// The message.
        key: Key,
        /// Which attempt.
        attempt: u32,
    },
    /// Acknowledge: the message is done.
    Ack {
        /// The message.
        key: Key,
    },
    /// Negatively acknowledge: the broker redelivers it. If its handler is still running
    /// (shutdown deadline), abandon that run.
    Nack {
        /// The message.
        key: Key,
        /// Why.
        reason: NackReason,
    },
    /// Publish a dead-letter record and report with [`ConsumerMachine::handle_dlq_result`].
    PublishDlq {
        /// The message.
        key: Key,
        /// Record facts.
        info: DlqInfo,
    },
    /// The breaker opened: stop pulling from the broker.
    Pause,
    /// The breaker closed: pulling may resume.
    Resume,
}

/// What happened, for metrics and logs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConsumerEvent {
    /// A delivery arrived (`poison` if it did not decode).
    Received {
        /// The message.
        key: Key,
        /// Whether it failed to decode.
        poison: bool,
    },
    /// A handler run started.
    Invoked {
        /// The message.
        key: Key,
        /// Which attempt.
        attempt: u32,
        /// Whether it is the half-open probe.
        probe: bool,
    },
    /// A handler run succeeded.
    Succeeded {
        /// The message.
        key: Key,
        /// Which attempt.
        attempt: u32,
        /// How long the run took.
        latency: Duration,
    },
    /// A handler run failed.
    Failed {
        /// The message.
        key: Key,
        /// Which attempt.
        attempt: u32,
        /// The failure's kind.
        kind: ErrorKind,
        /// How long the run took.
        latency: Duration,
    },
    /// A retry is scheduled.
    RetryScheduled {
        /// The message.
        key: Key,
        /// The attempt that will run.
        next_attempt: u32,
        /// Not before this time.
        at: Time,
    },
    /// The DLQ publish was confirmed; the message is acked next.
    DeadLettered {
        /// The message.
        key: Key,
        /// Record facts.
        info: DlqInfo,
    },
    /// The DLQ publish failed; the message is nacked.
    DeadLetterFailed {
        /// The message.
        key: Key,
        /// The publish's failure kind.
        kind: ErrorKind,
    },
    /// The message was acked.
    Acked {
        /// The message.
        key: Key,
    },
    /// The message was nacked.
    Nacked {
        /// The message.
        key: Key,
        /// Why.
        reason: NackReason,
    },
    /// The breaker changed state.
    Breaker(Transition),
    /// Shutdown finished: nothing is held any more.
    Drained,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Stage {
    Ready,
    InFlight { permit: Permit, started: Time },
    Waiting { until: Time },
    DlqPending(DlqInfo),
}

#[derive(Copy, Clone, Debug)]
struct Entry {
    stage: Stage,
    attempts: u32,
    first_failure: Option<Time>,
    last_failure: Time,
}

/// The consumer state machine for one subscription. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct ConsumerMachine {
    cfg: ConsumerConfig,
    breaker: CircuitBreaker,
    entries: Slab<Entry>,
    ready: VecDeque<Key>,
    timers: Timers,
    actions: VecDeque<ConsumerAction>,
    events: VecDeque<ConsumerEvent>,
    in_flight: u32,
    outstanding_credit: u32,
    paused: bool,
    shutdown_deadline: Option<Time>,
    drained_reported: bool,
}

impl ConsumerMachine {
    /// A machine with nothing held. The first action it emits is a credit [`ConsumerAction::Request`].
    pub fn new(cfg: ConsumerConfig) -> ConsumerMachine {
        let cap = cfg.max_held as usize;
        let mut m = ConsumerMachine {
            cfg,
            breaker: CircuitBreaker::new(cfg.breaker),
            entries: Slab::with_capacity(cap),
            ready: VecDeque::with_capacity(cap),
            timers: Timers::with_capacity(cap),
            actions: VecDeque::with_capacity(cap * 2 + 8),
            events: VecDeque::with_capacity(cap * 4 + 8),
            in_flight: 0,
            outstanding_credit: 0,
            paused: false,
            shutdown_deadline: None,
            drained_reported: false,
        };
        m.grant_credit();
        m
    }

    /// The settings.
    pub fn config(&self) -> &ConsumerConfig {
        &self.cfg
    }

    /// The breaker's current state.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The breaker's consecutive failure count.
    pub fn breaker_failures(&self) -> u32 {
        self.breaker.failures()
    }

    /// Handler runs in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Deliveries held (in flight, ready, waiting for a retry or for the DLQ).
    pub fn held(&self) -> usize {
        self.entries.len()
    }

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown_deadline.is_some()
    }

    /// Whether shutdown began and nothing is held any more.
    pub fn is_drained(&self) -> bool {
        self.is_shutting_down() && self.entries.len() == 0
    }

    /// Attempts made so far for `key`, if it is held.
    pub fn attempts(&self, key: Key) -> Option<u32> {
        self.entries.get(key).map(|e| e.attempts)
    }

    /// A delivery arrived. `decoded` is false for a payload that did not decode (poison), which
    /// goes straight to the DLQ. Returns the key the driver uses for this delivery.
    pub fn handle_delivered(&mut self, now: Time, decoded: bool) -> Key {
        self.outstanding_credit = self.outstanding_credit.saturating_sub(1);
        let key = self.entries.insert(Entry {
            stage: Stage::Ready,
            attempts: 0,
            first_failure: None,
            last_failure: now,
        });
        self.events.push_back(ConsumerEvent::Received {
            key,
            poison: !decoded,
        });
        if self.shutdown_deadline.is_some() {
            self.nack(key, NackReason::Shutdown);
        } else if !decoded {
            self.fail_for_good(now, key, DlqReason::Decode, ErrorKind::Decode);
        } else {
            self.ready.push_back(key);
        }
        self.pump(now);
        key
    }

    /// A handler run finished. Results for keys that are no longer in flight (abandoned at the
    /// shutdown deadline, or unknown) are ignored and return `false`.
    pub fn handle_finished(&mut self, now: Time, key: Key, result: Result<(), ErrorKind>) -> bool {
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        let Stage::InFlight { permit, started } = entry.stage else {
            return false;
        };
        let attempt = entry.attempts;
        let latency = now.saturating_since(started);
        self.in_flight -= 1;
        match result {
            Ok(()) => {
                self.breaker.on_success(now, permit);
                self.events.push_back(ConsumerEvent::Succeeded {
                    key,
                    attempt,
                    latency,
                });
                self.ack(key);
            }
            Err(kind) => {
                self.breaker.on_failure(now, permit, kind);
                self.events.push_back(ConsumerEvent::Failed {
                    key,
                    attempt,
                    kind,
                    latency,
                });
                let entry = self.entries.get_mut(key).expect("entry checked above");
                entry.first_failure.get_or_insert(now);
                entry.last_failure = now;
                if self.cfg.retry.should_retry(attempt, kind) {
                    if self.shutdown_deadline.is_some() {
                        self.nack(key, NackReason::Shutdown);
                    } else {
                        let until = now + self.cfg.retry.delay_before_retry(attempt, key.as_u64());
                        entry.stage = Stage::Waiting { until };
                        self.timers.push(until, key);
                        self.events.push_back(ConsumerEvent::RetryScheduled {
                            key,
                            next_attempt: attempt + 1,
                            at: until,
                        });
                    }
                } else {
                    let reason = if kind.is_retryable() {
                        DlqReason::Exhausted
                    } else {
                        DlqReason::Permanent
                    };
                    self.fail_for_good(now, key, reason, kind);
                }
            }
        }
        self.pump(now);
        true
    }

    /// The DLQ publish for `key` finished. On success the message is acked; on failure it is
    /// nacked so the broker redelivers it. Returns `false` for a key not waiting on the DLQ.
    pub fn handle_dlq_result(
        &mut self,
        now: Time,
        key: Key,
        result: Result<(), ErrorKind>,
    ) -> bool {
        let Some(Stage::DlqPending(info)) = self.entries.get(key).map(|e| e.stage) else {
            return false;
        };
        match result {
            Ok(()) => {
                self.events
                    .push_back(ConsumerEvent::DeadLettered { key, info });
                #[cfg(feature = "planted-bugs")]
                if crate::core::planted::active(crate::core::planted::Bug::AckBeforeDlqConfirmed) {
                    // The planted bug already acked it at request time.
                    self.entries.remove(key);
                    self.grant_credit();
                    self.check_drained();
                    return true;
                }
                self.ack(key);
            }
            Err(kind) => {
                self.events
                    .push_back(ConsumerEvent::DeadLetterFailed { key, kind });
                self.nack(key, NackReason::DeadLetterFailed);
            }
        }
        self.pump(now);
        true
    }

    /// Begins graceful shutdown: no more credit; everything not in flight is nacked now;
    /// in-flight runs and pending DLQ publishes may finish until `deadline`, when the rest is
    /// nacked. Calling it again only moves the deadline earlier.
    pub fn handle_shutdown(&mut self, now: Time, deadline: Time) {
        self.shutdown_deadline = Some(match self.shutdown_deadline {
            Some(d) => d.min(deadline),
            None => deadline,
        });
        while let Some(key) = self.ready.pop_front() {
            self.nack(key, NackReason::Shutdown);
        }
        let waiting: Vec<Key> = self
            .entries
            .keys()
            .filter(|k| {
                matches!(
                    self.entries.get(*k).map(|e| e.stage),
                    Some(Stage::Waiting { .. })
                )
            })
            .collect();
        for key in waiting {
            self.nack(key, NackReason::Shutdown);
        }
        self.timers.clear();
        self.handle_timeout(now);
        self.check_drained();
    }

    /// Fires everything due at `now`: retry timers, the breaker's recovery timeout, the shutdown
    /// deadline.
    pub fn handle_timeout(&mut self, now: Time) {
        if let Some(deadline) = self.shutdown_deadline {
            if now >= deadline {
                let held: Vec<Key> = self.entries.keys().collect();
                for key in held {
                    if let Some(Stage::InFlight { permit, .. }) =
                        self.entries.get(key).map(|e| e.stage)
                    {
                        self.breaker.release(permit);
                        self.in_flight -= 1;
                    }
                    self.nack(key, NackReason::Shutdown);
                }
                self.ready.clear();
                self.timers.clear();
                self.check_drained();
                return;
            }
        }
        while let Some((at, key)) = self.timers.pop_due(now) {
            if let Some(entry) = self.entries.get_mut(key) {
                if entry.stage == (Stage::Waiting { until: at }) {
                    entry.stage = Stage::Ready;
                    self.ready.push_back(key);
                }
            }
        }
        self.breaker.handle_timeout(now);
        self.pump(now);
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) is due, if any.
    pub fn poll_timeout(&mut self) -> Option<Time> {
        // Drop stale retry entries so an idle machine reports no timer.
        while let Some((at, key)) = self.timers.peek() {
            match self.entries.get(key) {
                Some(e) if e.stage == (Stage::Waiting { until: at }) => break,
                _ => self.timers.pop(),
            }
        }
        let retry = self.timers.peek().map(|(t, _)| t);
        let breaker = self
            .breaker
            .poll_timeout()
            .filter(|_| self.shutdown_deadline.is_none());
        let shutdown = self.shutdown_deadline.filter(|_| self.entries.len() > 0);
        [retry, breaker, shutdown].into_iter().flatten().min()
    }

    /// The next action to perform.
    pub fn poll_action(&mut self) -> Option<ConsumerAction> {
        self.actions.pop_front()
    }

    /// The next event to record.
    pub fn poll_event(&mut self) -> Option<ConsumerEvent> {
        self.events.pop_front()
    }

    fn fail_for_good(&mut self, now: Time, key: Key, reason: DlqReason, kind: ErrorKind) {
        if !self.cfg.dlq {
            self.nack(key, NackReason::NoDeadLetter);
            return;
        }
        let entry = self.entries.get_mut(key).expect("held");
        entry.first_failure.get_or_insert(now);
        entry.last_failure = now;
        let info = DlqInfo {
            reason,
            kind,
            attempts: entry.attempts,
            first_failure: entry.first_failure.unwrap_or(now),
            last_failure: now,
        };
        entry.stage = Stage::DlqPending(info);
        self.actions
            .push_back(ConsumerAction::PublishDlq { key, info });
        #[cfg(feature = "planted-bugs")]
        if crate::core::planted::active(crate::core::planted::Bug::AckBeforeDlqConfirmed) {
            self.actions.push_back(ConsumerAction::Ack { key });
            self.events.push_back(ConsumerEvent::Acked { key });
        }
    }

    fn ack(&mut self, key: Key) {
        self.entries.remove(key);
        self.actions.push_back(ConsumerAction::Ack { key });
        self.events.push_back(ConsumerEvent::Acked { key });
        self.grant_credit();
        self.check_drained();
    }

    fn nack(&mut self, key: Key, reason: NackReason) {
        if self.entries.remove(key).is_none() {
            return;
        }
        self.actions.push_back(ConsumerAction::Nack { key, reason });
        self.events.push_back(ConsumerEvent::Nacked { key, reason });
        self.grant_credit();
        self.check_drained();
    }

    fn check_drained(&mut self) {
        if self.is_drained() && !self.drained_reported {
            self.drained_reported = true;
            self.events.push_back(ConsumerEvent::Drained);
        }
    }

    /// Turns breaker transitions into events and pause/resume actions, then re-grants credit.
    fn drain_transitions(&mut self) {
        while let Some(t) = self.breaker.poll_transition() {
            self.events.push_back(ConsumerEvent::Breaker(t));
            match t.to {
                BreakerState::Open if !self.paused => {
                    self.paused = true;
                    self.actions.push_back(ConsumerAction::Pause);
                }
                BreakerState::Closed if self.paused => {
                    self.paused = false;
                    self.actions.push_back(ConsumerAction::Resume);
                }
                _ => {}
            }
        }
        self.grant_credit();
    }

    /// Invokes ready messages while slots and the breaker allow.
    fn pump(&mut self, now: Time) {
        let limit = self.cfg.max_parallelism;
        #[cfg(feature = "planted-bugs")]
        let limit = if crate::core::planted::active(crate::core::planted::Bug::ParallelismOffByOne)
        {
            limit + 1
        } else {
            limit
        };
        while self.in_flight < limit && !self.ready.is_empty() && self.shutdown_deadline.is_none() {
            let permit = match self.breaker.try_acquire(now) {
                Ok(p) => p,
                Err(_) => break,
            };
            let key = self.ready.pop_front().expect("non-empty");
            let entry = self.entries.get_mut(key).expect("ready keys are held");
            entry.attempts += 1;
            entry.stage = Stage::InFlight {
                permit,
                started: now,
            };
            self.in_flight += 1;
            let attempt = entry.attempts;
            self.actions
                .push_back(ConsumerAction::Invoke { key, attempt });
            self.events.push_back(ConsumerEvent::Invoked {
                key,
                attempt,
                probe: permit.is_probe(),
            });
        }
        self.drain_transitions();
    }

    /// Grants pull credit up to `max_held`: freely while closed, one delivery for the probe
    /// while half-open with nothing ready, none while open or shutting down.
    fn grant_credit(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        let held = self.entries.len() as u32 + self.outstanding_credit;
        let room = self.cfg.max_held.saturating_sub(held);
        let grant = match self.breaker.state() {
            BreakerState::Closed => room,
            BreakerState::HalfOpen if self.ready.is_empty() && self.outstanding_credit == 0 => {
                room.min(1)
            }
            _ => 0,
        };
        if grant > 0 {
            self.outstanding_credit += grant;
            self.actions
                .push_back(ConsumerAction::Request { count: grant });
        }
    }
}
