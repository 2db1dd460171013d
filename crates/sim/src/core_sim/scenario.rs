//! What one pure-core seed simulates: the machines' settings, the task calls and the fault
//! schedule, drawn from the seed (swarm testing).

use backstop_engine::core::{
    BreakerConfig, ConsumerConfig, ErrorKind, ProducerConfig, RetryPolicy,
};

use crate::rng::SimRng;
use crate::scenario::Plan;

/// One scheduled fault of the pure-core tier.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CoreFault {
    /// The next `count` handler runs fail with `kind`.
    HandlerErrors {
        /// When, ms.
        at_ms: u32,
        /// How many runs.
        count: u8,
        /// Error kind.
        kind: ErrorKind,
    },
    /// The handlers' downstream fails every run with `kind`.
    Outage {
        /// Start, ms.
        at_ms: u32,
        /// Length, ms.
        dur_ms: u32,
        /// Error kind.
        kind: ErrorKind,
    },
    /// Every DLQ publish (consumer's and task's) fails with Connection.
    DlqOutage {
        /// Start, ms.
        at_ms: u32,
        /// Length, ms.
        dur_ms: u32,
    },
    /// The broker is unreachable: task publishes fail with Connection, nothing is delivered.
    BrokerOutage {
        /// Start, ms.
        at_ms: u32,
        /// Length, ms.
        dur_ms: u32,
    },
    /// The next `count` task publishes fail with `kind`.
    PublishErrors {
        /// When, ms.
        at_ms: u32,
        /// How many.
        count: u8,
        /// Error kind.
        kind: ErrorKind,
    },
    /// Handler runs started in the window take `extra_ms` longer.
    Slow {
        /// Start, ms.
        at_ms: u32,
        /// Length, ms.
        dur_ms: u32,
        /// Added time, ms.
        extra_ms: u32,
    },
    /// The consumer's process crashes and restarts: a new machine; unacked deliveries return.
    Crash {
        /// When, ms.
        at_ms: u32,
    },
    /// `count` messages are published at once (straight to the broker).
    Burst {
        /// When, ms.
        at_ms: u32,
        /// How many.
        count: u8,
    },
    /// An undecodable message is published.
    Poison {
        /// When, ms.
        at_ms: u32,
    },
}

impl CoreFault {
    /// When it starts, ms.
    pub fn at_ms(&self) -> u32 {
        match *self {
            CoreFault::HandlerErrors { at_ms, .. }
            | CoreFault::Outage { at_ms, .. }
            | CoreFault::DlqOutage { at_ms, .. }
            | CoreFault::BrokerOutage { at_ms, .. }
            | CoreFault::PublishErrors { at_ms, .. }
            | CoreFault::Slow { at_ms, .. }
            | CoreFault::Crash { at_ms }
            | CoreFault::Burst { at_ms, .. }
            | CoreFault::Poison { at_ms } => at_ms,
        }
    }

    /// How long its window lasts, ms (0 for one-shot faults).
    pub fn dur_ms(&self) -> u32 {
        match *self {
            CoreFault::Outage { dur_ms, .. }
            | CoreFault::DlqOutage { dur_ms, .. }
            | CoreFault::BrokerOutage { dur_ms, .. }
            | CoreFault::Slow { dur_ms, .. } => dur_ms,
            _ => 0,
        }
    }
}

/// One task call of the workload.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CoreCall {
    /// When, ms.
    pub at_ms: u32,
    /// The payload id it publishes.
    pub pid: u64,
    /// What the consumer's handler does with it.
    pub plan: Plan,
    /// Failing body attempts before the body succeeds.
    pub body_fails: u8,
    /// Their kind.
    pub body_kind: ErrorKind,
}

/// Everything one pure-core seed does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreScenario {
    /// The seed.
    pub seed: u64,
    /// The consumer machine's settings.
    pub consumer: ConsumerConfig,
    /// The producer machine's settings.
    pub producer: ProducerConfig,
    /// Redelivery delay of a nacked message, ms.
    pub nack_delay_ms: u32,
    /// Shortest and longest normal handler run, ms.
    pub handler_ms: (u32, u32),
    /// The task calls.
    pub calls: Vec<CoreCall>,
    /// The fault schedule.
    pub faults: Vec<CoreFault>,
    /// When every fault ends, ms.
    pub heal_ms: u32,
}

fn policy(rng: &mut SimRng) -> RetryPolicy {
    let delay = rng.millis(0, 2000);
    let mut b = RetryPolicy::builder()
        .max_retries(rng.range(0, 3) as u32)
        .retry_delay(delay)
        .jitter_seed(rng.next_u64());
    if rng.chance(30) {
        b = b.exponential(rng.range(1, 3) as u32, delay * 4, rng.range(0, 1000) as u16);
    }
    b.build().expect("valid retry policy")
}

fn breaker(rng: &mut SimRng) -> BreakerConfig {
    BreakerConfig::builder()
        .failure_threshold(rng.range(1, 5) as u32)
        .recovery_timeout(rng.millis(1, 5000))
        .build()
        .expect("valid breaker")
}

const KINDS: [ErrorKind; 6] = [
    ErrorKind::Handler,
    ErrorKind::Timeout,
    ErrorKind::Connection,
    ErrorKind::Panic,
    ErrorKind::Invalid,
    ErrorKind::Rejected,
];

impl CoreScenario {
    /// The scenario of `seed` (swarm testing: each seed switches a random subset of fault kinds
    /// on).
    ///
    /// ```
    /// use backstop_sim::core_sim::CoreScenario;
    /// assert_eq!(CoreScenario::from_seed(3), CoreScenario::from_seed(3));
    /// ```
    pub fn from_seed(seed: u64) -> CoreScenario {
        let root = SimRng::new(seed);
        let mut rng = root.fork(11);
        let par = rng.range(1, 4) as u32;
        let dlq = rng.chance(75);
        let consumer = ConsumerConfig::builder()
            .max_parallelism(par)
            .max_held(par + rng.range(0, 6) as u32)
            .retry(policy(&mut rng))
            .breaker(breaker(&mut rng))
            .dead_letter(dlq)
            .build()
            .expect("valid consumer");
        let producer = ProducerConfig::builder()
            .retry(policy(&mut rng))
            .breaker(breaker(&mut rng))
            .dead_letter(rng.chance(70))
            .build()
            .expect("valid producer");
        let heal_ms = 60_000;
        let on: Vec<bool> = (0..9).map(|_| rng.coin()).collect();
        let mut w = root.fork(12);
        let calls = (0..w.range(10, 80))
            .map(|pid| {
                let roll = w.below(100);
                let plan = if on[0] && roll < 30 {
                    if dlq && w.chance(15) {
                        Plan::Always(w.pick(&KINDS))
                    } else {
                        Plan::Transient {
                            fails: w.range(1, 4) as u8,
                            kind: w.pick(&KINDS),
                        }
                    }
                } else if on[1] && roll < 50 {
                    Plan::Slow {
                        millis: w.range(100, 3000) as u32,
                    }
                } else {
                    Plan::Ok
                };
                let (body_fails, body_kind) = if on[2] && w.chance(20) {
                    (w.range(1, 3) as u8, w.pick(&KINDS))
                } else {
                    (0, ErrorKind::Handler)
                };
                CoreCall {
                    at_ms: w.range(0, u64::from(heal_ms) - 5_000) as u32,
                    pid,
                    plan,
                    body_fails,
                    body_kind,
                }
            })
            .collect::<Vec<_>>();
        let mut f = root.fork(13);
        let mut faults = Vec::new();
        let at = |r: &mut SimRng| r.range(0, u64::from(heal_ms) - 2_000) as u32;
        let kinds = [ErrorKind::Connection, ErrorKind::Timeout];
        if on[3] {
            for _ in 0..f.range(1, 5) {
                faults.push(CoreFault::HandlerErrors {
                    at_ms: at(&mut f),
                    count: f.range(1, 8) as u8,
                    kind: f.pick(&ErrorKind::ALL),
                });
            }
        }
        if on[4] {
            for _ in 0..f.range(1, 3) {
                faults.push(CoreFault::Outage {
                    at_ms: at(&mut f),
                    dur_ms: f.range(500, 15_000) as u32,
                    kind: f.pick(&kinds),
                });
            }
        }
        if on[5] {
            for _ in 0..f.range(1, 3) {
                faults.push(CoreFault::DlqOutage {
                    at_ms: at(&mut f),
                    dur_ms: f.range(200, 8_000) as u32,
                });
                faults.push(CoreFault::BrokerOutage {
                    at_ms: at(&mut f),
                    dur_ms: f.range(200, 8_000) as u32,
                });
                faults.push(CoreFault::PublishErrors {
                    at_ms: at(&mut f),
                    count: f.range(1, 6) as u8,
                    kind: f.pick(&KINDS),
                });
            }
        }
        if on[6] {
            for _ in 0..f.range(1, 3) {
                faults.push(CoreFault::Crash { at_ms: at(&mut f) });
            }
        }
        if on[7] {
            for _ in 0..f.range(1, 4) {
                faults.push(CoreFault::Burst {
                    at_ms: at(&mut f),
                    count: f.range(2, 20) as u8,
                });
                faults.push(CoreFault::Slow {
                    at_ms: at(&mut f),
                    dur_ms: f.range(500, 5_000) as u32,
                    extra_ms: f.range(100, 3_000) as u32,
                });
            }
        }
        if on[8] && dlq {
            for _ in 0..f.range(1, 4) {
                faults.push(CoreFault::Poison { at_ms: at(&mut f) });
            }
        }
        faults.sort_by_key(CoreFault::at_ms);
        CoreScenario {
            seed,
            consumer,
            producer,
            nack_delay_ms: rng.range(0, 1000) as u32,
            handler_ms: (rng.range(1, 20) as u32, rng.range(20, 300) as u32),
            calls,
            faults,
            heal_ms,
        }
    }

    /// The same settings with every message a plain success, no task failures and no faults:
    /// the baseline a fault schedule is added to.
    pub fn calm(mut self) -> CoreScenario {
        for c in &mut self.calls {
            c.plan = Plan::Ok;
            c.body_fails = 0;
        }
        self.faults.clear();
        self
    }

    /// The same scenario with another fault schedule.
    pub fn with_faults(mut self, faults: Vec<CoreFault>) -> CoreScenario {
        self.faults = faults;
        self
    }

    pub(super) fn describe(&self) -> String {
        let c = &self.consumer;
        let p = &self.producer;
        let mut s = format!(
            "core seed {}: {} calls, {} faults\n  consumer: max_parallelism {} max_held {} max_retries {} delay {:?} dlq {} breaker {}x/{:?}\n  producer: max_retries {} delay {:?} dlq {} breaker {}x/{:?}\n",
            self.seed,
            self.calls.len(),
            self.faults.len(),
            c.max_parallelism(),
            c.max_held(),
            c.retry().max_retries(),
            c.retry().retry_delay(),
            c.dead_letter(),
            c.breaker().failure_threshold(),
            c.breaker().recovery_timeout(),
            p.retry().max_retries(),
            p.retry().retry_delay(),
            p.dead_letter(),
            p.breaker().failure_threshold(),
            p.breaker().recovery_timeout(),
        );
        for f in &self.faults {
            s.push_str(&format!("  fault {f:?}\n"));
        }
        s
    }
}
