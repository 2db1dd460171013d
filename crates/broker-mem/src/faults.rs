//! Fault injection: failing, slowing, disconnecting and crashing a [`crate::MemBroker`] on
//! command, through the [`Faults`] handle.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use backstop_engine::broker::BrokerError;
use backstop_engine::core::ErrorKind;

use crate::broker::Shared;

/// A class of broker operation that faults can target.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// `Broker::producer`.
    CreateProducer,
    /// `Producer::send`.
    Send,
    /// `Broker::subscribe`.
    Subscribe,
    /// `Subscription::receive`.
    Receive,
    /// `Subscription::ack`.
    Ack,
    /// `Subscription::nack`.
    Nack,
}

impl Op {
    /// Every operation class.
    pub const ALL: [Op; 6] = [
        Op::CreateProducer,
        Op::Send,
        Op::Subscribe,
        Op::Receive,
        Op::Ack,
        Op::Nack,
    ];

    /// A short lowercase name (`send`, `ack`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Op::CreateProducer => "create_producer",
            Op::Send => "send",
            Op::Subscribe => "subscribe",
            Op::Receive => "receive",
            Op::Ack => "ack",
            Op::Nack => "nack",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One queued failure rule.
#[derive(Clone, Copy, Debug)]
struct Rule {
    /// How many more operations it fails; `None` until healed.
    remaining: Option<u32>,
    kind: ErrorKind,
    /// The operation takes effect, and then its caller is told it failed.
    after_effect: bool,
}

/// What the faults decided for one operation that goes ahead.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Verdict {
    /// Run the operation, then report this error instead of its result.
    pub(crate) fail_after: Option<ErrorKind>,
}

/// The fault configuration inside the broker state.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    rules: BTreeMap<Op, VecDeque<Rule>>,
    latency: BTreeMap<Op, Duration>,
    pub(crate) offline: bool,
    /// Bumped by every crash: operations that started before one fail.
    pub(crate) crash_gen: u64,
    /// Bumped by every dropped connection: producers made before one fail.
    pub(crate) disconnect_gen: u64,
}

impl FaultState {
    pub(crate) fn latency(&self, op: Op) -> Duration {
        self.latency.get(&op).copied().unwrap_or_default()
    }

    /// Whether an operation that started at crash generation `gen` may proceed, and how.
    pub(crate) fn admit(&mut self, op: Op, gen: u64) -> Result<Verdict, BrokerError> {
        if self.crash_gen != gen {
            return Err(BrokerError::connection(format!(
                "{op}: the broker restarted during the operation"
            )));
        }
        if self.offline {
            return Err(BrokerError::connection(format!(
                "{op}: broker unreachable (injected outage)"
            )));
        }
        let Some(queue) = self.rules.get_mut(&op) else {
            return Ok(Verdict::default());
        };
        let Some(rule) = queue.front_mut() else {
            return Ok(Verdict::default());
        };
        let (kind, after_effect) = (rule.kind, rule.after_effect);
        if let Some(n) = &mut rule.remaining {
            *n -= 1;
            if *n == 0 {
                queue.pop_front();
            }
        }
        if after_effect {
            Ok(Verdict {
                fail_after: Some(kind),
            })
        } else {
            Err(injected(op, kind))
        }
    }

    fn push(&mut self, op: Op, rule: Rule) {
        if rule.remaining == Some(0) {
            return;
        }
        self.rules.entry(op).or_default().push_back(rule);
    }
}

/// The error an injected fault produces.
pub(crate) fn injected(op: Op, kind: ErrorKind) -> BrokerError {
    BrokerError::new(kind, format!("{op}: injected fault"))
}

/// Injects faults into a [`crate::MemBroker`]: get one with [`crate::MemBroker::faults`].
/// Cheap to clone; every clone controls the same broker.
///
/// Failure rules queue per operation class and are used up in order. Every injected failure is
/// counted in [`crate::Counters::injected_faults`].
///
/// | fault | effect |
/// | --- | --- |
/// | [`fail_next`](Faults::fail_next) | the next `n` operations fail with `kind`, without effect |
/// | [`fail_next_after_effect`](Faults::fail_next_after_effect) | they take effect, then report `kind` (an ambiguous outcome: a send that published, a receive whose delivery is lost in transit) |
/// | [`fail_until_healed`](Faults::fail_until_healed) | every operation of the class fails until [`heal`](Faults::heal) |
/// | [`set_latency`](Faults::set_latency) | each operation of the class first sleeps (tokio time) |
/// | [`set_offline`](Faults::set_offline) | an outage: every operation, and every `receive` already waiting, fails with Connection; broker state is untouched and existing handles work again once back online |
/// | [`drop_connections`](Faults::drop_connections) | every producer and consumer existing now is cut off for good: their calls fail with Connection, consumers are closed by the broker (their deliveries return), new ones can be made at once |
/// | [`crash`](Faults::crash) | a broker restart: every unacked delivery returns to its subscription; operations in flight (waiting receives, calls sleeping in latency) fail with Connection; a late ack of a returned delivery fails with Connection; handles keep working |
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use backstop_engine::broker::{Broker, OutgoingMessage};
/// use backstop_engine::core::ErrorKind;
/// use backstop_mem::{MemBroker, Op};
///
/// let broker = MemBroker::new();
/// let producer = broker.producer("orders").await.unwrap();
/// broker.faults().fail_next(Op::Send, 1, ErrorKind::Timeout);
/// let err = producer.send(OutgoingMessage::new("a")).await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Timeout);
/// producer.send(OutgoingMessage::new("b")).await.unwrap(); // the rule is used up
/// assert_eq!(broker.topic_payloads("orders"), vec![b"b".to_vec()]);
/// # }
/// ```
#[derive(Clone)]
pub struct Faults {
    shared: Arc<Shared>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults").finish_non_exhaustive()
    }
}

impl Faults {
    pub(crate) fn new(shared: Arc<Shared>) -> Faults {
        Faults { shared }
    }

    fn with<R>(&self, f: impl FnOnce(&mut crate::state::State) -> R) -> R {
        f(&mut self.shared.lock())
    }

    /// The next `n` operations of class `op` fail with `kind` and have no effect.
    pub fn fail_next(&self, op: Op, n: u32, kind: ErrorKind) {
        self.with(|st| {
            st.faults.push(
                op,
                Rule {
                    remaining: Some(n),
                    kind,
                    after_effect: false,
                },
            )
        });
    }

    /// The next `n` operations of class `op` take effect, and then report `kind` to their
    /// caller: a send that published, an ack that acknowledged, a receive whose delivery is
    /// now held by the consumer but never reached the caller.
    pub fn fail_next_after_effect(&self, op: Op, n: u32, kind: ErrorKind) {
        self.with(|st| {
            st.faults.push(
                op,
                Rule {
                    remaining: Some(n),
                    kind,
                    after_effect: true,
                },
            )
        });
    }

    /// Every operation of class `op` fails with `kind` until [`Faults::heal`].
    pub fn fail_until_healed(&self, op: Op, kind: ErrorKind) {
        self.with(|st| {
            st.faults.push(
                op,
                Rule {
                    remaining: None,
                    kind,
                    after_effect: false,
                },
            )
        });
    }

    /// Each operation of class `op` sleeps `latency` (tokio time) before it runs; zero removes
    /// it. A receive sleeps before it starts waiting for a message.
    pub fn set_latency(&self, op: Op, latency: Duration) {
        self.with(|st| {
            if latency.is_zero() {
                st.faults.latency.remove(&op);
            } else {
                st.faults.latency.insert(op, latency);
            }
        });
    }

    /// Starts (`true`) or ends an outage. While offline every operation fails with
    /// Connection, and receives already waiting fail too. Nothing in the broker changes:
    /// consumers keep their deliveries, and every handle works again once online.
    pub fn set_offline(&self, offline: bool) {
        self.with(|st| {
            st.faults.offline = offline;
            st.notify_all();
        });
    }

    /// Whether an outage is on.
    pub fn is_offline(&self) -> bool {
        self.with(|st| st.faults.offline)
    }

    /// Drops every connection: each producer and consumer existing now fails with Connection
    /// from now on (re-create them to recover), and the broker closes those consumers, so
    /// their unacked deliveries return to their subscriptions. Not undone by `heal`.
    pub fn drop_connections(&self) {
        self.with(|st| {
            st.faults.disconnect_gen += 1;
            st.disconnect_consumers();
        });
    }

    /// Simulates a broker restart: every unacked delivery returns to its subscription (with
    /// its redelivery count to be incremented), operations in flight fail with Connection,
    /// and a later ack or nack of a returned delivery fails with Connection. Producers and
    /// consumers stay usable, like clients that reconnect by themselves. Messages and
    /// acknowledgements are durable and survive.
    pub fn crash(&self) {
        self.with(|st| {
            st.faults.crash_gen += 1;
            st.crash();
        });
    }

    /// Clears every failure rule and latency and ends an outage. (Connections already
    /// dropped stay dropped.)
    pub fn heal(&self) {
        self.with(|st| {
            st.faults.rules.clear();
            st.faults.latency.clear();
            st.faults.offline = false;
            st.notify_all();
        });
    }
}
