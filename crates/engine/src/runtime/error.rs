//! Errors users return from handlers and task bodies, and the failure a task call reports.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use crate::broker::MessageId;
use crate::core::ErrorKind;

/// An error returned by a task body or a consumer handler. Its kind decides whether the attempt
/// is retried ([`ErrorKind::is_retryable`]) and whether it feeds the circuit breaker
/// ([`ErrorKind::is_transient`]).
///
/// Build one with a constructor that names the kind, or let `?` convert any
/// [`std::error::Error`]: the kind then comes from [`classify`] (the default table below),
/// unless a classifier set with [`TaskSpec::classify`](super::TaskSpec::classify),
/// [`ConsumerSpec::classify`](super::ConsumerSpec::classify) or
/// [`BackstopBuilder::classify`](super::BackstopBuilder::classify) decides otherwise.
///
/// | error (anywhere in the [`source`](std::error::Error::source) chain) | kind |
/// |---|---|
/// | [`std::io::Error`] `ConnectionRefused`, `ConnectionReset`, `ConnectionAborted`, `NotConnected`, `BrokenPipe` | Connection |
/// | [`std::io::Error`] `TimedOut` | Timeout |
/// | [`tokio::time::error::Elapsed`] | Timeout |
/// | [`BrokerError`](crate::broker::BrokerError) | its own kind |
/// | anything else | Handler (retryable, not counted by the breaker) |
///
/// ```
/// use backstop_engine::runtime::HandlerError;
/// use backstop_engine::core::ErrorKind;
/// let e = HandlerError::invalid("user_id must be positive integer");
/// assert_eq!(e.kind(), ErrorKind::Invalid);
/// assert!(!e.kind().is_retryable());
/// let e = HandlerError::timeout("profile service did not answer");
/// assert!(e.kind().is_retryable());
///
/// // `?` on an ordinary error:
/// fn read() -> Result<String, HandlerError> {
///     let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
///     Err(refused)?
/// }
/// assert_eq!(read().unwrap_err().kind(), ErrorKind::Connection);
/// ```
///
/// # Why `HandlerError` does not implement `std::error::Error`
///
/// `impl<E: std::error::Error> From<E> for HandlerError` (what makes `?` work on any error)
/// would conflict with the standard `impl<T> From<T> for T` if `HandlerError` were itself an
/// `Error`. Like `anyhow::Error`, it is not one; it converts into `Box<dyn Error + Send + Sync>`
/// (so `?` still works in a `main` returning a boxed error) and exposes the original error with
/// [`HandlerError::source`].
#[derive(Clone)]
pub struct HandlerError {
    kind: ErrorKind,
    message: String,
    /// Set by a constructor naming the kind (final), or inferred from an error by [`classify`]
    /// (a user classifier may still decide).
    explicit: bool,
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
}

/// The same type under the name the producer side uses.
pub type TaskError = HandlerError;

/// A user's error classifier: given an error of the chain, its kind, or `None` to let the next
/// error of the chain (and finally the default table of [`classify`]) decide.
pub type ClassifyFn = dyn Fn(&(dyn StdError + 'static)) -> Option<ErrorKind> + Send + Sync;

/// The default classification of an error: the first error of its source chain the table of
/// [`HandlerError`] knows decides; `None` when none does (the caller then uses Handler).
///
/// ```
/// use backstop_engine::runtime::classify;
/// use backstop_engine::core::ErrorKind;
/// let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out");
/// assert_eq!(classify(&e), Some(ErrorKind::Timeout));
/// let e = std::io::Error::other("disk full");
/// assert_eq!(classify(&e), None);
/// ```
pub fn classify(error: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    classify_with(error, None)
}

/// [`classify`], asking `user` first for each error of the chain.
pub(crate) fn classify_with(
    error: &(dyn StdError + 'static),
    user: Option<&ClassifyFn>,
) -> Option<ErrorKind> {
    let mut next: Option<&(dyn StdError + 'static)> = Some(error);
    let mut depth = 0;
    while let Some(e) = next {
        if let Some(k) = user.and_then(|f| f(e)) {
            return Some(k);
        }
        if let Some(k) = default_kind(e) {
            return Some(k);
        }
        // A custom io::Error keeps its inner error behind `get_ref`, not always in `source`.
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
        depth += 1;
        if depth > 32 {
            break; // a cyclic chain: give up rather than loop
        }
    }
    None
}

/// The default table for one error (not its chain).
fn default_kind(e: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return ErrorKind::from_io(io.kind());
    }
    if e.is::<tokio::time::error::Elapsed>() {
        return Some(ErrorKind::Timeout);
    }
    if let Some(b) = e.downcast_ref::<crate::broker::BrokerError>() {
        return Some(b.kind());
    }
    if let Some(w) = e.downcast_ref::<Wrapped>() {
        return Some(w.0.kind);
    }
    None
}

impl HandlerError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        HandlerError {
            kind,
            message: message.into(),
            explicit: true,
            source: None,
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
    /// `error`, with the kind given here rather than classified.
    ///
    /// ```
    /// use backstop_engine::runtime::HandlerError;
    /// use backstop_engine::core::ErrorKind;
    /// let parse = "x".parse::<i64>().unwrap_err();
    /// let e = HandlerError::with_kind(ErrorKind::Invalid, parse);
    /// assert_eq!(e.kind(), ErrorKind::Invalid);
    /// assert!(e.source().is_some());
    /// ```
    pub fn with_kind<E>(kind: ErrorKind, error: E) -> Self
    where
        E: StdError + Send + Sync + 'static,
    {
        HandlerError {
            kind,
            message: error.to_string(),
            explicit: true,
            source: Some(Arc::new(error)),
        }
    }
    /// A boxed error (e.g. from `anyhow::Error::into()`), classified like `?` does.
    pub fn from_boxed(error: Box<dyn StdError + Send + Sync + 'static>) -> Self {
        let kind = classify(&*error).unwrap_or(ErrorKind::Handler);
        HandlerError {
            kind,
            message: error.to_string(),
            explicit: false,
            source: Some(Arc::from(error)),
        }
    }
    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The error this one was converted from, if any.
    pub fn source(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.source.as_deref()
    }
    /// Whether the kind was named explicitly (a constructor, [`with_kind`](Self::with_kind))
    /// rather than inferred by the default table.
    pub fn is_explicit(&self) -> bool {
        self.explicit
    }
    /// Re-classifies an inferred error with a user classifier (explicit kinds stay).
    pub(crate) fn reclassified(mut self, user: Option<&ClassifyFn>) -> Self {
        if let (false, Some(f), Some(src)) = (self.explicit, user, self.source.as_deref()) {
            let src: &(dyn StdError + 'static) = src;
            if let Some(k) = classify_with(src, Some(f)) {
                self.kind = k;
            }
        }
        self
    }
}

impl<E> From<E> for HandlerError
where
    E: StdError + Send + Sync + 'static,
{
    /// Converts any error, its kind from [`classify`] (Handler when the table does not know it).
    fn from(error: E) -> Self {
        let kind = classify(&error).unwrap_or(ErrorKind::Handler);
        // A broker error names its kind itself: final, like an explicit constructor.
        let explicit = (&error as &(dyn StdError + 'static)).is::<crate::broker::BrokerError>();
        HandlerError {
            kind,
            message: error.to_string(),
            explicit,
            source: Some(Arc::new(error)),
        }
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// Two errors are equal when their kinds and messages are (the source is not compared).
impl PartialEq for HandlerError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}
impl Eq for HandlerError {}

/// A [`HandlerError`] seen as a [`std::error::Error`] (what the `Box` conversions hold).
struct Wrapped(HandlerError);

impl fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
impl StdError for Wrapped {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl From<HandlerError> for Box<dyn StdError + Send + Sync + 'static> {
    fn from(e: HandlerError) -> Self {
        Box::new(Wrapped(e))
    }
}
impl From<HandlerError> for Box<dyn StdError + 'static> {
    fn from(e: HandlerError) -> Self {
        Box::new(Wrapped(e))
    }
}

/// Gives a `Result`'s error an explicit kind: `client.get(id).await.kind(ErrorKind::Invalid)?`.
///
/// ```
/// use backstop_engine::runtime::{HandlerError, ResultExt};
/// use backstop_engine::core::ErrorKind;
/// fn parse(s: &str) -> Result<i64, HandlerError> {
///     Ok(s.parse::<i64>().kind(ErrorKind::Invalid)?)
/// }
/// assert_eq!(parse("x").unwrap_err().kind(), ErrorKind::Invalid);
/// ```
pub trait ResultExt<T> {
    /// Maps the error into a [`HandlerError`] of `kind`.
    fn kind(self, kind: ErrorKind) -> Result<T, HandlerError>;
}

impl<T, E> ResultExt<T> for Result<T, E>
where
    E: StdError + Send + Sync + 'static,
{
    fn kind(self, kind: ErrorKind) -> Result<T, HandlerError> {
        self.map_err(|e| HandlerError::with_kind(kind, e))
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
    /// The context shut down ([`Backstop::shutdown`](super::Backstop::shutdown)) before the
    /// call completed: its data is handed back.
    ShuttingDown,
    /// No context was installed ([`Backstop::install`](super::Backstop::install)) for a
    /// macro-generated task function called without an explicit `&Backstop`.
    NoContext,
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

    /// A call of a macro-generated task made without an installed context (nothing was run).
    pub fn no_context(topic: &str, args: A) -> Self {
        TaskFailure {
            topic: topic.to_string(),
            reason: FailureReason::NoContext,
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
            FailureReason::CircuitOpen
            | FailureReason::Encode(_)
            | FailureReason::Config(_)
            | FailureReason::ShuttingDown
            | FailureReason::NoContext => None,
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
            FailureReason::NoContext => write!(
                f,
                "task for `{}` not run: no backstop context installed (call Backstop::install at startup, or use `call_with(&bs, ..)`)",
                self.topic
            )?,
            FailureReason::ShuttingDown => write!(
                f,
                "task for `{}` stopped: the service shut down before it completed",
                self.topic
            )?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn via_question_mark<E: StdError + Send + Sync + 'static>(e: E) -> HandlerError {
        fn f<E: StdError + Send + Sync + 'static>(e: E) -> Result<(), HandlerError> {
            Err(e)?;
            Ok(())
        }
        f(e).unwrap_err()
    }

    #[test]
    fn io_errors_classify_row_by_row() {
        let rows = [
            (io::ErrorKind::ConnectionRefused, ErrorKind::Connection),
            (io::ErrorKind::ConnectionReset, ErrorKind::Connection),
            (io::ErrorKind::ConnectionAborted, ErrorKind::Connection),
            (io::ErrorKind::NotConnected, ErrorKind::Connection),
            (io::ErrorKind::BrokenPipe, ErrorKind::Connection),
            (io::ErrorKind::TimedOut, ErrorKind::Timeout),
            (io::ErrorKind::NotFound, ErrorKind::Handler),
            (io::ErrorKind::PermissionDenied, ErrorKind::Handler),
            (io::ErrorKind::InvalidData, ErrorKind::Handler),
            (io::ErrorKind::Other, ErrorKind::Handler),
        ];
        for (io_kind, kind) in rows {
            let e = via_question_mark(io::Error::new(io_kind, "boom"));
            assert_eq!(e.kind(), kind, "{io_kind:?}");
            assert!(e.kind().is_retryable());
            assert!(!e.is_explicit());
            assert!(e.message().contains("boom"));
            assert!(e.source().unwrap().is::<io::Error>());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn elapsed_is_a_timeout() {
        let elapsed = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            std::future::pending::<()>(),
        )
        .await
        .unwrap_err();
        assert_eq!(via_question_mark(elapsed).kind(), ErrorKind::Timeout);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("calling the profile service failed")]
    struct Outer(#[source] io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("quota exceeded")]
    struct Quota;

    #[test]
    fn the_source_chain_is_searched_and_unknown_errors_are_handler() {
        let e = via_question_mark(Outer(io::Error::from(io::ErrorKind::ConnectionReset)));
        assert_eq!(e.kind(), ErrorKind::Connection);
        let wrapped = io::Error::other(Outer(io::Error::from(io::ErrorKind::TimedOut)));
        assert_eq!(via_question_mark(wrapped).kind(), ErrorKind::Timeout);
        let parse = "x".parse::<i64>().unwrap_err();
        assert_eq!(via_question_mark(parse).kind(), ErrorKind::Handler);
        assert_eq!(via_question_mark(Quota).kind(), ErrorKind::Handler);
    }

    #[test]
    fn broker_errors_keep_their_kind_and_are_final() {
        let b = crate::broker::BrokerError::new(ErrorKind::Rejected, "too big");
        let e = via_question_mark(b);
        assert_eq!(e.kind(), ErrorKind::Rejected);
        assert!(e.is_explicit());
        let user: &ClassifyFn = &|_| Some(ErrorKind::Handler);
        assert_eq!(e.reclassified(Some(user)).kind(), ErrorKind::Rejected);
    }

    #[test]
    fn a_user_classifier_decides_before_the_table_but_not_over_explicit_kinds() {
        let user: &ClassifyFn = &|e| {
            if e.is::<Quota>() {
                Some(ErrorKind::Rejected)
            } else if e.is::<io::Error>() {
                Some(ErrorKind::Fatal)
            } else {
                None
            }
        };
        let e = via_question_mark(Quota).reclassified(Some(user));
        assert_eq!(e.kind(), ErrorKind::Rejected);
        // The user classifier sees the outer error first, then the chain.
        let e = via_question_mark(Outer(io::Error::from(io::ErrorKind::TimedOut)))
            .reclassified(Some(user));
        assert_eq!(e.kind(), ErrorKind::Fatal);
        // Not known to the user classifier: the table's answer stays.
        let none: &ClassifyFn = &|_| None;
        let e =
            via_question_mark(io::Error::from(io::ErrorKind::TimedOut)).reclassified(Some(none));
        assert_eq!(e.kind(), ErrorKind::Timeout);
        // Explicit constructors are never re-classified.
        let e = HandlerError::invalid("bad").reclassified(Some(user));
        assert_eq!(e.kind(), ErrorKind::Invalid);
        let e = HandlerError::with_kind(ErrorKind::Invalid, Quota).reclassified(Some(user));
        assert_eq!(e.kind(), ErrorKind::Invalid);
    }

    #[test]
    fn converts_back_into_a_boxed_error_and_compares_by_kind_and_message() {
        fn main_like() -> Result<(), Box<dyn StdError + Send + Sync>> {
            Err(HandlerError::timeout("slow"))?;
            Ok(())
        }
        let boxed = main_like().unwrap_err();
        assert_eq!(boxed.to_string(), "timeout: slow");
        // A boxed HandlerError converted again keeps its kind.
        assert_eq!(HandlerError::from_boxed(boxed).kind(), ErrorKind::Timeout);
        assert_eq!(HandlerError::timeout("slow"), HandlerError::timeout("slow"));
        assert_ne!(
            HandlerError::timeout("slow"),
            HandlerError::connection("slow")
        );
        let e = HandlerError::from_boxed(Box::new(io::Error::from(io::ErrorKind::BrokenPipe)));
        assert_eq!(e.kind(), ErrorKind::Connection);
    }

    #[test]
    fn result_ext_names_the_kind() {
        let r: Result<(), HandlerError> = "x".parse::<i64>().map(|_| ()).kind(ErrorKind::Invalid);
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Invalid);
    }
}
