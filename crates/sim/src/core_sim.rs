//! The pure-core tier: the sans-IO consumer and producer machines (each under its engine
//! oracle) against a model broker and handler, in an event-jump loop — no tokio, no network —
//! with seeded faults, so very many seeds run per second.
//!
//! The loop keeps a queue of timed events (handler runs, task bodies, publishes and DLQ
//! publishes finishing, faults starting and ending) and jumps time straight to the earliest of
//! that queue, the machines' `poll_timeout` and the next nack redelivery. The producer's
//! confirmed publishes become the consumer's deliveries. A crash replaces the consumer machine
//! (and its oracle) with a fresh one and returns its unacked deliveries to the model broker.
//! After the faults heal it settles (probe messages let a half-open breaker close), shuts the
//! consumer down gracefully and checks liveness: both machines settled, every message acked
//! after a success or a DLQ record.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use backstop_engine::core::oracle::{CheckedConsumer, CheckedProducer, Violation};
use backstop_engine::core::{
    BreakerConfig, BreakerState, ConsumerAction, ConsumerConfig, ErrorKind, Key, ProducerAction,
    ProducerConfig, RetryPolicy, Time,
};

use crate::report::{Failure, Outcome, Passed, SeedStats, Tier};
use crate::rng::SimRng;
use crate::scenario::Plan;
use crate::trace::{Trace, What, Who};
use crate::world::Downstream;

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

    fn describe(&self) -> String {
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

#[derive(Copy, Clone, Debug)]
enum Ev {
    Call(usize),
    FaultStart(usize),
    FaultEnd(usize),
    Heal,
    Handler {
        inc: u32,
        key: Key,
        idx: usize,
        result: Result<(), ErrorKind>,
    },
    Dlq {
        inc: u32,
        key: Key,
        idx: usize,
        ok: bool,
    },
    Body {
        call: Key,
        result: Result<(), ErrorKind>,
    },
    Publish {
        call: Key,
        result: Result<(), ErrorKind>,
    },
    TaskDlq {
        call: Key,
        ok: bool,
    },
}

#[derive(Clone, Debug)]
struct BMsg {
    pid: Option<u64>,
    acked: bool,
    dlq_records: u32,
}

#[derive(Copy, Clone, Debug)]
struct CallInfo {
    pid: u64,
    plan: Plan,
    body_fails: u8,
    body_kind: ErrorKind,
    body_runs: u8,
}

/// How many steps one seed may take before it counts as not settling.
const STEP_LIMIT: u64 = 2_000_000;
/// Probe messages the settling phase may publish to let a half-open breaker close.
const PROBES: u32 = 16;

struct CoreRun<'a> {
    sc: &'a CoreScenario,
    now: Time,
    c: CheckedConsumer,
    inc: u32,
    p: CheckedProducer,
    queue: BTreeMap<(Time, u64), Ev>,
    seq: u64,
    log: Vec<BMsg>,
    available: VecDeque<usize>,
    delayed: BTreeMap<(Time, u64), usize>,
    held: BTreeMap<Key, usize>,
    runs: BTreeMap<u64, u32>,
    successes: BTreeMap<u64, u32>,
    acked_plain: BTreeMap<u64, u32>,
    calls: BTreeMap<Key, CallInfo>,
    downstream: Downstream,
    dlq_out: u32,
    broker_out: u32,
    publish_errors: VecDeque<(u8, ErrorKind)>,
    shutting_down: bool,
    next_pid: u64,
    probes: u32,
    trace: Trace,
    rng: SimRng,
    stats: SeedStats,
    retired: Vec<CheckedConsumer>,
}

fn ms(v: u32) -> Duration {
    Duration::from_millis(u64::from(v))
}

/// Why a core run stopped early.
#[derive(Debug)]
enum Broke {
    /// An oracle found a violation.
    Oracle(Violation),
    /// A broker-side or liveness check failed.
    Check(String),
}

impl From<Violation> for Broke {
    fn from(v: Violation) -> Broke {
        Broke::Oracle(v)
    }
}

impl From<String> for Broke {
    fn from(s: String) -> Broke {
        Broke::Check(s)
    }
}

impl From<&str> for Broke {
    fn from(s: &str) -> Broke {
        Broke::Check(s.to_string())
    }
}

type Step = Result<(), Broke>;

impl CoreRun<'_> {
    fn at(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), ev);
    }

    fn who(&self) -> Who {
        Who::Core {
            incarnation: self.inc,
        }
    }

    fn sim(&self) -> Duration {
        Duration::from_nanos(self.now.as_nanos())
    }

    fn note(&mut self, text: String) {
        let (sim, who) = (self.sim(), self.who());
        self.trace.push(sim, who, None, What::Note(text));
    }

    fn publish_msg(&mut self, pid: Option<u64>) {
        self.log.push(BMsg {
            pid,
            acked: false,
            dlq_records: 0,
        });
        self.available.push_back(self.log.len() - 1);
    }

    /// Records the consumer's last step in the trace and performs its actions.
    fn consumer_step(&mut self) -> Step {
        let (sim, who, now) = (self.sim(), self.who(), self.now);
        let actions: Vec<ConsumerAction> = self.c.last_actions().to_vec();
        for a in &actions {
            self.trace
                .push(sim, who, Some(now), What::ConsumerAction(*a));
        }
        for e in self.c.last_events() {
            self.trace
                .push(sim, who, Some(now), What::ConsumerEvent(*e));
        }
        for a in actions {
            match a {
                ConsumerAction::Invoke { key, .. } => {
                    let idx = self.held[&key];
                    let pid = self.log[idx].pid.unwrap_or(u64::MAX);
                    let run = {
                        let n = self.runs.entry(pid).or_insert(0);
                        *n += 1;
                        *n
                    };
                    self.stats.handler_runs += 1;
                    let (took, result) = self.downstream.decide(pid, run);
                    let inc = self.inc;
                    self.at(
                        took,
                        Ev::Handler {
                            inc,
                            key,
                            idx,
                            result,
                        },
                    );
                }
                ConsumerAction::Ack { key } => {
                    let idx = self.held.remove(&key).ok_or("ack of an unknown key")?;
                    self.broker_ack(idx)?;
                }
                ConsumerAction::Nack { key, .. } => {
                    let idx = self.held.remove(&key).ok_or("nack of an unknown key")?;
                    self.seq += 1;
                    let due = self.now + ms(self.sc.nack_delay_ms);
                    self.delayed.insert((due, self.seq), idx);
                    self.stats.redeliveries += 1;
                }
                ConsumerAction::PublishDlq { key, .. } => {
                    let idx = self.held[&key];
                    let (inc, ok) = (self.inc, self.dlq_out == 0);
                    let took = self.rng.millis(1, 30);
                    self.at(took, Ev::Dlq { inc, key, idx, ok });
                }
                ConsumerAction::Request { .. } | ConsumerAction::Pause | ConsumerAction::Resume => {
                }
            }
        }
        Ok(())
    }

    /// The broker side of an ack: the message must have been handled (one success per plain
    /// ack of its payload) or have a DLQ record.
    fn broker_ack(&mut self, idx: usize) -> Step {
        let m = &mut self.log[idx];
        if m.acked {
            return Ok(()); // a redundant ack (after a crash redelivery): counted at the end
        }
        m.acked = true;
        if m.dlq_records > 0 {
            return Ok(());
        }
        let Some(pid) = m.pid else {
            return Err(format!("broker: poison message #{idx} acked without a DLQ record").into());
        };
        let acks = self.acked_plain.entry(pid).or_insert(0);
        *acks += 1;
        let ok = self.successes.get(&pid).copied().unwrap_or(0);
        if *acks > ok {
            return Err(format!(
                "broker: message #{idx} (payload {pid}) acked, but its handler succeeded {ok} time(s) for {acks} ack(s) and it has no DLQ record"
            )
            .into());
        }
        Ok(())
    }

    fn producer_step(&mut self) -> Step {
        let (sim, who, now) = (self.sim(), self.who(), self.now);
        let actions: Vec<ProducerAction> = self.p.last_actions().to_vec();
        for a in &actions {
            self.trace
                .push(sim, who, Some(now), What::ProducerAction(*a));
        }
        for e in self.p.last_events() {
            self.trace
                .push(sim, who, Some(now), What::ProducerEvent(*e));
        }
        for a in actions {
            match a {
                ProducerAction::RunBody { call, .. } => {
                    let info = self.calls.get_mut(&call).ok_or("body of an unknown call")?;
                    info.body_runs += 1;
                    let result = if info.body_runs <= info.body_fails {
                        Err(info.body_kind)
                    } else {
                        Ok(())
                    };
                    let took = self.rng.millis(0, 20);
                    self.at(took, Ev::Body { call, result });
                }
                ProducerAction::Publish { call, .. } => {
                    let result = if self.broker_out > 0 {
                        Err(ErrorKind::Connection)
                    } else if let Some((left, kind)) = self.publish_errors.front_mut() {
                        let kind = *kind;
                        *left -= 1;
                        if *left == 0 {
                            self.publish_errors.pop_front();
                        }
                        Err(kind)
                    } else {
                        Ok(())
                    };
                    let took = self.rng.millis(1, 50);
                    self.at(took, Ev::Publish { call, result });
                }
                ProducerAction::PublishDlq { call, .. } => {
                    let ok = self.dlq_out == 0 && self.broker_out == 0;
                    let took = self.rng.millis(1, 50);
                    self.at(took, Ev::TaskDlq { call, ok });
                }
                ProducerAction::Complete { call, .. } => {
                    self.calls.remove(&call);
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self) -> Step {
        while let Some((&(due, seq), &idx)) = self.delayed.iter().next() {
            if due > self.now {
                break;
            }
            self.delayed.remove(&(due, seq));
            self.available.push_back(idx);
        }
        while self.broker_out == 0 && self.c.machine().credit() > 0 {
            let Some(idx) = self.available.pop_front() else {
                break;
            };
            let now = self.now;
            let poison = self.log[idx].pid.is_none();
            let key = self.c.deliver(now, !poison)?;
            self.held.insert(key, idx);
            self.consumer_step()?;
        }
        Ok(())
    }

    fn crash(&mut self) -> Step {
        self.note("consumer crash: unacked deliveries return".into());
        let held = std::mem::take(&mut self.held);
        for (_, idx) in held {
            self.available.push_back(idx);
            self.stats.redeliveries += 1;
        }
        let fresh = CheckedConsumer::new(self.sc.consumer)?;
        let old = std::mem::replace(&mut self.c, fresh);
        self.retired.push(old);
        self.inc += 1;
        self.consumer_step()
    }

    fn fault(&mut self, i: usize, start: bool) -> Step {
        let f = self.sc.faults[i];
        if start {
            self.stats.fault_events += 1;
            self.note(format!("fault {f:?}"));
        }
        let d = &mut self.downstream;
        match (f, start) {
            (CoreFault::HandlerErrors { count, kind, .. }, true) if count > 0 => {
                d.bursts.push_back((count, kind));
            }
            (CoreFault::Outage { kind, .. }, true) => d.outage.push(kind),
            (CoreFault::Outage { kind, .. }, false) => {
                if let Some(i) = d.outage.iter().position(|k| *k == kind) {
                    d.outage.remove(i);
                }
            }
            (CoreFault::Slow { extra_ms, .. }, true) => d.slow.push(extra_ms),
            (CoreFault::Slow { extra_ms, .. }, false) => {
                if let Some(i) = d.slow.iter().position(|k| *k == extra_ms) {
                    d.slow.remove(i);
                }
            }
            (CoreFault::DlqOutage { .. }, true) => self.dlq_out += 1,
            (CoreFault::DlqOutage { .. }, false) => self.dlq_out = self.dlq_out.saturating_sub(1),
            (CoreFault::BrokerOutage { .. }, true) => self.broker_out += 1,
            (CoreFault::BrokerOutage { .. }, false) => {
                self.broker_out = self.broker_out.saturating_sub(1)
            }
            (CoreFault::PublishErrors { count, kind, .. }, true) if count > 0 => {
                self.publish_errors.push_back((count, kind));
            }
            (CoreFault::Crash { .. }, true) => self.crash()?,
            (CoreFault::Burst { count, .. }, true) => {
                for _ in 0..count {
                    let pid = self.next_pid;
                    self.next_pid += 1;
                    self.publish_msg(Some(pid));
                }
            }
            (CoreFault::Poison { .. }, true) if self.sc.consumer.dead_letter() => {
                // Without a DLQ a poison message is redelivered for ever: not a liveness bug.
                self.publish_msg(None)
            }
            _ => {}
        }
        Ok(())
    }

    fn event(&mut self, ev: Ev) -> Step {
        let now = self.now;
        match ev {
            Ev::Call(i) => {
                let call = self.sc.calls[i];
                let key = self.p.call(now)?;
                self.calls.insert(
                    key,
                    CallInfo {
                        pid: call.pid,
                        plan: call.plan,
                        body_fails: call.body_fails,
                        body_kind: call.body_kind,
                        body_runs: 0,
                    },
                );
                self.producer_step()?;
            }
            Ev::FaultStart(i) => self.fault(i, true)?,
            Ev::FaultEnd(i) => self.fault(i, false)?,
            Ev::Heal => {
                self.note("heal: every fault ends".into());
                self.downstream.heal();
                self.dlq_out = 0;
                self.broker_out = 0;
                self.publish_errors.clear();
            }
            Ev::Handler {
                inc,
                key,
                idx,
                result,
            } => {
                if result.is_ok() {
                    if let Some(pid) = self.log[idx].pid {
                        *self.successes.entry(pid).or_insert(0) += 1;
                    }
                }
                if inc == self.inc {
                    self.c.finish(now, key, result)?;
                    self.consumer_step()?;
                }
            }
            Ev::Dlq { inc, key, idx, ok } => {
                if ok {
                    self.log[idx].dlq_records += 1;
                    self.stats.dead_lettered += 1;
                }
                if inc == self.inc {
                    let r = if ok {
                        Ok(())
                    } else {
                        Err(ErrorKind::Connection)
                    };
                    self.c.dlq_result(now, key, r)?;
                    self.consumer_step()?;
                }
            }
            Ev::Body { call, result } => {
                self.p.body(now, call, result)?;
                self.producer_step()?;
            }
            Ev::Publish { call, result } => {
                if result.is_ok() {
                    if let Some(info) = self.calls.get(&call).copied() {
                        self.downstream.set_plan(info.pid, info.plan);
                        self.publish_msg(Some(info.pid));
                    }
                }
                self.p.publish(now, call, result)?;
                self.producer_step()?;
            }
            Ev::TaskDlq { call, ok } => {
                let r = if ok {
                    Ok(())
                } else {
                    Err(ErrorKind::Connection)
                };
                self.p.dlq(now, call, r)?;
                self.producer_step()?;
            }
        }
        Ok(())
    }

    /// One step: the earliest due thing happens. `Ok(false)` when nothing is left to happen.
    fn step(&mut self) -> Result<bool, Broke> {
        self.deliver()?;
        let t_queue = self.queue.keys().next().map(|(t, _)| *t);
        let t_c = self.c.poll_timeout();
        let t_p = self.p.poll_timeout();
        let t_d = self.delayed.keys().next().map(|(t, _)| *t);
        let Some(next) = [t_queue, t_c, t_p, t_d].into_iter().flatten().min() else {
            return Ok(false);
        };
        self.now = self.now.max(next);
        let now = self.now;
        if t_queue.is_some_and(|t| t <= now) {
            let (k, ev) = self.queue.pop_first().expect("checked");
            let _ = k;
            self.event(ev)?;
        } else if t_c.is_some_and(|t| t <= now) {
            self.c.timeout(now)?;
            self.consumer_step()?;
        } else if t_p.is_some_and(|t| t <= now) {
            self.p.timeout(now)?;
            self.producer_step()?;
        }
        Ok(true)
    }

    fn run(&mut self) -> Step {
        for (i, call) in self.sc.calls.iter().enumerate() {
            self.seq += 1;
            self.queue
                .insert((Time::ZERO + ms(call.at_ms), self.seq), Ev::Call(i));
        }
        for (i, f) in self.sc.faults.iter().enumerate() {
            let at = f.at_ms().min(self.sc.heal_ms);
            self.seq += 1;
            self.queue
                .insert((Time::ZERO + ms(at), self.seq), Ev::FaultStart(i));
            if f.dur_ms() > 0 {
                let end = at.saturating_add(f.dur_ms()).min(self.sc.heal_ms);
                self.seq += 1;
                self.queue
                    .insert((Time::ZERO + ms(end), self.seq), Ev::FaultEnd(i));
            }
        }
        self.seq += 1;
        self.queue
            .insert((Time::ZERO + ms(self.sc.heal_ms), self.seq), Ev::Heal);
        self.consumer_step()?;
        let mut steps = 0u64;
        loop {
            steps += 1;
            if steps > STEP_LIMIT {
                return Err(format!("liveness: no settling within {STEP_LIMIT} steps").into());
            }
            if self.step()? {
                continue;
            }
            // Nothing left to happen.
            if !self.shutting_down
                && self.c.machine().breaker_state() != BreakerState::Closed
                && self.probes < PROBES
            {
                self.probes += 1;
                let pid = self.next_pid;
                self.next_pid += 1;
                self.note(format!("probe message {pid} for the half-open breaker"));
                self.publish_msg(Some(pid));
                continue;
            }
            if !self.shutting_down {
                self.c.settle_check()?;
                self.p.settle_check()?;
                self.shutting_down = true;
                let now = self.now;
                self.c.shutdown(now, now + Duration::from_secs(5))?;
                self.consumer_step()?;
                continue;
            }
            break;
        }
        self.c.settle_check()?;
        if let Some((i, m)) = self.log.iter().enumerate().find(|(_, m)| !m.acked) {
            return Err(format!(
                "liveness: message #{i} (payload {:?}) was never acked",
                m.pid
            )
            .into());
        }
        Ok(())
    }
}

/// Runs one pure-core scenario; `trace_lines` readable trace entries are kept (0: none).
///
/// ```
/// use backstop_sim::core_sim::{run, CoreScenario};
/// let passed = run(&CoreScenario::from_seed(1), 0).expect("seed 1 passes");
/// assert_eq!(passed.hash, run(&CoreScenario::from_seed(1), 0).unwrap().hash);
/// ```
pub fn run(sc: &CoreScenario, trace_lines: usize) -> Outcome {
    let plans = BTreeMap::new();
    let first = match CheckedConsumer::new(sc.consumer) {
        Ok(c) => c,
        Err(v) => {
            return Err(Box::new(Failure {
                seed: sc.seed,
                tier: Tier::Core,
                rule: Some(v.rule),
                detail: v.to_string(),
                at: Duration::ZERO,
                trace_tail: String::new(),
                scenario: sc.describe(),
                planted: None,
                duration_secs: None,
            }))
        }
    };
    let mut r = CoreRun {
        sc,
        now: Time::ZERO,
        c: first,
        inc: 0,
        p: CheckedProducer::new(sc.producer),
        queue: BTreeMap::new(),
        seq: 0,
        log: Vec::new(),
        available: VecDeque::new(),
        delayed: BTreeMap::new(),
        held: BTreeMap::new(),
        runs: BTreeMap::new(),
        successes: BTreeMap::new(),
        acked_plain: BTreeMap::new(),
        calls: BTreeMap::new(),
        downstream: Downstream::new(plans, sc.handler_ms, sc.seed),
        dlq_out: 0,
        broker_out: 0,
        publish_errors: VecDeque::new(),
        shutting_down: false,
        next_pid: 1 << 32,
        probes: 0,
        trace: Trace::new(trace_lines),
        rng: SimRng::new(sc.seed).fork(99),
        stats: SeedStats::default(),
        retired: Vec::new(),
    };
    let result = r.run();
    match result {
        Err(broke) => {
            let (rule, detail) = match broke {
                Broke::Oracle(v) => (Some(v.rule), format!("oracle: {v}")),
                Broke::Check(s) => (None, s),
            };
            let (sim, who) = (r.sim(), r.who());
            r.trace
                .push(sim, who, None, What::Note(format!("BROKEN: {detail}")));
            Err(Box::new(Failure {
                seed: sc.seed,
                tier: Tier::Core,
                rule,
                detail,
                at: r.sim(),
                trace_tail: r.trace.render_tail(60),
                scenario: sc.describe(),
                planted: None,
                duration_secs: None,
            }))
        }
        Ok(()) => {
            let mut stats = r.stats.clone();
            stats.sim_time = r.sim();
            stats.messages = r.log.len() as u64;
            stats.injected = r.downstream.injected;
            let successes: u64 = r.successes.values().map(|n| u64::from(*n)).sum();
            let dlq_extra: u64 = r
                .log
                .iter()
                .map(|m| u64::from(m.dlq_records.saturating_sub(1)))
                .sum();
            stats.duplicates = successes.saturating_sub(r.log.len() as u64) + dlq_extra;
            for c in r.retired.iter().chain(std::iter::once(&r.c)) {
                let o = c.oracle().stats();
                stats.retries += o.retried;
                stats.breaker_trips += o.breaker_opened;
                stats.breaker_closes += o.breaker_closed;
                stats.max_in_flight = stats.max_in_flight.max(o.max_in_flight);
                stats.steps += o.delivered + o.invoked;
            }
            let tail = (trace_lines > 0).then(|| r.trace.render_tail(trace_lines));
            let mut trace = std::mem::replace(&mut r.trace, Trace::new(0));
            for m in &r.log {
                trace.mix(m.pid.unwrap_or(u64::MAX));
                trace.mix(u64::from(m.dlq_records) << 1 | u64::from(m.acked));
            }
            Ok(Passed {
                seed: sc.seed,
                tier: Tier::Core,
                hash: trace.hash(),
                stats,
                trace: tail,
            })
        }
    }
}
