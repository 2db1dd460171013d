//! [`MemBroker`] and its handles: the engine's broker traits over the in-memory state, with
//! faults applied and waits done on tokio's clock.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use backstop_engine::broker::{
    Broker, BrokerError, MessageId, OutgoingMessage, Producer, ReceivedMessage, Subscription,
    SubscriptionSpec,
};
use tokio::time::Instant;

use crate::faults::{injected, Faults, Op, Verdict};
use crate::inspect::{Counters, SubscriptionStats};
use crate::state::{ConsumerStatus, MemConfig, State};

/// The state behind every clone of a [`MemBroker`] and its handles.
pub(crate) struct Shared {
    state: Mutex<State>,
}

impl Shared {
    /// Locks the state. The lock is never held across an `.await`; a poisoned lock (a panic
    /// while holding it, which would be a bug here) is taken over rather than propagated.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps the operation's injected latency (if any), then decides whether it may run.
    async fn admit(
        &self,
        op: Op,
        check: impl Fn(&State) -> Result<(), BrokerError>,
    ) -> Result<(u64, Verdict), BrokerError> {
        let (latency, gen) = {
            let mut st = self.lock();
            let gen = st.faults.crash_gen;
            let latency = st.faults.latency(op);
            if latency.is_zero() {
                return decide(&mut st, op, gen, &check);
            }
            (latency, gen)
        };
        tokio::time::sleep(latency).await;
        decide(&mut self.lock(), op, gen, &check)
    }
}

/// Whether an operation that started at crash generation `gen` may run: its handle's own
/// check first (a closed consumer reports that rather than an injected fault), then faults.
fn decide(
    st: &mut State,
    op: Op,
    gen: u64,
    check: &impl Fn(&State) -> Result<(), BrokerError>,
) -> Result<(u64, Verdict), BrokerError> {
    check(st)?;
    match st.faults.admit(op, gen) {
        Ok(verdict) => {
            if verdict.fail_after.is_some() {
                st.counters.injected_faults += 1;
            }
            Ok((gen, verdict))
        }
        Err(e) => {
            st.counters.injected_faults += 1;
            Err(e)
        }
    }
}

/// Turns an operation's result into the injected after-effect failure, if one was decided.
fn finish<T>(op: Op, verdict: Verdict, result: T) -> Result<T, BrokerError> {
    match verdict.fail_after {
        Some(kind) => Err(injected(op, kind)),
        None => Ok(result),
    }
}

/// An in-memory broker implementing [`Broker`]; cheap to clone, every clone is the same
/// broker. See the [crate docs](crate) for its semantics.
#[derive(Clone)]
pub struct MemBroker {
    shared: Arc<Shared>,
}

impl fmt::Debug for MemBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("MemBroker")
            .field("topics", &st.topics.len())
            .field("consumers", &st.consumers.len())
            .finish()
    }
}

impl Default for MemBroker {
    fn default() -> Self {
        MemBroker::new()
    }
}

impl MemBroker {
    /// An empty broker; subscriptions start at the latest message.
    pub fn new() -> MemBroker {
        MemBroker::with_config(MemConfig::default())
    }

    /// An empty broker configured by `config`.
    pub fn with_config(config: MemConfig) -> MemBroker {
        MemBroker {
            shared: Arc::new(Shared {
                state: Mutex::new(State::new(config)),
            }),
        }
    }

    /// The fault-injection handle of this broker.
    pub fn faults(&self) -> Faults {
        Faults::new(self.shared.clone())
    }

    /// The topics that exist, in name order.
    pub fn topics(&self) -> Vec<String> {
        self.shared.lock().topics.keys().cloned().collect()
    }

    /// Every message published to `topic`, in publish order, as a first delivery would show
    /// it (empty for an unknown topic).
    pub fn topic_messages(&self, topic: &str) -> Vec<ReceivedMessage> {
        self.shared.lock().topic_messages(topic)
    }

    /// The payloads published to `topic`, in publish order.
    pub fn topic_payloads(&self, topic: &str) -> Vec<Vec<u8>> {
        self.topic_messages(topic)
            .into_iter()
            .map(|m| m.payload)
            .collect()
    }

    /// The subscriptions of `topic`, in name order.
    pub fn subscriptions(&self, topic: &str) -> Vec<String> {
        self.shared
            .lock()
            .topics
            .get(topic)
            .map(|t| t.subs.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The state of a subscription, if it exists.
    pub fn subscription_stats(&self, topic: &str, subscription: &str) -> Option<SubscriptionStats> {
        let st = self.shared.lock();
        st.sub(topic, subscription).map(|(_, sub)| sub.stats())
    }

    /// How many deliveries of a subscription are out with consumers, unacknowledged (0 for an
    /// unknown subscription).
    pub fn unacked_count(&self, topic: &str, subscription: &str) -> usize {
        self.subscription_stats(topic, subscription)
            .map_or(0, |s| s.unacked)
    }

    /// How many messages a subscription has not acknowledged yet (0 for an unknown one).
    pub fn backlog(&self, topic: &str, subscription: &str) -> usize {
        self.subscription_stats(topic, subscription)
            .map_or(0, |s| s.backlog())
    }

    /// The ids a subscription has acknowledged, in publish order.
    pub fn acked_ids(&self, topic: &str, subscription: &str) -> Vec<MessageId> {
        self.shared.lock().acked_ids(topic, subscription)
    }

    /// The backlog summed over every subscription of every topic: zero once everything
    /// delivered has been acknowledged.
    pub fn total_backlog(&self) -> usize {
        let st = self.shared.lock();
        st.topics
            .values()
            .flat_map(|t| t.subs.values())
            .map(|s| s.stats().backlog())
            .sum()
    }

    /// Broker-wide counters.
    pub fn counters(&self) -> Counters {
        self.shared.lock().counters
    }
}

#[async_trait]
impl Broker for MemBroker {
    async fn producer(&self, topic: &str) -> Result<Arc<dyn Producer>, BrokerError> {
        let (_, verdict) = self.shared.admit(Op::CreateProducer, |_| Ok(())).await?;
        let epoch = {
            let mut st = self.shared.lock();
            st.topic_mut(topic);
            st.counters.producers += 1;
            st.faults.disconnect_gen
        };
        let producer = MemProducer {
            shared: self.shared.clone(),
            topic: topic.to_owned(),
            epoch,
        };
        finish(
            Op::CreateProducer,
            verdict,
            Arc::new(producer) as Arc<dyn Producer>,
        )
    }

    async fn subscribe(
        &self,
        spec: &SubscriptionSpec,
    ) -> Result<Arc<dyn Subscription>, BrokerError> {
        let (_, verdict) = self.shared.admit(Op::Subscribe, |_| Ok(())).await?;
        let (consumer, notify) = {
            let mut st = self.shared.lock();
            let consumer = st.subscribe(spec)?;
            (consumer, st.notifier(consumer))
        };
        let subscription = MemSubscription {
            shared: self.shared.clone(),
            consumer,
            notify,
        };
        // On an after-effect failure the handle is dropped here, which closes the consumer.
        finish(
            Op::Subscribe,
            verdict,
            Arc::new(subscription) as Arc<dyn Subscription>,
        )
    }
}

/// A producer of a [`MemBroker`] topic.
pub struct MemProducer {
    shared: Arc<Shared>,
    topic: String,
    /// The broker's disconnect generation when this producer was made.
    epoch: u64,
}

impl fmt::Debug for MemProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemProducer")
            .field("topic", &self.topic)
            .finish()
    }
}

#[async_trait]
impl Producer for MemProducer {
    fn topic(&self) -> &str {
        &self.topic
    }

    async fn send(&self, message: OutgoingMessage) -> Result<MessageId, BrokerError> {
        let epoch = self.epoch;
        let (_, verdict) = self
            .shared
            .admit(Op::Send, |st| {
                if st.faults.disconnect_gen != epoch {
                    Err(BrokerError::connection(
                        "producer lost its connection to the broker; create a new one",
                    ))
                } else {
                    Ok(())
                }
            })
            .await?;
        let id = self.shared.lock().publish(&self.topic, message);
        finish(Op::Send, verdict, id)
    }
}

/// One consumer of a [`MemBroker`] subscription. Dropping it closes it.
pub struct MemSubscription {
    shared: Arc<Shared>,
    consumer: u64,
    notify: Arc<tokio::sync::Notify>,
}

impl fmt::Debug for MemSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemSubscription")
            .field("consumer", &self.consumer)
            .finish()
    }
}

#[async_trait]
impl Subscription for MemSubscription {
    /// Waits for the next delivery. Cancel-safe: the delivery is taken from the subscription
    /// in the same synchronous step that completes the future, so a dropped future has taken
    /// nothing.
    async fn receive(&self) -> Result<ReceivedMessage, BrokerError> {
        let consumer = self.consumer;
        let (gen, verdict) = self
            .shared
            .admit(Op::Receive, |st| st.check_open(consumer))
            .await?;
        let mut waiting = Waiting {
            shared: &self.shared,
            consumer,
            ticket: None,
        };
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so a wake-up between the look and the wait is kept.
            notified.as_mut().enable();
            let next_due = {
                let mut st = self.shared.lock();
                st.check_open(consumer)?;
                if st.faults.crash_gen != gen {
                    return Err(BrokerError::connection(
                        "receive: the broker restarted while waiting",
                    ));
                }
                if st.faults.offline {
                    return Err(BrokerError::connection(
                        "receive: broker unreachable (injected outage)",
                    ));
                }
                match st.take(consumer, waiting.ticket, Instant::now()) {
                    Ok(message) => {
                        waiting.ticket = None; // left the queue with the delivery
                        return finish(Op::Receive, verdict, message);
                    }
                    Err(next_due) => {
                        if waiting.ticket.is_none() {
                            waiting.ticket = Some(st.enqueue(consumer));
                        }
                        next_due
                    }
                }
            };
            match next_due {
                Some(at) => {
                    tokio::select! {
                        biased;
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    async fn ack(&self, id: &MessageId) -> Result<(), BrokerError> {
        let consumer = self.consumer;
        let (_, verdict) = self
            .shared
            .admit(Op::Ack, |st| st.check_open(consumer))
            .await?;
        let mut st = self.shared.lock();
        st.check_open(consumer)?;
        st.ack(consumer, id)?;
        finish(Op::Ack, verdict, ())
    }

    async fn nack(&self, id: &MessageId) -> Result<(), BrokerError> {
        let consumer = self.consumer;
        let (_, verdict) = self
            .shared
            .admit(Op::Nack, |st| st.check_open(consumer))
            .await?;
        let mut st = self.shared.lock();
        st.check_open(consumer)?;
        st.nack(consumer, id, Instant::now())?;
        finish(Op::Nack, verdict, ())
    }

    /// Closes the consumer: its unacked deliveries become available to the subscription's
    /// other consumers. Never fails; closing twice does nothing.
    async fn close(&self) -> Result<(), BrokerError> {
        self.shared
            .lock()
            .remove_consumer(self.consumer, ConsumerStatus::Closed);
        Ok(())
    }
}

/// A receive's place in its subscription's queue of waiting receives; leaves the queue when
/// the receive ends without a delivery (an error, or its future dropped).
struct Waiting<'a> {
    shared: &'a Shared,
    consumer: u64,
    ticket: Option<u64>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket {
            self.shared.lock().dequeue(self.consumer, ticket);
        }
    }
}

impl Drop for MemSubscription {
    fn drop(&mut self) {
        self.shared
            .lock()
            .remove_consumer(self.consumer, ConsumerStatus::Closed);
    }
}
