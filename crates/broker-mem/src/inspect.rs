//! What tests and simulation oracles can read back from a [`crate::MemBroker`]: counters and
//! per-subscription statistics.

use backstop_engine::broker::SubscriptionType;

/// Broker-wide totals since the broker was made.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use backstop_engine::broker::{Broker, OutgoingMessage};
/// let broker = backstop_mem::MemBroker::new();
/// broker.producer("t").await.unwrap().send(OutgoingMessage::new("x")).await.unwrap();
/// assert_eq!(broker.counters().published, 1);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages appended to topic logs.
    pub published: u64,
    /// Deliveries handed to consumers (first deliveries and redeliveries).
    pub delivered: u64,
    /// Deliveries of a message that had been delivered before.
    pub redelivered: u64,
    /// Successful acknowledgements.
    pub acks: u64,
    /// Successful negative acknowledgements.
    pub nacks: u64,
    /// Acks or nacks of a message that was already acknowledged (accepted as no-ops).
    pub redundant_acks: u64,
    /// Acks or nacks refused because the consumer did not hold the delivery.
    pub rejected_acks: u64,
    /// Consumers added.
    pub subscribes: u64,
    /// Producers created.
    pub producers: u64,
    /// Operations failed (or slowed into failure) by [`crate::Faults`].
    pub injected_faults: u64,
    /// Simulated broker restarts ([`crate::Faults::crash`]).
    pub crashes: u64,
}

/// The state of one subscription.
///
/// `available + delayed + unacked` is the subscription's backlog: messages it has not
/// acknowledged yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// The subscription's type (that of its consumers).
    pub kind: SubscriptionType,
    /// Open consumers.
    pub consumers: usize,
    /// Messages ready to be delivered.
    pub available: usize,
    /// Negatively acknowledged messages waiting for their redelivery delay.
    pub delayed: usize,
    /// Deliveries out with a consumer, not yet acknowledged.
    pub unacked: usize,
    /// Messages acknowledged.
    pub acked: usize,
    /// Deliveries made (first deliveries and redeliveries).
    pub delivered: u64,
    /// Redeliveries made.
    pub redelivered: u64,
    /// Successful acks.
    pub acks: u64,
    /// Successful nacks.
    pub nacks: u64,
    /// Acks or nacks of already acknowledged messages (no-ops).
    pub redundant_acks: u64,
    /// Acks or nacks refused because the consumer did not hold the delivery.
    pub rejected_acks: u64,
}

impl SubscriptionStats {
    /// Messages not acknowledged yet: available, delayed or out with a consumer.
    pub fn backlog(&self) -> usize {
        self.available + self.delayed + self.unacked
    }
}
