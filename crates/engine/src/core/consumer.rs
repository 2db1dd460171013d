//! The consumer machine: one subscription's deliveries in; invoke, ack, nack, dead-letter,
//! pause, resume and credit requests out.
//!
//! The contract is on [`ConsumerMachine`].

use std::collections::VecDeque;
use std::time::Duration;

use super::breaker::{BreakerConfig, BreakerState, CircuitBreaker, Permit, Transition};
use super::config_error::ConfigError;
use super::error::ErrorKind;
use super::retry::RetryPolicy;
use super::slab::{Key, Slab};
use super::time::Time;
use super::timers::Timers;

/// Consumer settings; build with [`ConsumerConfig::builder`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ConsumerConfig {
    max_parallelism: u32,
    max_held: u32,
    retry: RetryPolicy,
    breaker: BreakerConfig,
    dlq: bool,
    strategy: RetryStrategy,
    ordered: bool,
}

/// Where a message waits for its next attempt (docs/retries.md).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum RetryStrategy {
    /// In the consumer: a timer, the message held (it counts toward `max_held`). Exact delays
    /// (backoff and jitter included), no broker traffic; a crash loses the timer, and the
    /// message's budget then rests on what its redelivery tells. The default.
    #[default]
    InProcess,
    /// At the broker: the message is nacked with [`NackReason::Retry`] and the broker
    /// redelivers it after its nack delay; the redelivery continues the budget with the runs
    /// the driver passes to [`ConsumerMachine::handle_redelivered`]. Holds nothing while it
    /// waits.
    Nack,
    /// In a retry topic: a copy of the message is published there to be delivered after the
    /// retry delay ([`ConsumerAction::PublishRetry`]), and the message is acked only once that
    /// publish is confirmed ([`ConsumerMachine::handle_retry_result`]); a failed publish is
    /// nacked. The copy continues the budget through its `RECONSUMETIMES`. Durable: survives
    /// restarts, holds nothing for long delays.
    Topic,
}

impl RetryStrategy {
    /// Label for settings, logs and docs: `in_process`, `nack`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RetryStrategy::InProcess => "in_process",
            RetryStrategy::Nack => "nack",
            RetryStrategy::Topic => "retry_topic",
        }
    }
}

impl std::str::FromStr for RetryStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "in_process" | "inprocess" => Ok(RetryStrategy::InProcess),
            "nack" => Ok(RetryStrategy::Nack),
            "retry_topic" | "topic" => Ok(RetryStrategy::Topic),
            _ => Err(format!(
                "unknown retry strategy `{s}` (in_process, nack, retry_topic)"
            )),
        }
    }
}

impl ConsumerConfig {
    /// A builder: parallelism 1, retries and breaker at their defaults, no DLQ.
    ///
    /// ```
    /// use backstop_engine::core::ConsumerConfig;
    /// let cfg = ConsumerConfig::builder().max_parallelism(5).dead_letter(true).build()?;
    /// assert_eq!(cfg.max_parallelism(), 5);
    /// assert!(ConsumerConfig::builder().max_parallelism(0).build().is_err());
    /// # Ok::<(), backstop_engine::core::ConfigError>(())
    /// ```
    pub fn builder() -> ConsumerConfigBuilder {
        ConsumerConfigBuilder {
            cfg: ConsumerConfig {
                max_parallelism: 1,
                max_held: 0,
                retry: RetryPolicy::default(),
                breaker: BreakerConfig::default(),
                dlq: false,
                strategy: RetryStrategy::InProcess,
                ordered: false,
            },
        }
    }
    /// Whether messages of one ordering key run one at a time in arrival order
    /// ([`ConsumerConfigBuilder::ordered`]).
    pub fn ordered(&self) -> bool {
        self.ordered
    }
    /// Where a message waits for its next attempt.
    pub fn retry_strategy(&self) -> RetryStrategy {
        self.strategy
    }
    /// Handler invocations allowed in flight at once.
    pub fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }
    /// Deliveries held at once (in flight, ready, waiting for a retry or for the DLQ).
    pub fn max_held(&self) -> u32 {
        self.max_held
    }
    /// The retry policy.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }
    /// The breaker settings.
    pub fn breaker(&self) -> &BreakerConfig {
        &self.breaker
    }
    /// Whether a dead-letter topic is configured.
    pub fn dead_letter(&self) -> bool {
        self.dlq
    }
}

/// Builds a validated [`ConsumerConfig`].
#[derive(Clone, Debug)]
pub struct ConsumerConfigBuilder {
    cfg: ConsumerConfig,
}

impl ConsumerConfigBuilder {
    /// Handler invocations in flight at once (1..=10_000).
    pub fn max_parallelism(mut self, n: u32) -> Self {
        self.cfg.max_parallelism = n;
        self
    }
    /// Deliveries held at once; 0 (the default) means `4 × max_parallelism`. Must be at least
    /// `max_parallelism`.
    pub fn max_held(mut self, n: u32) -> Self {
        self.cfg.max_held = n;
        self
    }
    /// The retry policy.
    pub fn retry(mut self, p: RetryPolicy) -> Self {
        self.cfg.retry = p;
        self
    }
    /// The breaker settings.
    pub fn breaker(mut self, b: BreakerConfig) -> Self {
        self.cfg.breaker = b;
        self
    }
    /// Whether failed messages are published to a dead-letter topic.
    pub fn dead_letter(mut self, on: bool) -> Self {
        self.cfg.dlq = on;
        self
    }
    /// Where a message waits for its next attempt (default [`RetryStrategy::InProcess`]).
    pub fn retry_strategy(mut self, s: RetryStrategy) -> Self {
        self.cfg.strategy = s;
        self
    }
    /// Per-key order (default off): a delivery with an ordering key (see
    /// [`ConsumerMachine::handle_delivery`]) runs only when every earlier delivery of its key
    /// has left the machine (acked, dead-lettered, nacked), so while a message of key K waits
    /// for a retry, later messages of K are held (they count toward `max_held`) and other keys
    /// flow. Needs [`RetryStrategy::InProcess`]: a retry that leaves the consumer could not
    /// keep its place.
    pub fn ordered(mut self, on: bool) -> Self {
        self.cfg.ordered = on;
        self
    }
    /// Validates and returns the config.
    pub fn build(self) -> Result<ConsumerConfig, ConfigError> {
        let mut c = self.cfg;
        if c.max_parallelism == 0 || c.max_parallelism > 10_000 {
            return Err(ConfigError::new(
                "max_parallelism",
                "must be between 1 and 10000",
            ));
        }
        if c.max_held == 0 {
            c.max_held = c.max_parallelism.saturating_mul(4);
        }
        if c.max_held < c.max_parallelism {
            return Err(ConfigError::new(
                "max_held",
                "must be at least max_parallelism",
            ));
        }
        if c.ordered && c.strategy != RetryStrategy::InProcess {
            return Err(ConfigError::new(
                "ordered",
                "per-key order needs the in_process retry strategy",
            ));
        }
        Ok(c)
    }
}

/// Why a message is dead-lettered.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DlqReason {
    /// Every attempt failed with retryable errors.
    Exhausted,
    /// An attempt failed with a permanent error kind.
    Permanent,
    /// The payload did not decode (poison).
    Decode,
}

impl DlqReason {
    /// Label for logs and the DLQ record.
    pub const fn as_str(self) -> &'static str {
        match self {
            DlqReason::Exhausted => "exhausted",
            DlqReason::Permanent => "permanent",
            DlqReason::Decode => "decode",
        }
    }
}

/// The facts the DLQ record is built from (the driver adds payload and error text).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DlqInfo {
    /// Why.
    pub reason: DlqReason,
    /// Kind of the last failure.
    pub kind: ErrorKind,
    /// Attempts made.
    pub attempts: u32,
    /// When the first attempt failed (delivery time for poison).
    pub first_failure: Time,
    /// When the last attempt failed.
    pub last_failure: Time,
}

/// Why a message was nacked (redelivered by the broker).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum NackReason {
    /// Failed for good and no DLQ is configured.
    NoDeadLetter,
    /// The DLQ publish failed.
    DeadLetterFailed,
    /// Shutting down.
    Shutdown,
    /// A retry under [`RetryStrategy::Nack`]: the broker redelivers it for the next attempt.
    Retry,
    /// The retry-topic publish failed ([`RetryStrategy::Topic`]): the broker redelivers it.
    RetryFailed,
}

/// What the driver must do.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConsumerAction {
    /// Pull up to `count` more deliveries from the broker. Credit adds up and stays valid until
    /// used, also while paused: each delivery passed to [`ConsumerMachine::handle_delivered`]
    /// uses one.
    Request {
        /// How many.
        count: u32,
    },
    /// Run the handler on the message (attempt numbers start at 1).
    Invoke {
        /// The message.
        key: Key,
        /// Which attempt.
        attempt: u32,
    },
    /// Acknowledge: the message is done.
    Ack {
        /// The message.
        key: Key,
    },
    /// Negatively acknowledge: the broker redelivers it. If its handler is still running
    /// (shutdown deadline), abandon that run.
    Nack {
        /// The message.
        key: Key,
        /// Why.
        reason: NackReason,
    },
    /// Publish a dead-letter record and report with [`ConsumerMachine::handle_dlq_result`].
    PublishDlq {
        /// The message.
        key: Key,
        /// Record facts.
        info: DlqInfo,
    },
    /// Publish a copy of the message to the retry topic, delivered `delay_ms` after it is
    /// accepted, carrying `runs` as its `RECONSUMETIMES`; report with
    /// [`ConsumerMachine::handle_retry_result`] ([`RetryStrategy::Topic`]).
    PublishRetry {
        /// The message.
        key: Key,
        /// Handler runs made so far (earlier deliveries included).
        runs: u32,
        /// The retry delay in milliseconds (rounded up: a copy is never due early), the
        /// copy's `DELAY_TIME`.
        delay_ms: u64,
    },
    /// The breaker opened: no handler runs until it half-opens, and no new credit is granted
    /// (credit already granted stays valid; deliveries made with it wait). Emitted once when the
    /// breaker leaves closed, not again for half-open → open.
    Pause,
    /// The breaker closed again after a [`Pause`](Self::Pause): handlers run and credit flows.
    Resume,
}

/// What happened, for metrics and logs.
// `repr(u64)`: an 8-byte tag keeps the payload 8-aligned, so moving an event out of the queue is
// plain aligned copies (a 1-byte tag made LLVM copy overlapping unaligned chunks and stall on
// store forwarding in every driver's poll loop: about a quarter of a lifecycle's cost).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum ConsumerEvent {
    /// A delivery arrived (`poison` if it did not decode).
    Received {
        /// The message.
        key: Key,
        /// Whether it failed to decode.
        poison: bool,
        /// Handler runs of this message on earlier deliveries, as the driver passed them to
        /// [`ConsumerMachine::handle_redelivered`] (0 for [`ConsumerMachine::handle_delivered`]).
        prior_runs: u32,
        /// The ordering key it queues under, for an ordered consumer (`None` otherwise, or
        /// when it will not run: poison, budget spent, shutdown).
        ordering_key: Option<u64>,
    },
    /// A handler run started.
    Invoked {
        /// The message.
        key: Key,
        /// Which attempt.
        attempt: u32,
        /// Whether it is the half-open probe.
        probe: bool,
    },
    /// A handler run succeeded.
    Succeeded {
        /// The message.
        key: Key,
        /// Which attempt.
        attempt: u32,
        /// How long the run took.
        latency: Duration,
    },
    /// A handler run failed.
    Failed {
        /// The message.
        key: Key,
        /// Which attempt.
        attempt: u32,
        /// The failure's kind.
        kind: ErrorKind,
        /// How long the run took.
        latency: Duration,
    },
    /// A retry is scheduled.
    RetryScheduled {
        /// The message.
        key: Key,
        /// The attempt that will run.
        next_attempt: u32,
        /// Not before this time.
        at: Time,
    },
    /// The DLQ publish was confirmed; the message is acked next.
    DeadLettered {
        /// The message.
        key: Key,
        /// Record facts.
        info: DlqInfo,
    },
    /// The DLQ publish failed; the message is nacked.
    DeadLetterFailed {
        /// The message.
        key: Key,
        /// The publish's failure kind.
        kind: ErrorKind,
    },
    /// The retry-topic copy was confirmed; the message is acked next.
    RetryPublished {
        /// The message.
        key: Key,
    },
    /// The retry-topic publish failed; the message is nacked.
    RetryPublishFailed {
        /// The message.
        key: Key,
        /// The publish's failure kind.
        kind: ErrorKind,
    },
    /// The message was acked.
    Acked {
        /// The message.
        key: Key,
    },
    /// The message was nacked.
    Nacked {
        /// The message.
        key: Key,
        /// Why.
        reason: NackReason,
    },
    /// The breaker changed state.
    Breaker(Transition),
    /// Shutdown finished: nothing is held any more.
    Drained,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Stage {
    Ready,
    InFlight {
        permit: Permit,
        started: Time,
    },
    Waiting {
        until: Time,
    },
    DlqPending(DlqInfo),
    RetryPending,
    /// Ordered: an earlier delivery of its key is still held.
    Blocked,
}

#[derive(Copy, Clone, Debug)]
struct Entry {
    stage: Stage,
    attempts: u32,
    first_failure: Option<Time>,
    last_failure: Time,
    /// Ordered: the ordering key it queues under.
    okey: Option<u64>,
}

/// One delivery as [`ConsumerMachine::handle_delivery`] takes it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Delivered {
    /// Whether the payload decoded (false: poison).
    pub decoded: bool,
    /// Handler runs of this message on earlier deliveries.
    pub prior_runs: u32,
    /// A hash of the message's ordering key (ordering key, else partition key), for ordered
    /// consumers; `None` for a message without a key.
    pub ordering_key: Option<u64>,
}

/// The consumer state machine for one subscription.
///
/// # Contract
///
/// The machine is sans-IO in the style of quinn-proto: every `handle_*` call carries `now`;
/// afterwards the driver drains [`ConsumerMachine::poll_action`] and
/// [`ConsumerMachine::poll_event`] until they return `None`, performs the actions, and sleeps
/// until [`ConsumerMachine::poll_timeout`], when it calls [`ConsumerMachine::handle_timeout`].
///
/// After any `handle_*` call the machine is up to date with its `now`: due retries have become
/// ready, an expired open breaker is half-open, and ready messages have been invoked as far as
/// slots and the breaker allow. [`ConsumerMachine::handle_timeout`] is the input for when
/// nothing else happens before [`ConsumerMachine::poll_timeout`].
///
/// Guarantees (docs/architecture.md, "What the core decides" and "The invariants"):
/// - never more than `max_parallelism` [`ConsumerAction::Invoke`] without a matching
///   [`ConsumerMachine::handle_finished`]; a message waiting for its retry holds no slot;
/// - at most `max_retries + 1` attempts per message, counting the runs of earlier deliveries
///   the driver reports ([`ConsumerMachine::handle_redelivered`]); each retry no earlier than its
///   delay; a message whose budget is spent on arrival is not run again;
/// - [`ConsumerAction::Ack`] only after a successful attempt or a confirmed DLQ publish;
/// - exhausted or permanently failed messages go to the DLQ if there is one, else are nacked;
///   undecodable ones go straight to the DLQ with reason [`DlqReason::Decode`] (or are nacked
///   when there is no DLQ); a failed DLQ publish is nacked;
/// - the breaker counts handler failures of its counted kinds (Connection and Timeout by
///   default); when it opens the machine emits [`ConsumerAction::Pause`] and invokes nothing;
///   after the recovery timeout it is half-open and admits one probe; the probe's success closes
///   it ([`ConsumerAction::Resume`]), its failure re-opens it. Results of runs started before
///   the breaker's last transition do not move the breaker (they still count for the message).
///   A DLQ, parking or retry-topic publish that finally fails with a transient kind
///   ([`ErrorKind::is_transient`]) counts too, as a handler failure of that kind would (in
///   half-open it re-opens the breaker); other publish failures and confirmed publishes never
///   move it;
/// - credit: deliveries held plus [`ConsumerAction::Request`] credit not yet used never exceed
///   `max_held`; while closed the machine keeps it topped up, while half-open it asks for one
///   delivery for the probe if nothing is ready, while open or shutting down it grants none;
/// - shutdown nacks everything not in flight at once, lets in-flight runs and DLQ publishes
///   finish until the deadline, then nacks the rest and reports [`ConsumerEvent::Drained`];
///   later results are ignored and [`ConsumerMachine::poll_timeout`] is `None`.
///
/// Every delivery ends in exactly one terminal action (ack or nack). backstop-testkit's oracle
/// checks all of this from the outside (docs/architecture.md, "The invariants").
///
/// ```
/// use backstop_engine::core::*;
/// let cfg = ConsumerConfig::builder().max_parallelism(2).build()?;
/// let mut m = ConsumerMachine::new(cfg);
/// let now = Time::ZERO;
/// let key = m.handle_delivered(now, true);
/// let mut invoked = None;
/// while let Some(a) = m.poll_action() {
///     if let ConsumerAction::Invoke { key, attempt } = a { invoked = Some((key, attempt)); }
/// }
/// assert_eq!(invoked, Some((key, 1)));
/// m.handle_finished(now, key, Ok(()));
/// assert!(std::iter::from_fn(|| m.poll_action()).any(|a| a == ConsumerAction::Ack { key }));
/// # Ok::<(), ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ConsumerMachine {
    cfg: ConsumerConfig,
    breaker: CircuitBreaker,
    entries: Slab<Entry>,
    ready: VecDeque<Key>,
    timers: Timers,
    actions: VecDeque<ConsumerAction>,
    events: VecDeque<ConsumerEvent>,
    in_flight: u32,
    outstanding_credit: u32,
    paused: bool,
    held_by_operator: bool,
    shutdown_deadline: Option<Time>,
    drained_reported: bool,
    /// Ordered: held deliveries per ordering key, in arrival order (the head may run).
    by_key: std::collections::BTreeMap<u64, VecDeque<Key>>,
}

impl ConsumerMachine {
    /// A machine with nothing held. The first action it emits is a credit [`ConsumerAction::Request`].
    pub fn new(cfg: ConsumerConfig) -> ConsumerMachine {
        let cap = cfg.max_held as usize;
        let mut m = ConsumerMachine {
            cfg,
            breaker: CircuitBreaker::new(cfg.breaker),
            entries: Slab::with_capacity(cap),
            ready: VecDeque::with_capacity(cap),
            timers: Timers::with_capacity(cap),
            actions: VecDeque::with_capacity(cap * 2 + 8),
            events: VecDeque::with_capacity(cap * 4 + 8),
            in_flight: 0,
            outstanding_credit: 0,
            paused: false,
            held_by_operator: false,
            shutdown_deadline: None,
            drained_reported: false,
            by_key: std::collections::BTreeMap::new(),
        };
        m.grant_credit();
        m
    }

    /// The settings.
    pub fn config(&self) -> &ConsumerConfig {
        &self.cfg
    }

    /// The breaker's current state.
    #[inline]
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The breaker's consecutive failure count.
    pub fn breaker_failures(&self) -> u32 {
        self.breaker.failures()
    }

    /// Handler runs in flight.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Deliveries held (in flight, ready, waiting for a retry or for the DLQ).
    #[inline]
    pub fn held(&self) -> usize {
        self.entries.len()
    }

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown_deadline.is_some()
    }

    /// Whether shutdown began and nothing is held any more.
    pub fn is_drained(&self) -> bool {
        self.is_shutting_down() && self.entries.len() == 0
    }

    /// Pull credit requested and not yet used by a delivery.
    #[inline]
    pub fn credit(&self) -> u32 {
        self.outstanding_credit
    }

    /// Whether a [`ConsumerAction::Pause`] is in force (no [`ConsumerAction::Resume`] since).
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Attempts made so far for `key`, if it is held.
    #[inline]
    pub fn attempts(&self, key: Key) -> Option<u32> {
        self.entries.get(key).map(|e| e.attempts)
    }

    /// A delivery arrived. `decoded` is false for a payload that did not decode (poison), which
    /// goes straight to the DLQ. Returns the key the driver uses for this delivery.
    ///
    /// The same as [`handle_redelivered`](Self::handle_redelivered) with no earlier runs.
    pub fn handle_delivered(&mut self, now: Time, decoded: bool) -> Key {
        self.handle_redelivered(now, decoded, 0)
    }

    /// A delivery of a message whose handler already ran `prior_runs` times on earlier
    /// deliveries (broker redeliveries, retry-topic copies, runs before a restart: whatever the
    /// driver knows). The message has one attempt budget across all its deliveries: its first
    /// run here is attempt `prior_runs + 1`, and `max_retries` counts the earlier runs. A message
    /// whose budget is already spent is not run again: it goes to the DLQ with reason
    /// [`DlqReason::Exhausted`] (kind [`ErrorKind::Handler`], `attempts = prior_runs`), or is
    /// nacked with [`NackReason::NoDeadLetter`] without a DLQ.
    ///
    /// ```
    /// use backstop_engine::core::*;
    /// let retry = RetryPolicy::builder().max_retries(1).build()?;
    /// let cfg = ConsumerConfig::builder().retry(retry).dead_letter(true).build()?;
    /// let mut m = ConsumerMachine::new(cfg);
    /// let k = m.handle_redelivered(Time::ZERO, true, 1);
    /// let actions: Vec<_> = std::iter::from_fn(|| m.poll_action()).collect();
    /// assert!(actions.contains(&ConsumerAction::Invoke { key: k, attempt: 2 }));
    /// let spent = m.handle_redelivered(Time::ZERO, true, 2);
    /// let actions: Vec<_> = std::iter::from_fn(|| m.poll_action()).collect();
    /// assert!(matches!(actions[..], [ConsumerAction::PublishDlq { key, info }]
    ///     if key == spent && info.reason == DlqReason::Exhausted && info.attempts == 2));
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn handle_redelivered(&mut self, now: Time, decoded: bool, prior_runs: u32) -> Key {
        self.handle_delivery(
            now,
            Delivered {
                decoded,
                prior_runs,
                ordering_key: None,
            },
        )
    }

    /// A delivery with everything the machine takes of it: whether it decoded, its prior runs
    /// (see [`handle_redelivered`](Self::handle_redelivered)) and, for an ordered consumer
    /// ([`ConsumerConfigBuilder::ordered`]), its ordering key: it then runs only after every
    /// earlier delivery of that key has left the machine.
    ///
    /// ```
    /// use backstop_engine::core::*;
    /// let cfg = ConsumerConfig::builder().max_parallelism(4).ordered(true).build()?;
    /// let mut m = ConsumerMachine::new(cfg);
    /// let k = |key| Delivered { decoded: true, prior_runs: 0, ordering_key: Some(key) };
    /// let a = m.handle_delivery(Time::ZERO, k(7));
    /// let b = m.handle_delivery(Time::ZERO, k(7));
    /// let c = m.handle_delivery(Time::ZERO, k(8));
    /// let invoked: Vec<Key> = std::iter::from_fn(|| m.poll_action())
    ///     .filter_map(|x| match x { ConsumerAction::Invoke { key, .. } => Some(key), _ => None })
    ///     .collect();
    /// assert_eq!(invoked, vec![a, c], "b waits behind a; key 8 flows");
    /// m.handle_finished(Time::ZERO, a, Ok(()));
    /// assert!(std::iter::from_fn(|| m.poll_action())
    ///     .any(|x| x == ConsumerAction::Invoke { key: b, attempt: 1 }));
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn handle_delivery(&mut self, now: Time, d: Delivered) -> Key {
        let Delivered {
            decoded,
            prior_runs,
            ordering_key,
        } = d;
        // Retries that came due before this delivery keep their place ahead of it.
        self.fire_due_retries(now);
        self.outstanding_credit = self.outstanding_credit.saturating_sub(1);
        #[cfg(feature = "planted-bugs")]
        let prior_runs_kept =
            if crate::core::planted::active(crate::core::planted::Bug::IgnorePriorRuns) {
                0
            } else {
                prior_runs
            };
        #[cfg(not(feature = "planted-bugs"))]
        let prior_runs_kept = prior_runs;
        let key = self.entries.insert(Entry {
            stage: Stage::Ready,
            attempts: prior_runs_kept,
            first_failure: None,
            last_failure: now,
            okey: None,
        });
        let queues = self.cfg.ordered
            && decoded
            && self.shutdown_deadline.is_none()
            && prior_runs_kept < self.cfg.retry.max_attempts();
        self.events.push_back(ConsumerEvent::Received {
            key,
            poison: !decoded,
            prior_runs,
            ordering_key: ordering_key.filter(|_| queues),
        });
        if self.shutdown_deadline.is_some() {
            self.nack(key, NackReason::Shutdown);
        } else if !decoded {
            self.fail_for_good(now, key, DlqReason::Decode, ErrorKind::Decode);
        } else if prior_runs_kept >= self.cfg.retry.max_attempts() {
            self.fail_for_good(now, key, DlqReason::Exhausted, ErrorKind::Handler);
        } else if let Some(ok) = ordering_key.filter(|_| self.cfg.ordered) {
            let queue = self.by_key.entry(ok).or_default();
            queue.push_back(key);
            let head = queue.len() == 1;
            #[cfg(feature = "planted-bugs")]
            let head =
                head || crate::core::planted::active(crate::core::planted::Bug::KeyOrderIgnored);
            if let Some(e) = self.entries.get_mut(key) {
                e.okey = Some(ok);
                if !head {
                    e.stage = Stage::Blocked;
                }
            }
            if head {
                self.ready.push_back(key);
            }
        } else {
            self.ready.push_back(key);
        }
        self.pump(now);
        key
    }

    /// Ordered: `key` left the machine; the next delivery of its ordering key may run.
    fn release_key(&mut self, key: Key, okey: Option<u64>) {
        let Some(ok) = okey else { return };
        let Some(queue) = self.by_key.get_mut(&ok) else {
            return;
        };
        queue.retain(|k| *k != key);
        let next = queue.front().copied();
        if queue.is_empty() {
            self.by_key.remove(&ok);
        }
        if let Some(next) = next {
            if let Some(e) = self.entries.get_mut(next) {
                if e.stage == Stage::Blocked && self.shutdown_deadline.is_none() {
                    e.stage = Stage::Ready;
                    self.ready.push_back(next);
                }
            }
        }
    }

    /// A handler run finished. Results for keys that are no longer in flight (abandoned at the
    /// shutdown deadline, or unknown) are ignored and return `false`.
    pub fn handle_finished(&mut self, now: Time, key: Key, result: Result<(), ErrorKind>) -> bool {
        let known = self.finish(now, key, result);
        self.pump(now);
        known
    }

    fn finish(&mut self, now: Time, key: Key, result: Result<(), ErrorKind>) -> bool {
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        let Stage::InFlight { permit, started } = entry.stage else {
            return false;
        };
        let attempt = entry.attempts;
        let latency = now.saturating_since(started);
        self.in_flight -= 1;
        match result {
            Ok(()) => {
                self.breaker.on_success(now, permit);
                self.events.push_back(ConsumerEvent::Succeeded {
                    key,
                    attempt,
                    latency,
                });
                self.ack(key);
            }
            Err(kind) => {
                entry.first_failure.get_or_insert(now);
                entry.last_failure = now;
                self.breaker.on_failure(now, permit, kind);
                self.events.push_back(ConsumerEvent::Failed {
                    key,
                    attempt,
                    kind,
                    latency,
                });
                if !self.cfg.retry.should_retry(attempt, kind) {
                    let reason = if kind.is_retryable() {
                        DlqReason::Exhausted
                    } else {
                        DlqReason::Permanent
                    };
                    self.fail_for_good(now, key, reason, kind);
                } else if self.shutdown_deadline.is_some() {
                    self.nack(key, NackReason::Shutdown);
                } else if self.cfg.strategy == RetryStrategy::Nack {
                    let at = now + self.cfg.retry.delay_before_retry(attempt, key.as_u64());
                    self.events.push_back(ConsumerEvent::RetryScheduled {
                        key,
                        next_attempt: attempt + 1,
                        at,
                    });
                    self.nack(key, NackReason::Retry);
                } else if self.cfg.strategy == RetryStrategy::Topic {
                    let delay = self.cfg.retry.delay_before_retry(attempt, key.as_u64());
                    if let Some(entry) = self.entries.get_mut(key) {
                        entry.stage = Stage::RetryPending;
                    }
                    self.actions.push_back(ConsumerAction::PublishRetry {
                        key,
                        runs: attempt,
                        delay_ms: millis_up(delay),
                    });
                    self.events.push_back(ConsumerEvent::RetryScheduled {
                        key,
                        next_attempt: attempt + 1,
                        at: now + delay,
                    });
                } else {
                    let until = now + self.cfg.retry.delay_before_retry(attempt, key.as_u64());
                    if let Some(entry) = self.entries.get_mut(key) {
                        entry.stage = Stage::Waiting { until };
                    }
                    self.timers.push(until, key);
                    self.events.push_back(ConsumerEvent::RetryScheduled {
                        key,
                        next_attempt: attempt + 1,
                        at: until,
                    });
                }
            }
        }
        true
    }

    /// The DLQ publish for `key` finished. On success the message is acked; on failure it is
    /// nacked so the broker redelivers it, and a transient failure kind counts for the breaker
    /// (see the type's contract). Returns `false` for a key not waiting on the DLQ.
    pub fn handle_dlq_result(
        &mut self,
        now: Time,
        key: Key,
        result: Result<(), ErrorKind>,
    ) -> bool {
        // Up to date with `now` before the result counts (an expired open breaker is
        // half-open), as for every other input.
        self.breaker.handle_timeout(now);
        let known = self.dlq_done(now, key, result);
        self.pump(now);
        known
    }

    /// A DLQ, parking or retry-topic publish that finally failed with `kind`: a transient kind
    /// ([`ErrorKind::is_transient`], Connection and Timeout) is a broker outage and counts for
    /// the breaker as a failed handler run of that kind would (subject to its counted set);
    /// anything else (Rejected, Auth, Fatal, ...) says nothing about the broker's health and
    /// does not count.
    fn record_publish_failed(&mut self, now: Time, kind: ErrorKind) {
        if kind.is_transient() {
            self.breaker.on_observed_failure(now, kind);
        }
    }

    fn dlq_done(&mut self, now: Time, key: Key, result: Result<(), ErrorKind>) -> bool {
        let Some(Stage::DlqPending(info)) = self.entries.get(key).map(|e| e.stage) else {
            return false;
        };
        match result {
            Ok(()) => {
                self.events
                    .push_back(ConsumerEvent::DeadLettered { key, info });
                #[cfg(feature = "planted-bugs")]
                if crate::core::planted::active(crate::core::planted::Bug::AckBeforeDlqConfirmed) {
                    // The planted bug already acked it when the publish was requested.
                    let okey = self.entries.remove(key).and_then(|e| e.okey);
                    self.release_key(key, okey);
                    self.check_drained();
                    return true;
                }
                self.ack(key);
            }
            Err(kind) => {
                self.events
                    .push_back(ConsumerEvent::DeadLetterFailed { key, kind });
                self.record_publish_failed(now, kind);
                self.nack(key, NackReason::DeadLetterFailed);
            }
        }
        true
    }

    /// The retry-topic publish for `key` finished ([`RetryStrategy::Topic`]). On success the
    /// message is acked (its copy carries it on); on failure it is nacked so the broker
    /// redelivers it, and a transient failure kind counts for the breaker. Returns `false` for a
    /// key not waiting on a retry publish.
    pub fn handle_retry_result(
        &mut self,
        now: Time,
        key: Key,
        result: Result<(), ErrorKind>,
    ) -> bool {
        self.breaker.handle_timeout(now);
        let known = matches!(
            self.entries.get(key).map(|e| e.stage),
            Some(Stage::RetryPending)
        );
        if known {
            match result {
                Ok(()) => {
                    self.events.push_back(ConsumerEvent::RetryPublished { key });
                    self.ack(key);
                }
                Err(kind) => {
                    self.events
                        .push_back(ConsumerEvent::RetryPublishFailed { key, kind });
                    self.record_publish_failed(now, kind);
                    self.nack(key, NackReason::RetryFailed);
                }
            }
        }
        self.pump(now);
        known
    }

    /// An operator pauses (`true`) or resumes (`false`) the consumer: while paused no handler
    /// starts and no credit is granted; runs in flight finish and their results count. Independent
    /// of the breaker (a paused consumer's breaker can still move).
    pub fn handle_operator_pause(&mut self, now: Time, paused: bool) {
        self.held_by_operator = paused;
        self.pump(now);
    }

    /// Whether an operator paused the consumer.
    pub fn is_operator_paused(&self) -> bool {
        self.held_by_operator
    }

    /// An operator forces the breaker open or closed, or releases it (`None`); see
    /// [`CircuitBreaker::force`]. Forced open pauses the consumer as an opened breaker does.
    pub fn handle_force_breaker(&mut self, now: Time, forced: Option<super::breaker::ForcedState>) {
        self.breaker.force(now, forced);
        self.pump(now);
    }

    /// Begins graceful shutdown: no more credit; everything not in flight is nacked now;
    /// in-flight runs and pending DLQ publishes may finish until `deadline`, when the rest is
    /// nacked. Calling it again only moves the deadline earlier.
    pub fn handle_shutdown(&mut self, now: Time, deadline: Time) {
        self.shutdown_deadline = Some(match self.shutdown_deadline {
            Some(d) => d.min(deadline),
            None => deadline,
        });
        while let Some(key) = self.ready.pop_front() {
            self.nack(key, NackReason::Shutdown);
        }
        let waiting: Vec<Key> = self
            .entries
            .keys()
            .filter(|k| {
                matches!(
                    self.entries.get(*k).map(|e| e.stage),
                    Some(Stage::Waiting { .. } | Stage::Blocked)
                )
            })
            .collect();
        for key in waiting {
            self.nack(key, NackReason::Shutdown);
        }
        self.timers.clear();
        self.handle_timeout(now);
        self.check_drained();
    }

    /// Fires everything due at `now`: retry timers, the breaker's recovery timeout, the shutdown
    /// deadline. (Every other `handle_*` call also fires what is due at its `now`; this is the
    /// input for when nothing else happens.)
    pub fn handle_timeout(&mut self, now: Time) {
        if let Some(deadline) = self.shutdown_deadline {
            if now >= deadline {
                let held: Vec<Key> = self.entries.keys().collect();
                for key in held {
                    if let Some(Stage::InFlight { permit, .. }) =
                        self.entries.get(key).map(|e| e.stage)
                    {
                        self.breaker.release(permit);
                        self.in_flight -= 1;
                    }
                    self.nack(key, NackReason::Shutdown);
                }
                self.ready.clear();
                self.timers.clear();
                self.check_drained();
            }
        }
        self.pump(now);
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) is due, if any.
    #[must_use = "a driver that ignores the next wake-up never runs due retries or breaker recovery"]
    pub fn poll_timeout(&mut self) -> Option<Time> {
        // Drop stale retry entries so an idle machine reports no timer.
        while let Some((at, key)) = self.timers.peek() {
            match self.entries.get(key) {
                Some(e) if e.stage == (Stage::Waiting { until: at }) => break,
                _ => self.timers.pop(),
            }
        }
        let retry = self.timers.peek().map(|(t, _)| t);
        // While running the breaker's recovery matters; while shutting down only the deadline
        // (and only while something is still held).
        let other = match self.shutdown_deadline {
            None => self.breaker.poll_timeout(),
            Some(deadline) => (self.entries.len() > 0).then_some(deadline),
        };
        earliest(retry, other)
    }

    /// The next action to perform.
    #[inline]
    #[must_use = "an action not performed is a message stuck or lost"]
    pub fn poll_action(&mut self) -> Option<ConsumerAction> {
        self.actions.pop_front()
    }

    /// The next event to record.
    #[inline]
    pub fn poll_event(&mut self) -> Option<ConsumerEvent> {
        self.events.pop_front()
    }

    fn fail_for_good(&mut self, now: Time, key: Key, reason: DlqReason, kind: ErrorKind) {
        if !self.cfg.dlq {
            self.nack(key, NackReason::NoDeadLetter);
            return;
        }
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.first_failure.get_or_insert(now);
        entry.last_failure = now;
        let info = DlqInfo {
            reason,
            kind,
            attempts: entry.attempts,
            first_failure: entry.first_failure.unwrap_or(now),
            last_failure: now,
        };
        entry.stage = Stage::DlqPending(info);
        self.actions
            .push_back(ConsumerAction::PublishDlq { key, info });
        #[cfg(feature = "planted-bugs")]
        if crate::core::planted::active(crate::core::planted::Bug::AckBeforeDlqConfirmed) {
            self.actions.push_back(ConsumerAction::Ack { key });
            self.events.push_back(ConsumerEvent::Acked { key });
        }
    }

    fn ack(&mut self, key: Key) {
        let okey = self.entries.remove(key).and_then(|e| e.okey);
        self.release_key(key, okey);
        self.actions.push_back(ConsumerAction::Ack { key });
        self.events.push_back(ConsumerEvent::Acked { key });
        self.check_drained();
    }

    fn nack(&mut self, key: Key, reason: NackReason) {
        let Some(entry) = self.entries.remove(key) else {
            return;
        };
        self.release_key(key, entry.okey);
        self.actions.push_back(ConsumerAction::Nack { key, reason });
        self.events.push_back(ConsumerEvent::Nacked { key, reason });
        self.check_drained();
    }

    fn check_drained(&mut self) {
        if self.is_drained() && !self.drained_reported {
            self.drained_reported = true;
            self.events.push_back(ConsumerEvent::Drained);
        }
    }

    /// Turns breaker transitions into events and pause/resume actions.
    fn drain_transitions(&mut self) {
        while let Some(t) = self.breaker.poll_transition() {
            self.events.push_back(ConsumerEvent::Breaker(t));
            match t.to {
                BreakerState::Open if !self.paused => {
                    self.paused = true;
                    self.actions.push_back(ConsumerAction::Pause);
                }
                BreakerState::Closed if self.paused => {
                    self.paused = false;
                    self.actions.push_back(ConsumerAction::Resume);
                }
                _ => {}
            }
        }
    }

    /// Moves messages whose retry time has come to the back of the ready queue, earliest first.
    #[inline]
    fn fire_due_retries(&mut self, now: Time) {
        if !self.timers.is_empty() {
            self.fire_due_retries_slow(now);
        }
    }

    #[inline(never)]
    fn fire_due_retries_slow(&mut self, now: Time) {
        while let Some((at, key)) = self.timers.pop_due(now) {
            if let Some(entry) = self.entries.get_mut(key) {
                if entry.stage == (Stage::Waiting { until: at }) {
                    entry.stage = Stage::Ready;
                    self.ready.push_back(key);
                }
            }
        }
    }

    /// Brings the machine up to `now` and moves work along; every input ends here. In order:
    /// due retries become ready, the breaker's recovery timeout fires, breaker transitions are
    /// reported (so a transition's event precedes the invocations it allows), ready messages are
    /// invoked while slots and the breaker allow, and pull credit is topped up.
    fn pump(&mut self, now: Time) {
        self.fire_due_retries(now);
        self.breaker.handle_timeout(now);
        self.drain_transitions();
        let limit = self.cfg.max_parallelism;
        #[cfg(feature = "planted-bugs")]
        let limit = if crate::core::planted::active(crate::core::planted::Bug::ParallelismOffByOne)
        {
            limit + 1
        } else {
            limit
        };
        while self.in_flight < limit && self.shutdown_deadline.is_none() && !self.held_by_operator {
            let Some(&key) = self.ready.front() else {
                break;
            };
            let Ok(permit) = self.breaker.try_acquire(now) else {
                break;
            };
            self.ready.pop_front();
            let Some(entry) = self.entries.get_mut(key) else {
                // Unreachable (ready keys are held); give the permit back rather than panic.
                self.breaker.release(permit);
                continue;
            };
            entry.attempts += 1;
            entry.stage = Stage::InFlight {
                permit,
                started: now,
            };
            self.in_flight += 1;
            let attempt = entry.attempts;
            self.actions
                .push_back(ConsumerAction::Invoke { key, attempt });
            self.events.push_back(ConsumerEvent::Invoked {
                key,
                attempt,
                probe: permit.is_probe(),
            });
        }
        self.grant_credit();
    }

    /// Grants pull credit up to `max_held`: freely while closed; while half-open, one delivery
    /// for the probe when nothing is ready, no probe is running and no credit is outstanding;
    /// none while open or shutting down.
    fn grant_credit(&mut self) {
        if self.shutdown_deadline.is_some() || self.held_by_operator {
            return;
        }
        let held = self.entries.len() as u32 + self.outstanding_credit;
        let room = self.cfg.max_held.saturating_sub(held);
        let grant = match self.breaker.state() {
            BreakerState::Closed => room,
            BreakerState::HalfOpen
                if self.ready.is_empty()
                    && self.outstanding_credit == 0
                    && self.breaker.probes_in_flight() < self.cfg.breaker.half_open_probes() =>
            {
                room.min(1)
            }
            _ => 0,
        };
        if grant > 0 {
            self.outstanding_credit += grant;
            self.actions
                .push_back(ConsumerAction::Request { count: grant });
        }
    }
}

/// `d` in whole milliseconds, rounded up.
pub(crate) fn millis_up(d: Duration) -> u64 {
    let ms = d.as_millis();
    let up = if d > Duration::from_millis(ms as u64) {
        ms + 1
    } else {
        ms
    };
    u64::try_from(up).unwrap_or(u64::MAX)
}

/// The earlier of two optional deadlines.
#[inline]
pub(crate) fn earliest(a: Option<Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod operator_tests {
    use super::*;
    use crate::core::ForcedState;

    fn drain(m: &mut ConsumerMachine) -> Vec<ConsumerAction> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    fn invokes(actions: &[ConsumerAction]) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, ConsumerAction::Invoke { .. }))
            .count()
    }

    fn credit(actions: &[ConsumerAction]) -> u32 {
        actions
            .iter()
            .map(|a| match a {
                ConsumerAction::Request { count } => *count,
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn an_operator_pause_stops_invocations_and_credit_until_resumed() {
        let cfg = ConsumerConfig::builder()
            .max_parallelism(2)
            .build()
            .unwrap();
        let mut m = ConsumerMachine::new(cfg);
        let t = Time::ZERO;
        drain(&mut m);
        m.handle_operator_pause(t, true);
        assert!(m.is_operator_paused());
        let a = m.handle_delivered(t, true);
        let _b = m.handle_delivered(t, true);
        let acts = drain(&mut m);
        assert_eq!(invokes(&acts), 0, "{acts:?}");
        assert_eq!(credit(&acts), 0);
        m.handle_operator_pause(t, false);
        let acts = drain(&mut m);
        assert_eq!(invokes(&acts), 2, "{acts:?}");
        // a run in flight when paused still finishes and counts; no credit while paused
        m.handle_operator_pause(t, true);
        assert!(m.handle_finished(t, a, Ok(())));
        let acts = drain(&mut m);
        assert!(acts.iter().any(|x| matches!(x, ConsumerAction::Ack { .. })));
        assert_eq!(credit(&acts), 0, "{acts:?}");
        m.handle_operator_pause(t, false);
        assert_eq!(
            credit(&drain(&mut m)),
            1,
            "the acked message's room is granted on resume"
        );
    }

    #[test]
    fn forcing_the_breaker_open_pauses_and_releasing_resumes() {
        let cfg = ConsumerConfig::builder().build().unwrap();
        let mut m = ConsumerMachine::new(cfg);
        let t = Time::ZERO;
        drain(&mut m);
        m.handle_force_breaker(t, Some(ForcedState::Open));
        let acts = drain(&mut m);
        assert!(acts.contains(&ConsumerAction::Pause), "{acts:?}");
        m.handle_delivered(t, true);
        m.handle_timeout(Time::from_secs(3600));
        assert_eq!(invokes(&drain(&mut m)), 0, "no probe while forced open");
        m.handle_force_breaker(Time::from_secs(3600), None);
        let acts = drain(&mut m);
        assert!(acts.contains(&ConsumerAction::Resume), "{acts:?}");
        assert_eq!(invokes(&acts), 1);
        assert_eq!(m.breaker_state(), BreakerState::Closed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::retry::RetryPolicy;
    use ConsumerAction::*;

    fn ms(n: u64) -> Time {
        Time::from_millis(n)
    }

    fn secs(n: u64) -> Time {
        Time::from_secs(n)
    }

    /// A machine plus the events of its last step.
    struct H {
        m: ConsumerMachine,
        events: Vec<ConsumerEvent>,
    }

    impl H {
        fn new(cfg: ConsumerConfig) -> (H, Vec<ConsumerAction>) {
            let mut h = H {
                m: ConsumerMachine::new(cfg),
                events: Vec::new(),
            };
            let a = h.drain();
            (h, a)
        }

        /// Drains the step: returns its actions, keeps its events.
        fn drain(&mut self) -> Vec<ConsumerAction> {
            self.events = std::iter::from_fn(|| self.m.poll_event()).collect();
            std::iter::from_fn(|| self.m.poll_action()).collect()
        }

        fn deliver(&mut self, now: Time) -> (Key, Vec<ConsumerAction>) {
            let k = self.m.handle_delivered(now, true);
            (k, self.drain())
        }

        fn poison(&mut self, now: Time) -> (Key, Vec<ConsumerAction>) {
            let k = self.m.handle_delivered(now, false);
            (k, self.drain())
        }

        fn finish(&mut self, now: Time, k: Key, r: Result<(), ErrorKind>) -> Vec<ConsumerAction> {
            assert!(self.m.handle_finished(now, k, r), "result for {k} accepted");
            self.drain()
        }

        fn dlq(&mut self, now: Time, k: Key, r: Result<(), ErrorKind>) -> Vec<ConsumerAction> {
            assert!(self.m.handle_dlq_result(now, k, r));
            self.drain()
        }

        fn timeout(&mut self, now: Time) -> Vec<ConsumerAction> {
            self.m.handle_timeout(now);
            self.drain()
        }

        fn transitions(&self) -> Vec<(BreakerState, BreakerState)> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    ConsumerEvent::Breaker(t) => Some((t.from, t.to)),
                    _ => None,
                })
                .collect()
        }
    }

    fn invokes(actions: &[ConsumerAction]) -> Vec<(Key, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Invoke { key, attempt } => Some((*key, *attempt)),
                _ => None,
            })
            .collect()
    }

    fn terminal(actions: &[ConsumerAction]) -> Vec<ConsumerAction> {
        actions
            .iter()
            .copied()
            .filter(|a| matches!(a, Ack { .. } | Nack { .. }))
            .collect()
    }

    fn retry(max_retries: u32, delay: Duration) -> RetryPolicy {
        RetryPolicy::builder()
            .max_retries(max_retries)
            .retry_delay(delay)
            .build()
            .unwrap()
    }

    fn cfg(par: u32, max_retries: u32, delay_secs: u64, dlq: bool) -> ConsumerConfig {
        ConsumerConfig::builder()
            .max_parallelism(par)
            .retry(retry(max_retries, Duration::from_secs(delay_secs)))
            .dead_letter(dlq)
            .build()
            .unwrap()
    }

    #[test]
    fn outputs_stay_small_and_aligned() {
        // Drivers copy every action and event out of the machine; keep them cheap to move.
        assert!(std::mem::size_of::<ConsumerAction>() <= 32);
        assert!(std::mem::size_of::<Option<ConsumerEvent>>() <= 40);
        assert_eq!(std::mem::align_of::<ConsumerEvent>(), 8);
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = ConsumerConfig::builder()
            .max_parallelism(5)
            .build()
            .unwrap();
        assert_eq!(c.max_held(), 20, "max_held defaults to 4 × max_parallelism");
        assert!(!c.dead_letter());
        let e = ConsumerConfig::builder()
            .max_parallelism(4)
            .max_held(3)
            .build()
            .unwrap_err();
        assert_eq!(e.setting(), "max_held");
        let e = ConsumerConfig::builder()
            .max_parallelism(10_001)
            .build()
            .unwrap_err();
        assert_eq!(e.setting(), "max_parallelism");
    }

    #[test]
    fn success_is_acked_once_with_events_in_order() {
        let (mut h, first) = H::new(cfg(1, 3, 5, false));
        assert_eq!(first, vec![Request { count: 4 }]);
        let (k, a) = h.deliver(ms(0));
        assert_eq!(a, vec![Invoke { key: k, attempt: 1 }]);
        let a = h.finish(ms(250), k, Ok(()));
        assert_eq!(a, vec![Ack { key: k }, Request { count: 1 }]);
        assert_eq!(
            h.events,
            vec![
                ConsumerEvent::Succeeded {
                    key: k,
                    attempt: 1,
                    latency: Duration::from_millis(250)
                },
                ConsumerEvent::Acked { key: k }
            ]
        );
        assert_eq!(h.m.held(), 0);
        assert_eq!(h.m.poll_timeout(), None);
        // A late second result for the same delivery is ignored.
        assert!(!h.m.handle_finished(ms(300), k, Ok(())));
        assert!(h.drain().is_empty());
    }

    #[test]
    fn exactly_max_retries_plus_one_attempts_then_nack_without_dlq() {
        let (mut h, _) = H::new(cfg(1, 3, 5, false));
        let (k, a) = h.deliver(secs(0));
        assert_eq!(invokes(&a), vec![(k, 1)]);
        let mut now = secs(0);
        for attempt in 1..=4u32 {
            now = now + Duration::from_secs(1);
            let a = h.finish(now, k, Err(ErrorKind::Handler));
            if attempt < 4 {
                assert!(
                    terminal(&a).is_empty(),
                    "no ack/nack before the last attempt"
                );
                assert_eq!(h.m.attempts(k), Some(attempt));
                let at = now + Duration::from_secs(5);
                assert!(h.events.contains(&ConsumerEvent::RetryScheduled {
                    key: k,
                    next_attempt: attempt + 1,
                    at
                }));
                now = at;
                let a = h.timeout(now);
                assert_eq!(invokes(&a), vec![(k, attempt + 1)]);
            } else {
                assert_eq!(
                    terminal(&a),
                    vec![Nack {
                        key: k,
                        reason: NackReason::NoDeadLetter
                    }]
                );
                assert!(!a
                    .iter()
                    .any(|a| matches!(a, Ack { .. } | PublishDlq { .. })));
            }
        }
        assert_eq!(h.m.held(), 0);
        assert_eq!(h.m.poll_timeout(), None);
    }

    #[test]
    fn retry_waits_exactly_retry_delay() {
        let (mut h, _) = H::new(cfg(1, 2, 5, false));
        let (k, _) = h.deliver(ms(1_000));
        let a = h.finish(ms(1_700), k, Err(ErrorKind::Timeout));
        assert!(invokes(&a).is_empty());
        assert_eq!(h.m.poll_timeout(), Some(ms(6_700)));
        assert!(
            invokes(&h.timeout(ms(6_699))).is_empty(),
            "not a nanosecond early"
        );
        assert_eq!(h.m.poll_timeout(), Some(ms(6_700)));
        assert_eq!(invokes(&h.timeout(ms(6_700))), vec![(k, 2)]);
        let a = h.finish(ms(7_000), k, Err(ErrorKind::Connection));
        assert!(invokes(&a).is_empty());
        assert_eq!(h.m.poll_timeout(), Some(ms(12_000)));
        assert_eq!(invokes(&h.timeout(ms(12_000))), vec![(k, 3)]);
    }

    #[test]
    fn a_due_retry_also_runs_on_any_later_input() {
        let (mut h, _) = H::new(cfg(2, 2, 5, false));
        let (k, _) = h.deliver(secs(0));
        h.finish(secs(0), k, Err(ErrorKind::Handler));
        // The driver is late with the timeout; the next delivery brings the retry along.
        let (k2, a) = h.deliver(secs(9));
        assert_eq!(invokes(&a), vec![(k, 2), (k2, 1)]);
    }

    #[test]
    fn exponential_backoff_with_jitter_spaces_retries_as_the_policy_says() {
        let policy = RetryPolicy::builder()
            .max_retries(4)
            .retry_delay(Duration::from_secs(1))
            .exponential(2, Duration::from_secs(5), 500)
            .jitter_seed(7)
            .build()
            .unwrap();
        let c = ConsumerConfig::builder().retry(policy).build().unwrap();
        let (mut h, _) = H::new(c);
        let (k, _) = h.deliver(secs(0));
        let mut now = secs(0);
        let full = [1u64, 2, 4, 5];
        for (i, full) in full.iter().enumerate() {
            let retry_no = i as u32 + 1;
            h.finish(now, k, Err(ErrorKind::Timeout));
            let wait = policy.delay_before_retry(retry_no, k.as_u64());
            let full = Duration::from_secs(*full);
            assert!(
                wait <= full && wait >= full / 2,
                "{wait:?} within jitter of {full:?}"
            );
            let due = now + wait;
            assert_eq!(h.m.poll_timeout(), Some(due));
            assert!(invokes(&h.timeout(Time::from_nanos(due.as_nanos() - 1))).is_empty());
            assert_eq!(invokes(&h.timeout(due)), vec![(k, retry_no + 1)]);
            now = due;
        }
    }

    #[test]
    fn a_waiting_retry_holds_no_parallelism_slot() {
        let (mut h, _) = H::new(cfg(1, 3, 5, false));
        let (a, x) = h.deliver(secs(0));
        assert_eq!(invokes(&x), vec![(a, 1)]);
        let (b, x) = h.deliver(secs(0));
        assert!(invokes(&x).is_empty(), "parallelism 1: b waits for a slot");
        let x = h.finish(secs(1), a, Err(ErrorKind::Handler));
        assert_eq!(invokes(&x), vec![(b, 1)], "a's wait frees its slot for b");
        assert_eq!(h.m.in_flight(), 1);
        // a's retry is due at 6 s but b holds the only slot.
        assert!(invokes(&h.timeout(secs(6))).is_empty());
        let x = h.finish(secs(7), b, Ok(()));
        assert_eq!(invokes(&x), vec![(a, 2)]);
    }

    #[test]
    fn never_more_than_max_parallelism_invocations_outstanding() {
        let (mut h, first) = H::new(cfg(3, 0, 1, false));
        assert_eq!(first, vec![Request { count: 12 }]);
        let mut running = Vec::new();
        for _ in 0..10 {
            let (_, a) = h.deliver(secs(0));
            running.extend(invokes(&a).into_iter().map(|(k, _)| k));
            assert!(running.len() <= 3);
        }
        assert_eq!(running.len(), 3);
        assert_eq!(h.m.in_flight(), 3);
        let done = running.remove(0);
        let a = h.finish(secs(1), done, Ok(()));
        assert_eq!(
            invokes(&a).len(),
            1,
            "one finished, exactly one more starts"
        );
        assert_eq!(h.m.in_flight(), 3);
    }

    #[test]
    fn dlq_publish_is_confirmed_before_the_ack() {
        let (mut h, _) = H::new(cfg(1, 1, 5, true));
        let (k, _) = h.deliver(secs(0));
        h.finish(secs(2), k, Err(ErrorKind::Timeout));
        h.timeout(secs(7));
        let a = h.finish(secs(8), k, Err(ErrorKind::Handler));
        let info = DlqInfo {
            reason: DlqReason::Exhausted,
            kind: ErrorKind::Handler,
            attempts: 2,
            first_failure: secs(2),
            last_failure: secs(8),
        };
        assert_eq!(a, vec![PublishDlq { key: k, info }]);
        assert!(terminal(&a).is_empty(), "no ack before the DLQ confirms");
        assert!(h.m.poll_timeout().is_none(), "the DLQ wait needs no timer");
        assert_eq!(h.m.in_flight(), 0, "a DLQ wait holds no parallelism slot");
        let a = h.dlq(secs(9), k, Ok(()));
        assert_eq!(terminal(&a), vec![Ack { key: k }]);
        assert_eq!(
            h.events,
            vec![
                ConsumerEvent::DeadLettered { key: k, info },
                ConsumerEvent::Acked { key: k }
            ]
        );
    }

    #[test]
    fn a_failed_dlq_publish_is_nacked_never_acked() {
        let (mut h, _) = H::new(cfg(1, 0, 5, true));
        let (k, _) = h.deliver(secs(0));
        let a = h.finish(secs(1), k, Err(ErrorKind::Panic));
        assert!(matches!(a.as_slice(), [PublishDlq { key, .. }] if *key == k));
        let a = h.dlq(secs(2), k, Err(ErrorKind::Connection));
        assert_eq!(
            terminal(&a),
            vec![Nack {
                key: k,
                reason: NackReason::DeadLetterFailed
            }]
        );
        assert!(h.events.contains(&ConsumerEvent::DeadLetterFailed {
            key: k,
            kind: ErrorKind::Connection
        }));
        assert!(
            !h.m.handle_dlq_result(secs(3), k, Ok(())),
            "a late DLQ result is ignored"
        );
        assert!(h.drain().is_empty());
    }

    #[test]
    fn poison_goes_straight_to_the_dlq_with_reason_decode() {
        let (mut h, _) = H::new(cfg(1, 3, 5, true));
        let (k, a) = h.poison(secs(4));
        assert_eq!(
            a,
            vec![PublishDlq {
                key: k,
                info: DlqInfo {
                    reason: DlqReason::Decode,
                    kind: ErrorKind::Decode,
                    attempts: 0,
                    first_failure: secs(4),
                    last_failure: secs(4),
                }
            }]
        );
        assert!(h.events.contains(&ConsumerEvent::Received {
            key: k,
            poison: true,
            prior_runs: 0,
            ordering_key: None
        }));
        assert!(
            invokes(&a).is_empty(),
            "a poison message is never handed to the handler"
        );
        assert_eq!(
            h.dlq(secs(5), k, Ok(())),
            vec![Ack { key: k }, Request { count: 1 }]
        );
    }

    #[test]
    fn poison_without_dlq_is_nacked() {
        let (mut h, _) = H::new(cfg(1, 3, 5, false));
        let (k, a) = h.poison(secs(0));
        assert_eq!(
            a,
            vec![
                Nack {
                    key: k,
                    reason: NackReason::NoDeadLetter
                },
                Request { count: 1 }
            ]
        );
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        for kind in [
            ErrorKind::Invalid,
            ErrorKind::Rejected,
            ErrorKind::Decode,
            ErrorKind::Fatal,
        ] {
            let (mut h, _) = H::new(cfg(1, 3, 5, true));
            let (k, _) = h.deliver(secs(0));
            let a = h.finish(secs(1), k, Err(kind));
            assert_eq!(
                a,
                vec![PublishDlq {
                    key: k,
                    info: DlqInfo {
                        reason: DlqReason::Permanent,
                        kind,
                        attempts: 1,
                        first_failure: secs(1),
                        last_failure: secs(1),
                    }
                }],
                "{kind}"
            );
            let (mut h, _) = H::new(cfg(1, 3, 5, false));
            let (k, _) = h.deliver(secs(0));
            let a = h.finish(secs(1), k, Err(kind));
            assert_eq!(
                terminal(&a),
                vec![Nack {
                    key: k,
                    reason: NackReason::NoDeadLetter
                }],
                "{kind}"
            );
            assert_eq!(h.m.poll_timeout(), None, "{kind}: no retry timer");
        }
    }

    /// Five messages in flight that all fail with `kind` at `at`.
    fn five_failures(h: &mut H, at: Time, kind: ErrorKind) -> (Vec<ConsumerAction>, Vec<Key>) {
        let keys: Vec<Key> = (0..5).map(|_| h.deliver(secs(0)).0).collect();
        let mut last = Vec::new();
        for k in &keys {
            last = h.finish(at, *k, Err(kind));
        }
        (last, keys)
    }

    fn breaker_cfg(par: u32) -> ConsumerConfig {
        ConsumerConfig::builder()
            .max_parallelism(par)
            .max_held(20)
            .retry(retry(10, Duration::from_secs(5)))
            .build()
            .unwrap()
    }

    #[test]
    fn breaker_opens_after_five_consecutive_expected_failures_and_pauses() {
        let (mut h, _) = H::new(breaker_cfg(5));
        let keys: Vec<Key> = (0..5).map(|_| h.deliver(secs(0)).0).collect();
        for (i, k) in keys.iter().enumerate() {
            let kind = if i % 2 == 0 {
                ErrorKind::Connection
            } else {
                ErrorKind::Timeout
            };
            let a = h.finish(secs(1), *k, Err(kind));
            if i < 4 {
                assert!(!a.contains(&Pause));
                assert_eq!(h.m.breaker_state(), BreakerState::Closed);
            } else {
                assert_eq!(a, vec![Pause]);
                assert_eq!(
                    h.transitions(),
                    vec![(BreakerState::Closed, BreakerState::Open)]
                );
            }
        }
        assert_eq!(h.m.breaker_state(), BreakerState::Open);
        assert!(h.m.is_paused());
        // No new credit while open; credit granted before stays usable, deliveries wait.
        let (late, a) = h.deliver(secs(2));
        assert!(invokes(&a).is_empty() && !a.iter().any(|a| matches!(a, Request { .. })));
        // Retries come due at 6 s: still nothing is invoked while open.
        assert!(invokes(&h.timeout(secs(6))).is_empty());
        assert_eq!(h.m.in_flight(), 0);
        for k in &keys {
            assert_eq!(h.m.attempts(*k), Some(1), "open breaker burns no retries");
        }
        assert_eq!(h.m.attempts(late), Some(0));
        assert_eq!(h.m.poll_timeout(), Some(secs(31)));
    }

    #[test]
    fn other_failure_kinds_do_not_open_the_breaker() {
        let (mut h, _) = H::new(breaker_cfg(5));
        for kind in [ErrorKind::Handler, ErrorKind::Panic, ErrorKind::Invalid] {
            let (a, _) = five_failures(&mut h, secs(1), kind);
            assert!(!a.contains(&Pause));
            assert_eq!(h.m.breaker_state(), BreakerState::Closed);
            assert_eq!(h.m.breaker_failures(), 0);
        }
    }

    #[test]
    fn success_in_between_resets_the_count() {
        let (mut h, _) = H::new(breaker_cfg(5));
        let keys: Vec<Key> = (0..5).map(|_| h.deliver(secs(0)).0).collect();
        for k in &keys[..4] {
            h.finish(secs(1), *k, Err(ErrorKind::Timeout));
        }
        h.finish(secs(1), keys[4], Ok(()));
        assert_eq!(h.m.breaker_failures(), 0);
        let (a, _) = five_failures(&mut h, secs(2), ErrorKind::Timeout);
        assert_eq!(a.first(), Some(&Pause), "five in a row again opens it");
    }

    #[test]
    fn after_the_recovery_timeout_one_probe_then_success_closes_and_resumes() {
        let (mut h, _) = H::new(breaker_cfg(5));
        let (_, keys) = five_failures(&mut h, secs(1), ErrorKind::Timeout);
        assert!(
            invokes(&h.timeout(secs(30))).is_empty(),
            "still open at 30 s"
        );
        let a = h.timeout(secs(31));
        let probe = invokes(&a);
        assert_eq!(probe, vec![(keys[0], 2)], "exactly one probe");
        assert_eq!(
            h.transitions(),
            vec![(BreakerState::Open, BreakerState::HalfOpen)]
        );
        assert!(h.events.contains(&ConsumerEvent::Invoked {
            key: keys[0],
            attempt: 2,
            probe: true
        }));
        // The transition's event comes before the invocation it allowed.
        let pos = |pred: &dyn Fn(&ConsumerEvent) -> bool| h.events.iter().position(pred).unwrap();
        assert!(
            pos(&|e| matches!(e, ConsumerEvent::Breaker(_)))
                < pos(&|e| matches!(e, ConsumerEvent::Invoked { .. }))
        );
        assert!(invokes(&h.timeout(secs(32))).is_empty(), "no second probe");
        let a = h.finish(secs(33), keys[0], Ok(()));
        assert_eq!(a[..2], [Ack { key: keys[0] }, Resume]);
        assert_eq!(
            h.transitions(),
            vec![(BreakerState::HalfOpen, BreakerState::Closed)]
        );
        assert_eq!(
            invokes(&a),
            keys[1..].iter().map(|k| (*k, 2)).collect::<Vec<_>>(),
            "closed again: the rest run"
        );
        assert!(!h.m.is_paused());
    }

    #[test]
    fn a_failed_probe_reopens_for_a_fresh_recovery_timeout() {
        let (mut h, _) = H::new(breaker_cfg(5));
        let (_, keys) = five_failures(&mut h, secs(1), ErrorKind::Timeout);
        h.timeout(secs(31));
        let a = h.finish(secs(32), keys[0], Err(ErrorKind::Connection));
        assert!(!a.contains(&Resume) && !a.contains(&Pause), "still paused");
        assert_eq!(
            h.transitions(),
            vec![(BreakerState::HalfOpen, BreakerState::Open)]
        );
        assert_eq!(
            h.m.poll_timeout(),
            Some(secs(37)),
            "keys[0]'s retry at 37 s"
        );
        assert!(invokes(&h.timeout(secs(61))).is_empty());
        let a = h.timeout(secs(62));
        assert_eq!(
            invokes(&a).len(),
            1,
            "half-open again at 32 + 30 s: one probe"
        );
    }

    #[test]
    fn an_inconclusive_probe_frees_the_probe_slot() {
        let (mut h, _) = H::new(breaker_cfg(5));
        let (_, keys) = five_failures(&mut h, secs(1), ErrorKind::Timeout);
        h.timeout(secs(31));
        let a = h.finish(secs(31), keys[0], Err(ErrorKind::Handler));
        assert_eq!(h.m.breaker_state(), BreakerState::HalfOpen);
        assert_eq!(invokes(&a), vec![(keys[1], 2)], "the next message probes");
    }

    #[test]
    fn results_from_before_a_breaker_transition_do_not_move_it() {
        let (mut h, _) = H::new(breaker_cfg(7));
        let keys: Vec<Key> = (0..7).map(|_| h.deliver(secs(0)).0).collect();
        for k in &keys[..5] {
            h.finish(secs(1), *k, Err(ErrorKind::Timeout));
        }
        assert_eq!(h.m.breaker_state(), BreakerState::Open);
        // A run started while closed succeeds after the breaker opened: ignored by the breaker.
        let a = h.finish(secs(2), keys[5], Ok(()));
        assert_eq!(
            terminal(&a),
            vec![Ack { key: keys[5] }],
            "the message itself is done"
        );
        assert_eq!(h.m.breaker_state(), BreakerState::Open);
        // Half-open: one probe; the other stale run fails with Timeout: still half-open.
        let probe = invokes(&h.timeout(secs(31)));
        assert_eq!(probe.len(), 1);
        let a = h.finish(secs(31), keys[6], Err(ErrorKind::Timeout));
        assert_eq!(h.m.breaker_state(), BreakerState::HalfOpen);
        assert!(h.transitions().is_empty());
        assert!(invokes(&a).is_empty(), "the probe slot is still taken");
        h.finish(secs(32), probe[0].0, Ok(()));
        assert_eq!(h.m.breaker_state(), BreakerState::Closed);
    }

    #[test]
    fn credit_never_exceeds_max_held() {
        let c = ConsumerConfig::builder()
            .max_parallelism(2)
            .max_held(4)
            .retry(retry(3, Duration::from_secs(5)))
            .build()
            .unwrap();
        let (mut h, first) = H::new(c);
        assert_eq!(first, vec![Request { count: 4 }]);
        let mut credit = 4u32;
        let mut keys = Vec::new();
        for _ in 0..4 {
            let (k, a) = h.deliver(secs(0));
            credit -= 1;
            assert!(!a.iter().any(|a| matches!(a, Request { .. })));
            keys.push(k);
        }
        assert_eq!((h.m.held(), h.m.credit()), (4, 0));
        // A waiting retry still counts as held: no new credit.
        let a = h.finish(secs(1), keys[0], Err(ErrorKind::Handler));
        assert!(!a.iter().any(|a| matches!(a, Request { .. })));
        let a = h.finish(secs(1), keys[1], Ok(()));
        assert!(a.contains(&Request { count: 1 }));
        credit += 1;
        assert!(h.m.held() as u32 + credit <= 4);
        assert_eq!(h.m.credit(), credit);
    }

    #[test]
    fn half_open_asks_for_one_delivery_to_probe_with() {
        let c = ConsumerConfig::builder()
            .max_parallelism(5)
            .max_held(5)
            .retry(retry(0, Duration::from_secs(5)))
            .build()
            .unwrap();
        let (mut h, first) = H::new(c);
        assert_eq!(first, vec![Request { count: 5 }]);
        let keys: Vec<Key> = (0..5).map(|_| h.deliver(secs(0)).0).collect();
        for k in &keys {
            h.finish(secs(1), *k, Err(ErrorKind::Timeout)); // no retries, no DLQ: nacked
        }
        assert_eq!(h.m.breaker_state(), BreakerState::Open);
        assert_eq!(h.m.credit(), 4, "granted while still closed");
        // Credit granted before the pause stays good: those deliveries wait.
        for _ in 0..4 {
            let (_, a) = h.deliver(secs(2));
            assert!(a.is_empty(), "{a:?}");
        }
        let mut now = secs(31);
        let mut probe = invokes(&h.timeout(now));
        let mut last = Vec::new();
        while !probe.is_empty() {
            assert_eq!(probe.len(), 1);
            now = now + Duration::from_millis(1);
            // Inconclusive probes (a permanent error): nacked, the breaker stays half-open.
            last = h.finish(now, probe[0].0, Err(ErrorKind::Invalid));
            probe = invokes(&last);
        }
        assert_eq!(h.m.breaker_state(), BreakerState::HalfOpen);
        assert_eq!(h.m.held(), 0);
        assert!(last.contains(&Request { count: 1 }), "{last:?}");
        assert_eq!(h.m.credit(), 1);
        let (k, a) = h.deliver(now);
        assert_eq!(
            a,
            vec![Invoke { key: k, attempt: 1 }],
            "no more credit while probing"
        );
        let a = h.finish(now, k, Ok(()));
        assert_eq!(a, vec![Ack { key: k }, Resume, Request { count: 5 }]);
    }

    #[test]
    fn shutdown_nacks_ready_and_waiting_now_and_lets_in_flight_finish() {
        let (mut h, _) = H::new(cfg(2, 3, 5, false));
        let (a, _) = h.deliver(secs(0));
        let (b, _) = h.deliver(secs(0));
        let (c, _) = h.deliver(secs(0)); // ready, no slot
        let (d, _) = h.deliver(secs(0)); // ready, no slot
        h.finish(secs(1), a, Err(ErrorKind::Handler)); // a waits until 6 s; c starts
        assert_eq!(h.m.in_flight(), 2);
        h.m.handle_shutdown(secs(2), secs(10));
        let x = h.drain();
        assert_eq!(
            x,
            vec![
                Nack {
                    key: d,
                    reason: NackReason::Shutdown
                },
                Nack {
                    key: a,
                    reason: NackReason::Shutdown
                }
            ],
            "the ready and the waiting message are nacked at once"
        );
        assert!(h.m.is_shutting_down() && !h.m.is_drained());
        assert_eq!(h.m.poll_timeout(), Some(secs(10)));
        // No more credit, and a delivery arriving now is nacked straight away.
        let (e, x) = h.deliver(secs(3));
        assert_eq!(
            x,
            vec![Nack {
                key: e,
                reason: NackReason::Shutdown
            }]
        );
        // In flight: b succeeds before the deadline (acked), c fails retryably (nacked, no retry).
        assert_eq!(h.finish(secs(4), b, Ok(())), vec![Ack { key: b }]);
        let x = h.finish(secs(5), c, Err(ErrorKind::Timeout));
        assert_eq!(
            x,
            vec![Nack {
                key: c,
                reason: NackReason::Shutdown
            }]
        );
        assert!(h.events.contains(&ConsumerEvent::Drained));
        assert_eq!(h.m.poll_timeout(), None);
    }

    #[test]
    fn shutdown_deadline_nacks_what_is_still_running_and_ignores_late_results() {
        let (mut h, _) = H::new(cfg(2, 3, 5, true));
        let (a, _) = h.deliver(secs(0));
        let (b, _) = h.deliver(secs(0));
        h.finish(secs(1), b, Err(ErrorKind::Invalid)); // b waits on the DLQ
        let (c, _) = h.deliver(secs(1)); // c runs
        h.m.handle_shutdown(secs(2), secs(10));
        assert!(h.drain().is_empty(), "nothing ready or waiting for a retry");
        assert!(h.timeout(secs(9)).is_empty());
        let x = h.timeout(secs(10));
        let mut nacked: Vec<Key> = x
            .iter()
            .map(|a| match a {
                Nack {
                    key,
                    reason: NackReason::Shutdown,
                } => *key,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        nacked.sort();
        let mut want = vec![a, b, c];
        want.sort();
        assert_eq!(nacked, want);
        assert!(h.events.contains(&ConsumerEvent::Drained));
        assert!(h.m.is_drained());
        assert_eq!(h.m.in_flight(), 0);
        assert_eq!(h.m.poll_timeout(), None);
        assert!(
            !h.m.handle_finished(secs(11), a, Ok(())),
            "late result ignored"
        );
        assert!(
            !h.m.handle_dlq_result(secs(11), b, Ok(())),
            "late DLQ result ignored"
        );
        assert!(h.drain().is_empty());
        assert!(h.events.is_empty(), "Drained is reported once");
    }

    #[test]
    fn shutdown_with_nothing_held_is_drained_at_once() {
        let (mut h, _) = H::new(cfg(2, 3, 5, false));
        h.m.handle_shutdown(secs(1), secs(5));
        assert!(h.drain().is_empty());
        assert_eq!(h.events, vec![ConsumerEvent::Drained]);
        assert_eq!(h.m.poll_timeout(), None);
    }

    #[test]
    fn shutdown_deadline_frees_a_running_probe() {
        let (mut h, _) = H::new(breaker_cfg(5));
        five_failures(&mut h, secs(1), ErrorKind::Timeout);
        h.timeout(secs(31));
        assert_eq!(h.m.in_flight(), 1);
        h.m.handle_shutdown(secs(31), secs(31));
        h.drain();
        assert!(h.m.is_drained());
        assert_eq!(h.m.breaker.probes_in_flight(), 0);
    }

    #[test]
    fn poll_timeout_is_the_earliest_deadline_and_none_when_idle() {
        let (mut h, _) = H::new(cfg(2, 3, 5, false));
        assert_eq!(h.m.poll_timeout(), None);
        let (a, _) = h.deliver(secs(0));
        let (b, _) = h.deliver(secs(0));
        h.finish(secs(3), a, Err(ErrorKind::Handler));
        h.finish(secs(1), b, Err(ErrorKind::Handler));
        assert_eq!(h.m.poll_timeout(), Some(secs(6)));
        h.timeout(secs(6));
        assert_eq!(h.m.poll_timeout(), Some(secs(8)));
        h.timeout(secs(8));
        assert_eq!(h.m.poll_timeout(), None, "both running again");
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let (mut h, _) = H::new(cfg(1, 3, 5, false));
        let bogus = Key::from_u64(99);
        assert!(!h.m.handle_finished(secs(0), bogus, Ok(())));
        assert!(!h.m.handle_dlq_result(secs(0), bogus, Ok(())));
        assert!(h.drain().is_empty());
        let (k, _) = h.deliver(secs(0));
        assert!(
            !h.m.handle_dlq_result(secs(0), k, Ok(())),
            "not waiting on the DLQ"
        );
    }

    #[test]
    fn a_redelivery_continues_the_attempt_budget_of_earlier_runs() {
        let (mut h, _) = H::new(cfg(1, 2, 5, true));
        let k = h.m.handle_redelivered(secs(0), true, 2);
        let a = h.drain();
        assert_eq!(invokes(&a), vec![(k, 3)], "attempt 3 of 3");
        assert!(h.events.contains(&ConsumerEvent::Received {
            key: k,
            poison: false,
            prior_runs: 2,
            ordering_key: None
        }));
        let a = h.finish(secs(1), k, Err(ErrorKind::Handler));
        assert!(
            matches!(a[..], [PublishDlq { key, info }, ..] if key == k && info.attempts == 3
                && info.reason == DlqReason::Exhausted),
            "the last run of the budget failed: {a:?}"
        );
    }

    #[test]
    fn a_redelivery_with_its_budget_spent_is_not_run_again() {
        // With a DLQ: dead-lettered without a run.
        let (mut h, _) = H::new(cfg(1, 2, 5, true));
        let k = h.m.handle_redelivered(secs(0), true, 3);
        let a = h.drain();
        assert!(invokes(&a).is_empty(), "{a:?}");
        let info = DlqInfo {
            reason: DlqReason::Exhausted,
            kind: ErrorKind::Handler,
            attempts: 3,
            first_failure: secs(0),
            last_failure: secs(0),
        };
        assert_eq!(a[0], PublishDlq { key: k, info });
        assert_eq!(h.m.attempts(k), Some(3));
        // Without one: nacked without a run.
        let (mut h, _) = H::new(cfg(1, 2, 5, false));
        let k = h.m.handle_redelivered(secs(0), true, 7);
        let a = h.drain();
        assert_eq!(
            a[0],
            Nack {
                key: k,
                reason: NackReason::NoDeadLetter
            }
        );
        assert!(invokes(&a).is_empty());
    }

    #[test]
    fn the_nack_strategy_hands_a_retry_to_the_broker_and_the_redelivery_continues() {
        let c = ConsumerConfig::builder()
            .retry(retry(2, Duration::from_secs(5)))
            .retry_strategy(RetryStrategy::Nack)
            .build()
            .unwrap();
        let (mut h, _) = H::new(c);
        let (k, _) = h.deliver(secs(0));
        let a = h.finish(secs(1), k, Err(ErrorKind::Timeout));
        assert_eq!(
            terminal(&a),
            vec![Nack {
                key: k,
                reason: NackReason::Retry
            }]
        );
        assert!(h.events.contains(&ConsumerEvent::RetryScheduled {
            key: k,
            next_attempt: 2,
            at: secs(6)
        }));
        assert_eq!(h.m.held(), 0, "nothing held while the broker keeps it");
        assert_eq!(h.m.poll_timeout(), None);
        let k2 = h.m.handle_redelivered(secs(6), true, 1);
        assert_eq!(invokes(&h.drain()), vec![(k2, 2)]);
        h.finish(secs(6), k2, Err(ErrorKind::Timeout));
        let k3 = h.m.handle_redelivered(secs(11), true, 2);
        assert_eq!(invokes(&h.drain()), vec![(k3, 3)]);
        let a = h.finish(secs(11), k3, Err(ErrorKind::Timeout));
        assert_eq!(
            terminal(&a),
            vec![Nack {
                key: k3,
                reason: NackReason::NoDeadLetter
            }],
            "the budget is spent: no more retries"
        );
        assert_eq!("nack".parse(), Ok(RetryStrategy::Nack));
        assert_eq!("in-process".parse(), Ok(RetryStrategy::InProcess));
        assert!("later".parse::<RetryStrategy>().is_err());
    }

    #[test]
    fn the_retry_topic_strategy_acks_only_after_the_copy_is_confirmed() {
        let c = ConsumerConfig::builder()
            .retry(retry(2, Duration::from_secs(5)))
            .retry_strategy(RetryStrategy::Topic)
            .build()
            .unwrap();
        let (mut h, _) = H::new(c);
        let (k, _) = h.deliver(secs(0));
        let a = h.finish(secs(1), k, Err(ErrorKind::Timeout));
        assert_eq!(
            a[0],
            PublishRetry {
                key: k,
                runs: 1,
                delay_ms: 5000
            }
        );
        assert!(terminal(&a).is_empty(), "held until the copy is confirmed");
        assert!(
            !h.m.handle_dlq_result(secs(1), k, Ok(())),
            "not a DLQ publish"
        );
        assert!(h.m.handle_retry_result(secs(2), k, Ok(())));
        assert_eq!(terminal(&h.drain()), vec![Ack { key: k }]);
        assert!(h.events.contains(&ConsumerEvent::RetryPublished { key: k }));
        // The copy continues the budget; a failed copy publish is nacked.
        let k2 = h.m.handle_redelivered(secs(6), true, 1);
        assert_eq!(invokes(&h.drain()), vec![(k2, 2)]);
        h.finish(secs(6), k2, Err(ErrorKind::Timeout));
        assert!(h
            .m
            .handle_retry_result(secs(7), k2, Err(ErrorKind::Connection)));
        assert_eq!(
            terminal(&h.drain()),
            vec![Nack {
                key: k2,
                reason: NackReason::RetryFailed
            }]
        );
        assert!(!h.m.handle_retry_result(secs(7), k2, Ok(())), "ended");
        assert_eq!("retry_topic".parse(), Ok(RetryStrategy::Topic));
    }

    #[test]
    fn ordered_a_key_waits_behind_its_retrying_head_and_other_keys_flow() {
        let c = ConsumerConfig::builder()
            .max_parallelism(4)
            .max_held(6)
            .retry(retry(1, Duration::from_secs(5)))
            .ordered(true)
            .build()
            .unwrap();
        let (mut h, _) = H::new(c);
        let keyed = |h: &mut H, now, k: Option<u64>| {
            let key = h.m.handle_delivery(
                now,
                Delivered {
                    decoded: true,
                    prior_runs: 0,
                    ordering_key: k,
                },
            );
            (key, h.drain())
        };
        let (a1, x) = keyed(&mut h, secs(0), Some(1));
        assert_eq!(invokes(&x), vec![(a1, 1)]);
        let (a2, x) = keyed(&mut h, secs(0), Some(1));
        assert!(invokes(&x).is_empty(), "a2 waits behind a1");
        let (b1, x) = keyed(&mut h, secs(0), Some(2));
        assert_eq!(invokes(&x), vec![(b1, 1)], "another key flows");
        let (n, x) = keyed(&mut h, secs(0), None);
        assert_eq!(invokes(&x), vec![(n, 1)], "no key: unordered");
        // a1 fails: it waits for its retry, a2 stays held (and counts as held).
        let x = h.finish(secs(1), a1, Err(ErrorKind::Handler));
        assert!(invokes(&x).is_empty());
        assert_eq!(h.m.held(), 4);
        let x = h.timeout(secs(6));
        assert_eq!(invokes(&x), vec![(a1, 2)], "the head retries first");
        // The head is dead-lettered... no DLQ: nacked; then a2 runs.
        let x = h.finish(secs(7), a1, Err(ErrorKind::Handler));
        assert_eq!(
            terminal(&x),
            vec![Nack {
                key: a1,
                reason: NackReason::NoDeadLetter
            }]
        );
        assert_eq!(invokes(&x), vec![(a2, 1)], "K resumes in order");
        // Shutdown nacks a held (blocked) message at once.
        let (a3, _) = keyed(&mut h, secs(8), Some(1));
        h.m.handle_shutdown(secs(8), secs(20));
        let x = h.drain();
        assert!(x.contains(&Nack {
            key: a3,
            reason: NackReason::Shutdown
        }));
        assert!(ConsumerConfig::builder()
            .ordered(true)
            .retry_strategy(RetryStrategy::Nack)
            .build()
            .is_err());
    }

    fn dlq_breaker_cfg() -> ConsumerConfig {
        ConsumerConfig::builder()
            .max_parallelism(5)
            .max_held(20)
            .retry(retry(10, Duration::from_secs(5)))
            .dead_letter(true)
            .build()
            .unwrap()
    }

    /// `n` undecodable deliveries, each waiting on its DLQ publish.
    fn poisoned(h: &mut H, n: usize) -> Vec<Key> {
        (0..n)
            .map(|_| {
                let (k, a) = h.poison(secs(0));
                assert!(matches!(a[..], [PublishDlq { key, .. }, ..] if key == k));
                k
            })
            .collect()
    }

    fn dlq_result(h: &mut H, now: Time, k: Key, r: Result<(), ErrorKind>) -> Vec<ConsumerAction> {
        assert!(
            h.m.handle_dlq_result(now, k, r),
            "DLQ result for {k} accepted"
        );
        h.drain()
    }

    #[test]
    fn transient_dlq_publish_failures_open_the_breaker_and_pause() {
        let (mut h, _) = H::new(dlq_breaker_cfg());
        let keys = poisoned(&mut h, 5);
        for (i, k) in keys.iter().enumerate() {
            let kind = if i % 2 == 0 {
                ErrorKind::Connection
            } else {
                ErrorKind::Timeout
            };
            let a = dlq_result(&mut h, secs(1), *k, Err(kind));
            assert!(a.contains(&Nack {
                key: *k,
                reason: NackReason::DeadLetterFailed
            }));
            if i < 4 {
                assert!(!a.contains(&Pause), "{i}");
                assert_eq!(h.m.breaker_failures(), i as u32 + 1);
            } else {
                assert!(a.contains(&Pause), "{a:?}");
                assert_eq!(
                    h.transitions(),
                    vec![(BreakerState::Closed, BreakerState::Open)]
                );
            }
        }
        assert_eq!(h.m.breaker_state(), BreakerState::Open);
        assert!(h.m.is_paused());
    }

    #[test]
    fn non_transient_dlq_publish_failures_do_not_move_the_breaker() {
        for kind in [
            ErrorKind::Rejected,
            ErrorKind::Auth,
            ErrorKind::Fatal,
            ErrorKind::Handler,
        ] {
            let (mut h, _) = H::new(dlq_breaker_cfg());
            for k in poisoned(&mut h, 6) {
                let a = dlq_result(&mut h, secs(1), k, Err(kind));
                assert!(!a.contains(&Pause), "{kind}");
            }
            assert_eq!(h.m.breaker_state(), BreakerState::Closed, "{kind}");
            assert_eq!(h.m.breaker_failures(), 0, "{kind}");
        }
    }

    #[test]
    fn a_confirmed_dlq_publish_neither_resets_nor_closes_the_breaker() {
        let (mut h, _) = H::new(dlq_breaker_cfg());
        let keys = poisoned(&mut h, 5);
        for k in &keys[..3] {
            dlq_result(&mut h, secs(1), *k, Err(ErrorKind::Connection));
        }
        let a = dlq_result(&mut h, secs(1), keys[3], Ok(()));
        assert!(a.contains(&Ack { key: keys[3] }));
        assert_eq!(
            h.m.breaker_failures(),
            3,
            "a record is not a handler success"
        );
        // A handler success does reset.
        let (k, _) = h.deliver(secs(1));
        h.finish(secs(1), k, Ok(()));
        assert_eq!(h.m.breaker_failures(), 0);
    }

    #[test]
    fn a_transient_dlq_publish_failure_in_half_open_reopens_the_breaker() {
        let (mut h, _) = H::new(dlq_breaker_cfg());
        let keys = poisoned(&mut h, 6);
        for k in &keys[..5] {
            dlq_result(&mut h, secs(1), *k, Err(ErrorKind::Timeout));
        }
        assert_eq!(h.m.breaker_state(), BreakerState::Open);
        h.transitions();
        // The recovery timeout (30 s) is over when the last publish fails: half-open, then
        // re-opened by the failure, as a failed probe would.
        let a = dlq_result(&mut h, secs(31), keys[5], Err(ErrorKind::Connection));
        assert!(!a.contains(&Resume));
        assert_eq!(
            h.transitions(),
            vec![
                (BreakerState::Open, BreakerState::HalfOpen),
                (BreakerState::HalfOpen, BreakerState::Open)
            ]
        );
        assert_eq!(h.m.breaker_state(), BreakerState::Open);
        assert!(h.m.is_paused());
    }

    #[test]
    fn transient_retry_topic_publish_failures_open_the_breaker() {
        let c = ConsumerConfig::builder()
            .max_parallelism(5)
            .max_held(20)
            .retry(retry(10, Duration::from_secs(5)))
            .retry_strategy(RetryStrategy::Topic)
            .build()
            .unwrap();
        for (kind, opens) in [(ErrorKind::Timeout, true), (ErrorKind::Rejected, false)] {
            let (mut h, _) = H::new(c);
            let keys: Vec<Key> = (0..5).map(|_| h.deliver(secs(0)).0).collect();
            for k in &keys {
                // Handler failures are not counted: only the publishes can open it.
                let a = h.finish(secs(1), *k, Err(ErrorKind::Handler));
                assert!(matches!(a[0], PublishRetry { key, .. } if key == *k));
            }
            assert_eq!(h.m.breaker_failures(), 0);
            let mut paused = false;
            for k in &keys {
                assert!(h.m.handle_retry_result(secs(2), *k, Err(kind)));
                let a = h.drain();
                assert!(a.contains(&Nack {
                    key: *k,
                    reason: NackReason::RetryFailed
                }));
                paused |= a.contains(&Pause);
            }
            assert_eq!(paused, opens, "{kind}");
            let state = if opens {
                BreakerState::Open
            } else {
                BreakerState::Closed
            };
            assert_eq!(h.m.breaker_state(), state, "{kind}");
        }
    }
}
