//! The producer machine: a task's calls in; run-body, publish, dead-letter and completion out.
//!
//! One machine serves every call of one task and owns that task's circuit breaker. Each call
//! is a sequence of attempts; an attempt takes a breaker permit, runs the body (until the body has
//! succeeded once) and publishes its result. Retryable failures of either step are retried after
//! the retry delay, at most `max_retries + 1` attempts in all; the body is never re-run after it
//! succeeded, only the publish. Connection and Timeout failures of either step feed the breaker;
//! only a confirmed publish counts as its success. While the breaker refuses, a call completes
//! at once with [`ProducerOutcome::CircuitOpen`] and makes no broker call. When attempts run out
//! and a DLQ is configured, a dead-letter publish is requested; the call completes with the
//! DLQ's fate in [`ProducerOutcome::Failed`], so the caller always learns where its data went.
//!
//! ```
//! use backstop_engine::core::*;
//! let mut m = ProducerMachine::new(ProducerConfig::builder().build()?);
//! let t = Time::ZERO;
//! let call = m.handle_call(t);
//! assert_eq!(m.poll_action(), Some(ProducerAction::RunBody { call, attempt: 1 }));
//! m.handle_body_result(t, call, Ok(()));
//! assert_eq!(m.poll_action(), Some(ProducerAction::Publish { call, attempt: 1 }));
//! m.handle_publish_result(t, call, Ok(()));
//! assert_eq!(
//!     m.poll_action(),
//!     Some(ProducerAction::Complete { call, outcome: ProducerOutcome::Sent { attempts: 1 } })
//! );
//! # Ok::<(), ConfigError>(())
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use super::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Permit, Refusal, Transition};
use super::config_error::ConfigError;
use super::consumer::{DlqInfo, DlqReason};
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
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
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

/// The producer state machine for one task. See the [module docs](self).
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
        self.drain_transitions();
        call
    }

    /// The body of `call` finished; `Ok` means its value is ready to publish.
    pub fn handle_body_result(
        &mut self,
        now: Time,
        call: Key,
        result: Result<(), ErrorKind>,
    ) -> bool {
        let Some(c) = self.calls.get_mut(call) else {
            return false;
        };
        let Stage::Body(permit) = c.stage else {
            return false;
        };
        match result {
            Ok(()) => {
                c.body_done = true;
                c.stage = Stage::Publish(permit);
                let attempt = c.attempts;
                self.actions
                    .push_back(ProducerAction::Publish { call, attempt });
            }
            Err(kind) => self.attempt_failed(now, call, permit, kind, false),
        }
        self.drain_transitions();
        true
    }

    /// The publish of `call` finished.
    pub fn handle_publish_result(
        &mut self,
        now: Time,
        call: Key,
        result: Result<(), ErrorKind>,
    ) -> bool {
        let Some(c) = self.calls.get(call).copied() else {
            return false;
        };
        let Stage::Publish(permit) = c.stage else {
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
        self.drain_transitions();
        true
    }

    /// The DLQ publish of `call` finished.
    pub fn handle_dlq_result(
        &mut self,
        _now: Time,
        call: Key,
        result: Result<(), ErrorKind>,
    ) -> bool {
        let Some(c) = self.calls.get(call).copied() else {
            return false;
        };
        let Stage::DlqPending(info) = c.stage else {
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
        true
    }

    /// Fires due retries and the breaker's recovery timeout.
    pub fn handle_timeout(&mut self, now: Time) {
        while let Some((at, call)) = self.timers.pop_due(now) {
            if let Some(c) = self.calls.get(call) {
                if c.stage == (Stage::Waiting { until: at }) {
                    self.start_attempt(now, call);
                }
            }
        }
        self.breaker.handle_timeout(now);
        self.drain_transitions();
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) is due.
    pub fn poll_timeout(&mut self) -> Option<Time> {
        while let Some((at, call)) = self.timers.peek() {
            match self.calls.get(call) {
                Some(c) if c.stage == (Stage::Waiting { until: at }) => break,
                _ => self.timers.pop(),
            }
        }
        [
            self.timers.peek().map(|(t, _)| t),
            self.breaker.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next action to perform.
    pub fn poll_action(&mut self) -> Option<ProducerAction> {
        self.actions.pop_front()
    }

    /// The next event to record.
    pub fn poll_event(&mut self) -> Option<ProducerEvent> {
        self.events.pop_front()
    }

    fn start_attempt(&mut self, now: Time, call: Key) {
        match self.breaker.try_acquire(now) {
            Ok(permit) => {
                let c = self.calls.get_mut(call).expect("live call");
                c.attempts += 1;
                let attempt = c.attempts;
                if c.body_done {
                    c.stage = Stage::Publish(permit);
                    self.actions
                        .push_back(ProducerAction::Publish { call, attempt });
                } else {
                    c.stage = Stage::Body(permit);
                    self.actions
                        .push_back(ProducerAction::RunBody { call, attempt });
                }
            }
            Err(Refusal::Open { .. } | Refusal::ProbeBusy) => {
                let attempts = self.calls.get(call).map_or(0, |c| c.attempts);
                self.events.push_back(ProducerEvent::Rejected { call });
                self.complete(call, ProducerOutcome::CircuitOpen { attempts });
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
        let c = self.calls.get_mut(call).expect("live call");
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

    fn drain_transitions(&mut self) {
        while let Some(t) = self.breaker.poll_transition() {
            self.events.push_back(ProducerEvent::Breaker(t));
        }
    }
}
