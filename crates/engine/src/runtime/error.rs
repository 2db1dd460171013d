//! Errors users return from handlers and task bodies, and the failure a task call reports.

use std::fmt;

use crate::broker::MessageId;
use crate::core::ErrorKind;

/// An error returned by a task body or a consumer handler. Its kind decides whether the attempt
/// is retried ([`ErrorKind::is_retryable`]) and whether it feeds the circuit breaker.
///
/// ```
/// use backstop_engine::runtime::HandlerError;
/// use backstop_engine::core::ErrorKind;
/// let e = HandlerError::invalid("user_id must be positive integer");
/// assert_eq!(e.kind(), ErrorKind::Invalid);
/// assert!(!e.kind().is_retryable());
/// let e = HandlerError::timeout("profile service did not answer");
/// assert!(e.kind().is_retryable());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct HandlerError {
    kind: ErrorKind,
    message: String,
}

/// The same type under the name the producer side uses.
pub type TaskError = HandlerError;

impl HandlerError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        HandlerError {
            kind,
            message: message.into(),
        }
    }
    /// A permanent validation error: not retried.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }
    /// A retryable failure that does not concern the breaker.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Handler, message)
    }
    /// A downstream could not be reached: retried, and counted by the breaker.
    pub fn connection(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Connection, message)
    }
    /// A downstream timed out: retried, and counted by the breaker.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }
    /// An unrecoverable error: not retried.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Fatal, message)
    }
    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<crate::broker::BrokerError> for HandlerError {
    fn from(e: crate::broker::BrokerError) -> Self {
        HandlerError::new(e.kind(), e.message())
    }
}

/// Where a failed call's data ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetter {
    /// No DLQ is configured: the data is only in this error.
    NotConfigured,
    /// A dead-letter record was published to this topic with this id.
    Published {
        /// The DLQ topic.
        topic: String,
        /// The record's message id.
        id: MessageId,
    },
    /// Publishing the dead-letter record failed too: the data is only in this error.
    Failed {
        /// The DLQ topic.
        topic: String,
        /// Why the DLQ publish failed.
        error: String,
    },
}

/// Why a task call did not publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    /// Attempts ran out, or a permanent error stopped them.
    Failed {
        /// The last failure's kind.
        kind: ErrorKind,
        /// The last failure's text.
        message: String,
    },
    /// The circuit breaker is open: nothing was attempted against the broker.
    CircuitOpen,
    /// The value could not be serialized.
    Encode(String),
    /// The task's settings are invalid (nothing was attempted).
    Config(String),
}

/// A task call that did not publish, with the caller's arguments handed back so nothing is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure<A> {
    /// The task's topic.
    pub topic: String,
    /// Why.
    pub reason: FailureReason,
    /// Attempts made.
    pub attempts: u32,
    /// Where the dead-letter record went.
    pub dead_letter: DeadLetter,
    /// The call's arguments, returned to the caller.
    pub args: A,
    /// The serialized result, when the body succeeded but publishing failed.
    pub payload: Option<Vec<u8>>,
}

impl<A> TaskFailure<A> {
    /// A call that could not start because the task's settings are invalid.
    pub fn invalid_config(topic: &str, error: crate::core::ConfigError, args: A) -> Self {
        TaskFailure {
            topic: topic.to_string(),
            reason: FailureReason::Config(error.to_string()),
            attempts: 0,
            dead_letter: DeadLetter::NotConfigured,
            args,
            payload: None,
        }
    }

    /// Whether the failure is a fail-fast refusal of an open breaker.
    pub fn is_circuit_open(&self) -> bool {
        self.reason == FailureReason::CircuitOpen
    }
    /// The kind of the last failure, if attempts were made.
    pub fn kind(&self) -> Option<ErrorKind> {
        match &self.reason {
            FailureReason::Failed { kind, .. } => Some(*kind),
            FailureReason::CircuitOpen | FailureReason::Encode(_) | FailureReason::Config(_) => {
                None
            }
        }
    }
}

impl<A: fmt::Debug> fmt::Display for TaskFailure<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            FailureReason::Failed { kind, message } => write!(
                f,
                "task for `{}` failed after {} attempt(s): {kind}: {message}",
                self.topic, self.attempts
            )?,
            FailureReason::CircuitOpen => {
                write!(f, "task for `{}` refused: circuit open", self.topic)?
            }
            FailureReason::Config(e) => {
                write!(f, "task for `{}` is misconfigured: {e}", self.topic)?
            }
            FailureReason::Encode(e) => write!(
                f,
                "task for `{}` could not encode its result: {e}",
                self.topic
            )?,
        }
        match &self.dead_letter {
            DeadLetter::NotConfigured => {
                write!(f, "; no DLQ configured, arguments returned to the caller")
            }
            DeadLetter::Published { topic, id } => {
                write!(f, "; dead-letter record {id} published to `{topic}`")
            }
            DeadLetter::Failed { topic, error } => {
                write!(f, "; dead-letter publish to `{topic}` failed ({error}), arguments returned to the caller")
            }
        }
    }
}

impl<A: fmt::Debug> std::error::Error for TaskFailure<A> {}
