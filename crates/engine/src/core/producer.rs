//! The producer machine: a task's calls in; run-body, publish, dead-letter and completion out.
//!
//! The contract is on [`ProducerMachine`].

use std::collections::VecDeque;
use std::time::Duration;

use super::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Permit, Refusal, Transition};
use super::config_error::ConfigError;
use super::consumer::{earliest, DlqInfo, DlqReason};
use super::error::ErrorKind;
use super::retry::RetryPolicy;
use super::slab::{Key, Slab};
use super::time::Time;
use super::timers::Timers;

/// Producer task settings; build with [`ProducerConfig::builder`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ProducerConfig {
    retry: RetryPolicy,
    breaker: BreakerConfig,
    dlq: bool,
}

impl ProducerConfig {
    /// A builder with the default retry policy and breaker, no DLQ.
    pub fn builder() -> ProducerConfigBuilder {
        ProducerConfigBuilder {
            cfg: ProducerConfig {
                retry: RetryPolicy::default(),
                breaker: BreakerConfig::default(),
                dlq: false,
            },
        }
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

/// Builds a [`ProducerConfig`].
#[derive(Clone, Debug)]
pub struct ProducerConfigBuilder {
    cfg: ProducerConfig,
}

impl ProducerConfigBuilder {
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
    /// Whether exhausted calls are published to a dead-letter topic.
    pub fn dead_letter(mut self, on: bool) -> Self {
        self.cfg.dlq = on;
        self
    }
    /// Returns the config (its parts were validated when they were built).
    pub fn build(self) -> Result<ProducerConfig, ConfigError> {
        Ok(self.cfg)
    }
}

/// Where a failed call's data went.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DlqFate {
    /// No DLQ configured: the caller holds the only copy.
    NotConfigured,
    /// Published to the DLQ (confirmed).
    Published,
    /// The DLQ publish failed with this kind: the caller holds the only copy.
    Failed(ErrorKind),
}

/// How a call ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ProducerOutcome {
    /// Published.
    Sent {
        /// Attempts it took.
        attempts: u32,
    },
    /// Gave up.
    Failed {
        /// The last failure's kind.
        kind: ErrorKind,
        /// Attempts made.
        attempts: u32,
        /// Where the data went.
        dlq: DlqFate,
    },
    /// The breaker refused before any broker call of this attempt.
    CircuitOpen {
        /// Attempts made before the refusal.
        attempts: u32,
    },
}

/// What the driver must do.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ProducerAction {
    /// Run the task body; report with [`ProducerMachine::handle_body_result`].
    RunBody {
        /// The call.
        call: Key,
        /// Which attempt.
        attempt: u32,
    },
    /// Publish the body's result; report with [`ProducerMachine::handle_publish_result`].
    Publish {
        /// The call.
        call: Key,
        /// Which attempt.
        attempt: u32,
    },
    /// Publish a dead-letter record; report with [`ProducerMachine::handle_dlq_result`].
    PublishDlq {
        /// The call.
        call: Key,
        /// Record facts.
        info: DlqInfo,
    },
    /// The call is over: hand the outcome (and the data) back to the caller.
    Complete {
        /// The call.
        call: Key,
        /// How it ended.
        outcome: ProducerOutcome,
    },
}

/// What happened, for metrics and logs.
// `repr(u64)`: an 8-byte tag keeps the payload 8-aligned, so moving an event out of the queue is
// plain aligned copies (a 1-byte tag made LLVM copy overlapping unaligned chunks and stall on
// store forwarding in every driver's poll loop).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum ProducerEvent {
    /// A publish was confirmed.
    Sent {
        /// The call.
        call: Key,
        /// From the call's start to the confirmation.
        latency: Duration,
    },
    /// An attempt failed.
    Failed {
        /// The call.
        call: Key,
        /// Which attempt.
        attempt: u32,
        /// The failure's kind.
        kind: ErrorKind,
        /// Whether the publish (not the body) failed.
        publish: bool,
    },
    /// A retry is scheduled.
    RetryScheduled {
        /// The call.
        call: Key,
        /// The attempt that will run.
        next_attempt: u32,
        /// Not before this time.
        at: Time,
    },
    /// The breaker refused the call.
    Rejected {
        /// The call.
        call: Key,
    },
    /// The DLQ publish was confirmed.
    DeadLettered {
        /// The call.
        call: Key,
        /// Record facts.
        info: DlqInfo,
    },
    /// The DLQ publish failed.
    DeadLetterFailed {
        /// The call.
        call: Key,
        /// The publish's failure kind.
        kind: ErrorKind,
    },
    /// The breaker changed state.
    Breaker(Transition),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Stage {
    Body(Permit),
    Publish(Permit),
    Waiting { until: Time },
    DlqPending(DlqInfo),
}

#[derive(Copy, Clone, Debug)]
struct Call {
    stage: Stage,
    attempts: u32,
    body_done: bool,
    started: Time,
    first_failure: Option<Time>,
}

/// The producer state machine for one task.
///
/// One machine serves every call of one task and owns that task's circuit breaker. It is
/// sans-IO like the consumer machine: every `handle_*` call carries `now` and leaves the machine
/// up to date with it (due retries started, an expired open breaker half-open); the driver then
/// drains [`ProducerMachine::poll_action`] and [`ProducerMachine::poll_event`] and calls
/// [`ProducerMachine::handle_timeout`] at [`ProducerMachine::poll_timeout`].
///
/// Contract (docs/architecture.md, "What the core decides"):
/// - each call is a sequence of attempts; an attempt takes a breaker permit, runs the body
///   (until the body has succeeded once) and publishes its result. The body is never re-run
///   after it succeeded, only the publish;
/// - retryable failures of either step are retried after the retry delay, at most
///   `max_retries + 1` attempts in all; permanent failures (Invalid, Rejected, Decode, Fatal)
///   are not retried;
/// - Connection and Timeout failures of either step feed the breaker; only a confirmed publish
///   counts as its success. While the breaker refuses (open, or half-open with its probe
///   taken), a call completes at once with [`ProducerOutcome::CircuitOpen`] and no
///   [`ProducerAction::RunBody`] or [`ProducerAction::Publish`] is emitted for it; a body that
///   finished after the breaker changed state publishes only under a fresh permit;
/// - when attempts run out (or a permanent error ends the call) and a DLQ is configured, a
///   dead-letter publish is requested; the call completes with the DLQ's fate in
///   [`ProducerOutcome::Failed`] ([`DlqFate::Published`], [`DlqFate::Failed`] or
///   [`DlqFate::NotConfigured`]), so the caller always learns where its data went;
/// - every call ends with exactly one [`ProducerAction::Complete`], unless its caller went away
///   ([`ProducerMachine::handle_cancelled`]).
///
/// ```
/// use backstop_engine::core::*;
/// let mut m = ProducerMachine::new(ProducerConfig::builder().build()?);
/// let t = Time::ZERO;
/// let call = m.handle_call(t);
/// assert_eq!(m.poll_action(), Some(ProducerAction::RunBody { call, attempt: 1 }));
/// m.handle_body_result(t, call, Ok(()));
/// assert_eq!(m.poll_action(), Some(ProducerAction::Publish { call, attempt: 1 }));
/// m.handle_publish_result(t, call, Ok(()));
/// assert_eq!(
///     m.poll_action(),
///     Some(ProducerAction::Complete { call, outcome: ProducerOutcome::Sent { attempts: 1 } })
/// );
/// # Ok::<(), ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ProducerMachine {
    cfg: ProducerConfig,
    breaker: CircuitBreaker,
    calls: Slab<Call>,
    timers: Timers,
    actions: VecDeque<ProducerAction>,
    events: VecDeque<ProducerEvent>,
}

impl ProducerMachine {
    /// A machine with no calls and a closed breaker.
    pub fn new(cfg: ProducerConfig) -> ProducerMachine {
        ProducerMachine {
            cfg,
            breaker: CircuitBreaker::new(cfg.breaker),
            calls: Slab::with_capacity(16),
            timers: Timers::with_capacity(16),
            actions: VecDeque::with_capacity(32),
            events: VecDeque::with_capacity(64),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ProducerConfig {
        &self.cfg
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The breaker's consecutive failure count.
    pub fn breaker_failures(&self) -> u32 {
        self.breaker.failures()
    }

    /// Calls not yet completed.
    pub fn calls_in_progress(&self) -> usize {
        self.calls.len()
    }

    /// A new call. Its first action is `RunBody`, or `Complete` with `CircuitOpen`.
    pub fn handle_call(&mut self, now: Time) -> Key {
        let call = self.calls.insert(Call {
            stage: Stage::Waiting { until: now },
            attempts: 0,
            body_done: false,
            started: now,
            first_failure: None,
        });
        self.start_attempt(now, call);
        self.settle(now);
        call
    }

    /// The body of `call` finished; `Ok` means its value is ready to publish. Returns `false`
    /// (and changes nothing) if `call` is not running its body.
    ///
    /// The publish goes out under the attempt's breaker permit. If the breaker changed state
    /// while the body ran, a fresh permit is asked for; if the breaker refuses, the call completes
    /// with [`ProducerOutcome::CircuitOpen`] and nothing is published.
    pub fn handle_body_result(
        &mut self,
        now: Time,
        call: Key,
        result: Result<(), ErrorKind>,
    ) -> bool {
        let Some(c) = self.calls.get(call).copied() else {
            self.settle(now);
            return false;
        };
        let Stage::Body(permit) = c.stage else {
            self.settle(now);
            return false;
        };
        match result {
            Ok(()) => {
                self.breaker.handle_timeout(now);
                let permit = if self.breaker.is_current(permit) {
                    Ok(permit)
                } else {
                    self.breaker.try_acquire(now)
                };
                match permit {
                    Ok(permit) => {
                        if let Some(c) = self.calls.get_mut(call) {
                            c.body_done = true;
                            c.stage = Stage::Publish(permit);
                        }
                        self.actions.push_back(ProducerAction::Publish {
                            call,
                            attempt: c.attempts,
                        });
                    }
                    Err(_) => {
                        self.events.push_back(ProducerEvent::Rejected { call });
                        self.complete(
                            call,
                            ProducerOutcome::CircuitOpen {
                                attempts: c.attempts,
                            },
                        );
                    }
                }
            }
            Err(kind) => self.attempt_failed(now, call, permit, kind, false),
        }
        self.settle(now);
        true
    }

    /// The publish of `call` finished. Returns `false` (and changes nothing) if `call` is not
    /// publishing.
    pub fn handle_publish_result(
        &mut self,
        now: Time,
        call: Key,
        result: Result<(), ErrorKind>,
    ) -> bool {
        let Some(c) = self.calls.get(call).copied() else {
            self.settle(now);
            return false;
        };
        let Stage::Publish(permit) = c.stage else {
            self.settle(now);
            return false;
        };
        match result {
            Ok(()) => {
                self.breaker.on_success(now, permit);
                self.events.push_back(ProducerEvent::Sent {
                    call,
                    latency: now.saturating_since(c.started),
                });
                self.complete(
                    call,
                    ProducerOutcome::Sent {
                        attempts: c.attempts,
                    },
                );
            }
            Err(kind) => self.attempt_failed(now, call, permit, kind, true),
        }
        self.settle(now);
        true
    }

    /// The DLQ publish of `call` finished; the call completes with
    /// [`ProducerOutcome::Failed`] naming the DLQ's fate. Returns `false` if `call` is not
    /// waiting on the DLQ.
    pub fn handle_dlq_result(
        &mut self,
        now: Time,
        call: Key,
        result: Result<(), ErrorKind>,
    ) -> bool {
        let Some(Stage::DlqPending(info)) = self.calls.get(call).map(|c| c.stage) else {
            self.settle(now);
            return false;
        };
        let fate = match result {
            Ok(()) => {
                self.events
                    .push_back(ProducerEvent::DeadLettered { call, info });
                DlqFate::Published
            }
            Err(kind) => {
                self.events
                    .push_back(ProducerEvent::DeadLetterFailed { call, kind });
                DlqFate::Failed(kind)
            }
        };
        self.complete(
            call,
            ProducerOutcome::Failed {
                kind: info.kind,
                attempts: info.attempts,
                dlq: fate,
            },
        );
        self.settle(now);
        true
    }

    /// The caller of `call` went away (its future was dropped): forget the call and give back
    /// its breaker permit, so an abandoned half-open probe does not hold the breaker half-open
    /// for ever. No `Complete` follows. Returns `false` for a call that is not in progress.
    pub fn handle_cancelled(&mut self, now: Time, call: Key) -> bool {
        let known = match self.calls.remove(call) {
            Some(c) => {
                if let Stage::Body(permit) | Stage::Publish(permit) = c.stage {
                    self.breaker.release(permit);
                }
                true
            }
            None => false,
        };
        self.settle(now);
        known
    }

    /// Fires due retries and the breaker's recovery timeout. (Every other `handle_*` call also
    /// fires what is due at its `now`; this is the input for when nothing else happens.)
    pub fn handle_timeout(&mut self, now: Time) {
        self.settle(now);
    }

    /// An operator forces the breaker open or closed, or releases it (`None`); see
    /// [`CircuitBreaker::force`]. Forced open: every attempt is refused (calls fail fast).
    pub fn handle_force_breaker(&mut self, now: Time, forced: Option<super::breaker::ForcedState>) {
        self.breaker.force(now, forced);
        self.settle(now);
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) is due.
    #[must_use = "a driver that ignores the next wake-up never runs due retries or breaker recovery"]
    pub fn poll_timeout(&mut self) -> Option<Time> {
        while let Some((at, call)) = self.timers.peek() {
            match self.calls.get(call) {
                Some(c) if c.stage == (Stage::Waiting { until: at }) => break,
                _ => self.timers.pop(),
            }
        }
        earliest(
            self.timers.peek().map(|(t, _)| t),
            self.breaker.poll_timeout(),
        )
    }

    /// The next action to perform.
    #[inline]
    #[must_use = "an action not performed is a call stuck or lost"]
    pub fn poll_action(&mut self) -> Option<ProducerAction> {
        self.actions.pop_front()
    }

    /// The next event to record.
    #[inline]
    pub fn poll_event(&mut self) -> Option<ProducerEvent> {
        self.events.pop_front()
    }

    fn start_attempt(&mut self, now: Time, call: Key) {
        let Some(c) = self.calls.get(call).copied() else {
            return;
        };
        match self.breaker.try_acquire(now) {
            Ok(permit) => {
                let attempt = c.attempts + 1;
                let (stage, action) = if c.body_done {
                    (
                        Stage::Publish(permit),
                        ProducerAction::Publish { call, attempt },
                    )
                } else {
                    (
                        Stage::Body(permit),
                        ProducerAction::RunBody { call, attempt },
                    )
                };
                if let Some(c) = self.calls.get_mut(call) {
                    c.attempts = attempt;
                    c.stage = stage;
                }
                self.actions.push_back(action);
            }
            Err(Refusal::Open { .. } | Refusal::ProbeBusy) => {
                self.events.push_back(ProducerEvent::Rejected { call });
                self.complete(
                    call,
                    ProducerOutcome::CircuitOpen {
                        attempts: c.attempts,
                    },
                );
            }
        }
    }

    fn attempt_failed(
        &mut self,
        now: Time,
        call: Key,
        permit: Permit,
        kind: ErrorKind,
        publish: bool,
    ) {
        self.breaker.on_failure(now, permit, kind);
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        let attempt = c.attempts;
        c.first_failure.get_or_insert(now);
        self.events.push_back(ProducerEvent::Failed {
            call,
            attempt,
            kind,
            publish,
        });
        if self.cfg.retry.should_retry(attempt, kind) {
            let until = now + self.cfg.retry.delay_before_retry(attempt, call.as_u64());
            c.stage = Stage::Waiting { until };
            self.timers.push(until, call);
            self.events.push_back(ProducerEvent::RetryScheduled {
                call,
                next_attempt: attempt + 1,
                at: until,
            });
            return;
        }
        let reason = if kind.is_retryable() {
            DlqReason::Exhausted
        } else {
            DlqReason::Permanent
        };
        if self.cfg.dlq {
            let info = DlqInfo {
                reason,
                kind,
                attempts: attempt,
                first_failure: c.first_failure.unwrap_or(now),
                last_failure: now,
            };
            c.stage = Stage::DlqPending(info);
            self.actions
                .push_back(ProducerAction::PublishDlq { call, info });
        } else {
            self.complete(
                call,
                ProducerOutcome::Failed {
                    kind,
                    attempts: attempt,
                    dlq: DlqFate::NotConfigured,
                },
            );
        }
    }

    fn complete(&mut self, call: Key, outcome: ProducerOutcome) {
        self.calls.remove(call);
        self.actions
            .push_back(ProducerAction::Complete { call, outcome });
    }

    /// Brings the machine up to `now`; every input ends here: due retries start (or are refused
    /// by the breaker), an expired open breaker turns half-open, transitions become events.
    fn settle(&mut self, now: Time) {
        while let Some((at, call)) = self.timers.pop_due(now) {
            if let Some(c) = self.calls.get(call) {
                if c.stage == (Stage::Waiting { until: at }) {
                    self.start_attempt(now, call);
                }
            }
        }
        self.breaker.handle_timeout(now);
        while let Some(t) = self.breaker.poll_transition() {
            self.events.push_back(ProducerEvent::Breaker(t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::retry::RetryPolicy;
    use ProducerAction::*;

    fn secs(n: u64) -> Time {
        Time::from_secs(n)
    }

    fn cfg(max_retries: u32, delay_secs: u64, dlq: bool) -> ProducerConfig {
        ProducerConfig::builder()
            .retry(
                RetryPolicy::builder()
                    .max_retries(max_retries)
                    .retry_delay(Duration::from_secs(delay_secs))
                    .build()
                    .unwrap(),
            )
            .dead_letter(dlq)
            .build()
            .unwrap()
    }

    struct H {
        m: ProducerMachine,
        events: Vec<ProducerEvent>,
    }

    impl H {
        fn new(cfg: ProducerConfig) -> H {
            H {
                m: ProducerMachine::new(cfg),
                events: Vec::new(),
            }
        }
        fn drain(&mut self) -> Vec<ProducerAction> {
            self.events = std::iter::from_fn(|| self.m.poll_event()).collect();
            std::iter::from_fn(|| self.m.poll_action()).collect()
        }
        fn call(&mut self, now: Time) -> (Key, Vec<ProducerAction>) {
            let k = self.m.handle_call(now);
            (k, self.drain())
        }
        fn body(&mut self, now: Time, k: Key, r: Result<(), ErrorKind>) -> Vec<ProducerAction> {
            assert!(self.m.handle_body_result(now, k, r));
            self.drain()
        }
        fn publish(&mut self, now: Time, k: Key, r: Result<(), ErrorKind>) -> Vec<ProducerAction> {
            assert!(self.m.handle_publish_result(now, k, r));
            self.drain()
        }
        fn dlq(&mut self, now: Time, k: Key, r: Result<(), ErrorKind>) -> Vec<ProducerAction> {
            assert!(self.m.handle_dlq_result(now, k, r));
            self.drain()
        }
        fn timeout(&mut self, now: Time) -> Vec<ProducerAction> {
            self.m.handle_timeout(now);
            self.drain()
        }
        /// Opens the breaker with five calls whose publish fails with Connection.
        fn open_breaker(&mut self, now: Time) {
            for _ in 0..5 {
                let (k, _) = self.call(now);
                self.body(now, k, Ok(()));
                self.publish(now, k, Err(ErrorKind::Connection));
            }
            assert_eq!(self.m.breaker_state(), BreakerState::Open);
        }
    }

    #[test]
    fn a_failing_body_is_retried_after_the_delay_up_to_max_retries() {
        let mut h = H::new(cfg(2, 5, false));
        let (k, a) = h.call(secs(0));
        assert_eq!(
            a,
            vec![RunBody {
                call: k,
                attempt: 1
            }]
        );
        let a = h.body(secs(1), k, Err(ErrorKind::Handler));
        assert!(a.is_empty());
        assert!(h.events.contains(&ProducerEvent::RetryScheduled {
            call: k,
            next_attempt: 2,
            at: secs(6)
        }));
        assert_eq!(h.m.poll_timeout(), Some(secs(6)));
        assert!(h
            .timeout(Time::from_nanos(secs(6).as_nanos() - 1))
            .is_empty());
        assert_eq!(
            h.timeout(secs(6)),
            vec![RunBody {
                call: k,
                attempt: 2
            }]
        );
        h.body(secs(6), k, Err(ErrorKind::Panic));
        assert_eq!(
            h.timeout(secs(11)),
            vec![RunBody {
                call: k,
                attempt: 3
            }]
        );
        let a = h.body(secs(12), k, Err(ErrorKind::Timeout));
        assert_eq!(
            a,
            vec![Complete {
                call: k,
                outcome: ProducerOutcome::Failed {
                    kind: ErrorKind::Timeout,
                    attempts: 3,
                    dlq: DlqFate::NotConfigured
                }
            }]
        );
        assert_eq!(h.m.calls_in_progress(), 0);
        assert_eq!(h.m.poll_timeout(), None);
    }

    #[test]
    fn a_failed_publish_is_retried_without_rerunning_the_body() {
        let mut h = H::new(cfg(3, 5, false));
        let (k, _) = h.call(secs(0));
        assert_eq!(
            h.body(secs(0), k, Ok(())),
            vec![Publish {
                call: k,
                attempt: 1
            }]
        );
        assert!(h.publish(secs(1), k, Err(ErrorKind::Timeout)).is_empty());
        assert!(h.events.contains(&ProducerEvent::Failed {
            call: k,
            attempt: 1,
            kind: ErrorKind::Timeout,
            publish: true
        }));
        assert_eq!(
            h.timeout(secs(6)),
            vec![Publish {
                call: k,
                attempt: 2
            }]
        );
        let a = h.publish(secs(7), k, Ok(()));
        assert_eq!(
            a,
            vec![Complete {
                call: k,
                outcome: ProducerOutcome::Sent { attempts: 2 }
            }]
        );
        assert!(h.events.contains(&ProducerEvent::Sent {
            call: k,
            latency: Duration::from_secs(7)
        }));
    }

    #[test]
    fn a_permanent_body_error_is_not_retried() {
        for kind in [ErrorKind::Invalid, ErrorKind::Fatal, ErrorKind::Rejected] {
            let mut h = H::new(cfg(3, 5, false));
            let (k, _) = h.call(secs(0));
            assert_eq!(
                h.body(secs(0), k, Err(kind)),
                vec![Complete {
                    call: k,
                    outcome: ProducerOutcome::Failed {
                        kind,
                        attempts: 1,
                        dlq: DlqFate::NotConfigured
                    }
                }]
            );
            assert_eq!(h.m.poll_timeout(), None);
            let mut h = H::new(cfg(3, 5, true));
            let (k, _) = h.call(secs(0));
            let a = h.body(secs(0), k, Err(kind));
            assert!(
                matches!(a.as_slice(), [PublishDlq { info, .. }] if info.reason == DlqReason::Permanent && info.attempts == 1),
                "{a:?}"
            );
        }
    }

    #[test]
    fn exhaustion_publishes_a_dlq_record_and_reports_its_fate() {
        let mut h = H::new(cfg(1, 5, true));
        let (k, _) = h.call(secs(0));
        h.body(secs(0), k, Ok(()));
        h.publish(secs(1), k, Err(ErrorKind::Connection));
        h.timeout(secs(6));
        let a = h.publish(secs(7), k, Err(ErrorKind::Timeout));
        let info = DlqInfo {
            reason: DlqReason::Exhausted,
            kind: ErrorKind::Timeout,
            attempts: 2,
            first_failure: secs(1),
            last_failure: secs(7),
        };
        assert_eq!(a, vec![PublishDlq { call: k, info }]);
        let a = h.dlq(secs(8), k, Ok(()));
        assert_eq!(
            a,
            vec![Complete {
                call: k,
                outcome: ProducerOutcome::Failed {
                    kind: ErrorKind::Timeout,
                    attempts: 2,
                    dlq: DlqFate::Published
                }
            }]
        );
        assert!(h
            .events
            .contains(&ProducerEvent::DeadLettered { call: k, info }));
    }

    #[test]
    fn a_failed_dlq_publish_still_completes_with_the_data() {
        let mut h = H::new(cfg(0, 5, true));
        let (k, _) = h.call(secs(0));
        let a = h.body(secs(1), k, Err(ErrorKind::Handler));
        assert!(matches!(a.as_slice(), [PublishDlq { .. }]));
        let a = h.dlq(secs(2), k, Err(ErrorKind::Rejected));
        assert_eq!(
            a,
            vec![Complete {
                call: k,
                outcome: ProducerOutcome::Failed {
                    kind: ErrorKind::Handler,
                    attempts: 1,
                    dlq: DlqFate::Failed(ErrorKind::Rejected)
                }
            }]
        );
        assert!(
            !h.m.handle_dlq_result(secs(3), k, Ok(())),
            "completed calls ignore results"
        );
    }

    #[test]
    fn an_open_breaker_fails_calls_fast_without_broker_calls() {
        let mut h = H::new(cfg(0, 5, true));
        h.open_breaker(secs(0));
        // The five failed calls went to the DLQ; finish those.
        let (k, a) = h.call(secs(1));
        assert_eq!(
            a,
            vec![Complete {
                call: k,
                outcome: ProducerOutcome::CircuitOpen { attempts: 0 }
            }]
        );
        assert_eq!(h.events, vec![ProducerEvent::Rejected { call: k }]);
        assert_eq!(h.m.calls_in_progress(), 5, "only the five DLQ waits");
        assert_eq!(h.m.poll_timeout(), Some(secs(30)));
        // Half-open after 30 s: one probe call goes through, a second is refused.
        let (probe, a) = h.call(secs(30));
        assert_eq!(
            a,
            vec![RunBody {
                call: probe,
                attempt: 1
            }]
        );
        let (other, a) = h.call(secs(30));
        assert_eq!(
            a,
            vec![Complete {
                call: other,
                outcome: ProducerOutcome::CircuitOpen { attempts: 0 }
            }]
        );
        h.body(secs(30), probe, Ok(()));
        h.publish(secs(31), probe, Ok(()));
        assert_eq!(h.m.breaker_state(), BreakerState::Closed);
        let (_, a) = h.call(secs(31));
        assert!(matches!(a.as_slice(), [RunBody { .. }]));
    }

    #[test]
    fn a_retry_refused_by_the_open_breaker_completes_circuit_open() {
        let mut h = H::new(cfg(3, 5, false));
        let (k, _) = h.call(secs(0));
        h.body(secs(1), k, Err(ErrorKind::Handler)); // retry at 6 s; not counted by the breaker
        h.open_breaker(secs(2));
        assert_eq!(
            h.timeout(secs(6)),
            vec![Complete {
                call: k,
                outcome: ProducerOutcome::CircuitOpen { attempts: 1 }
            }]
        );
    }

    #[test]
    fn a_body_that_finishes_after_the_breaker_opened_is_not_published() {
        let mut h = H::new(cfg(3, 5, false));
        let (k, _) = h.call(secs(0)); // body running under a closed-breaker permit
        h.open_breaker(secs(1));
        let a = h.body(secs(2), k, Ok(()));
        assert_eq!(
            a,
            vec![Complete {
                call: k,
                outcome: ProducerOutcome::CircuitOpen { attempts: 1 }
            }]
        );
        // Once half-open, such a body takes the probe slot with a fresh permit.
        let mut h = H::new(cfg(0, 5, false));
        let (k, _) = h.call(secs(0));
        h.open_breaker(secs(1));
        let a = h.body(secs(31), k, Ok(()));
        assert_eq!(
            a,
            vec![Publish {
                call: k,
                attempt: 1
            }]
        );
        h.publish(secs(31), k, Ok(()));
        assert_eq!(
            h.m.breaker_state(),
            BreakerState::Closed,
            "it was the probe"
        );
    }

    #[test]
    fn a_probe_failure_reopens_and_an_inconclusive_one_frees_the_slot() {
        let mut h = H::new(cfg(0, 5, false));
        h.open_breaker(secs(0));
        let (p, _) = h.call(secs(30));
        h.body(secs(30), p, Err(ErrorKind::Invalid)); // proves nothing
        assert_eq!(h.m.breaker_state(), BreakerState::HalfOpen);
        let (p, a) = h.call(secs(30));
        assert_eq!(
            a,
            vec![RunBody {
                call: p,
                attempt: 1
            }]
        );
        h.body(secs(30), p, Ok(()));
        h.publish(secs(31), p, Err(ErrorKind::Timeout));
        assert_eq!(h.m.breaker_state(), BreakerState::Open);
        assert_eq!(h.m.poll_timeout(), Some(secs(61)));
    }

    #[test]
    fn a_cancelled_probe_gives_its_slot_back() {
        let mut h = H::new(cfg(0, 5, false));
        h.open_breaker(secs(0));
        let (p, _) = h.call(secs(30));
        let (_, a) = h.call(secs(30));
        assert!(matches!(
            a.as_slice(),
            [Complete {
                outcome: ProducerOutcome::CircuitOpen { .. },
                ..
            }]
        ));
        assert!(h.m.handle_cancelled(secs(31), p));
        assert!(
            h.drain().is_empty(),
            "no Complete for a call whose caller left"
        );
        assert!(!h.m.handle_cancelled(secs(31), p));
        let (q, a) = h.call(secs(31));
        assert_eq!(
            a,
            vec![RunBody {
                call: q,
                attempt: 1
            }]
        );
    }

    #[test]
    fn stale_results_are_ignored() {
        let mut h = H::new(cfg(0, 5, false));
        let (k, _) = h.call(secs(0));
        assert!(
            !h.m.handle_publish_result(secs(0), k, Ok(())),
            "not publishing yet"
        );
        assert!(!h.m.handle_dlq_result(secs(0), k, Ok(())));
        h.body(secs(0), k, Ok(()));
        assert!(
            !h.m.handle_body_result(secs(0), k, Ok(())),
            "body already done"
        );
        h.publish(secs(0), k, Ok(()));
        assert!(!h.m.handle_publish_result(secs(0), k, Ok(())), "completed");
        assert!(h.drain().is_empty());
    }
}
