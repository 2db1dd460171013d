//! The state of one pure-core run: the event queue, the machines under their oracles, the model
//! broker's log, and the bookkeeping the final checks need.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use backstop_engine::core::{ErrorKind, Key, Time};
use backstop_testkit::oracle::{CheckedConsumer, CheckedProducer, Violation};

use crate::report::SeedStats;
use crate::rng::SimRng;
use crate::scenario::Plan;
use crate::trace::{Trace, What, Who};
use crate::world::Downstream;

use super::CoreScenario;

#[derive(Copy, Clone, Debug)]
pub(super) enum Ev {
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
pub(super) struct BMsg {
    pub(super) pid: Option<u64>,
    pub(super) acked: bool,
    pub(super) dlq_records: u32,
}

#[derive(Copy, Clone, Debug)]
pub(super) struct CallInfo {
    pub(super) pid: u64,
    pub(super) plan: Plan,
    pub(super) body_fails: u8,
    pub(super) body_kind: ErrorKind,
    pub(super) body_runs: u8,
}

/// How many steps one seed may take before it counts as not settling.
pub(super) const STEP_LIMIT: u64 = 2_000_000;
/// Probe messages the settling phase may publish to let a half-open breaker close.
pub(super) const PROBES: u32 = 16;

pub(super) struct CoreRun<'a> {
    pub(super) sc: &'a CoreScenario,
    pub(super) now: Time,
    pub(super) c: CheckedConsumer,
    pub(super) inc: u32,
    pub(super) p: CheckedProducer,
    pub(super) queue: BTreeMap<(Time, u64), Ev>,
    pub(super) seq: u64,
    pub(super) log: Vec<BMsg>,
    pub(super) available: VecDeque<usize>,
    pub(super) delayed: BTreeMap<(Time, u64), usize>,
    pub(super) held: BTreeMap<Key, usize>,
    pub(super) runs: BTreeMap<u64, u32>,
    pub(super) successes: BTreeMap<u64, u32>,
    pub(super) acked_plain: BTreeMap<u64, u32>,
    pub(super) calls: BTreeMap<Key, CallInfo>,
    pub(super) downstream: Downstream,
    pub(super) dlq_out: u32,
    pub(super) broker_out: u32,
    pub(super) publish_errors: VecDeque<(u8, ErrorKind)>,
    pub(super) shutting_down: bool,
    pub(super) next_pid: u64,
    pub(super) probes: u32,
    pub(super) trace: Trace,
    pub(super) rng: SimRng,
    pub(super) stats: SeedStats,
    pub(super) retired: Vec<CheckedConsumer>,
}

pub(super) fn ms(v: u32) -> Duration {
    Duration::from_millis(u64::from(v))
}

/// Why a core run stopped early.
#[derive(Debug)]
pub(super) enum Broke {
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

pub(super) type Step = Result<(), Broke>;

impl CoreRun<'_> {
    pub(super) fn at(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), ev);
    }

    pub(super) fn who(&self) -> Who {
        Who::Core {
            incarnation: self.inc,
        }
    }

    pub(super) fn sim(&self) -> Duration {
        Duration::from_nanos(self.now.as_nanos())
    }

    pub(super) fn note(&mut self, text: String) {
        let (sim, who) = (self.sim(), self.who());
        self.trace.push(sim, who, None, What::Note(text));
    }
}
