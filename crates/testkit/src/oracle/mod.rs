//! Reference models and invariant checkers for the core machines: the invariants of docs/architecture.md,
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
//! use backstop_testkit::oracle::CheckedConsumer;
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
//!
//! | module | its one job |
//! |---|---|
//! | (this one) | [`Rule`] and [`Violation`]: what a broken rule looks like |
//! | `breaker` | [`BreakerModel`], the reference circuit breaker, and transition checks |
//! | `consumer` | [`ConsumerOracle`]: the rules for one consumer machine |
//! | `producer` | [`ProducerOracle`]: the rules for one producer machine |
//! | `checked` | [`CheckedConsumer`] / [`CheckedProducer`]: a machine wrapped with its oracle |

use std::fmt;

use backstop_engine::core::{Key, Time};

mod breaker;
mod checked;
mod consumer;
mod producer;

pub use breaker::{legal_edge, BreakerModel, Ticket};
pub use checked::{CheckedConsumer, CheckedProducer};
pub use consumer::{ConsumerOracle, ConsumerStats};
pub use producer::{ProducerOracle, ProducerStats};

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
    /// An ordered consumer ran a message of a key while an earlier delivery of that key was
    /// still held: per key, handler runs must follow arrival (publish) order.
    KeyOrder,
    /// A message's handler ran more than `max_retries + 1` times over all its deliveries
    /// (redeliveries included; runs after it succeeded are duplicates, counted apart), or ran
    /// again after its budget was spent (a dead-lettered or parked message).
    BudgetAcrossRedeliveries,
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

pub(crate) fn violation(
    rule: Rule,
    at: Time,
    key: Option<Key>,
    detail: impl Into<String>,
) -> Violation {
    Violation {
        rule,
        at,
        key,
        detail: detail.into(),
    }
}
