//! Per-subscription bookkeeping the pulsar crate does not do: which messages of a producer-side
//! batch were acknowledged (so the batch is acked at the broker only when all of them were), and
//! how often this subscription saw each message (a local redelivery count).
//!
//! Both tables are bounded: past their capacity the oldest entries are forgotten. Forgetting
//! never loses a message; at worst a batch is acked later (after a redelivery) or a redelivery
//! count restarts at zero.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use crate::id::{EntryKey, PulsarMessageId};

/// Completed batches remembered (to skip and re-ack a late redelivery of one).
const DONE_CAPACITY: usize = 10_000;

/// Largest batch the tracker believes in; a larger claimed size is treated as this many
/// messages (so acks of such a batch can never complete it early).
const MAX_BATCH: i32 = 1 << 20;

/// What to send to the broker after the application acked one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AckAction {
    /// Ack this single (non-batched) message.
    Single(PulsarMessageId),
    /// Every message of this batch was acked: ack the whole entry.
    Entry(EntryKey),
    /// Other messages of the batch are not acked yet: send nothing now.
    Hold,
}

/// What to do with a delivered message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Hand it to the application.
    Deliver,
    /// Its batch came back (a nack of another of its messages) and the application already
    /// acked this one: drop it.
    Skip,
    /// Its whole batch was acked already, yet the broker delivered it again (a redelivery that
    /// crossed the entry's ack, or an ack lost with a connection): drop it and ack the entry
    /// again.
    Reack(EntryKey),
}

/// A FIFO-bounded map: inserting past `cap` forgets the oldest key.
#[derive(Debug)]
struct BoundedMap<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Copy + Eq + Hash, V> BoundedMap<K, V> {
    fn new(cap: usize) -> Self {
        BoundedMap {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(&key) {
            while self.map.len() >= self.cap {
                match self.order.pop_front() {
                    Some(old) => {
                        self.map.remove(&old);
                    }
                    None => break,
                }
            }
            self.order.push_back(key);
            // `order` keeps keys that were removed since; compact it when it gets long.
            if self.order.len() > 2 * self.cap {
                let map = &self.map;
                self.order.retain(|k| map.contains_key(k) || *k == key);
            }
        }
        self.map.entry(key).or_insert_with(make)
    }

    fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    #[cfg(test)]
    fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Acked indices of one batch.
#[derive(Debug)]
struct BatchState {
    size: i32,
    acked: Vec<u64>,
    count: i32,
}

impl BatchState {
    fn new(size: i32) -> Self {
        let size = size.clamp(1, MAX_BATCH);
        BatchState {
            size,
            acked: vec![0; (size as usize).div_ceil(64)],
            count: 0,
        }
    }

    fn is_acked(&self, index: i32) -> bool {
        if index < 0 || index >= self.size {
            return false;
        }
        let i = index as usize;
        self.acked[i / 64] & (1 << (i % 64)) != 0
    }

    /// Marks `index`; returns whether every index is now acked.
    fn ack(&mut self, index: i32) -> bool {
        if index >= 0 && index < self.size && !self.is_acked(index) {
            let i = index as usize;
            self.acked[i / 64] |= 1 << (i % 64);
            self.count += 1;
        }
        self.count >= self.size
    }
}

/// Decides when a producer-side batch may be acknowledged: only once every message of it was.
///
/// Acking one message of a batch with the pulsar crate acks the whole batch entry (it sends no
/// batch-index ack set), which would drop the batch's other messages even if they were never
/// handled. So acks of batched messages are held here until the batch is complete.
///
/// Completed batches are remembered for a while (the last [`DONE_CAPACITY`]): the broker may
/// deliver a batch once more after its entry ack was sent (a redelivery requested by a nack of
/// its last message crossing that ack); its messages are then dropped and the entry acked again
/// instead of being handled twice.
#[derive(Debug)]
pub(crate) struct BatchTracker {
    batches: BoundedMap<EntryKey, BatchState>,
    done: BoundedMap<EntryKey, ()>,
}

impl BatchTracker {
    pub(crate) fn new(cap: usize) -> Self {
        BatchTracker {
            batches: BoundedMap::new(cap),
            done: BoundedMap::new(cap.min(DONE_CAPACITY)),
        }
    }

    /// A message was delivered by the broker: whether to hand it to the application.
    pub(crate) fn on_delivery(&mut self, id: &PulsarMessageId) -> Delivery {
        if !id.is_batched() {
            return Delivery::Deliver;
        }
        let entry = id.entry();
        if self.done.contains(&entry) {
            return Delivery::Reack(entry);
        }
        let state = self
            .batches
            .get_or_insert_with(entry, || BatchState::new(id.batch_size));
        if state.is_acked(id.batch_index) {
            Delivery::Skip
        } else {
            Delivery::Deliver
        }
    }

    /// The application acked `id`.
    pub(crate) fn on_ack(&mut self, id: &PulsarMessageId) -> AckAction {
        if !id.is_batched() {
            return AckAction::Single(*id);
        }
        let entry = id.entry();
        if self.done.contains(&entry) {
            return AckAction::Entry(entry); // a duplicate: acking the entry again is harmless
        }
        let done = self
            .batches
            .get_or_insert_with(entry, || BatchState::new(id.batch_size))
            .ack(id.batch_index);
        if done {
            self.batches.remove(&entry);
            self.done.get_or_insert_with(entry, || ());
            AckAction::Entry(entry)
        } else {
            AckAction::Hold
        }
    }

    /// Batches with some but not all messages acked.
    #[cfg(test)]
    pub(crate) fn open_batches(&self) -> usize {
        self.batches.len()
    }
}

/// Counts deliveries per message id, so a redelivery can report how often this subscription saw
/// the message before (the pulsar crate does not expose the broker's redelivery count).
#[derive(Debug)]
pub(crate) struct DeliveryCounter {
    seen: BoundedMap<PulsarMessageId, u32>,
}

impl DeliveryCounter {
    pub(crate) fn new(cap: usize) -> Self {
        DeliveryCounter {
            seen: BoundedMap::new(cap),
        }
    }

    /// Records a delivery; returns how many times the message was delivered before.
    pub(crate) fn on_delivery(&mut self, id: &PulsarMessageId) -> u32 {
        let n = self.seen.get_or_insert_with(*id, || 0);
        let before = *n;
        *n = n.saturating_add(1);
        before
    }

    /// The message was acked: forget it.
    pub(crate) fn on_ack(&mut self, id: &PulsarMessageId) {
        self.seen.remove(id);
    }

    #[cfg(test)]
    fn get(&self, id: &PulsarMessageId) -> Option<u32> {
        self.seen.get(id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batched(entry: u64, index: i32, size: i32) -> PulsarMessageId {
        PulsarMessageId {
            ledger_id: 1,
            entry_id: entry,
            partition: -1,
            batch_index: index,
            batch_size: size,
        }
    }

    fn single(entry: u64) -> PulsarMessageId {
        PulsarMessageId {
            ledger_id: 1,
            entry_id: entry,
            partition: -1,
            batch_index: -1,
            batch_size: 0,
        }
    }

    #[test]
    fn singles_are_acked_at_once() {
        let mut t = BatchTracker::new(10);
        assert_eq!(t.on_delivery(&single(3)), Delivery::Deliver);
        assert_eq!(t.on_ack(&single(3)), AckAction::Single(single(3)));
        assert_eq!(t.open_batches(), 0);
    }

    #[test]
    fn a_batch_is_acked_only_when_every_message_was() {
        let mut t = BatchTracker::new(10);
        for i in 0..3 {
            assert_eq!(t.on_delivery(&batched(7, i, 3)), Delivery::Deliver);
        }
        assert_eq!(t.on_ack(&batched(7, 2, 3)), AckAction::Hold);
        assert_eq!(t.on_ack(&batched(7, 2, 3)), AckAction::Hold, "double ack");
        assert_eq!(t.on_ack(&batched(7, 0, 3)), AckAction::Hold);
        assert_eq!(
            t.on_ack(&batched(7, 1, 3)),
            AckAction::Entry(batched(7, 1, 3).entry())
        );
        assert_eq!(t.open_batches(), 0);
    }

    #[test]
    fn redelivered_batches_skip_messages_already_acked() {
        let mut t = BatchTracker::new(10);
        for i in 0..3 {
            t.on_delivery(&batched(9, i, 3));
        }
        assert_eq!(t.on_ack(&batched(9, 0, 3)), AckAction::Hold);
        // index 1 nacked: the broker sends the whole batch again
        assert_eq!(t.on_delivery(&batched(9, 0, 3)), Delivery::Skip);
        assert_eq!(t.on_delivery(&batched(9, 1, 3)), Delivery::Deliver);
        assert_eq!(t.on_delivery(&batched(9, 2, 3)), Delivery::Deliver);
        assert_eq!(t.on_ack(&batched(9, 2, 3)), AckAction::Hold);
        assert!(matches!(t.on_ack(&batched(9, 1, 3)), AckAction::Entry(_)));
    }

    #[test]
    fn a_completed_batch_delivered_again_is_dropped_and_acked_again() {
        let mut t = BatchTracker::new(10);
        for i in 0..2 {
            t.on_delivery(&batched(4, i, 2));
        }
        assert_eq!(t.on_ack(&batched(4, 0, 2)), AckAction::Hold);
        let entry = batched(4, 0, 2).entry();
        assert_eq!(t.on_ack(&batched(4, 1, 2)), AckAction::Entry(entry));
        // a redelivery that crossed the entry ack
        assert_eq!(t.on_delivery(&batched(4, 0, 2)), Delivery::Reack(entry));
        assert_eq!(t.on_delivery(&batched(4, 1, 2)), Delivery::Reack(entry));
        assert_eq!(t.open_batches(), 0);
        // remembered completions are bounded
        let mut t = BatchTracker::new(2);
        for e in 0..5 {
            t.on_ack(&batched(e, 0, 1));
        }
        assert_eq!(t.done.len(), 2);
        assert_eq!(t.on_delivery(&batched(0, 0, 1)), Delivery::Deliver);
        assert_eq!(
            t.on_delivery(&batched(4, 0, 1)),
            Delivery::Reack(batched(4, 0, 1).entry())
        );
    }

    #[test]
    fn forgetting_a_batch_never_acks_it_early() {
        let mut t = BatchTracker::new(1);
        t.on_delivery(&batched(1, 0, 2));
        assert_eq!(t.on_ack(&batched(1, 0, 2)), AckAction::Hold);
        t.on_delivery(&batched(2, 0, 2)); // evicts entry 1
        assert_eq!(t.on_ack(&batched(1, 1, 2)), AckAction::Hold);
        // entry 1's index 0 ack was forgotten: it takes a redelivery and a new ack
        assert!(matches!(t.on_ack(&batched(1, 0, 2)), AckAction::Entry(_)));
    }

    #[test]
    fn absurd_batch_indices_are_held() {
        let mut t = BatchTracker::new(4);
        assert_eq!(t.on_ack(&batched(1, 5, 2)), AckAction::Hold);
        assert_eq!(
            t.on_ack(&batched(1, -1, 2)),
            AckAction::Single(batched(1, -1, 2))
        );
    }

    #[test]
    fn delivery_counts() {
        let mut c = DeliveryCounter::new(2);
        assert_eq!(c.on_delivery(&single(1)), 0);
        assert_eq!(c.on_delivery(&single(1)), 1);
        assert_eq!(c.on_delivery(&single(1)), 2);
        c.on_ack(&single(1));
        assert_eq!(c.get(&single(1)), None);
        assert_eq!(c.on_delivery(&single(1)), 0);
        c.on_delivery(&single(2));
        c.on_delivery(&single(3)); // evicts 1
        assert_eq!(c.get(&single(1)), None);
        assert_eq!(c.get(&single(3)), Some(1));
        for e in 0..100 {
            c.on_delivery(&single(e));
            c.on_ack(&single(e));
        }
        assert!(c.seen.order.len() <= 2 * c.seen.cap + 1);
    }
}
