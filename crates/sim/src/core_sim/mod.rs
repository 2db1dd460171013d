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
//!
//! | module | its one job |
//! |---|---|
//! | `scenario` | what a seed simulates ([`CoreScenario`], [`CoreFault`], [`CoreCall`]) |
//! | `state` | the run's state and its small helpers |
//! | `broker` | the model broker |
//! | `machines` | performing the machines' actions |
//! | `events` | the event loop, faults and settling |
//! | (this one) | [`run`]: one seed to a pass or a failure report |

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use backstop_engine::core::Time;
use backstop_testkit::oracle::{CheckedConsumer, CheckedProducer};

use crate::report::{Failure, Outcome, Passed, SeedStats, Tier};
use crate::rng::SimRng;
use crate::trace::{Trace, What};
use crate::world::Downstream;

mod broker;
mod events;
mod machines;
mod scenario;
mod state;

pub use scenario::{CoreCall, CoreFault, CoreScenario};
use state::{Broke, CoreRun};

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
