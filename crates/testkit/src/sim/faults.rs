//! Fault profiles (which kinds of fault a simulation injects) and the schedule one seed draws
//! from a profile.

use std::fmt;
use std::time::Duration;

use backstop_engine::core::{splitmix64, ErrorKind};
use backstop_mem::Op;

/// Which kinds of fault a [`Simulation`](crate::Simulation) injects. Each seed draws its own
/// schedule (when, how long, how many) from the kinds switched on here.
///
/// ```
/// use backstop_testkit::FaultProfile;
/// let p = FaultProfile::none().broker_restarts().lost_acks();
/// assert!(p.has_broker_restarts() && !p.has_partitions());
/// assert!(FaultProfile::all().has_service_crashes());
/// ```
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultProfile {
    broker_restarts: bool,
    partitions: bool,
    slow_broker: bool,
    failing_broker: bool,
    service_crashes: bool,
    lost_acks: bool,
    downstream_outages: bool,
}

macro_rules! kind {
    ($on:ident, $has:ident, $doc:literal) => {
        #[doc = $doc]
        pub fn $on(mut self) -> FaultProfile {
            self.$on = true;
            self
        }
        #[doc = concat!("Whether this profile includes `", stringify!($on), "`.")]
        pub fn $has(&self) -> bool {
            self.$on
        }
    };
}

impl FaultProfile {
    /// No faults at all (a calm run: the baseline).
    pub fn none() -> FaultProfile {
        FaultProfile::default()
    }

    /// Every kind of fault.
    pub fn all() -> FaultProfile {
        FaultProfile {
            broker_restarts: true,
            partitions: true,
            slow_broker: true,
            failing_broker: true,
            service_crashes: true,
            lost_acks: true,
            downstream_outages: true,
        }
    }

    kind!(
        broker_restarts,
        has_broker_restarts,
        "The broker restarts: every unacked delivery returns to its subscription and is \
         redelivered (handlers that already succeeded see the message again)."
    );
    kind!(
        partitions,
        has_partitions,
        "The network between the service and the broker is cut for a while."
    );
    kind!(
        slow_broker,
        has_slow_broker,
        "Broker operations (send, receive, ack, subscribe) take seconds for a while."
    );
    kind!(
        failing_broker,
        has_failing_broker,
        "The next few broker operations of one kind fail with a connection error or a timeout."
    );
    kind!(
        service_crashes,
        has_service_crashes,
        "The service process crashes and restarts: handlers in flight die, their messages are \
         redelivered to the new process."
    );
    kind!(
        lost_acks,
        has_lost_acks,
        "Acknowledgements are lost; the connection later drops and the broker redelivers those \
         messages (duplicates)."
    );
    kind!(
        downstream_outages,
        has_downstream_outages,
        "The user's own dependencies ([`Dependency`](crate::Dependency)) go down or get slow \
         for a while."
    );
}

/// One scheduled fault of a seed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The broker restarts.
    BrokerRestart,
    /// The link between service and broker is cut for `dur`.
    Partition {
        /// How long.
        dur: Duration,
    },
    /// Broker operations of kind `op` take `latency` for `dur`.
    SlowBroker {
        /// Which operation.
        op: Op,
        /// Added latency.
        latency: Duration,
        /// How long.
        dur: Duration,
    },
    /// The next `count` broker operations of kind `op` fail with `kind`.
    FailingBroker {
        /// Which operation.
        op: Op,
        /// How many.
        count: u32,
        /// The error.
        kind: ErrorKind,
    },
    /// The service crashes and restarts after `dur`.
    ServiceCrash {
        /// How long it stays down.
        dur: Duration,
    },
    /// The next `count` acks are lost; after `dur` every connection drops.
    LostAcks {
        /// How many acks.
        count: u32,
        /// When the connections drop.
        dur: Duration,
    },
    /// Dependency number `dep` is down for `dur`.
    Outage {
        /// Index into the simulation's dependencies.
        dep: usize,
        /// How long.
        dur: Duration,
    },
    /// Dependency number `dep` answers `extra` later for `dur`.
    SlowDependency {
        /// Index into the simulation's dependencies.
        dep: usize,
        /// Added time per call.
        extra: Duration,
        /// How long.
        dur: Duration,
    },
}

impl Fault {
    /// How long its window lasts (zero for one-shot faults).
    pub fn dur(&self) -> Duration {
        match *self {
            Fault::Partition { dur }
            | Fault::SlowBroker { dur, .. }
            | Fault::ServiceCrash { dur }
            | Fault::LostAcks { dur, .. }
            | Fault::Outage { dur, .. }
            | Fault::SlowDependency { dur, .. } => dur,
            Fault::BrokerRestart | Fault::FailingBroker { .. } => Duration::ZERO,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Fault::BrokerRestart => write!(f, "broker restart"),
            Fault::Partition { dur } => write!(f, "network partition for {dur:?}"),
            Fault::SlowBroker { op, latency, dur } => {
                write!(f, "broker {op} slowed by {latency:?} for {dur:?}")
            }
            Fault::FailingBroker { op, count, kind } => {
                write!(f, "next {count} broker {op} operation(s) fail with {kind}")
            }
            Fault::ServiceCrash { dur } => write!(f, "service crash, restart after {dur:?}"),
            Fault::LostAcks { count, dur } => {
                write!(
                    f,
                    "next {count} ack(s) lost, connections drop after {dur:?}"
                )
            }
            Fault::Outage { dep, dur } => write!(f, "dependency #{dep} down for {dur:?}"),
            Fault::SlowDependency { dep, extra, dur } => {
                write!(f, "dependency #{dep} {extra:?} slower for {dur:?}")
            }
        }
    }
}

/// A small seeded random source (splitmix64).
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64, stream: u64) -> Rng {
        Rng(splitmix64(
            seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ))
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = splitmix64(self.0);
        self.0
    }
    /// In `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    pub(crate) fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// The schedule of one seed: `(when, fault)`, sorted by time, all within `window`.
pub(crate) fn schedule(
    profile: &FaultProfile,
    seed: u64,
    window: Duration,
    deps: usize,
) -> Vec<(Duration, Fault)> {
    let mut r = Rng::new(seed, 0xfa);
    let w = window.as_millis().max(2) as u64;
    let mut out = Vec::new();
    let at = |r: &mut Rng| Duration::from_millis(r.range(0, w - 1));
    let kinds = [ErrorKind::Connection, ErrorKind::Timeout];
    if profile.broker_restarts {
        for _ in 0..r.range(1, 3) {
            out.push((at(&mut r), Fault::BrokerRestart));
        }
    }
    if profile.partitions {
        for _ in 0..r.range(1, 2) {
            let dur = r.millis(500, 8_000);
            out.push((at(&mut r), Fault::Partition { dur }));
        }
    }
    if profile.slow_broker {
        for _ in 0..r.range(1, 2) {
            let op = r.pick(&[Op::Send, Op::Receive, Op::Ack, Op::Subscribe]);
            let latency = r.millis(200, 3_000);
            let dur = r.millis(1_000, 8_000);
            out.push((at(&mut r), Fault::SlowBroker { op, latency, dur }));
        }
    }
    if profile.failing_broker {
        for _ in 0..r.range(1, 3) {
            let op = r.pick(&[Op::Send, Op::Receive, Op::Ack, Op::Nack, Op::Subscribe]);
            let count = r.range(1, 5) as u32;
            let kind = r.pick(&kinds);
            out.push((at(&mut r), Fault::FailingBroker { op, count, kind }));
        }
    }
    if profile.service_crashes {
        for _ in 0..r.range(1, 2) {
            let dur = r.millis(100, 5_000);
            out.push((at(&mut r), Fault::ServiceCrash { dur }));
        }
    }
    if profile.lost_acks {
        for _ in 0..r.range(1, 3) {
            let count = r.range(1, 12) as u32;
            let dur = r.millis(200, 5_000);
            out.push((at(&mut r), Fault::LostAcks { count, dur }));
        }
    }
    if profile.downstream_outages && deps > 0 {
        for _ in 0..r.range(1, 3) {
            let dep = (r.next() % deps as u64) as usize;
            let dur = r.millis(500, 10_000);
            if r.next() % 2 == 0 {
                out.push((at(&mut r), Fault::Outage { dep, dur }));
            } else {
                let extra = r.millis(100, 3_000);
                out.push((at(&mut r), Fault::SlowDependency { dep, extra, dur }));
            }
        }
    }
    out.sort_by_key(|(t, _)| *t);
    out
}
