//! What one seed reports: its statistics when every check passed, or the broken rule with the
//! command that replays it and the trace leading up to it.

use std::fmt;
use std::time::Duration;

use backstop_testkit::oracle::Rule;

/// Which simulation tier ran a seed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The real runtime and the in-memory broker as turmoil hosts.
    Turmoil,
    /// The sans-IO machines in an event-jump loop.
    Core,
}

impl Tier {
    /// The runner flag that selects the tier (empty for the default, turmoil).
    pub fn flag(self) -> &'static str {
        match self {
            Tier::Turmoil => "",
            Tier::Core => " --core",
        }
    }
}

/// Counts of one passing seed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedStats {
    /// Simulated time.
    pub sim_time: Duration,
    /// Fault events applied from the schedule.
    pub fault_events: u64,
    /// Failures injected into individual operations (broker operations, handler runs).
    pub injected: u64,
    /// Messages published to the consumed topic.
    pub messages: u64,
    /// Handler runs.
    pub handler_runs: u64,
    /// Handler runs beyond a message's first (per delivery).
    pub retries: u64,
    /// Confirmed dead-letter records.
    pub dead_lettered: u64,
    /// Times a consumer breaker opened.
    pub breaker_trips: u64,
    /// Times a consumer breaker closed again.
    pub breaker_closes: u64,
    /// Redeliveries by the broker.
    pub redeliveries: u64,
    /// Duplicate handling (a message handled successfully twice, dead-lettered twice, or both)
    /// caused by crashes and lost acks: reported, allowed by at-least-once.
    pub duplicates: u64,
    /// Oracle steps checked.
    pub steps: u64,
    /// Most handler runs in flight at once in one consumer.
    pub max_in_flight: u32,
    /// Seeds with an ordered consumer (Key_Shared or Failover).
    pub ordered_seeds: u64,
    /// Keyed payloads whose first run the ledger checked against every earlier payload of
    /// their key.
    pub order_checked: u64,
    /// Keyed payloads excused from that check (a nack, an injected fault or a possibly lost
    /// delivery came while they waited).
    pub order_excused: u64,
}

impl SeedStats {
    /// Adds `other` into `self` (simulated time and counts summed, maxima kept).
    pub fn add(&mut self, other: &SeedStats) {
        self.sim_time += other.sim_time;
        self.fault_events += other.fault_events;
        self.injected += other.injected;
        self.messages += other.messages;
        self.handler_runs += other.handler_runs;
        self.retries += other.retries;
        self.dead_lettered += other.dead_lettered;
        self.breaker_trips += other.breaker_trips;
        self.breaker_closes += other.breaker_closes;
        self.redeliveries += other.redeliveries;
        self.duplicates += other.duplicates;
        self.steps += other.steps;
        self.max_in_flight = self.max_in_flight.max(other.max_in_flight);
        self.ordered_seeds += other.ordered_seeds;
        self.order_checked += other.order_checked;
        self.order_excused += other.order_excused;
    }
}

/// A seed whose every check passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passed {
    /// The seed.
    pub seed: u64,
    /// The tier.
    pub tier: Tier,
    /// The hash of its whole trace (same seed, same hash).
    pub hash: u64,
    /// Its counts.
    pub stats: SeedStats,
    /// The last trace entries, when the run kept them.
    pub trace: Option<String>,
}

/// A seed that broke a rule.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// The tier.
    pub tier: Tier,
    /// The oracle rule, when an oracle found it (`None` for broker-side and liveness checks
    /// phrased in words, and for crashes of the simulation itself).
    pub rule: Option<Rule>,
    /// What broke, in words.
    pub detail: String,
    /// Simulated time of the failure.
    pub at: Duration,
    /// The last trace entries, one per line.
    pub trace_tail: String,
    /// A description of the scenario.
    pub scenario: String,
    /// The planted bug that was switched on, if any (its runner flag value).
    pub planted: Option<String>,
    /// The simulated length per seed, when not the runner's default (its flag value, s).
    pub duration_secs: Option<u64>,
}

impl Failure {
    /// The exact command that replays this seed.
    pub fn replay_command(&self) -> String {
        let features = if self.planted.is_some() {
            " --features planted-bugs"
        } else {
            ""
        };
        let mut cmd = format!(
            "cargo run --release -p backstop-sim{features} --{} --seed {}",
            self.tier.flag(),
            self.seed
        );
        if let Some(secs) = self.duration_secs {
            cmd.push_str(&format!(" --duration {secs}"));
        }
        if let Some(bug) = &self.planted {
            cmd.push_str(&format!(" --plant {bug}"));
        }
        cmd
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} FAILED at {:.3}s of simulated time",
            self.seed,
            self.at.as_secs_f64()
        )?;
        if let Some(r) = self.rule {
            writeln!(f, "rule:   {r:?}")?;
        }
        writeln!(f, "detail: {}", self.detail)?;
        writeln!(f, "replay: {}", self.replay_command())?;
        writeln!(f, "scenario:\n{}", self.scenario.trim_end())?;
        if !self.trace_tail.is_empty() {
            writeln!(f, "last events:\n{}", self.trace_tail.trim_end())?;
        }
        Ok(())
    }
}

/// How one seed ended.
pub type Outcome = Result<Passed, Box<Failure>>;
