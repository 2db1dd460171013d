//! Deliberate bugs, compiled only with the `planted-bugs` feature, that prove the tests and the
//! simulation oracle catch real mistakes. One bug at a time is switched on per thread.

use std::cell::Cell;

/// A deliberate mistake the checks must catch.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Bug {
    /// Ack a dead-lettered message before the DLQ publish is confirmed.
    AckBeforeDlqConfirmed,
    /// Allow one attempt more than `max_retries + 1`.
    OneRetryTooMany,
    /// The breaker forgets to reset its failure count on success.
    BreakerNoReset,
    /// Allow `max_parallelism + 1` handlers in flight.
    ParallelismOffByOne,
    /// Forget the runs of earlier deliveries: every redelivery starts a fresh attempt budget.
    IgnorePriorRuns,
    /// An ordered consumer runs a later message of a key while an earlier one is held.
    KeyOrderIgnored,
}

thread_local! {
    static ACTIVE: Cell<Option<Bug>> = const { Cell::new(None) };
}

/// Switches `bug` on (or all off with `None`) for the current thread.
pub fn set(bug: Option<Bug>) {
    ACTIVE.with(|a| a.set(bug));
}

/// Whether `bug` is switched on for the current thread.
pub fn active(bug: Bug) -> bool {
    ACTIVE.with(|a| a.get() == Some(bug))
}
