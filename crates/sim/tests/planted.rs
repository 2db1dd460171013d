//! Proof that the oracle bites: with each planted bug switched on (the engine's `planted-bugs`
//! feature, a per-thread switch), seeds are run from 0 until one fails; it must fail within a
//! bounded number of seeds, for the rule the bug breaks, and the same seed must pass without
//! the bug. Both tiers.
//!
//! Run: `cargo test -p backstop-sim --features planted-bugs` (scripts/test does).
#![cfg(feature = "planted-bugs")]

use backstop_engine::core::planted::{self, Bug};
use backstop_sim::report::{Failure, Tier};
use backstop_sim::runner::run_one;
use backstop_sim::scenario::Options;
use backstop_testkit::oracle::Rule;

/// Seeds tried per bug before the test gives up.
const LIMIT: u64 = 40;

fn first_failure(tier: Tier, bug: Bug) -> (u64, Failure) {
    let opts = Options {
        trace_lines: 0,
        ..Options::default()
    };
    planted::set(Some(bug));
    let found = (0..LIMIT).find_map(|seed| run_one(tier, seed, &opts).err().map(|f| (seed, *f)));
    planted::set(None);
    let Some((seed, f)) = found else {
        panic!("{tier:?}: {bug:?} not caught in {LIMIT} seeds");
    };
    assert!(
        run_one(tier, seed, &opts).is_ok(),
        "{tier:?} seed {seed} must pass without the bug"
    );
    println!(
        "{tier:?}: {bug:?} caught by seed {seed} (within {} seeds): {}",
        seed + 1,
        f.detail
    );
    (seed, f)
}

fn caught(bug: Bug, rules: &[Rule]) {
    for tier in [Tier::Turmoil, Tier::Core] {
        let (_, f) = first_failure(tier, bug);
        assert!(
            f.rule.is_some_and(|r| rules.contains(&r)),
            "{tier:?}: {bug:?} was caught for the wrong reason:\n{f}"
        );
    }
}

#[test]
fn ack_before_dlq_confirmed_is_caught() {
    caught(Bug::AckBeforeDlqConfirmed, &[Rule::AckWithoutSuccess]);
}

#[test]
fn one_retry_too_many_is_caught() {
    // The oracle notices when the last allowed attempt fails and no DLQ publish or nack
    // follows; the task watch or the producer oracle may see the extra attempt itself.
    caught(
        Bug::OneRetryTooMany,
        &[
            Rule::MissingOutcome,
            Rule::TooManyAttempts,
            Rule::BadOutcome,
        ],
    );
}

#[test]
fn breaker_no_reset_is_caught() {
    caught(Bug::BreakerNoReset, &[Rule::BreakerDiverged]);
}

#[test]
fn parallelism_off_by_one_is_caught() {
    caught(Bug::ParallelismOffByOne, &[Rule::Parallelism]);
}

#[test]
fn ignore_prior_runs_is_caught() {
    // With every redelivery starting a fresh budget, retry-topic copies (which carry the runs so
    // far in `RECONSUMETIMES`) and nacked redeliveries get runs beyond `max_retries + 1`; the
    // oracle (wrong attempt numbers) or the broker-side ledger (handler runs per payload over
    // the budget; its own bite is shown by the ledger's unit tests) catches it.
    let (seed, f) = first_failure(Tier::Turmoil, Bug::IgnorePriorRuns);
    let sc = backstop_sim::scenario::Scenario::from_seed(seed, &Options::default());
    println!(
        "IgnorePriorRuns: seed {seed}, retry strategy {}",
        sc.consumer.strategy.as_str()
    );
    assert!(
        f.detail.contains("attempt budget") || f.rule.is_some(),
        "caught for the wrong reason:\n{f}"
    );
}

#[test]
fn key_order_ignored_is_caught() {
    // An ordered consumer that runs a later message of a key while an earlier one is held: the
    // turmoil tier's ordered seeds (Key_Shared or Failover, keyed workload) catch it, by the
    // per-consumer oracle (which sees the deliveries) or the ledger's per-key first-run order
    // (whose own bite the ledger's unit tests show). The pure-core tier has no ordered knob.
    let (seed, f) = first_failure(Tier::Turmoil, Bug::KeyOrderIgnored);
    let sc = backstop_sim::scenario::Scenario::from_seed(seed, &Options::default());
    assert!(sc.consumer.ordered, "seed {seed} is not an ordered seed");
    assert!(
        f.rule == Some(Rule::KeyOrder) || f.detail.contains("ran before payload"),
        "caught for the wrong reason:\n{f}"
    );
}
