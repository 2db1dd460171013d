//! What one simulated seed reports: pass or fail, the first violation with the last events
//! before it, the command that replays the seed, and counts.

use std::fmt;
use std::time::Duration;

use crate::oracle::Violation;

/// What broke a run first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Broke {
    /// backstop's oracle found the runtime breaking one of its rules (a backstop bug).
    Oracle {
        /// The consumer or task concerned.
        who: String,
        /// The oracle's violation.
        violation: Violation,
    },
    /// One of the user's invariants failed.
    Invariant {
        /// The invariant's name.
        name: String,
        /// What it said.
        detail: String,
    },
    /// Something never settled after every fault healed (a message never handled, a service
    /// that never came back, a hook that never finished).
    Liveness(String),
    /// The simulation's setup was rejected (a consumer's settings, say): nothing ran.
    Setup(String),
}

impl fmt::Display for Broke {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Broke::Oracle { who, violation } => {
                write!(f, "backstop oracle ({who}): {violation}")
            }
            Broke::Invariant { name, detail } => write!(f, "invariant `{name}` failed: {detail}"),
            Broke::Liveness(s) => write!(f, "liveness: {s}"),
            Broke::Setup(s) => write!(f, "setup rejected: {s}"),
        }
    }
}

/// The first violation of a run, when and what came just before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirstViolation {
    /// What broke.
    pub broke: Broke,
    /// Simulated time since the start.
    pub at: Duration,
    /// The run's last events before it (core actions and events, faults, notes), oldest first.
    pub last_events: Vec<String>,
}

/// Counts over one run (or summed over many).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages published to the broker (the simulation's and the user's own).
    pub published: u64,
    /// Deliveries to consumers, redeliveries included.
    pub delivered: u64,
    /// Deliveries of a message that had been delivered before: the duplicates a handler may
    /// see (after a broker restart, a crash, a lost ack, a nack).
    pub duplicates: u64,
    /// Handler runs.
    pub handler_runs: u64,
    /// Handler runs beyond the first of a delivery (backstop's retries).
    pub retries: u64,
    /// Messages dead-lettered (DLQ publishes confirmed).
    pub dead_lettered: u64,
    /// Times a consumer's circuit breaker opened.
    pub breaker_trips: u64,
    /// Faults injected (scheduled faults started, broker operations failed by them).
    pub faults: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.published += o.published;
        self.delivered += o.delivered;
        self.duplicates += o.duplicates;
        self.handler_runs += o.handler_runs;
        self.retries += o.retries;
        self.dead_lettered += o.dead_lettered;
        self.breaker_trips += o.breaker_trips;
        self.faults += o.faults;
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} published, {} delivered ({} duplicates), {} handler runs ({} retries), {} dead-lettered, {} breaker trips, {} faults",
            self.published,
            self.delivered,
            self.duplicates,
            self.handler_runs,
            self.retries,
            self.dead_lettered,
            self.breaker_trips,
            self.faults
        )
    }
}

/// The outcome of one seed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "a report says whether the run passed"]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The first violation; `None` when the run passed.
    pub violation: Option<FirstViolation>,
    /// The fault schedule the seed drew, one line per fault.
    pub faults: Vec<String>,
    /// Counts.
    pub counts: Counts,
    /// Simulated time the run took.
    pub sim_time: Duration,
    /// The command that replays this seed alone.
    pub replay: String,
}

impl Report {
    /// Whether the run passed (no oracle violation, every invariant held, everything settled).
    pub fn passed(&self) -> bool {
        self.violation.is_none()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.violation {
            None => writeln!(
                f,
                "seed {} passed ({:?} simulated)",
                self.seed, self.sim_time
            )?,
            Some(v) => {
                writeln!(
                    f,
                    "seed {} FAILED at {:.3}s: {}",
                    self.seed,
                    v.at.as_secs_f64(),
                    v.broke
                )?;
                if !v.last_events.is_empty() {
                    writeln!(f, "last events:")?;
                    for e in &v.last_events {
                        writeln!(f, "  {e}")?;
                    }
                }
            }
        }
        if self.faults.is_empty() {
            writeln!(f, "faults: none")?;
        } else {
            writeln!(f, "faults:")?;
            for l in &self.faults {
                writeln!(f, "  {l}")?;
            }
        }
        writeln!(f, "counts: {}", self.counts)?;
        write!(f, "replay: {}", self.replay)
    }
}
