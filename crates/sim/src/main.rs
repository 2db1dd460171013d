//! The seed runner: runs many simulation seeds (turmoil tier by default, `--core` for the
//! pure-core tier) with a progress bar and prints a summary; `--seed S` replays one seed.

use std::process::ExitCode;
use std::time::Duration;

use backstop_sim::core_sim::{self, CoreScenario};
use backstop_sim::net;
use backstop_sim::report::{Failure, Tier};
use backstop_sim::runner::{run_batch, Batch};
use backstop_sim::scenario::{Options, Scenario};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

/// Deterministic simulation of backstop: the real runtime and the in-memory broker on turmoil's
/// simulated network and clock (or the bare sans-IO machines with --core), faults drawn from
/// each seed, the oracle (docs/architecture.md, "The invariants") checked after every step.
#[derive(Parser, Debug)]
#[command(name = "backstop-sim", version)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Replay this one seed and show its scenario and the end of its trace.
    #[arg(long)]
    seed: Option<u64>,
    /// Run the pure-core tier (sans-IO machines in an event-jump loop) instead of turmoil.
    #[arg(long)]
    core: bool,
    /// Worker threads (default: available cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Simulated seconds per turmoil seed (faults in the first two thirds).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// turmoil tick in milliseconds.
    #[arg(long, default_value_t = 10)]
    tick_ms: u64,
    /// Run every seed twice and check that both runs give the same trace hash.
    #[arg(long)]
    determinism: bool,
    /// Stop after this many failing seeds.
    #[arg(long, default_value_t = 10)]
    max_failures: usize,
    /// With --seed: how many trace entries to print.
    #[arg(long, default_value_t = 80)]
    trace: usize,
    /// Switch on a planted bug (needs `--features planted-bugs`): ack-before-dlq,
    /// one-retry-too-many, breaker-no-reset, parallelism-off-by-one, key-order-ignored.
    #[arg(long)]
    plant: Option<String>,
}

#[cfg(feature = "planted-bugs")]
fn plant(name: &str) -> Result<backstop_sim::runner::Setup, String> {
    use backstop_engine::core::planted::{self, Bug};
    let bug = match name {
        "ack-before-dlq" => Bug::AckBeforeDlqConfirmed,
        "one-retry-too-many" => Bug::OneRetryTooMany,
        "breaker-no-reset" => Bug::BreakerNoReset,
        "parallelism-off-by-one" => Bug::ParallelismOffByOne,
        "key-order-ignored" => Bug::KeyOrderIgnored,
        other => return Err(format!("unknown planted bug `{other}`")),
    };
    Ok(std::sync::Arc::new(move || planted::set(Some(bug))))
}

#[cfg(not(feature = "planted-bugs"))]
fn plant(_name: &str) -> Result<backstop_sim::runner::Setup, String> {
    Err(
        "planted bugs need `cargo run -p backstop-sim --features planted-bugs -- --plant ...`"
            .into(),
    )
}

fn tier(args: &Args) -> Tier {
    if args.core {
        Tier::Core
    } else {
        Tier::Turmoil
    }
}

fn options(args: &Args, trace_lines: usize) -> Options {
    Options {
        duration: Duration::from_secs(args.duration),
        tick: Duration::from_millis(args.tick_ms.max(1)),
        trace_lines,
    }
}

fn annotate(f: &mut Failure, args: &Args) {
    f.planted = args.plant.clone();
    if args.duration != 60 {
        f.duration_secs = Some(args.duration);
    }
}

fn replay(args: &Args, seed: u64) -> ExitCode {
    if let Some(name) = &args.plant {
        match plant(name) {
            Ok(setup) => setup(),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    }
    backstop_sim::quiet_injected_panics();
    let opts = options(args, args.trace.max(1));
    let started = std::time::Instant::now();
    let outcome = match tier(args) {
        Tier::Turmoil => {
            let sc = Scenario::from_seed(seed, &opts);
            println!("{sc}");
            net::run(&sc, &opts)
        }
        Tier::Core => core_sim::run(&CoreScenario::from_seed(seed), opts.trace_lines),
    };
    match outcome {
        Ok(p) => {
            if let Some(t) = &p.trace {
                println!("last events:\n{}", t.trim_end());
            }
            println!(
                "\nseed {seed} passed in {:.1?} wall; trace hash {:016x}\n{:#?}",
                started.elapsed(),
                p.hash,
                p.stats
            );
            ExitCode::SUCCESS
        }
        Err(mut f) => {
            annotate(&mut f, args);
            println!("{f}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(seed) = args.seed {
        return replay(&args, seed);
    }
    let setup = match &args.plant {
        None => None,
        Some(name) => match plant(name) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        },
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let batch = Batch {
        tier: tier(&args),
        start: args.start,
        count: args.seeds,
        jobs,
        opts: options(&args, 0),
        determinism: args.determinism,
        max_failures: args.max_failures.max(1),
        setup,
    };
    let bar = ProgressBar::new(args.seeds);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} seeds, {per_sec}, eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let summary = run_batch(&batch, &|done, failed| {
        bar.set_position(done);
        if failed > 0 {
            bar.set_message(format!("— {failed} FAILED"));
        }
    });
    bar.finish_and_clear();

    let s = &summary.stats;
    let tier_text = match batch.tier {
        Tier::Turmoil => format!(
            "turmoil (real runtime + broker host; {} s simulated per seed, {} ms ticks)",
            args.duration, args.tick_ms
        ),
        Tier::Core => "pure core (sans-IO machines, event-jump loop)".to_string(),
    };
    println!("backstop-sim summary");
    println!("  tier              {tier_text}");
    println!(
        "  seeds             {} from {} ({} passed, {} failed){}",
        summary.seeds,
        args.start,
        summary.passed,
        summary.failures.len(),
        if summary.seeds < args.seeds {
            " — stopped early"
        } else {
            ""
        }
    );
    println!(
        "  wall time         {:.1?} on {} thread(s): {:.0} seeds/minute",
        summary.wall,
        jobs,
        summary.seeds_per_minute()
    );
    println!(
        "  simulated time    {:.1} h ({:.1} s per seed)",
        s.sim_time.as_secs_f64() / 3600.0,
        s.sim_time.as_secs_f64() / summary.passed.max(1) as f64
    );
    println!(
        "  faults injected   {} scheduled fault events, {} failed operations",
        s.fault_events, s.injected
    );
    println!(
        "  messages          {} published, {} handler runs, {} retries",
        s.messages, s.handler_runs, s.retries
    );
    println!("  dead-lettered     {}", s.dead_lettered);
    println!(
        "  breaker trips     {} (closed again {} times)",
        s.breaker_trips, s.breaker_closes
    );
    println!(
        "  redeliveries      {}; duplicates (at-least-once, from crashes and lost acks) {}",
        s.redeliveries, s.duplicates
    );
    println!(
        "  oracle steps      {} checked; max in flight seen {}",
        s.steps, s.max_in_flight
    );
    if s.ordered_seeds > 0 {
        println!(
            "  per-key order     {} ordered seeds: {} first runs checked in key order, {} excused (nack, injected fault, possibly lost delivery)",
            s.ordered_seeds, s.order_checked, s.order_excused
        );
    }
    if batch.determinism {
        println!(
            "  determinism       {} seeds run twice: identical trace hashes",
            summary.determinism_checked
        );
    }
    if summary.failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    println!();
    for (i, f) in summary.failures.iter().enumerate() {
        let mut f = f.clone();
        annotate(&mut f, &args);
        if i < 3 {
            println!("{f}");
        } else {
            println!("seed {} failed: {}", f.seed, f.replay_command());
        }
    }
    ExitCode::FAILURE
}
