//! Fault schedules as proptest values: with a planted bug, a random search finds a failing
//! schedule and proptest shrinks it to a minimal one (a single fault) that still fails with the
//! bug and passes without it. Both tiers.
//!
//! Run: `cargo test -p backstop-sim --features planted-bugs` (scripts/test does).
#![cfg(feature = "planted-bugs")]

use std::time::Duration;

use backstop_engine::core::planted::{self, Bug};
use backstop_engine::core::{BreakerConfig, ConsumerConfig, ProducerConfig, RetryPolicy};
use backstop_sim::core_sim::{self, CoreFault, CoreScenario};
use backstop_sim::net;
use backstop_sim::scenario::{Fault, Options, Scenario};
use backstop_sim::strategies;
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

fn runner(cases: u32, shrink_iters: u32) -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases,
            max_shrink_iters: shrink_iters,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}

/// Searches `strategy` for a schedule that `check` rejects with `bug` on; returns the shrunk
/// schedule.
fn shrunk<T: std::fmt::Debug + Clone>(
    bug: Bug,
    mut search: TestRunner,
    strategy: impl Strategy<Value = Vec<T>>,
    check: impl Fn(&[T]) -> Result<(), String>,
) -> Vec<T> {
    planted::set(Some(bug));
    let r = search.run(&strategy, |faults| {
        check(&faults).map_err(TestCaseError::fail)
    });
    planted::set(None);
    match r {
        Err(TestError::Fail(why, minimal)) => {
            println!("{bug:?}: minimal failing schedule {minimal:?}\n  because {why}");
            minimal
        }
        other => panic!("{bug:?}: no failing schedule found: {other:?}"),
    }
}

fn core_base() -> CoreScenario {
    let mut sc = CoreScenario::from_seed(0).calm();
    let retry = RetryPolicy::builder()
        .max_retries(2)
        .retry_delay(Duration::from_millis(200))
        .build()
        .unwrap();
    let breaker = BreakerConfig::builder()
        .failure_threshold(3)
        .recovery_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    sc.consumer = ConsumerConfig::builder()
        .max_parallelism(2)
        .max_held(4)
        .retry(retry)
        .breaker(breaker)
        .dead_letter(true)
        .build()
        .unwrap();
    sc.producer = ProducerConfig::builder()
        .retry(retry)
        .breaker(breaker)
        .dead_letter(true)
        .build()
        .unwrap();
    sc
}

fn core_check(base: &CoreScenario, faults: &[CoreFault]) -> Result<(), String> {
    core_sim::run(&base.clone().with_faults(faults.to_vec()), 0)
        .map(|_| ())
        .map_err(|f| f.detail.clone())
}

#[test]
fn a_core_schedule_shrinks_to_one_fault() {
    let base = core_base();
    core_check(&base, &[]).expect("the calm scenario passes even with the bug");
    let strategy = strategies::core_faults(base.heal_ms - 2_000, 10);
    let minimal = shrunk(Bug::OneRetryTooMany, runner(256, 1_000), strategy, |f| {
        core_check(&base, f)
    });
    assert_eq!(minimal.len(), 1, "{minimal:?}");
    planted::set(Some(Bug::OneRetryTooMany));
    let with_bug = core_check(&base, &minimal);
    planted::set(None);
    assert!(with_bug.is_err());
    core_check(&base, &minimal).expect("the minimal schedule passes without the bug");
}

fn net_check(base: &Scenario, opts: &Options, faults: &[Fault]) -> Result<(), String> {
    net::run(&base.clone().with_faults(faults.to_vec()), opts)
        .map(|_| ())
        .map_err(|f| f.detail.clone())
}

#[test]
fn a_turmoil_schedule_shrinks_to_one_fault() {
    let opts = Options {
        duration: Duration::from_secs(30),
        trace_lines: 0,
        ..Options::default()
    };
    let base = Scenario::from_seed(3, &opts).calm();
    net_check(&base, &opts, &[]).expect("the calm scenario passes even with the bug");
    let strategy = strategies::faults(base.services, base.heal_ms - 1_000, 5);
    let minimal = shrunk(Bug::OneRetryTooMany, runner(64, 150), strategy, |f| {
        net_check(&base, &opts, f)
    });
    // One fault that makes some attempt fail (a handler error or outage for the consumer, a
    // broker outage or failed send for the task) is enough for the extra retry to show.
    assert_eq!(minimal.len(), 1, "{minimal:?}");
    planted::set(Some(Bug::OneRetryTooMany));
    let with_bug = net_check(&base, &opts, &minimal);
    planted::set(None);
    assert!(with_bug.is_err());
    net_check(&base, &opts, &minimal).expect("the minimal schedule passes without the bug");
}
