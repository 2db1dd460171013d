//! A hook that sees every action and event the core machines emit, with the time: how
//! simulations and tests check the runtime against the same oracle as the bare core.

use crate::core::{ConsumerAction, ConsumerEvent, ProducerAction, ProducerEvent, Time};

/// Receives every action and event of every consumer and task in a context, in order, as the
/// runtime drains them. Called on the runtime's task: keep it quick and never block.
///
/// ```
/// use backstop_engine::core::{ConsumerEvent, Time};
/// use backstop_engine::runtime::Observer;
/// struct Count(std::sync::atomic::AtomicU64);
/// impl Observer for Count {
///     fn consumer_event(&self, _consumer: &str, _now: Time, e: &ConsumerEvent) {
///         if matches!(e, ConsumerEvent::Acked { .. }) {
///             self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         }
///     }
/// }
/// ```
pub trait Observer: Send + Sync + 'static {
    /// A consumer (`topic/subscription`) is about to perform `action`.
    fn consumer_action(&self, consumer: &str, now: Time, action: &ConsumerAction) {
        let _ = (consumer, now, action);
    }
    /// A consumer recorded `event`.
    fn consumer_event(&self, consumer: &str, now: Time, event: &ConsumerEvent) {
        let _ = (consumer, now, event);
    }
    /// A task (its topic) is about to perform `action`.
    fn producer_action(&self, task: &str, now: Time, action: &ProducerAction) {
        let _ = (task, now, action);
    }
    /// A task recorded `event`.
    fn producer_event(&self, task: &str, now: Time, event: &ProducerEvent) {
        let _ = (task, now, event);
    }
}
