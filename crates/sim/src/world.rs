//! The state one turmoil run shares between its hosts and its driver: the trace, the oracles fed
//! by the runtime's observer, the broker-side ledger, and what the handlers' downstream does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backstop_engine::broker::SubscriptionType;
use backstop_engine::core::{
    BreakerState, ConsumerAction, ConsumerConfig, ConsumerEvent, ErrorKind, ProducerAction,
    ProducerEvent, Time,
};
use backstop_engine::runtime::Observer;
use backstop_testkit::oracle::Violation;

use crate::ledger::Ledger;
use crate::rng::SimRng;
use crate::scenario::{Plan, Scenario};
use crate::trace::{Trace, What, Who};
use backstop_testkit::feed::{ConsumerFeed, TaskWatch};

/// Payload ids from here up are liveness probes (published after healing to let a half-open
/// breaker close).
pub const PROBE_BASE: u64 = 1 << 40;

/// The first broken rule of a run.
#[derive(Clone, Debug)]
pub struct Broken {
    /// Who broke it (or who observed it).
    pub who: Who,
    /// Simulated time.
    pub sim: Duration,
    /// The oracle's violation, when an oracle found it.
    pub violation: Option<Violation>,
    /// What happened, in words.
    pub detail: String,
}

/// What the handlers' downstream does at the moment (set by the driver's fault schedule).
#[derive(Debug, Default)]
pub struct Downstream {
    plans: BTreeMap<u64, Plan>,
    /// Nesting count and kind of downstream outages.
    pub outage: Vec<ErrorKind>,
    /// Queued error bursts: (runs left, kind).
    pub bursts: VecDeque<(u8, ErrorKind)>,
    /// Nested slow windows' added milliseconds.
    pub slow: Vec<u32>,
    handler_ms: (u32, u32),
    seed: u64,
    /// Handler runs that failed because of injected faults (not the message's own plan).
    pub injected: u64,
}

impl Downstream {
    /// A healthy downstream for messages with these `plans`, normal runs taking `handler_ms`
    /// (shortest, longest), run lengths drawn from `seed`.
    pub fn new(plans: BTreeMap<u64, Plan>, handler_ms: (u32, u32), seed: u64) -> Downstream {
        Downstream {
            plans,
            handler_ms,
            seed,
            ..Downstream::default()
        }
    }

    /// Adds (or replaces) the plan of payload `pid`.
    pub fn set_plan(&mut self, pid: u64, plan: Plan) {
        self.plans.insert(pid, plan);
    }

    /// Decides run `run` of payload `pid`: how long it takes and how it ends.
    pub fn decide(&mut self, pid: u64, run: u32) -> (Duration, Result<(), ErrorKind>) {
        let mut r = SimRng::new(self.seed ^ pid.wrapping_mul(0x9e37_79b9) ^ u64::from(run) << 48);
        let (lo, hi) = self.handler_ms;
        let extra: u32 = self.slow.iter().copied().max().unwrap_or(0);
        let base = Duration::from_millis(r.range(u64::from(lo), u64::from(hi)) + u64::from(extra));
        if let Some(kind) = self.outage.last() {
            self.injected += 1;
            return (base, Err(*kind));
        }
        if let Some((left, kind)) = self.bursts.front_mut() {
            let kind = *kind;
            *left -= 1;
            if *left == 0 {
                self.bursts.pop_front();
            }
            self.injected += 1;
            return (base, Err(kind));
        }
        match self.plans.get(&pid).copied().unwrap_or(Plan::Ok) {
            Plan::Ok | Plan::Poison => (base, Ok(())),
            Plan::Transient { fails, kind } => {
                if run <= u32::from(fails) {
                    (base, Err(kind))
                } else {
                    (base, Ok(()))
                }
            }
            Plan::Always(kind) => (base, Err(kind)),
            Plan::Slow { millis } => (base + Duration::from_millis(u64::from(millis)), Ok(())),
        }
    }

    /// Ends every downstream fault.
    pub fn heal(&mut self) {
        self.outage.clear();
        self.bursts.clear();
        self.slow.clear();
    }
}

/// Everything a run's hosts and driver share (behind one mutex: turmoil runs every host on one
/// thread, so it is never contended).
#[derive(Debug)]
pub struct World {
    /// The trace.
    pub trace: Trace,
    /// One oracle feed per service incarnation (one consumer each).
    pub feeds: BTreeMap<(u8, u32), ConsumerFeed>,
    /// One task watch per service incarnation.
    pub tasks: BTreeMap<(u8, u32), TaskWatch>,
    /// Per service host: how many times it started, and its running incarnation (none while
    /// crashed or before its first start).
    pub incarnation: Vec<(u32, Option<u32>)>,
    /// The first broken rule.
    pub broken: Option<Broken>,
    /// The broker-side ledger.
    pub ledger: Ledger,
    /// The handlers' downstream.
    pub downstream: Downstream,
    /// Liveness probes published so far.
    pub probes: u64,
    /// Task calls in progress per service incarnation.
    pub calls: BTreeMap<(u8, u32), u32>,
    /// Set by the driver once everything settled: the services shut down gracefully.
    pub stop: bool,
    /// The simulated time the driver last saw (for records made outside a host).
    pub clock: Duration,
    consumer_cfg: ConsumerConfig,
    task_attempts: u32,
    /// The consumers share a Failover subscription (one active, the others standing by).
    failover: bool,
}

/// A shared handle on the [`World`].
pub type SharedWorld = Arc<Mutex<World>>;

/// Locks the world (a poisoned lock, from a panic while holding it, is taken over).
pub fn lock(w: &SharedWorld) -> MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// The simulated time inside a turmoil run (zero outside one).
pub fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

impl World {
    /// The world of `scenario`.
    pub fn new(scenario: &Scenario, trace_lines: usize) -> World {
        let plans = scenario.workload.iter().map(|p| (p.id, p.plan)).collect();
        World {
            trace: Trace::new(trace_lines),
            feeds: BTreeMap::new(),
            tasks: BTreeMap::new(),
            incarnation: vec![(0, None); usize::from(scenario.services)],
            broken: None,
            ledger: {
                let ledger = if scenario.knobs.outcomes_reach_broker() {
                    Ledger::with_budget(scenario.consumer.retry.max_retries() + 1)
                } else {
                    Ledger::new()
                };
                if scenario.consumer.ordered {
                    ledger.checking_order()
                } else {
                    ledger
                }
            },
            downstream: Downstream::new(plans, scenario.consumer.handler_ms, scenario.seed),
            probes: 0,
            calls: BTreeMap::new(),
            stop: false,
            clock: Duration::ZERO,
            consumer_cfg: scenario.consumer.core_config(),
            task_attempts: scenario.task.retry.max_attempts(),
            failover: scenario.consumer.subscription == SubscriptionType::Failover,
        }
    }

    /// Records the first broken rule (later ones are ignored: the run stops at the first).
    pub fn fail(&mut self, who: Who, violation: Option<Violation>, detail: String) {
        if self.broken.is_none() {
            let sim = turmoil::sim_elapsed().unwrap_or(self.clock);
            self.trace
                .push(sim, who, None, What::Note(format!("BROKEN: {detail}")));
            self.broken = Some(Broken {
                who,
                sim,
                violation,
                detail,
            });
        }
    }

    fn fail_violation(&mut self, who: Who, v: Violation) {
        let detail = v.to_string();
        self.fail(who, Some(v), detail);
    }

    /// Service `host` starts; returns its incarnation number.
    pub fn start_incarnation(&mut self, host: u8) -> u32 {
        let slot = &mut self.incarnation[usize::from(host)];
        let inc = slot.0;
        slot.0 += 1;
        slot.1 = Some(inc);
        inc
    }

    /// Service `host` crashed: its current incarnation's oracle is flushed and retired (kept
    /// for the statistics, left out of the liveness checks).
    pub fn crashed(&mut self, host: u8) {
        self.ledger.service_crashed(host);
        if let Some(inc) = self.incarnation[usize::from(host)].1.take() {
            self.flush_one(host, inc);
        }
    }

    /// The running incarnation of each service host that has one.
    pub fn live(&self) -> Vec<(u8, u32)> {
        self.incarnation
            .iter()
            .enumerate()
            .filter_map(|(h, (_, inc))| inc.map(|i| (h as u8, i)))
            .collect()
    }

    /// Feeds the buffered step of one incarnation's consumer to its oracle.
    pub fn flush_one(&mut self, host: u8, inc: u32) {
        if let Some(f) = self.feeds.get_mut(&(host, inc)) {
            if let Err(v) = f.flush() {
                self.fail_violation(
                    Who::Service {
                        host,
                        incarnation: inc,
                    },
                    v,
                );
            }
        }
    }

    /// Feeds every buffered step to its oracle (between simulation steps).
    pub fn flush_all(&mut self) {
        let keys: Vec<(u8, u32)> = self.feeds.keys().copied().collect();
        for (h, i) in keys {
            self.flush_one(h, i);
        }
    }

    /// Task calls in progress in running incarnations.
    pub fn calls_in_progress(&self) -> u32 {
        self.live()
            .iter()
            .map(|k| self.calls.get(k).copied().unwrap_or(0))
            .sum()
    }

    /// Whether a live consumer's breaker is not closed (it needs a probe message to close).
    /// On a Failover subscription only the active consumer gets messages, so a standby's
    /// breaker, opened while it was active, stays half-open until it is active again: there a
    /// probe is needed only while no live consumer's breaker is closed.
    pub fn needs_probe(&self) -> bool {
        let open = |k: &(u8, u32)| {
            self.feeds
                .get(k)
                .is_some_and(|f| f.oracle().breaker().state() != BreakerState::Closed)
        };
        if self.failover {
            self.live().iter().all(open)
        } else {
            self.live().iter().any(open)
        }
    }

    /// Whether the breakers allow the run to settle: every live consumer's is closed, or on a
    /// Failover subscription one (the standbys get no message to close theirs; an active
    /// consumer that is not closed would leave the probes in the backlog).
    pub fn breakers_settled(&self) -> bool {
        let closed = |k: &(u8, u32)| {
            self.feeds
                .get(k)
                .is_some_and(|f| f.oracle().breaker().state() == BreakerState::Closed)
        };
        if self.failover {
            self.live().iter().any(closed)
        } else {
            self.live().iter().all(closed)
        }
    }

    fn feed(&mut self, host: u8, inc: u32) -> &mut ConsumerFeed {
        let cfg = self.consumer_cfg;
        self.feeds
            .entry((host, inc))
            .or_insert_with(|| ConsumerFeed::new(cfg))
    }

    fn task(&mut self, host: u8, inc: u32) -> &mut TaskWatch {
        let n = self.task_attempts;
        self.tasks
            .entry((host, inc))
            .or_insert_with(|| TaskWatch::new(n))
    }
}

/// The runtime observer of one service incarnation: records the trace and feeds the oracles.
pub struct SimObserver {
    world: SharedWorld,
    host: u8,
    incarnation: u32,
}

impl SimObserver {
    /// The observer of `host`'s `incarnation`.
    pub fn new(world: SharedWorld, host: u8, incarnation: u32) -> SimObserver {
        SimObserver {
            world,
            host,
            incarnation,
        }
    }

    fn who(&self) -> Who {
        Who::Service {
            host: self.host,
            incarnation: self.incarnation,
        }
    }
}

impl Observer for SimObserver {
    fn consumer_action(&self, _consumer: &str, now: Time, action: &ConsumerAction) {
        let who = self.who();
        let mut w = lock(&self.world);
        w.trace
            .push(sim_now(), who, Some(now), What::ConsumerAction(*action));
        if w.broken.is_some() {
            return;
        }
        if let Err(v) = w.feed(self.host, self.incarnation).action(now, *action) {
            w.fail_violation(who, v);
        }
    }

    fn consumer_event(&self, _consumer: &str, now: Time, event: &ConsumerEvent) {
        let who = self.who();
        let mut w = lock(&self.world);
        w.trace
            .push(sim_now(), who, Some(now), What::ConsumerEvent(*event));
        if w.broken.is_some() {
            return;
        }
        if let Err(v) = w.feed(self.host, self.incarnation).event(now, *event) {
            w.fail_violation(who, v);
        }
    }

    fn producer_action(&self, _task: &str, now: Time, action: &ProducerAction) {
        let who = self.who();
        let mut w = lock(&self.world);
        w.trace
            .push(sim_now(), who, Some(now), What::ProducerAction(*action));
        if w.broken.is_some() {
            return;
        }
        if let Err(v) = w.task(self.host, self.incarnation).action(now, action) {
            w.fail_violation(who, v);
        }
    }

    fn producer_event(&self, _task: &str, now: Time, event: &ProducerEvent) {
        let who = self.who();
        let mut w = lock(&self.world);
        w.trace
            .push(sim_now(), who, Some(now), What::ProducerEvent(*event));
        if w.broken.is_some() {
            return;
        }
        if let Err(v) = w.task(self.host, self.incarnation).event(now, event) {
            w.fail_violation(who, v);
        }
    }
}
