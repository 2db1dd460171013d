//! A deterministic timer queue: earliest deadline first, ties broken by insertion order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::slab::Key;
use super::time::Time;

type Entry = (Time, u64, Key);

/// Deadlines for keys. Cancelling is lazy: the owner checks on expiry whether the key still
/// waits for that exact deadline, so stale entries cost nothing but a pop.
///
/// Entries are ordered by `(deadline, insertion number)`. With a fixed retry delay deadlines are
/// pushed in non-decreasing order, so they go to a FIFO (O(1)); an entry earlier than the FIFO's
/// last one (exponential backoff, jitter) goes to a heap. Popping takes the smaller front of the
/// two, so the order is exactly that of a single heap.
#[derive(Clone, Debug)]
pub(crate) struct Timers {
    fifo: VecDeque<Entry>,
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

impl Timers {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Timers {
            fifo: VecDeque::with_capacity(n),
            heap: BinaryHeap::with_capacity(n),
            seq: 0,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, at: Time, key: Key) {
        self.seq += 1;
        let entry = (at, self.seq, key);
        // Insertion numbers only grow, so `at >= last.at` keeps the FIFO sorted.
        if self.fifo.back().is_none_or(|last| last.0 <= at) {
            self.fifo.push_back(entry);
        } else {
            self.heap.push(Reverse(entry));
        }
    }

    /// Whether the earliest entry is the FIFO's (else the heap's); `None` when empty.
    #[inline]
    fn earliest_in_fifo(&self) -> Option<bool> {
        match (self.fifo.front(), self.heap.peek()) {
            (Some(f), Some(Reverse(h))) => Some(f <= h),
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (None, None) => None,
        }
    }

    /// The earliest entry, stale or not.
    #[inline]
    pub(crate) fn peek(&self) -> Option<(Time, Key)> {
        let e = match self.earliest_in_fifo()? {
            true => self.fifo.front()?,
            false => &self.heap.peek()?.0,
        };
        Some((e.0, e.2))
    }

    /// Pops the earliest entry if it is due at `now`.
    #[inline]
    pub(crate) fn pop_due(&mut self, now: Time) -> Option<(Time, Key)> {
        match self.peek() {
            Some((t, _)) if t <= now => self.take().map(|e| (e.0, e.2)),
            _ => None,
        }
    }

    /// Drops the earliest entry.
    #[inline]
    pub(crate) fn pop(&mut self) {
        self.take();
    }

    #[inline]
    fn take(&mut self) -> Option<Entry> {
        match self.earliest_in_fifo()? {
            true => self.fifo.pop_front(),
            false => self.heap.pop().map(|Reverse(e)| e),
        }
    }

    /// Whether no entry (stale or not) is queued.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.fifo.is_empty() && self.heap.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.fifo.clear();
        self.heap.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::retry::splitmix64;

    #[test]
    fn pops_in_deadline_then_insertion_order_like_a_single_heap() {
        for seed in 0..200u64 {
            let mut t = Timers::with_capacity(4);
            let mut reference: BinaryHeap<Reverse<(Time, u64, Key)>> = BinaryHeap::new();
            let mut seq = 0;
            let mut now = 0u64;
            let mut x = seed;
            for _ in 0..300 {
                x = splitmix64(x);
                match x % 4 {
                    // Mostly monotone deadlines (fixed delay), sometimes earlier ones (backoff).
                    0 | 1 => {
                        let at = Time::from_millis(now + 100 + (x >> 8) % 3);
                        seq += 1;
                        let k = Key::from_u64(seq);
                        t.push(at, k);
                        reference.push(Reverse((at, seq, k)));
                    }
                    2 => {
                        let at = Time::from_millis(now + (x >> 8) % 200);
                        seq += 1;
                        let k = Key::from_u64(seq);
                        t.push(at, k);
                        reference.push(Reverse((at, seq, k)));
                    }
                    _ => {
                        now += (x >> 8) % 50;
                        let due = Time::from_millis(now);
                        loop {
                            let want = match reference.peek() {
                                Some(Reverse((at, _, k))) if *at <= due => Some((*at, *k)),
                                _ => None,
                            };
                            assert_eq!(t.peek().filter(|(at, _)| *at <= due), want);
                            assert_eq!(t.pop_due(due), want, "seed {seed}");
                            if want.is_none() {
                                break;
                            }
                            reference.pop();
                        }
                    }
                }
            }
            while let Some(Reverse((at, _, k))) = reference.pop() {
                assert_eq!(t.peek(), Some((at, k)));
                t.pop();
            }
            assert_eq!(t.peek(), None);
        }
    }
}
