//! The broker's state as plain data: topic logs, subscriptions and who holds which delivery.
//! Everything here is synchronous and takes the current time as an argument; the async layer
//! in [`crate::broker`] locks it, applies faults and waits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use backstop_engine::broker::{
    BrokerError, MessageId, MessageMetadata, OutgoingMessage, ReceivedMessage, SubscriptionSpec,
    SubscriptionType,
};
use backstop_engine::core::ErrorKind;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::faults::FaultState;
use crate::id;
use crate::inspect::{Counters, SubscriptionStats};

/// Where a new subscription starts reading its topic.
///
/// ```
/// use backstop_mem::{InitialPosition, MemBroker, MemConfig};
/// let broker = MemBroker::with_config(MemConfig { initial_position: InitialPosition::Earliest });
/// # let _ = broker;
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum InitialPosition {
    /// Only messages published after the subscription was created (Pulsar's default).
    #[default]
    Latest,
    /// Every message the topic holds, from the first one.
    Earliest,
}

/// How a [`crate::MemBroker`] behaves.
#[derive(Clone, Debug, Default)]
pub struct MemConfig {
    /// Where a subscription created by its first `subscribe` starts reading.
    pub initial_position: InitialPosition,
}

/// One stored message of a topic's log.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) payload: Vec<u8>,
    pub(crate) key: Option<String>,
    pub(crate) properties: BTreeMap<String, String>,
    pub(crate) ordering_key: Option<Vec<u8>>,
    pub(crate) event_time_ms: Option<u64>,
    /// Wall-clock time of the publish (ms since the Unix epoch).
    pub(crate) publish_time_ms: u64,
    /// Not delivered before this instant (delayed delivery).
    pub(crate) deliver_at: Option<Instant>,
}

impl Stored {
    /// What a subscriber sees of this message, with `topic` and the log position.
    fn delivery(
        &self,
        topic_index: u32,
        seq: u64,
        topic: &str,
        redelivery_count: u32,
    ) -> ReceivedMessage {
        ReceivedMessage {
            id: id::encode(topic_index, seq),
            topic: topic.to_owned(),
            payload: self.payload.clone(),
            key: self.key.clone(),
            properties: self.properties.clone(),
            redelivery_count,
            metadata: MessageMetadata {
                // The Java form `ledger:entry:partition`: topic number, log position, no partition.
                display_id: Some(format!("{topic_index}:{seq}:-1")),
                partition: None,
                ordering_key: self.ordering_key.clone(),
                publish_time_ms: Some(self.publish_time_ms),
                event_time_ms: self.event_time_ms,
            },
        }
    }
}

/// A topic: its number (part of every message id), its append-only log and its subscriptions.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) index: u32,
    pub(crate) log: Vec<Stored>,
    pub(crate) subs: BTreeMap<String, Sub>,
}

/// Per-subscription counters.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SubCounters {
    pub(crate) delivered: u64,
    pub(crate) redelivered: u64,
    pub(crate) acks: u64,
    pub(crate) nacks: u64,
    pub(crate) redundant_acks: u64,
    pub(crate) rejected_acks: u64,
}

/// A durable subscription: which messages are waiting, which are out with which consumer, and
/// which are acknowledged. Positions are indexes into the topic's log.
#[derive(Debug)]
pub(crate) struct Sub {
    pub(crate) kind: SubscriptionType,
    pub(crate) nack_delay: Duration,
    /// Woken on every change a waiting `receive` may care about.
    pub(crate) notify: Arc<Notify>,
    /// Open consumers, in subscribe order (ids grow).
    pub(crate) consumers: BTreeSet<u64>,
    /// Ready to be delivered, oldest first.
    pub(crate) available: BTreeSet<u64>,
    /// Negatively acknowledged, ready again at the instant.
    pub(crate) delayed: BTreeSet<(Instant, u64)>,
    /// Out with a consumer: position → consumer id.
    pub(crate) unacked: BTreeMap<u64, u64>,
    /// How often each not-yet-acknowledged position was delivered.
    pub(crate) deliveries: BTreeMap<u64, u32>,
    /// The first position of the topic this subscription covers.
    pub(crate) start: u64,
    /// Every position in `start..acked_below` is acknowledged.
    pub(crate) acked_below: u64,
    /// Acknowledged positions at or above `acked_below`.
    pub(crate) acked_above: BTreeSet<u64>,
    /// Key_Shared: which consumer holds unacknowledged messages of a key, and how many.
    pub(crate) key_holders: BTreeMap<String, (u64, usize)>,
    /// Receives waiting for a message, in arrival order: ticket → consumer. Messages go to
    /// them first come, first served, so waiting consumers take turns.
    pub(crate) waiters: BTreeMap<u64, u64>,
    next_ticket: u64,
    pub(crate) counters: SubCounters,
}

impl Sub {
    fn new(spec: &SubscriptionSpec, start: u64, log_len: u64) -> Sub {
        Sub {
            kind: spec.kind,
            nack_delay: spec.nack_redelivery_delay,
            notify: Arc::new(Notify::new()),
            consumers: BTreeSet::new(),
            available: (start..log_len).collect(),
            delayed: BTreeSet::new(),
            unacked: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            start,
            acked_below: start,
            acked_above: BTreeSet::new(),
            key_holders: BTreeMap::new(),
            waiters: BTreeMap::new(),
            next_ticket: 0,
            counters: SubCounters::default(),
        }
    }

    pub(crate) fn is_acked(&self, seq: u64) -> bool {
        (self.start..self.acked_below).contains(&seq) || self.acked_above.contains(&seq)
    }

    fn mark_acked(&mut self, seq: u64) {
        self.acked_above.insert(seq);
        while self.acked_above.remove(&self.acked_below) {
            self.acked_below += 1;
        }
    }

    /// Moves nacked messages whose delay is over back to `available`.
    fn promote_due(&mut self, now: Instant) {
        while let Some(&(at, seq)) = self.delayed.first() {
            if at > now {
                break;
            }
            self.delayed.pop_first();
            self.available.insert(seq);
        }
    }

    /// When the earliest nacked message becomes available again.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.delayed.first().map(|(at, _)| *at)
    }

    fn key_of(log: &[Stored], seq: u64) -> &str {
        log[seq as usize].key.as_deref().unwrap_or("")
    }

    /// Key_Shared: the consumer a key belongs to among the open consumers.
    fn key_owner(&self, key: &str) -> Option<u64> {
        let n = self.consumers.len() as u64;
        if n == 0 {
            return None;
        }
        self.consumers
            .iter()
            .nth((fnv1a(key.as_bytes()) % n) as usize)
            .copied()
    }

    /// How many waiting receives that could take the same messages are ahead of this one
    /// (all of them for a receive that is not waiting yet). Key_Shared does not queue: its
    /// messages are not interchangeable between consumers.
    fn rank(&self, ticket: Option<u64>) -> usize {
        let ahead = match ticket {
            Some(t) => self.waiters.range(..t),
            None => self.waiters.range(..),
        };
        match self.kind {
            SubscriptionType::Shared | SubscriptionType::Exclusive => ahead.count(),
            SubscriptionType::Failover => {
                let active = self.consumers.first();
                ahead.filter(|(_, c)| Some(*c) == active).count()
            }
            SubscriptionType::KeyShared => 0,
        }
    }

    /// The next position `consumer` may be given, if any.
    fn pick(&self, consumer: u64, log: &[Stored]) -> Option<u64> {
        match self.kind {
            SubscriptionType::Shared | SubscriptionType::Exclusive => {
                self.available.first().copied()
            }
            SubscriptionType::Failover => {
                if self.consumers.first() == Some(&consumer) {
                    self.available.first().copied()
                } else {
                    None
                }
            }
            SubscriptionType::KeyShared => self.available.iter().copied().find(|&seq| {
                let key = Self::key_of(log, seq);
                let held_elsewhere = self
                    .key_holders
                    .get(key)
                    .is_some_and(|(holder, _)| *holder != consumer);
                !held_elsewhere && self.key_owner(key) == Some(consumer)
            }),
        }
    }

    fn hold_key(&mut self, log: &[Stored], seq: u64, consumer: u64) {
        if self.kind == SubscriptionType::KeyShared {
            let key = Self::key_of(log, seq).to_owned();
            self.key_holders.entry(key).or_insert((consumer, 0)).1 += 1;
        }
    }

    /// Key_Shared: one unacknowledged message of the key of `seq` fewer with its holder;
    /// whether that freed the key (another consumer may own it now, and must look again).
    fn release_key(&mut self, log: &[Stored], seq: u64) -> bool {
        if self.kind == SubscriptionType::KeyShared {
            let key = Self::key_of(log, seq);
            if let Some(entry) = self.key_holders.get_mut(key) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    self.key_holders.remove(key);
                    return true;
                }
            }
        }
        false
    }

    /// Takes a delivery away from its consumer and makes it available again at once.
    fn return_delivery(&mut self, log: &[Stored], seq: u64) {
        self.unacked.remove(&seq);
        self.release_key(log, seq);
        self.available.insert(seq);
    }

    /// Returns every delivery `consumer` holds; the positions returned.
    fn return_all_of(&mut self, log: &[Stored], consumer: u64) -> Vec<u64> {
        let held: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, c)| **c == consumer)
            .map(|(seq, _)| *seq)
            .collect();
        for &seq in &held {
            self.return_delivery(log, seq);
        }
        held
    }

    pub(crate) fn stats(&self) -> SubscriptionStats {
        SubscriptionStats {
            kind: self.kind,
            consumers: self.consumers.len(),
            available: self.available.len(),
            delayed: self.delayed.len(),
            unacked: self.unacked.len(),
            acked: (self.acked_below - self.start) as usize + self.acked_above.len(),
            delivered: self.counters.delivered,
            redelivered: self.counters.redelivered,
            acks: self.counters.acks,
            nacks: self.counters.nacks,
            redundant_acks: self.counters.redundant_acks,
            rejected_acks: self.counters.rejected_acks,
        }
    }
}

/// The 64-bit FNV-1a hash: stable across platforms and Rust versions, unlike `std`'s hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The lifecycle of one consumer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum ConsumerStatus {
    Open,
    /// Closed by its owner: operations fail with Fatal.
    Closed,
    /// Closed by a dropped connection: operations fail with Connection.
    Disconnected,
}

/// What the broker knows about a consumer handle.
#[derive(Debug)]
pub(crate) struct ConsumerInfo {
    pub(crate) topic: String,
    pub(crate) subscription: String,
    pub(crate) status: ConsumerStatus,
    /// Positions taken back from this consumer by a crash: a late ack or nack of one fails
    /// with Connection rather than Invalid.
    pub(crate) revoked: BTreeSet<u64>,
}

/// The whole broker.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) config: MemConfig,
    pub(crate) topics: BTreeMap<String, Topic>,
    /// Topic number → name.
    pub(crate) topic_names: Vec<String>,
    pub(crate) consumers: BTreeMap<u64, ConsumerInfo>,
    next_consumer: u64,
    pub(crate) faults: FaultState,
    pub(crate) counters: Counters,
}

impl State {
    pub(crate) fn new(config: MemConfig) -> State {
        State {
            config,
            ..State::default()
        }
    }

    /// The topic, created on first use.
    pub(crate) fn topic_mut(&mut self, name: &str) -> &mut Topic {
        if !self.topics.contains_key(name) {
            let index = self.topic_names.len() as u32;
            self.topic_names.push(name.to_owned());
            self.topics.insert(
                name.to_owned(),
                Topic {
                    index,
                    log: Vec::new(),
                    subs: BTreeMap::new(),
                },
            );
        }
        self.topics.get_mut(name).expect("inserted above")
    }

    /// Appends to the topic's log and makes the message available to every subscription.
    pub(crate) fn publish(&mut self, topic: &str, message: OutgoingMessage) -> MessageId {
        let deliver_at = message
            .deliver_after
            .filter(|d| !d.is_zero())
            .map(|d| Instant::now() + d);
        let t = self.topic_mut(topic);
        let seq = t.log.len() as u64;
        let publish_time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        t.log.push(Stored {
            payload: message.payload,
            key: message.key,
            properties: message.properties,
            ordering_key: message.ordering_key,
            event_time_ms: message.event_time_ms,
            publish_time_ms,
            deliver_at,
        });
        for sub in t.subs.values_mut() {
            match deliver_at {
                Some(at) => sub.delayed.insert((at, seq)),
                None => sub.available.insert(seq),
            };
            sub.notify.notify_waiters();
        }
        let index = t.index;
        self.counters.published += 1;
        id::encode(index, seq)
    }

    /// Adds a consumer, creating the subscription on first use.
    pub(crate) fn subscribe(&mut self, spec: &SubscriptionSpec) -> Result<u64, BrokerError> {
        let initial = self.config.initial_position;
        let consumer = self.next_consumer + 1;
        let t = self.topic_mut(&spec.topic);
        let log_len = t.log.len() as u64;
        let log = &t.log;
        let sub = t.subs.entry(spec.subscription.clone()).or_insert_with(|| {
            let start = match initial {
                InitialPosition::Latest => log_len,
                InitialPosition::Earliest => 0,
            };
            let mut sub = Sub::new(spec, start, log_len);
            // Delayed messages of the log wait for their time here too.
            for seq in start..log_len {
                if let Some(at) = log[seq as usize].deliver_at {
                    sub.available.remove(&seq);
                    sub.delayed.insert((at, seq));
                }
            }
            sub
        });
        if !sub.consumers.is_empty() {
            if sub.kind != spec.kind {
                return Err(BrokerError::new(
                    ErrorKind::Rejected,
                    format!(
                        "subscription `{}` on `{}` is {:?} and has consumers; cannot join as {:?}",
                        spec.subscription, spec.topic, sub.kind, spec.kind
                    ),
                ));
            }
            if sub.kind == SubscriptionType::Exclusive {
                return Err(BrokerError::new(
                    ErrorKind::Rejected,
                    format!(
                        "exclusive subscription `{}` on `{}` already has a consumer",
                        spec.subscription, spec.topic
                    ),
                ));
            }
        } else {
            // A subscription without consumers takes the type and delay of whoever joins.
            sub.kind = spec.kind;
            sub.nack_delay = spec.nack_redelivery_delay;
        }
        sub.consumers.insert(consumer);
        // Failover and Key_Shared assignments change with the consumer set.
        sub.notify.notify_waiters();
        self.next_consumer = consumer;
        self.consumers.insert(
            consumer,
            ConsumerInfo {
                topic: spec.topic.clone(),
                subscription: spec.subscription.clone(),
                status: ConsumerStatus::Open,
                revoked: BTreeSet::new(),
            },
        );
        self.counters.subscribes += 1;
        Ok(consumer)
    }

    /// Fails unless the consumer is open.
    pub(crate) fn check_open(&self, consumer: u64) -> Result<(), BrokerError> {
        match self.consumers.get(&consumer).map(|c| c.status) {
            Some(ConsumerStatus::Open) => Ok(()),
            Some(ConsumerStatus::Disconnected) => Err(BrokerError::connection(
                "consumer lost its connection to the broker; subscribe again",
            )),
            Some(ConsumerStatus::Closed) | None => {
                Err(BrokerError::new(ErrorKind::Fatal, "consumer is closed"))
            }
        }
    }

    /// The topic and subscription of an open-or-not consumer.
    fn parts_mut(&mut self, consumer: u64) -> (&mut ConsumerInfo, &mut Topic) {
        let info = self.consumers.get_mut(&consumer).expect("known consumer");
        let topic = self.topics.get_mut(&info.topic).expect("consumer's topic");
        (info, topic)
    }

    /// The subscription's notifier, for a consumer to wait on.
    pub(crate) fn notifier(&self, consumer: u64) -> Arc<Notify> {
        let info = &self.consumers[&consumer];
        self.topics[&info.topic].subs[&info.subscription]
            .notify
            .clone()
    }

    /// Gives the consumer its next delivery, if one is ready and no receive waiting longer
    /// is due it first; otherwise when to look again (the earliest nack delay running out), if
    /// ever. `ticket` is the receive's place in the queue of waiting receives, if it has one;
    /// it leaves the queue with the delivery.
    pub(crate) fn take(
        &mut self,
        consumer: u64,
        ticket: Option<u64>,
        now: Instant,
    ) -> Result<ReceivedMessage, Option<Instant>> {
        let (info, topic) = self.parts_mut(consumer);
        let sub = topic
            .subs
            .get_mut(&info.subscription)
            .expect("consumer's sub");
        sub.promote_due(now);
        if sub.available.len() <= sub.rank(ticket) {
            return Err(sub.next_due());
        }
        let Some(seq) = sub.pick(consumer, &topic.log) else {
            return Err(sub.next_due());
        };
        if let Some(t) = ticket {
            sub.waiters.remove(&t);
        }
        sub.available.remove(&seq);
        sub.unacked.insert(seq, consumer);
        sub.hold_key(&topic.log, seq, consumer);
        let count = sub.deliveries.entry(seq).or_insert(0);
        let redelivery_count = *count;
        *count += 1;
        sub.counters.delivered += 1;
        if redelivery_count > 0 {
            sub.counters.redelivered += 1;
        }
        info.revoked.remove(&seq);
        let stored = &topic.log[seq as usize];
        let message = stored.delivery(topic.index, seq, &info.topic, redelivery_count);
        self.counters.delivered += 1;
        if redelivery_count > 0 {
            self.counters.redelivered += 1;
        }
        Ok(message)
    }

    /// Queues a receive of `consumer` that found nothing; its ticket.
    pub(crate) fn enqueue(&mut self, consumer: u64) -> u64 {
        let (info, topic) = self.parts_mut(consumer);
        let sub = topic
            .subs
            .get_mut(&info.subscription)
            .expect("consumer's sub");
        sub.next_ticket += 1;
        sub.waiters.insert(sub.next_ticket, consumer);
        sub.next_ticket
    }

    /// Removes a receive that stopped waiting (it failed, or its future was dropped), and lets
    /// the receives behind it look again.
    pub(crate) fn dequeue(&mut self, consumer: u64, ticket: u64) {
        let (info, topic) = self.parts_mut(consumer);
        let sub = topic
            .subs
            .get_mut(&info.subscription)
            .expect("consumer's sub");
        if sub.waiters.remove(&ticket).is_some() {
            sub.notify.notify_waiters();
        }
    }

    /// Checks that `id` is a delivery this consumer holds; returns its position.
    ///
    /// `Ok(None)` means it was acknowledged already (a no-op for ack and nack).
    fn held(&mut self, consumer: u64, id: &MessageId) -> Result<Option<u64>, BrokerError> {
        let (topic_index, seq) = match id::decode(id) {
            Ok(decoded) => decoded,
            Err(e) => {
                self.counters.rejected_acks += 1;
                return Err(e);
            }
        };
        let (info, topic) = self.parts_mut(consumer);
        if topic_index != topic.index {
            return Err(BrokerError::new(
                ErrorKind::Invalid,
                format!(
                    "message id {id} belongs to another topic than `{}`",
                    info.topic
                ),
            ));
        }
        let sub = topic
            .subs
            .get_mut(&info.subscription)
            .expect("consumer's sub");
        if sub.unacked.get(&seq) == Some(&consumer) {
            return Ok(Some(seq));
        }
        if info.revoked.remove(&seq) {
            return Err(BrokerError::connection(format!(
                "delivery {id} was lost when the broker restarted; it will be redelivered"
            )));
        }
        if sub.is_acked(seq) {
            sub.counters.redundant_acks += 1;
            self.counters.redundant_acks += 1;
            return Ok(None);
        }
        sub.counters.rejected_acks += 1;
        self.counters.rejected_acks += 1;
        Err(BrokerError::new(
            ErrorKind::Invalid,
            format!("message {id} is not an unacknowledged delivery of this consumer"),
        ))
    }

    /// Acknowledges a delivery the consumer holds.
    pub(crate) fn ack(&mut self, consumer: u64, id: &MessageId) -> Result<(), BrokerError> {
        let Some(seq) = self.held(consumer, id)? else {
            return Ok(());
        };
        let (info, topic) = self.parts_mut(consumer);
        let sub = topic
            .subs
            .get_mut(&info.subscription)
            .expect("consumer's sub");
        sub.unacked.remove(&seq);
        if sub.release_key(&topic.log, seq) {
            // Key_Shared: the key's messages may wait for another consumer, whose receive
            // waits for a wake-up (nothing else may come to wake it).
            sub.notify.notify_waiters();
        }
        sub.deliveries.remove(&seq);
        sub.mark_acked(seq);
        sub.counters.acks += 1;
        self.counters.acks += 1;
        Ok(())
    }

    /// Negatively acknowledges a delivery: available again after the subscription's delay.
    pub(crate) fn nack(
        &mut self,
        consumer: u64,
        id: &MessageId,
        now: Instant,
    ) -> Result<(), BrokerError> {
        let Some(seq) = self.held(consumer, id)? else {
            return Ok(());
        };
        let (info, topic) = self.parts_mut(consumer);
        let sub = topic
            .subs
            .get_mut(&info.subscription)
            .expect("consumer's sub");
        sub.unacked.remove(&seq);
        sub.release_key(&topic.log, seq);
        if sub.nack_delay.is_zero() {
            sub.available.insert(seq);
        } else {
            sub.delayed.insert((now + sub.nack_delay, seq));
        }
        sub.counters.nacks += 1;
        sub.notify.notify_waiters();
        self.counters.nacks += 1;
        Ok(())
    }

    /// Removes a consumer (closed by its owner, or by a dropped connection) and returns its
    /// deliveries to the subscription. Closing a closed consumer does nothing.
    pub(crate) fn remove_consumer(&mut self, consumer: u64, status: ConsumerStatus) {
        let (info, topic) = self.parts_mut(consumer);
        if info.status != ConsumerStatus::Open {
            return;
        }
        info.status = status;
        let sub = topic
            .subs
            .get_mut(&info.subscription)
            .expect("consumer's sub");
        sub.consumers.remove(&consumer);
        sub.return_all_of(&topic.log, consumer);
        sub.notify.notify_waiters();
    }

    /// A broker restart: every delivery returns to its subscription. Consumers stay open (as
    /// clients that reconnect), but late acks of what they held fail with Connection.
    pub(crate) fn crash(&mut self) {
        let mut revoked: Vec<(u64, u64)> = Vec::new();
        for topic in self.topics.values_mut() {
            for sub in topic.subs.values_mut() {
                let held: Vec<(u64, u64)> = sub.unacked.iter().map(|(s, c)| (*s, *c)).collect();
                for (seq, consumer) in held {
                    sub.return_delivery(&topic.log, seq);
                    revoked.push((consumer, seq));
                }
            }
        }
        for (consumer, seq) in revoked {
            if let Some(info) = self.consumers.get_mut(&consumer) {
                info.revoked.insert(seq);
            }
        }
        self.counters.crashes += 1;
        self.notify_all();
    }

    /// Every open consumer loses its connection: it is closed by the broker (its deliveries
    /// return) and its handle fails with Connection from now on.
    pub(crate) fn disconnect_consumers(&mut self) {
        let open: Vec<u64> = self
            .consumers
            .iter()
            .filter(|(_, c)| c.status == ConsumerStatus::Open)
            .map(|(id, _)| *id)
            .collect();
        for consumer in open {
            self.remove_consumer(consumer, ConsumerStatus::Disconnected);
        }
        self.notify_all();
    }

    /// Wakes every waiting `receive` so it re-checks faults and its consumer's status.
    pub(crate) fn notify_all(&self) {
        for topic in self.topics.values() {
            for sub in topic.subs.values() {
                sub.notify.notify_waiters();
            }
        }
    }

    pub(crate) fn sub(&self, topic: &str, subscription: &str) -> Option<(&Topic, &Sub)> {
        let t = self.topics.get(topic)?;
        Some((t, t.subs.get(subscription)?))
    }

    /// The ids of the acknowledged messages of a subscription, in publish order.
    pub(crate) fn acked_ids(&self, topic: &str, subscription: &str) -> Vec<MessageId> {
        let Some((t, sub)) = self.sub(topic, subscription) else {
            return Vec::new();
        };
        (sub.start..sub.acked_below)
            .chain(sub.acked_above.iter().copied())
            .map(|seq| id::encode(t.index, seq))
            .collect()
    }

    /// Every message of a topic, as a subscriber would see it on first delivery.
    pub(crate) fn topic_messages(&self, topic: &str) -> Vec<ReceivedMessage> {
        let Some(t) = self.topics.get(topic) else {
            return Vec::new();
        };
        t.log
            .iter()
            .enumerate()
            .map(|(seq, m)| m.delivery(t.index, seq as u64, topic, 0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: SubscriptionType) -> SubscriptionSpec {
        SubscriptionSpec::new("t", "s").with_type(kind)
    }

    #[test]
    fn acked_watermark_compacts_contiguous_acks() {
        let mut st = State::new(MemConfig::default());
        let c = st.subscribe(&spec(SubscriptionType::Shared)).unwrap();
        let ids: Vec<_> = (0..4)
            .map(|i| st.publish("t", OutgoingMessage::new(vec![i])))
            .collect();
        let now = Instant::now();
        for _ in 0..4 {
            st.take(c, None, now).unwrap();
        }
        st.ack(c, &ids[2]).unwrap();
        st.ack(c, &ids[0]).unwrap();
        let (_, sub) = st.sub("t", "s").unwrap();
        assert_eq!((sub.acked_below, sub.acked_above.len()), (1, 1));
        st.ack(c, &ids[1]).unwrap();
        let (_, sub) = st.sub("t", "s").unwrap();
        assert_eq!((sub.acked_below, sub.acked_above.len()), (3, 0));
        assert_eq!(st.acked_ids("t", "s"), ids[..3].to_vec());
    }

    #[test]
    fn key_shared_keeps_a_key_on_one_consumer() {
        let mut st = State::new(MemConfig::default());
        let a = st.subscribe(&spec(SubscriptionType::KeyShared)).unwrap();
        let b = st.subscribe(&spec(SubscriptionType::KeyShared)).unwrap();
        for i in 0..40u8 {
            st.publish(
                "t",
                OutgoingMessage::new(vec![i]).with_key(format!("k{}", i % 4)),
            );
        }
        let now = Instant::now();
        let mut owner: BTreeMap<String, u64> = BTreeMap::new();
        let mut got = 0;
        for c in [a, b, a, b].into_iter().cycle().take(200) {
            if let Ok(m) = st.take(c, None, now) {
                got += 1;
                let prev = owner.insert(m.key.clone().unwrap(), c);
                assert!(
                    prev.is_none() || prev == Some(c),
                    "key moved between consumers"
                );
                st.ack(c, &m.id).unwrap();
            }
        }
        assert_eq!(got, 40);
    }

    /// Regression (found by the turmoil tier, seed 2319 with an ordered Key_Shared consumer):
    /// an ack that frees a key another consumer owns wakes that consumer's waiting receive;
    /// it used to sleep until some unrelated message came, and the key's messages stayed in
    /// the backlog.
    #[test]
    fn key_shared_ack_that_frees_a_key_wakes_the_waiting_owner() {
        let mut st = State::new(MemConfig::default());
        let a = st.subscribe(&spec(SubscriptionType::KeyShared)).unwrap();
        let now = Instant::now();
        let b = st.subscribe(&spec(SubscriptionType::KeyShared)).unwrap();
        // A key b owns, held by a (which took a message of it while it was alone).
        let key = (0..100)
            .map(|i| format!("k{i}"))
            .find(|k| st.sub("t", "s").unwrap().1.key_owner(k) == Some(b))
            .expect("some key hashes to b");
        st.remove_consumer(b, ConsumerStatus::Closed);
        st.publish("t", OutgoingMessage::new("1").with_key(key.clone()));
        let first = st.take(a, None, now).unwrap();
        let b = st.subscribe(&spec(SubscriptionType::KeyShared)).unwrap();
        assert_eq!(st.sub("t", "s").unwrap().1.key_owner(&key), Some(b));
        st.publish("t", OutgoingMessage::new("2").with_key(key.clone()));
        assert!(st.take(b, None, now).is_err(), "a still holds the key");
        let ticket = st.enqueue(b);
        // b's receive now waits on the subscription's notifier.
        let notify = st.notifier(b);
        let mut woken = Box::pin(notify.notified());
        woken.as_mut().enable();
        st.ack(a, &first.id).unwrap();
        use std::future::Future;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            woken.as_mut().poll(&mut cx).is_ready(),
            "the ack that freed the key woke no one"
        );
        assert_eq!(st.take(b, Some(ticket), now).unwrap().payload, b"2");
    }

    #[test]
    fn failover_serves_only_the_first_consumer() {
        let mut st = State::new(MemConfig::default());
        let a = st.subscribe(&spec(SubscriptionType::Failover)).unwrap();
        let b = st.subscribe(&spec(SubscriptionType::Failover)).unwrap();
        st.publish("t", OutgoingMessage::new("x"));
        let now = Instant::now();
        assert!(st.take(b, None, now).is_err());
        let m = st.take(a, None, now).unwrap();
        st.remove_consumer(a, ConsumerStatus::Closed);
        let again = st.take(b, None, now).unwrap();
        assert_eq!((again.id, again.redelivery_count), (m.id, 1));
    }
}
