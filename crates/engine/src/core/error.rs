//! The error taxonomy every failure is mapped into: what kind it is and whether it is retried.

use std::fmt;

/// What went wrong in one attempt, as the core sees it.
///
/// Adapters map their broker errors into these kinds; handlers and task bodies return them.
/// [`ErrorKind::is_retryable`] decides whether another attempt is made, and a breaker's
/// [`KindSet`] decides which kinds count toward opening it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum ErrorKind {
    /// The broker or a downstream dependency could not be reached.
    Connection,
    /// An operation did not complete in time.
    Timeout,
    /// The broker refused the operation (quota, size, permissions): retrying will not help.
    Rejected,
    /// A payload could not be decoded (a poison message).
    Decode,
    /// The input is invalid (validation): retrying will not help.
    Invalid,
    /// A handler or task body failed in a way that may succeed on another attempt.
    Handler,
    /// A handler or task body panicked; treated as a failed, retryable attempt.
    Panic,
    /// An unrecoverable error (misconfiguration, closed client).
    Fatal,
    /// Authentication or authorization failed (bad or expired credentials, an untrusted
    /// certificate, no permission): permanent, and never counted by a breaker — it is not an
    /// outage, and retrying it would hide the real problem.
    Auth,
}

impl ErrorKind {
    /// Every kind, in a fixed order (for metrics pre-registration and exhaustive tests).
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Connection,
        ErrorKind::Timeout,
        ErrorKind::Rejected,
        ErrorKind::Decode,
        ErrorKind::Invalid,
        ErrorKind::Handler,
        ErrorKind::Panic,
        ErrorKind::Fatal,
        ErrorKind::Auth,
    ];

    /// Whether another attempt may succeed: Connection, Timeout, Handler and Panic are retried;
    /// Rejected, Decode, Invalid, Fatal and Auth are permanent.
    ///
    /// ```
    /// use backstop_engine::core::ErrorKind;
    /// assert!(ErrorKind::Timeout.is_retryable());
    /// assert!(!ErrorKind::Invalid.is_retryable());
    /// ```
    pub const fn is_retryable(self) -> bool {
        self.is_transient() || matches!(self, ErrorKind::Handler | ErrorKind::Panic)
    }

    /// Whether this kind is *transient*: an outage of the broker or of a downstream dependency
    /// (Connection, Timeout) that passes by itself.
    ///
    /// This is the one place that decides it. Everything else follows from it: the kinds a
    /// circuit breaker counts by default ([`KindSet::TRANSIENT`]), the producer and consumer
    /// machines (through their breakers), the runtime's decisions to retry an ack or to drop a
    /// cached producer, and the adapters' decisions to rebuild a connection.
    ///
    /// ```
    /// use backstop_engine::core::ErrorKind;
    /// assert!(ErrorKind::Connection.is_transient() && ErrorKind::Timeout.is_transient());
    /// assert!(!ErrorKind::Handler.is_transient()); // retried, but not an outage
    /// ```
    pub const fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Connection | ErrorKind::Timeout)
    }

    /// The kind of a [`std::io::Error`] of this [`std::io::ErrorKind`], when it is one of the
    /// transient ones (the default classification table):
    ///
    /// | `std::io::ErrorKind` | kind |
    /// |---|---|
    /// | `ConnectionRefused`, `ConnectionReset`, `ConnectionAborted`, `NotConnected`, `BrokenPipe` | [`Connection`](ErrorKind::Connection) |
    /// | `TimedOut` | [`Timeout`](ErrorKind::Timeout) |
    /// | anything else | `None` (the caller decides; handlers default to [`Handler`](ErrorKind::Handler)) |
    ///
    /// ```
    /// use backstop_engine::core::ErrorKind;
    /// use std::io::ErrorKind as Io;
    /// assert_eq!(ErrorKind::from_io(Io::ConnectionReset), Some(ErrorKind::Connection));
    /// assert_eq!(ErrorKind::from_io(Io::TimedOut), Some(ErrorKind::Timeout));
    /// assert_eq!(ErrorKind::from_io(Io::NotFound), None);
    /// ```
    pub fn from_io(kind: std::io::ErrorKind) -> Option<ErrorKind> {
        use std::io::ErrorKind as Io;
        match kind {
            Io::ConnectionRefused
            | Io::ConnectionReset
            | Io::ConnectionAborted
            | Io::NotConnected
            | Io::BrokenPipe => Some(ErrorKind::Connection),
            Io::TimedOut => Some(ErrorKind::Timeout),
            _ => None,
        }
    }

    /// The bounded label used in metrics and logs (`kind="timeout"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Decode => "decode",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Handler => "handler",
            ErrorKind::Panic => "panic",
            ErrorKind::Fatal => "fatal",
            ErrorKind::Auth => "auth",
        }
    }

    const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ErrorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown error kind `{s}`"))
    }
}

/// A small set of [`ErrorKind`]s (a bit set; `Copy`, no allocation).
///
/// ```
/// use backstop_engine::core::{ErrorKind, KindSet};
/// let set = KindSet::EXPECTED;
/// assert!(set.contains(ErrorKind::Connection) && set.contains(ErrorKind::Timeout));
/// assert!(!set.contains(ErrorKind::Handler));
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct KindSet(u16);

impl KindSet {
    /// The empty set.
    pub const EMPTY: KindSet = KindSet(0);
    /// The transient kinds ([`ErrorKind::is_transient`]: Connection and Timeout), derived from
    /// that one function: the kinds a circuit breaker counts by default.
    pub const TRANSIENT: KindSet = {
        let mut bits = 0;
        let mut i = 0;
        while i < ErrorKind::ALL.len() {
            if ErrorKind::ALL[i].is_transient() {
                bits |= ErrorKind::ALL[i].bit();
            }
            i += 1;
        }
        KindSet(bits)
    };
    /// The same set as [`KindSet::TRANSIENT`] (its older name).
    pub const EXPECTED: KindSet = KindSet::TRANSIENT;

    /// A set holding `kinds`.
    pub fn of(kinds: &[ErrorKind]) -> KindSet {
        kinds.iter().fold(KindSet::EMPTY, |s, k| s.with(*k))
    }

    /// This set with `kind` added.
    pub const fn with(self, kind: ErrorKind) -> KindSet {
        KindSet(self.0 | kind.bit())
    }

    /// Whether `kind` is in the set.
    pub const fn contains(self, kind: ErrorKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl Default for KindSet {
    fn default() -> Self {
        KindSet::EXPECTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_are_distinct() {
        for k in ErrorKind::ALL {
            assert_eq!(k.as_str().parse::<ErrorKind>().unwrap(), k);
        }
        let mut labels: Vec<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        labels.dedup();
        assert_eq!(labels.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn retryable_split_is_as_documented() {
        let retryable: Vec<_> = ErrorKind::ALL
            .into_iter()
            .filter(|k| k.is_retryable())
            .collect();
        assert_eq!(
            retryable,
            vec![
                ErrorKind::Connection,
                ErrorKind::Timeout,
                ErrorKind::Handler,
                ErrorKind::Panic
            ]
        );
    }

    #[test]
    fn transient_kinds_are_connection_and_timeout_and_the_default_breaker_set() {
        for k in ErrorKind::ALL {
            let expected = matches!(k, ErrorKind::Connection | ErrorKind::Timeout);
            assert_eq!(k.is_transient(), expected, "{k}");
            assert_eq!(KindSet::TRANSIENT.contains(k), expected, "{k}");
            assert!(
                !k.is_transient() || k.is_retryable(),
                "transient implies retryable"
            );
        }
        assert_eq!(KindSet::default(), KindSet::TRANSIENT);
    }

    #[test]
    fn io_table_row_by_row() {
        use std::io::ErrorKind as Io;
        let rows = [
            (Io::ConnectionRefused, Some(ErrorKind::Connection)),
            (Io::ConnectionReset, Some(ErrorKind::Connection)),
            (Io::ConnectionAborted, Some(ErrorKind::Connection)),
            (Io::NotConnected, Some(ErrorKind::Connection)),
            (Io::BrokenPipe, Some(ErrorKind::Connection)),
            (Io::TimedOut, Some(ErrorKind::Timeout)),
            (Io::NotFound, None),
            (Io::PermissionDenied, None),
            (Io::InvalidData, None),
            (Io::Other, None),
        ];
        for (io, kind) in rows {
            assert_eq!(ErrorKind::from_io(io), kind, "{io:?}");
        }
    }

    #[test]
    fn kind_set_membership() {
        let s = KindSet::of(&[ErrorKind::Decode, ErrorKind::Fatal]);
        assert!(s.contains(ErrorKind::Decode));
        assert!(s.contains(ErrorKind::Fatal));
        assert!(!s.contains(ErrorKind::Connection));
        assert!(KindSet::EMPTY.is_empty());
        assert!(!KindSet::EXPECTED.is_empty());
    }
}
