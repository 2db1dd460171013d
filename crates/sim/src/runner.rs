//! Runs many seeds on worker threads and sums them up: pass/fail per seed, the optional
//! determinism check (every seed twice, equal trace hashes), and totals for the summary.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core_sim::{self, CoreScenario};
use crate::net;
use crate::report::{Failure, Outcome, SeedStats, Tier};
use crate::scenario::{Options, Scenario};

/// Code run at the start of every worker thread (e.g. switching a planted bug on, which is a
/// per-thread switch).
pub type Setup = Arc<dyn Fn() + Send + Sync>;

/// Runs seed `seed` of `tier` once. A panic of the simulation itself is reported as a failure.
///
/// ```
/// use backstop_sim::report::Tier;
/// use backstop_sim::runner::run_one;
/// use backstop_sim::scenario::Options;
/// assert!(run_one(Tier::Core, 5, &Options::default()).is_ok());
/// ```
pub fn run_one(tier: Tier, seed: u64, opts: &Options) -> Outcome {
    let r = catch_unwind(AssertUnwindSafe(|| match tier {
        Tier::Turmoil => net::run(&Scenario::from_seed(seed, opts), opts),
        Tier::Core => core_sim::run(&CoreScenario::from_seed(seed), opts.trace_lines),
    }));
    r.unwrap_or_else(|panic| {
        let text = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(Box::new(Failure {
            seed,
            tier,
            rule: None,
            detail: format!("the simulation panicked: {text}"),
            at: Duration::ZERO,
            trace_tail: String::new(),
            scenario: String::new(),
            planted: None,
            duration_secs: None,
        }))
    })
}

/// A range of seeds to run.
#[derive(Clone)]
pub struct Batch {
    /// Which tier.
    pub tier: Tier,
    /// The first seed.
    pub start: u64,
    /// How many seeds.
    pub count: u64,
    /// Worker threads.
    pub jobs: usize,
    /// Per-seed options (`trace_lines` 0 is fastest: failing seeds are replayed for their
    /// trace).
    pub opts: Options,
    /// Run every seed twice and compare the trace hashes.
    pub determinism: bool,
    /// Stop taking new seeds after this many failures.
    pub max_failures: usize,
    /// Run at the start of each worker thread.
    pub setup: Option<Setup>,
}

impl Batch {
    /// `count` seeds of `tier` from `start`, on two threads, stopping after 10 failures.
    pub fn new(tier: Tier, start: u64, count: u64) -> Batch {
        Batch {
            tier,
            start,
            count,
            jobs: 2,
            opts: Options {
                trace_lines: 0,
                ..Options::default()
            },
            determinism: false,
            max_failures: 10,
            setup: None,
        }
    }
}

/// What a batch did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Seeds run.
    pub seeds: u64,
    /// Seeds that passed every check.
    pub passed: u64,
    /// The failing seeds, by seed.
    pub failures: Vec<Failure>,
    /// Totals over the passing seeds.
    pub stats: SeedStats,
    /// Wall-clock time of the batch.
    pub wall: Duration,
    /// Seeds whose determinism was checked (run twice, same hash).
    pub determinism_checked: u64,
}

impl Summary {
    /// Seeds per minute of wall-clock time (counting each seed once, even when it ran twice).
    pub fn seeds_per_minute(&self) -> f64 {
        let mins = self.wall.as_secs_f64() / 60.0;
        if mins == 0.0 {
            0.0
        } else {
            self.seeds as f64 / mins
        }
    }
}

fn seed_result(batch: &Batch, seed: u64) -> Result<SeedStats, Box<Failure>> {
    let first = run_one(batch.tier, seed, &batch.opts);
    let passed = match first {
        Ok(p) => p,
        Err(f) => {
            // Replay it keeping the trace, for a readable report (the run is deterministic).
            if batch.opts.trace_lines == 0 {
                let opts = Options {
                    trace_lines: 200,
                    ..batch.opts.clone()
                };
                run_one(batch.tier, seed, &opts)?;
            }
            return Err(f);
        }
    };
    if batch.determinism {
        let second = run_one(batch.tier, seed, &batch.opts);
        let again = match second {
            Ok(p) => p.hash,
            Err(f) => {
                return Err(Box::new(Failure {
                    detail: format!(
                    "nondeterministic: the first run passed (hash {:016x}), the second failed: {}",
                    passed.hash, f.detail
                ),
                    ..*f
                }))
            }
        };
        if again != passed.hash {
            return Err(Box::new(Failure {
                seed,
                tier: batch.tier,
                rule: None,
                detail: format!(
                    "nondeterministic: two runs of the same seed gave trace hashes {:016x} and {again:016x}",
                    passed.hash
                ),
                at: Duration::ZERO,
                trace_tail: String::new(),
                scenario: String::new(),
                planted: None,
                duration_secs: None,
            }));
        }
    }
    Ok(passed.stats)
}

/// Runs `batch`, calling `progress(done, failed)` after every seed.
pub fn run_batch(batch: &Batch, progress: &(dyn Fn(u64, u64) + Sync)) -> Summary {
    crate::quiet_injected_panics();
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let out = Mutex::new(Summary::default());
    std::thread::scope(|scope| {
        for _ in 0..batch.jobs.max(1) {
            scope.spawn(|| {
                if let Some(setup) = &batch.setup {
                    setup();
                }
                let mut local = SeedStats::default();
                let mut passed = 0;
                let mut failures = Vec::new();
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= batch.count {
                        break;
                    }
                    let seed = batch.start.wrapping_add(i);
                    match seed_result(batch, seed) {
                        Ok(stats) => {
                            passed += 1;
                            local.add(&stats);
                        }
                        Err(f) => {
                            failures.push(*f);
                            let n = failed.fetch_add(1, Ordering::Relaxed) + 1;
                            if n as usize >= batch.max_failures {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    progress(d, failed.load(Ordering::Relaxed));
                }
                let mut s = out.lock().unwrap_or_else(|p| p.into_inner());
                s.passed += passed;
                s.stats.add(&local);
                s.failures.extend(failures);
            });
        }
    });
    let mut s = out.into_inner().unwrap_or_else(|p| p.into_inner());
    s.seeds = done.load(Ordering::Relaxed);
    s.failures.sort_by_key(|f| f.seed);
    s.wall = started.elapsed();
    if batch.determinism {
        s.determinism_checked = s.passed;
    }
    s
}
