//! One conformance suite for every backstop broker adapter (in the spirit of Watermill's
//! universal pub/sub tests): the cases are written only against the engine's broker traits
//! ([`Broker`], [`Producer`](backstop_engine::broker::Producer),
//! [`Subscription`](backstop_engine::broker::Subscription)), and [`Features`] gates what an
//! adapter does not support.
//!
//! An adapter provides a [`Harness`]: its features and, per case, a fresh [`Env`] (a broker,
//! a unique topic prefix, and optionally a way to break its connection). Then either
//!
//! - [`run_all`] runs every case and returns a [`Report`], or
//! - [`conformance_tests!`] generates one `#[tokio::test]` per case in the adapter's
//!   `tests/conformance.rs` (the adapter needs `tokio` with the `macros` and `rt-multi-thread`
//!   features as a dev-dependency):
//!
//! ```text
//! struct PulsarHarness;
//! #[async_trait::async_trait]
//! impl backstop_conformance::Harness for PulsarHarness { /* features(), env() */ }
//!
//! backstop_conformance::conformance_tests!(PulsarHarness);
//! ```
//!
//! Every wait in the suite is bounded by [`Features::timeout`], so a broken adapter fails a
//! case instead of hanging it. Topic names come from [`Env::topic`], unique per case run, so a
//! broker that persists topics (Pulsar) can run the suite again and again.
//!
//! ```
//! # #[tokio::main] async fn main() {
//! use std::sync::Arc;
//! use backstop_conformance::{run_all, unique_prefix, Case, Env, Features, Harness};
//!
//! struct Mem;
//! #[async_trait::async_trait]
//! impl Harness for Mem {
//!     fn features(&self) -> Features {
//!         Features { many_messages: 200, ..Features::default() }
//!     }
//!     async fn env(&self, case: Case) -> Env {
//!         Env::new(Arc::new(backstop_mem::MemBroker::new()), unique_prefix(case.name()))
//!     }
//! }
//!
//! let report = run_all(&Mem).await;
//! assert!(report.is_success(), "{report}");
//! # }
//! ```
#![warn(missing_docs)]

mod cases;
mod util;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backstop_engine::broker::Broker;

pub use util::Failure;

/// What an adapter supports. Cases that need a missing feature are skipped; everything else
/// (roundtrip, ack, nack redelivery, redelivery after close, Shared without loss, separate
/// subscriptions, cancel-safe receive, 1,000 messages) every adapter must pass.
#[derive(Clone, Debug)]
pub struct Features {
    /// A nacked message waits at least the spec's `nack_redelivery_delay` before redelivery.
    pub nack_delay: bool,
    /// `redelivery_count` counts earlier deliveries (0 first, then more).
    pub redelivery_count: bool,
    /// A second consumer of an Exclusive subscription is refused with `ErrorKind::Rejected`.
    pub exclusive_rejects_second: bool,
    /// Messages of one producer arrive in send order on an Exclusive subscription.
    pub ordering_per_producer: bool,
    /// A new subscription does not get messages published before it existed.
    pub latest_initial_position: bool,
    /// Two consumers receiving from a Shared subscription both get a share.
    pub shared_round_robin: bool,
    /// Failover subscriptions: one active consumer, the other takes over when it closes.
    pub failover: bool,
    /// Key_Shared subscriptions: one key, one consumer.
    pub key_shared: bool,
    /// The bound on every single wait (a receive, a send, a whole drain).
    pub timeout: Duration,
    /// How long the suite watches to conclude that nothing (more) arrives.
    pub quiet_period: Duration,
    /// The nack delay the nack case asks for.
    pub nack_redelivery_delay: Duration,
    /// How many messages the bulk case sends.
    pub many_messages: usize,
}

impl Default for Features {
    /// Everything supported; 10 s timeout, 300 ms quiet period, 300 ms nack delay, 1,000
    /// messages.
    fn default() -> Self {
        Features {
            nack_delay: true,
            redelivery_count: true,
            exclusive_rejects_second: true,
            ordering_per_producer: true,
            latest_initial_position: true,
            shared_round_robin: true,
            failover: true,
            key_shared: true,
            timeout: Duration::from_secs(10),
            quiet_period: Duration::from_millis(300),
            nack_redelivery_delay: Duration::from_millis(300),
            many_messages: 1000,
        }
    }
}

/// Breaks and heals an adapter's connection to its broker, for the connection-loss case.
#[async_trait]
pub trait ConnectionFaults: Send + Sync {
    /// Cuts the adapter off: from now until [`heal`](ConnectionFaults::heal) its operations
    /// fail with `Connection` or `Timeout` (or stall, for a receive).
    async fn break_connection(&self);
    /// Restores the connection. The handles made before should work again (after
    /// reconnecting by themselves), possibly after a few more failed calls.
    async fn heal(&self);
}

/// What one case runs against: a fresh broker, a unique topic prefix, and optionally
/// connection faults. Anything in [`Env::keep_alive`] lives until the case ends.
pub struct Env {
    /// The adapter under test.
    pub broker: Arc<dyn Broker>,
    /// Prepended to every topic name of the case.
    pub prefix: String,
    /// Connection loss on command; without it the connection-loss case is skipped.
    pub faults: Option<Arc<dyn ConnectionFaults>>,
    /// Things to keep until the case ends (a server task's guard, a temp dir).
    pub keep_alive: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Env")
            .field("prefix", &self.prefix)
            .field("faults", &self.faults.is_some())
            .finish_non_exhaustive()
    }
}

impl Env {
    /// An environment without connection faults.
    pub fn new(broker: Arc<dyn Broker>, prefix: impl Into<String>) -> Env {
        Env {
            broker,
            prefix: prefix.into(),
            faults: None,
            keep_alive: Vec::new(),
        }
    }

    /// Adds connection faults.
    pub fn with_faults(mut self, faults: Arc<dyn ConnectionFaults>) -> Env {
        self.faults = Some(faults);
        self
    }

    /// Keeps `thing` alive until the case ends.
    pub fn keep(mut self, thing: impl std::any::Any + Send + Sync) -> Env {
        self.keep_alive.push(Box::new(thing));
        self
    }

    /// The case's topic called `name`.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

/// A prefix no other run uses: `tag`, the process id, the wall-clock time and a counter
/// (`conf-<tag>-<pid>-<nanos>-<n>-`).
pub fn unique_prefix(tag: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("conf-{tag}-{}-{nanos}-{n}-", std::process::id())
}

/// Provides an adapter to the suite.
#[async_trait]
pub trait Harness: Send + Sync {
    /// What the adapter supports.
    fn features(&self) -> Features;
    /// A fresh environment for one run of `case`.
    async fn env(&self, case: Case) -> Env;
}

macro_rules! cases {
    ($($variant:ident => $name:ident: $doc:literal,)*) => {
        /// One case of the suite.
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        pub enum Case {
            $(#[doc = $doc] $variant,)*
        }

        impl Case {
            /// Every case, in the order [`run_all`] runs them.
            pub const ALL: &'static [Case] = &[$(Case::$variant,)*];

            /// The case's snake_case name (the test function's name).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Case::$variant => stringify!($name),)*
                }
            }

            /// What the case checks.
            pub const fn description(self) -> &'static str {
                match self {
                    $(Case::$variant => $doc,)*
                }
            }

            /// The case called `name`.
            pub fn from_name(name: &str) -> Option<Case> {
                Case::ALL.iter().copied().find(|c| c.name() == name)
            }
        }

    };
}

cases! {
    Roundtrip => roundtrip_keeps_payload_key_and_properties:
        "A published message arrives with its payload, key and properties, and redelivery count 0.",
    OrderingPerProducer => ordering_per_producer_on_exclusive:
        "On an Exclusive subscription, the messages of each of two producers arrive in send order.",
    AckRemoves => ack_removes_the_message:
        "Acknowledged messages are not delivered again, not even to a new consumer.",
    NackRedelivers => nack_redelivers_after_the_delay:
        "A nacked message comes again (same id, redelivery count 1), not before the nack delay.",
    CloseRedelivers => close_returns_unacked_messages:
        "Closing a consumer with unacked messages hands them to another consumer.",
    SharedSplits => shared_splits_without_loss_or_duplicates:
        "Two consumers on a Shared subscription together get every message exactly once.",
    ExclusiveRejectsSecond => exclusive_rejects_a_second_consumer:
        "A second Exclusive consumer is rejected (kind Rejected); after the first closes, one may join.",
    SubscriptionsIndependent => each_subscription_gets_its_own_copy:
        "Two subscriptions of a topic each get every message; acking on one leaves the other alone.",
    DlqPublish => dlq_publish_preserves_key_and_properties:
        "A received message republished to a dead-letter topic keeps payload, key and properties.",
    LatestPosition => new_subscription_starts_at_the_latest_message:
        "A new subscription does not get messages published before it existed.",
    CancelSafeReceive => receive_is_cancel_safe:
        "Dropping pending receives (timeouts, select!) never loses a message.",
    ManyMessages => many_messages_with_concurrent_acks:
        "Many messages, sent and acked concurrently: none lost, none duplicated.",
    Failover => failover_has_one_active_consumer:
        "A Failover subscription delivers to one consumer; when it closes, the other takes over.",
    KeyShared => key_shared_keeps_each_key_on_one_consumer:
        "On a Key_Shared subscription each key's messages go to one consumer, in order.",
    ConnectionLoss => connection_loss_fails_then_recovers:
        "While the connection is cut, operations fail with Connection or Timeout; after it heals, the same handles work and nothing sent is lost.",
}

/// Generates one `#[tokio::test]` per case (named after [`Case::name`]), each running the case
/// against the harness that `$harness` (an expression, evaluated in each test) builds, on a
/// two-worker multi-thread runtime. Also generates `conformance_cases_are_all_generated`,
/// which fails if this macro falls behind [`Case::ALL`].
///
/// Invoke it once per module; wrap it in `mod`s to run the suite against several harnesses.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            roundtrip_keeps_payload_key_and_properties,
            ordering_per_producer_on_exclusive,
            ack_removes_the_message,
            nack_redelivers_after_the_delay,
            close_returns_unacked_messages,
            shared_splits_without_loss_or_duplicates,
            exclusive_rejects_a_second_consumer,
            each_subscription_gets_its_own_copy,
            dlq_publish_preserves_key_and_properties,
            new_subscription_starts_at_the_latest_message,
            receive_is_cancel_safe,
            many_messages_with_concurrent_acks,
            failover_has_one_active_consumer,
            key_shared_keeps_each_key_on_one_consumer,
            connection_loss_fails_then_recovers,
        );
    };
    (@cases $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $harness;
                $crate::check_case(&harness, stringify!($name)).await;
            }
        )*

        #[test]
        fn conformance_cases_are_all_generated() {
            let generated: &[&str] = &[$(stringify!($name)),*];
            let all: Vec<&str> = $crate::Case::ALL.iter().map(|c| c.name()).collect();
            assert_eq!(generated, all.as_slice());
        }
    };
}

/// How a case ended without failing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Passed,
    /// Every check that ran held, but some were left out because the adapter lacks a feature
    /// ([`Features`]); which ones. Not a full pass: [`Report`] counts it apart.
    PassedWithout(&'static str),
    /// Not applicable to this adapter (a feature it lacks); the reason. Not a pass: the test
    /// [`conformance_tests!`] generates for it fails (see [`check_case`]).
    Skipped(&'static str),
}

/// What each test generated by [`conformance_tests!`] runs: case `name` against `harness`.
/// Panics (fails the test) when the case fails, and when it is skipped: a case the adapter
/// cannot run is not a pass, and a green test would say it is. A case that ran with some
/// checks left out ([`Outcome::PassedWithout`]) passes and says so on stderr.
///
/// # Panics
/// When the case fails or is skipped, or `name` is no case of the suite.
pub async fn check_case<H: Harness + ?Sized>(harness: &H, name: &str) {
    let Some(case) = Case::from_name(name) else {
        panic!("`{name}` is not a conformance case");
    };
    match run_case(harness, case).await {
        Ok(Outcome::Passed) => {}
        Ok(Outcome::PassedWithout(what)) => {
            eprintln!("conformance case `{name}` passed WITHOUT {what}");
        }
        Ok(Outcome::Skipped(why)) => panic!(
            "conformance case `{name}` SKIPPED ({why}): the adapter lacks what the case needs, \
             so the suite cannot vouch for it; this test fails rather than pass unchecked"
        ),
        Err(failure) => panic!("{failure}"),
    }
}

/// Runs one case against a fresh environment from `harness`.
pub async fn run_case<H: Harness + ?Sized>(harness: &H, case: Case) -> Result<Outcome, Failure> {
    let features = harness.features();
    let env = harness.env(case).await;
    cases::run(case, &env, &features)
        .await
        .map_err(|f| f.in_case(case))
}

/// The result of every case.
#[derive(Debug)]
#[must_use = "a report says which cases failed, were skipped or ran partially"]
pub struct Report {
    /// Each case with its result, in run order.
    pub results: Vec<(Case, Result<Outcome, Failure>)>,
}

impl Report {
    /// Whether no case failed (skipped and partial cases are not failures; see
    /// [`is_complete`](Self::is_complete) for "everything ran").
    pub fn is_success(&self) -> bool {
        self.results.iter().all(|(_, r)| r.is_ok())
    }

    /// The failures.
    pub fn failures(&self) -> impl Iterator<Item = &Failure> {
        self.results.iter().filter_map(|(_, r)| r.as_ref().err())
    }

    /// The cases that passed.
    pub fn passed(&self) -> usize {
        self.count(|r| matches!(r, Ok(Outcome::Passed)))
    }

    /// The cases that passed with some checks left out.
    pub fn partial(&self) -> usize {
        self.count(|r| matches!(r, Ok(Outcome::PassedWithout(_))))
    }

    /// Whether every case ran every check and passed (nothing failed, skipped or partial).
    pub fn is_complete(&self) -> bool {
        self.passed() == self.results.len()
    }

    /// The cases that were skipped.
    pub fn skipped(&self) -> usize {
        self.count(|r| matches!(r, Ok(Outcome::Skipped(_))))
    }

    /// The cases that failed.
    pub fn failed(&self) -> usize {
        self.count(|r| r.is_err())
    }

    fn count(&self, f: impl Fn(&Result<Outcome, Failure>) -> bool) -> usize {
        self.results.iter().filter(|(_, r)| f(r)).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (case, result) in &self.results {
            match result {
                Ok(Outcome::Passed) => writeln!(f, "ok      {}", case.name())?,
                Ok(Outcome::PassedWithout(what)) => {
                    writeln!(f, "partial {} (without {what})", case.name())?
                }
                Ok(Outcome::Skipped(why)) => writeln!(f, "skipped {} ({why})", case.name())?,
                Err(failure) => writeln!(f, "FAILED  {failure}")?,
            }
        }
        write!(
            f,
            "conformance: {} passed, {} partial, {} failed, {} skipped",
            self.passed(),
            self.partial(),
            self.failed(),
            self.skipped()
        )
    }
}

/// Runs every case, one after the other, each in a fresh environment.
pub async fn run_all<H: Harness + ?Sized>(harness: &H) -> Report {
    let mut results = Vec::with_capacity(Case::ALL.len());
    for &case in Case::ALL {
        results.push((case, run_case(harness, case).await));
    }
    Report { results }
}
