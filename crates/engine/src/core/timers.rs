//! A deterministic timer queue: earliest deadline first, ties broken by insertion order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::slab::Key;
use super::time::Time;

/// Deadlines for keys. Cancelling is lazy: the owner checks on expiry whether the key still
/// waits for that exact deadline, so stale entries cost nothing but a pop.
#[derive(Clone, Debug)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Time, u64, Key)>>,
    seq: u64,
}

impl Timers {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Timers {
            heap: BinaryHeap::with_capacity(n),
            seq: 0,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, at: Time, key: Key) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, key)));
    }

    /// The earliest entry, stale or not.
    #[inline]
    pub(crate) fn peek(&self) -> Option<(Time, Key)> {
        self.heap.peek().map(|Reverse((t, _, k))| (*t, *k))
    }

    /// Pops the earliest entry if it is due at `now`.
    #[inline]
    pub(crate) fn pop_due(&mut self, now: Time) -> Option<(Time, Key)> {
        match self.heap.peek() {
            Some(Reverse((t, _, _))) if *t <= now => {
                self.heap.pop().map(|Reverse((t, _, k))| (t, k))
            }
            _ => None,
        }
    }

    /// Drops the earliest entry.
    #[inline]
    pub(crate) fn pop(&mut self) {
        self.heap.pop();
    }

    pub(crate) fn clear(&mut self) {
        self.heap.clear();
    }
}
