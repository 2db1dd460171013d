//! What one turmoil seed simulates: settings, workload and fault schedule, all drawn from the
//! seed with swarm testing (each seed switches a random subset of fault knobs on).
//!
//! A [`Scenario`] is plain data: the same seed always gives the same scenario, and a test can
//! replace its fault schedule ([`Scenario::with_faults`]) to search or shrink schedules with
//! proptest.

use std::fmt;
use std::time::Duration;

use backstop_engine::broker::SubscriptionType;
use backstop_engine::core::{BreakerConfig, ConsumerConfig, ErrorKind, RetryPolicy, RetryStrategy};
use backstop_mem::Op;

use crate::rng::SimRng;

/// How long and how finely a turmoil seed is simulated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Simulated length of one seed (faults in the first two thirds, then healing and checks).
    pub duration: Duration,
    /// turmoil's tick: how far each simulation step advances the clock.
    pub tick: Duration,
    /// How many trace entries to keep readable (for failure reports and `--trace`); 0 keeps
    /// none, which is faster (a failing seed is then replayed to show its trace).
    pub trace_lines: usize,
}

impl Default for Options {
    /// 60 s per seed, 10 ms ticks, the last 200 trace entries kept.
    fn default() -> Self {
        Options {
            duration: Duration::from_secs(60),
            tick: Duration::from_millis(10),
            trace_lines: 200,
        }
    }
}

/// The fault knobs a seed may switch on (swarm testing: a random subset per seed, so some seeds
/// hammer one mechanism and others combine several).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Knobs {
    /// Network partitions between a service and the broker, later repaired.
    pub partitions: bool,
    /// Held links (messages queued, not dropped), later released.
    pub holds: bool,
    /// Windows of high message latency.
    pub latency: bool,
    /// The broker host crashes and restarts (connections die; the broker's data survives).
    pub broker_host_crash: bool,
    /// In-broker restarts (`Faults::crash`): unacked deliveries return.
    pub broker_restart: bool,
    /// Injected failures of broker operations (send, receive, ack, nack, subscribe, producer).
    pub broker_op_failures: bool,
    /// Slow broker operations.
    pub broker_latency: bool,
    /// Broker outages (every operation fails).
    pub broker_offline: bool,
    /// The server drops every client connection.
    pub drop_connections: bool,
    /// A service host crashes and restarts (in-flight work is lost and redelivered).
    pub service_crash: bool,
    /// Handlers fail with every error kind (some messages for good).
    pub handler_errors: bool,
    /// Handlers panic.
    pub panics: bool,
    /// Slow handlers.
    pub slow_handlers: bool,
    /// A downstream outage: handlers fail with Connection/Timeout, tripping the breaker.
    pub downstream_outage: bool,
    /// Undecodable (poison) messages.
    pub poison: bool,
    /// Task bodies fail before publishing.
    pub task_errors: bool,
}

impl Knobs {
    /// Whether every handler outcome (ack, nack, retry copy, DLQ record) that a live consumer
    /// sends reaches the broker: no network or broker fault is on (a service crash may still
    /// kill runs, which the ledger counts). Only then is the attempt budget exact, so the
    /// ledger checks it; otherwise lost outcomes cause duplicate runs, counted, not failures.
    pub fn outcomes_reach_broker(&self) -> bool {
        !(self.partitions
            || self.holds
            || self.latency
            || self.broker_host_crash
            || self.broker_restart
            || self.broker_op_failures
            || self.broker_latency
            || self.broker_offline
            || self.drop_connections)
    }

    /// Services crash and restart while handlers fail and retries wait; no network or broker
    /// fault (so [`outcomes_reach_broker`](Knobs::outcomes_reach_broker) holds). The other
    /// handler-side knobs keep their draw.
    pub fn crash_mid_retry(self) -> Knobs {
        Knobs {
            partitions: false,
            holds: false,
            latency: false,
            broker_host_crash: false,
            broker_restart: false,
            broker_op_failures: false,
            broker_latency: false,
            broker_offline: false,
            drop_connections: false,
            service_crash: true,
            handler_errors: true,
            ..self
        }
    }

    /// Every knob on.
    pub fn all() -> Knobs {
        Knobs {
            partitions: true,
            holds: true,
            latency: true,
            broker_host_crash: true,
            broker_restart: true,
            broker_op_failures: true,
            broker_latency: true,
            broker_offline: true,
            drop_connections: true,
            service_crash: true,
            handler_errors: true,
            panics: true,
            slow_handlers: true,
            downstream_outage: true,
            poison: true,
            task_errors: true,
        }
    }

    fn draw(rng: &mut SimRng) -> Knobs {
        Knobs {
            partitions: rng.coin(),
            holds: rng.coin(),
            latency: rng.coin(),
            broker_host_crash: rng.coin(),
            broker_restart: rng.coin(),
            broker_op_failures: rng.coin(),
            broker_latency: rng.coin(),
            broker_offline: rng.coin(),
            drop_connections: rng.coin(),
            service_crash: rng.coin(),
            handler_errors: rng.coin(),
            panics: rng.coin(),
            slow_handlers: rng.coin(),
            downstream_outage: rng.coin(),
            poison: rng.coin(),
            task_errors: rng.coin(),
        }
    }

    /// The names of the knobs that are on.
    pub fn names(&self) -> Vec<&'static str> {
        let all = [
            (self.partitions, "partitions"),
            (self.holds, "holds"),
            (self.latency, "latency"),
            (self.broker_host_crash, "broker-host-crash"),
            (self.broker_restart, "broker-restart"),
            (self.broker_op_failures, "broker-op-failures"),
            (self.broker_latency, "broker-latency"),
            (self.broker_offline, "broker-offline"),
            (self.drop_connections, "drop-connections"),
            (self.service_crash, "service-crash"),
            (self.handler_errors, "handler-errors"),
            (self.panics, "panics"),
            (self.slow_handlers, "slow-handlers"),
            (self.downstream_outage, "downstream-outage"),
            (self.poison, "poison"),
            (self.task_errors, "task-errors"),
        ];
        all.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect()
    }
}

/// What a message's handler does, run after run (runs are counted per message payload across
/// redeliveries, so a transient failure ends even when retries are exhausted and it is
/// redelivered).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Succeeds.
    Ok,
    /// Fails the first `fails` runs with `kind` (a panic for [`ErrorKind::Panic`]), then
    /// succeeds.
    Transient {
        /// Failing runs.
        fails: u8,
        /// Their kind.
        kind: ErrorKind,
    },
    /// Always fails with `kind`: it must end in the DLQ.
    Always(ErrorKind),
    /// Succeeds after `millis` ms.
    Slow {
        /// How long each run takes.
        millis: u32,
    },
    /// The payload does not decode: it must end in the DLQ with reason `decode`.
    Poison,
}

/// One message the workload publishes through a service's task.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// When (ms of simulated time).
    pub at_ms: u32,
    /// Which service host calls its task.
    pub host: u8,
    /// The payload id (unique per scenario).
    pub id: u64,
    /// What its handler does.
    pub plan: Plan,
    /// How many task-body attempts fail before the body succeeds.
    pub body_fails: u8,
    /// The kind of those failures.
    pub body_kind: ErrorKind,
    /// Its key (the task publishes it as both key and ordering key), on seeds with an ordered
    /// consumer: one of a few, so keys repeat.
    pub key: Option<u8>,
}

/// The key a message with key number `k` is published under.
pub fn key_name(k: u8) -> String {
    format!("k{k}")
}

/// One scheduled fault. Windows (`dur_ms`) end by themselves and at the latest when the
/// scenario heals.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Service `host` and the broker cannot reach each other.
    Partition {
        /// Start, ms.
        at_ms: u32,
        /// Length, ms.
        dur_ms: u32,
        /// Service host.
        host: u8,
    },
    /// Messages between service `host` and the broker are held, then released.
    Hold {
        /// Start, ms.
        at_ms: u32,
        /// Length, ms.
        dur_ms: u32,
        /// Service host.
        host: u8,
    },
    /// Every link's latency may reach `max_ms`.
    Latency {
        /// Start, ms.
        at_ms: u32,
        /// Length, ms.
        dur_ms: u32,
        /// Maximum message latency, ms.
        max_ms: u32,
    },
    /// The broker host crashes, and restarts after `dur_ms`.
    BrokerHostCrash {
        /// Start, ms.
        at_ms: u32,
        /// Down time, ms.
        dur_ms: u32,
    },
    /// The broker restarts in place (`Faults::crash`): unacked deliveries return.
    BrokerRestart {
        /// When, ms.
        at_ms: u32,
    },
    /// The next `count` broker operations of class `op` fail with `kind` (after taking effect
    /// if `after_effect`).
    BrokerOpFailure {
        /// When, ms.
        at_ms: u32,
        /// Operation class.
        op: Op,
        /// How many.
        count: u8,
        /// Error kind.
        kind: ErrorKind,
        /// Whether the operation takes effect before failing (an ambiguous outcome).
        after_effect: bool,
    },
    /// Broker operations of class `op` take `latency_ms` longer.
    BrokerSlowOp {
        /// Start, ms.
        at_ms: u32,
        /// Length, ms.
        dur_ms: u32,
        /// Operation class.
        op: Op,
        /// Added latency, ms.
        latency_ms: u32,
    },
    /// A broker outage: every operation fails with Connection.
    BrokerOffline {
        /// Start, ms.
        at_ms: u32,
        /// Length, ms.
        dur_ms: u32,
    },
    /// The server ends every client connection.
    DropConnections {
        /// When, ms.
        at_ms: u32,
    },
    /// Service `host` crashes, and restarts after `dur_ms`.
    ServiceCrash {
        /// Start, ms.
        at_ms: u32,
        /// Down time, ms.
        dur_ms: u32,
        /// Service host.
        host: u8,
    },
    /// The handlers' downstream fails every call with `kind` (Connection or Timeout).
    DownstreamOutage {
        /// Start, ms.
        at_ms: u32,
        /// Length, ms.
        dur_ms: u32,
        /// Error kind.
        kind: ErrorKind,
    },
    /// The next `count` handler runs fail with `kind` (a panic for [`ErrorKind::Panic`]).
    HandlerErrors {
        /// When, ms.
        at_ms: u32,
        /// How many runs.
        count: u8,
        /// Error kind.
        kind: ErrorKind,
    },
    /// Handler runs started in the window take `extra_ms` longer.
    SlowHandlers {
        /// Start, ms.
        at_ms: u32,
        /// Length, ms.
        dur_ms: u32,
        /// Added time, ms.
        extra_ms: u32,
    },
}

impl Fault {
    /// When the fault starts, ms.
    pub fn at_ms(&self) -> u32 {
        match *self {
            Fault::Partition { at_ms, .. }
            | Fault::Hold { at_ms, .. }
            | Fault::Latency { at_ms, .. }
            | Fault::BrokerHostCrash { at_ms, .. }
            | Fault::BrokerRestart { at_ms }
            | Fault::BrokerOpFailure { at_ms, .. }
            | Fault::BrokerSlowOp { at_ms, .. }
            | Fault::BrokerOffline { at_ms, .. }
            | Fault::DropConnections { at_ms }
            | Fault::ServiceCrash { at_ms, .. }
            | Fault::DownstreamOutage { at_ms, .. }
            | Fault::HandlerErrors { at_ms, .. }
            | Fault::SlowHandlers { at_ms, .. } => at_ms,
        }
    }

    /// How long its window lasts, ms (0 for one-shot faults).
    pub fn dur_ms(&self) -> u32 {
        match *self {
            Fault::Partition { dur_ms, .. }
            | Fault::Hold { dur_ms, .. }
            | Fault::Latency { dur_ms, .. }
            | Fault::BrokerHostCrash { dur_ms, .. }
            | Fault::BrokerSlowOp { dur_ms, .. }
            | Fault::BrokerOffline { dur_ms, .. }
            | Fault::ServiceCrash { dur_ms, .. }
            | Fault::DownstreamOutage { dur_ms, .. }
            | Fault::SlowHandlers { dur_ms, .. } => dur_ms,
            _ => 0,
        }
    }
}

/// The consumer's settings (the same on every service host).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ConsumerSettings {
    /// Handler runs in flight at once.
    pub max_parallelism: u32,
    /// Deliveries held at once.
    pub max_held: u32,
    /// Retries and their delays.
    pub retry: RetryPolicy,
    /// The consumer breaker.
    pub breaker: BreakerConfig,
    /// Whether a DLQ is configured (without one, failed messages are parked on
    /// [`PARKED_TOPIC`](crate::ledger::PARKED_TOPIC)).
    pub dlq: bool,
    /// Redelivery delay of nacked messages, ms.
    pub nack_delay_ms: u32,
    /// Shortest and longest normal handler run, ms.
    pub handler_ms: (u32, u32),
    /// Where failed messages wait for their next attempt (docs/retries.md). Under
    /// [`RetryStrategy::Topic`] the copies wait in
    /// [`RETRY_TOPIC`](crate::ledger::RETRY_TOPIC), so a service crash loses no pending retry.
    pub strategy: RetryStrategy,
    /// The subscription type: Shared, or Key_Shared / Failover for an ordered consumer.
    pub subscription: SubscriptionType,
    /// Whether the consumer keeps per-key order (`ConsumerSpec::ordered`, docs/retries.md).
    pub ordered: bool,
}

impl ConsumerSettings {
    /// The core config the runtime builds from these settings (what the oracle checks against).
    pub fn core_config(&self) -> ConsumerConfig {
        ConsumerConfig::builder()
            .max_parallelism(self.max_parallelism)
            .max_held(self.max_held)
            .retry(self.retry)
            .breaker(self.breaker)
            .retry_strategy(self.strategy)
            .ordered(self.ordered)
            // Without a DLQ the runtime parks failed messages: the machine publishes either way.
            .dead_letter(true)
            .build()
            .expect("drawn settings are valid")
    }
}

/// The task's (producer's) settings.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TaskSettings {
    /// Retries and their delays.
    pub retry: RetryPolicy,
    /// The task breaker.
    pub breaker: BreakerConfig,
    /// Whether a DLQ is configured.
    pub dlq: bool,
}

/// Everything one turmoil seed does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// The seed it was drawn from (also turmoil's rng seed).
    pub seed: u64,
    /// Simulated length, ms.
    pub duration_ms: u32,
    /// When every fault ends and crashed hosts restart, ms.
    pub heal_ms: u32,
    /// When the services shut down gracefully, ms.
    pub stop_ms: u32,
    /// turmoil tick.
    pub tick: Duration,
    /// Service hosts (1 or 2).
    pub services: u8,
    /// Consumer settings.
    pub consumer: ConsumerSettings,
    /// Task settings.
    pub task: TaskSettings,
    /// Which knobs are on.
    pub knobs: Knobs,
    /// The messages published.
    pub workload: Vec<Publish>,
    /// The fault schedule.
    pub faults: Vec<Fault>,
}

const RETRYABLE: [ErrorKind; 4] = [
    ErrorKind::Handler,
    ErrorKind::Timeout,
    ErrorKind::Connection,
    ErrorKind::Handler,
];
const PERMANENT: [ErrorKind; 3] = [ErrorKind::Invalid, ErrorKind::Rejected, ErrorKind::Fatal];

fn policy(rng: &mut SimRng) -> RetryPolicy {
    let delay = rng.millis(50, 1000);
    let mut b = RetryPolicy::builder()
        .max_retries(rng.range(0, 3) as u32)
        .retry_delay(delay)
        .jitter_seed(rng.next_u64());
    if rng.chance(30) {
        b = b.exponential(2, delay * 4, rng.range(0, 500) as u16);
    }
    b.build().expect("valid retry policy")
}

fn breaker(rng: &mut SimRng) -> BreakerConfig {
    BreakerConfig::builder()
        .failure_threshold(rng.range(2, 5) as u32)
        .recovery_timeout(rng.millis(500, 3000))
        .build()
        .expect("valid breaker")
}

impl Scenario {
    /// The scenario of `seed`.
    ///
    /// ```
    /// use backstop_sim::scenario::{Options, Scenario};
    /// let a = Scenario::from_seed(42, &Options::default());
    /// assert_eq!(a, Scenario::from_seed(42, &Options::default()));
    /// assert!(a.heal_ms < a.stop_ms && a.stop_ms < a.duration_ms);
    /// ```
    pub fn from_seed(seed: u64, opts: &Options) -> Scenario {
        let root = SimRng::new(seed);
        let mut rng = root.fork(1);
        let duration_ms = u32::try_from(opts.duration.as_millis()).unwrap_or(u32::MAX);
        let heal_ms = duration_ms / 3 * 2;
        let stop_ms = duration_ms.saturating_sub(3_000).max(heal_ms + 1);
        let mut knobs = Knobs::draw(&mut rng);
        let services = if rng.coin() { 2 } else { 1 };
        let max_parallelism = rng.range(1, 4) as u32;
        let consumer = ConsumerSettings {
            max_parallelism,
            max_held: max_parallelism + rng.range(0, 4) as u32,
            retry: policy(&mut rng),
            breaker: breaker(&mut rng),
            dlq: rng.chance(80),
            nack_delay_ms: rng.range(0, 1000) as u32,
            handler_ms: (rng.range(1, 20) as u32, rng.range(20, 150) as u32),
            strategy: RetryStrategy::InProcess,
            subscription: SubscriptionType::Shared,
            ordered: false,
        };
        let mut consumer = consumer;
        // Drawn from a stream of its own, so the rest of a seed's scenario stays as it was.
        let mut srng = root.fork(4);
        consumer.strategy = match srng.range(0, 4) {
            0 | 1 => RetryStrategy::InProcess,
            2 => RetryStrategy::Topic,
            _ => RetryStrategy::Nack,
        };
        // A quarter of the durable-strategy seeds crash services mid-retry on a broker that
        // loses nothing: service crashes and handler errors only, so every outcome a live
        // consumer sends arrives and the ledger checks the attempt budget exactly.
        if consumer.strategy != RetryStrategy::InProcess && srng.chance(25) {
            knobs = knobs.crash_mid_retry();
        }
        if knobs.broker_host_crash {
            // Nack and retry-topic retries wait at the broker as tokio deadlines (below).
            consumer.strategy = RetryStrategy::InProcess;
            // The in-memory broker keeps nack-delay deadlines as tokio `Instant`s of the broker
            // host's runtime; a restarted host gets a new runtime whose paused clock starts from
            // the real clock, so old deadlines would fall due after a real-time-dependent
            // simulated delay (nondeterministic). Without a nack delay nothing time-stamped
            // outlives a broker restart.
            consumer.nack_delay_ms = 0;
        }
        // The ordered knob, from a stream of its own too: a quarter of the in-process seeds run
        // an ordered consumer, on Key_Shared (two services) or Failover (one or two), and
        // publish every message under one of 3 to 5 keys.
        let mut orng = root.fork(5);
        let keys = if consumer.strategy == RetryStrategy::InProcess && orng.chance(25) {
            consumer.ordered = true;
            consumer.subscription = if services == 2 && orng.coin() {
                SubscriptionType::KeyShared
            } else {
                SubscriptionType::Failover
            };
            orng.range(3, 5) as u8
        } else {
            0
        };
        let task = TaskSettings {
            retry: policy(&mut rng),
            breaker: breaker(&mut rng),
            dlq: rng.chance(70),
        };
        let workload = Self::draw_workload(
            &mut root.fork(2),
            &knobs,
            &consumer,
            services,
            heal_ms.saturating_sub(3_000),
        );
        let mut workload = workload;
        if keys > 0 {
            for p in &mut workload {
                p.key = Some(orng.below(u64::from(keys)) as u8);
            }
        }
        let faults = Self::draw_faults(&mut root.fork(3), &knobs, services, heal_ms);
        Scenario {
            seed,
            duration_ms,
            heal_ms,
            stop_ms,
            tick: opts.tick,
            services,
            consumer,
            task,
            knobs,
            workload,
            faults,
        }
    }

    /// The same scenario with another fault schedule (for proptest searches and shrinking).
    pub fn with_faults(mut self, faults: Vec<Fault>) -> Scenario {
        self.faults = faults;
        self
    }

    /// The same scenario with every knob off and every message a plain success: a baseline that
    /// a fault schedule is then added to.
    pub fn calm(mut self) -> Scenario {
        self.knobs = Knobs::default();
        self.faults.clear();
        for p in &mut self.workload {
            p.plan = Plan::Ok;
            p.body_fails = 0;
        }
        self
    }

    fn draw_workload(
        rng: &mut SimRng,
        knobs: &Knobs,
        consumer: &ConsumerSettings,
        services: u8,
        last_ms: u32,
    ) -> Vec<Publish> {
        let n = rng.range(20, 80);
        let mut out: Vec<Publish> = (0..n)
            .map(|id| {
                let at_ms = rng.range(500, u64::from(last_ms)) as u32;
                let host = rng.below(u64::from(services)) as u8;
                let roll = rng.below(100);
                let plan = if knobs.poison && consumer.dlq && roll < 5 {
                    Plan::Poison
                } else if knobs.handler_errors && roll < 35 {
                    if consumer.dlq && rng.chance(15) {
                        Plan::Always(rng.pick(&[
                            ErrorKind::Handler,
                            ErrorKind::Timeout,
                            ErrorKind::Invalid,
                            ErrorKind::Rejected,
                        ]))
                    } else {
                        let kind = if rng.chance(25) {
                            rng.pick(&PERMANENT)
                        } else {
                            rng.pick(&RETRYABLE)
                        };
                        Plan::Transient {
                            fails: rng.range(1, 4) as u8,
                            kind,
                        }
                    }
                } else if knobs.panics && roll < 50 {
                    Plan::Transient {
                        fails: rng.range(1, 2) as u8,
                        kind: ErrorKind::Panic,
                    }
                } else if knobs.slow_handlers && roll < 70 {
                    Plan::Slow {
                        millis: rng.range(200, 1500) as u32,
                    }
                } else {
                    Plan::Ok
                };
                let (body_fails, body_kind) = if knobs.task_errors && rng.chance(20) {
                    let kind = rng.pick(&[
                        ErrorKind::Handler,
                        ErrorKind::Timeout,
                        ErrorKind::Connection,
                        ErrorKind::Invalid,
                        ErrorKind::Panic,
                    ]);
                    (rng.range(1, 3) as u8, kind)
                } else {
                    (0, ErrorKind::Handler)
                };
                Publish {
                    at_ms,
                    host,
                    id,
                    plan,
                    body_fails,
                    body_kind,
                    key: None,
                }
            })
            .collect();
        out.sort_by_key(|p| (p.at_ms, p.id));
        out
    }

    fn draw_faults(rng: &mut SimRng, knobs: &Knobs, services: u8, heal_ms: u32) -> Vec<Fault> {
        let mut f = Vec::new();
        let last = u64::from(heal_ms.saturating_sub(1_000));
        let at = |rng: &mut SimRng| rng.range(1_000, last) as u32;
        let host = |rng: &mut SimRng| rng.below(u64::from(services)) as u8;
        if knobs.partitions {
            for _ in 0..rng.range(1, 4) {
                f.push(Fault::Partition {
                    at_ms: at(rng),
                    dur_ms: rng.range(300, 8_000) as u32,
                    host: host(rng),
                });
            }
        }
        if knobs.holds {
            for _ in 0..rng.range(1, 3) {
                f.push(Fault::Hold {
                    at_ms: at(rng),
                    dur_ms: rng.range(200, 4_000) as u32,
                    host: host(rng),
                });
            }
        }
        if knobs.latency {
            for _ in 0..rng.range(1, 3) {
                f.push(Fault::Latency {
                    at_ms: at(rng),
                    dur_ms: rng.range(1_000, 10_000) as u32,
                    max_ms: rng.range(200, 1_500) as u32,
                });
            }
        }
        if knobs.broker_host_crash {
            for _ in 0..rng.range(1, 2) {
                f.push(Fault::BrokerHostCrash {
                    at_ms: at(rng),
                    dur_ms: rng.range(200, 5_000) as u32,
                });
            }
        }
        if knobs.broker_restart {
            for _ in 0..rng.range(1, 3) {
                f.push(Fault::BrokerRestart { at_ms: at(rng) });
            }
        }
        if knobs.broker_op_failures {
            for _ in 0..rng.range(2, 8) {
                let op = rng.pick(&Op::ALL);
                f.push(Fault::BrokerOpFailure {
                    at_ms: at(rng),
                    op,
                    count: rng.range(1, 5) as u8,
                    kind: rng.pick(&[
                        ErrorKind::Connection,
                        ErrorKind::Timeout,
                        ErrorKind::Connection,
                        ErrorKind::Rejected,
                    ]),
                    after_effect: matches!(op, Op::Send | Op::Ack | Op::Receive) && rng.chance(30),
                });
            }
        }
        if knobs.broker_latency {
            for _ in 0..rng.range(1, 3) {
                f.push(Fault::BrokerSlowOp {
                    at_ms: at(rng),
                    dur_ms: rng.range(1_000, 8_000) as u32,
                    op: rng.pick(&Op::ALL),
                    latency_ms: rng.range(50, 2_500) as u32,
                });
            }
        }
        if knobs.broker_offline {
            for _ in 0..rng.range(1, 2) {
                f.push(Fault::BrokerOffline {
                    at_ms: at(rng),
                    dur_ms: rng.range(500, 6_000) as u32,
                });
            }
        }
        if knobs.drop_connections {
            for _ in 0..rng.range(1, 3) {
                f.push(Fault::DropConnections { at_ms: at(rng) });
            }
        }
        if knobs.service_crash {
            for _ in 0..rng.range(1, 2) {
                f.push(Fault::ServiceCrash {
                    at_ms: at(rng),
                    dur_ms: rng.range(300, 6_000) as u32,
                    host: host(rng),
                });
            }
        }
        if knobs.downstream_outage {
            for _ in 0..rng.range(1, 2) {
                f.push(Fault::DownstreamOutage {
                    at_ms: at(rng),
                    dur_ms: rng.range(2_000, 12_000) as u32,
                    kind: rng.pick(&[ErrorKind::Connection, ErrorKind::Timeout]),
                });
            }
        }
        if knobs.handler_errors {
            for _ in 0..rng.range(0, 3) {
                f.push(Fault::HandlerErrors {
                    at_ms: at(rng),
                    count: rng.range(1, 6) as u8,
                    kind: rng.pick(&ErrorKind::ALL),
                });
            }
        }
        if knobs.slow_handlers {
            for _ in 0..rng.range(0, 2) {
                f.push(Fault::SlowHandlers {
                    at_ms: at(rng),
                    dur_ms: rng.range(500, 5_000) as u32,
                    extra_ms: rng.range(100, 2_000) as u32,
                });
            }
        }
        f.sort_by_key(Fault::at_ms);
        f
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: {} service(s), {} messages, {} faults, knobs [{}]",
            self.seed,
            self.services,
            self.workload.len(),
            self.faults.len(),
            self.knobs.names().join(", ")
        )?;
        let c = &self.consumer;
        writeln!(
            f,
            "  consumer: {:?} ordered {} max_parallelism {} max_held {} max_retries {} delay {:?} dlq {} breaker {}x/{:?} nack delay {} ms retry strategy {}",
            c.subscription,
            c.ordered,
            c.max_parallelism,
            c.max_held,
            c.retry.max_retries(),
            c.retry.retry_delay(),
            c.dlq,
            c.breaker.failure_threshold(),
            c.breaker.recovery_timeout(),
            c.nack_delay_ms,
            c.strategy.as_str()
        )?;
        let t = &self.task;
        writeln!(
            f,
            "  task: max_retries {} delay {:?} dlq {} breaker {}x/{:?}",
            t.retry.max_retries(),
            t.retry.retry_delay(),
            t.dlq,
            t.breaker.failure_threshold(),
            t.breaker.recovery_timeout()
        )?;
        for fault in &self.faults {
            writeln!(f, "  fault {fault:?}")?;
        }
        Ok(())
    }
}
