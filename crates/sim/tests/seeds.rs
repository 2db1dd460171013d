//! A fixed number of seeds of both tiers must pass every check, and the same seed must give the
//! same trace (hash) twice. `cargo run --release -p backstop-sim -- --seeds 10000` runs many more.

use backstop_sim::core_sim::{self, CoreScenario};
use backstop_sim::net;
use backstop_sim::report::Tier;
use backstop_sim::runner::{run_batch, Batch};
use backstop_sim::scenario::{Options, Scenario};

fn assert_all_pass(batch: &Batch) {
    let s = run_batch(batch, &|_, _| {});
    if let Some(f) = s.failures.first() {
        panic!(
            "{} of {} seeds failed; the first:\n{f}",
            s.failures.len(),
            s.seeds
        );
    }
    assert_eq!(s.passed, batch.count);
    println!(
        "{:?}: {} seeds, {} messages, {} retries, {} dead-lettered, {} breaker trips, {} duplicates, {:.0} seeds/min",
        batch.tier,
        s.seeds,
        s.stats.messages,
        s.stats.retries,
        s.stats.dead_lettered,
        s.stats.breaker_trips,
        s.stats.duplicates,
        s.seeds_per_minute()
    );
}

#[test]
fn turmoil_seeds_pass() {
    let batch = Batch::new(Tier::Turmoil, 0, 40);
    assert_all_pass(&batch);
}

#[test]
fn core_seeds_pass() {
    let batch = Batch::new(Tier::Core, 0, 2_000);
    assert_all_pass(&batch);
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let opts = Options {
        trace_lines: 0,
        ..Options::default()
    };
    let mut hashes = Vec::new();
    for seed in 100..106 {
        let sc = Scenario::from_seed(seed, &opts);
        let a = net::run(&sc, &opts).expect("passes");
        let b = net::run(&sc, &opts).expect("passes");
        assert_eq!(a.hash, b.hash, "turmoil seed {seed} is not deterministic");
        assert_eq!(a.stats, b.stats);
        hashes.push(a.hash);
    }
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), 6, "different seeds give different traces");
    for seed in 0..200 {
        let sc = CoreScenario::from_seed(seed);
        let a = core_sim::run(&sc, 0).expect("passes");
        let b = core_sim::run(&sc, 0).expect("passes");
        assert_eq!(a.hash, b.hash, "core seed {seed} is not deterministic");
    }
}

#[test]
fn the_runner_checks_determinism_on_worker_threads() {
    let mut batch = Batch::new(Tier::Turmoil, 200, 6);
    batch.determinism = true;
    let s = run_batch(&batch, &|_, _| {});
    assert!(s.failures.is_empty(), "{}", s.failures[0]);
    assert_eq!(s.determinism_checked, 6);
}
