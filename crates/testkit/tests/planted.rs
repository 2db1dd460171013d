//! Proof that the checks catch real mistakes: each planted bug (feature `planted-bugs`) is
//! switched on in turn and the same random op-sequence checks that pass on the real code must
//! find a violation of the rule the bug breaks, within a bounded number of cases.
//!
//! Run: `cargo test -p backstop-testkit --features planted-bugs --test planted`
#![cfg(feature = "planted-bugs")]

mod common;

use backstop_engine::core::planted::{self, Bug};
use backstop_testkit::oracle::{Rule, Violation};
use backstop_testkit::replay::{replay_consumer, replay_producer};
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};

const MAX_CASES: u32 = 2_000;

fn runner() -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases: MAX_CASES,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}

/// Switches `bug` on for this thread while `f` runs.
fn with_bug<T>(bug: Bug, f: impl FnOnce() -> T) -> T {
    planted::set(Some(bug));
    let out = f();
    planted::set(None);
    out
}

/// Searches random consumer runs with `bug` on; returns the violation of the shrunk
/// counterexample, after checking that the same case passes without the bug.
fn consumer_catches(bug: Bug) -> Violation {
    let found = with_bug(bug, || {
        let r = runner().run(
            &(common::consumer_config(), common::consumer_ops(120)),
            |(cfg, ops)| {
                replay_consumer(cfg, &ops)
                    .map(|_| ())
                    .map_err(|v| proptest::test_runner::TestCaseError::fail(v.to_string()))
            },
        );
        match r {
            Err(TestError::Fail(_, case)) => Some(case),
            _ => None,
        }
    });
    let Some((cfg, ops)) = found else {
        panic!("{bug:?}: no violation found in {MAX_CASES} consumer cases");
    };
    let v = with_bug(bug, || replay_consumer(cfg, &ops)).expect_err("the case fails with the bug");
    replay_consumer(cfg, &ops).expect("the same case passes without the bug");
    println!("{bug:?}: {} ops -> {v}", ops.len());
    v
}

fn producer_catches(bug: Bug) -> Violation {
    let found = with_bug(bug, || {
        let r = runner().run(
            &(common::producer_config(), common::producer_ops(120)),
            |(cfg, ops)| {
                replay_producer(cfg, &ops)
                    .map(|_| ())
                    .map_err(|v| proptest::test_runner::TestCaseError::fail(v.to_string()))
            },
        );
        match r {
            Err(TestError::Fail(_, case)) => Some(case),
            _ => None,
        }
    });
    let Some((cfg, ops)) = found else {
        panic!("{bug:?}: no violation found in {MAX_CASES} producer cases");
    };
    let v = with_bug(bug, || replay_producer(cfg, &ops)).expect_err("the case fails with the bug");
    replay_producer(cfg, &ops).expect("the same case passes without the bug");
    println!("{bug:?} (producer): {} ops -> {v}", ops.len());
    v
}

#[test]
fn ack_before_dlq_confirmed_is_caught() {
    let v = consumer_catches(Bug::AckBeforeDlqConfirmed);
    assert_eq!(v.rule, Rule::AckWithoutSuccess, "{v}");
}

#[test]
fn one_retry_too_many_is_caught() {
    // The oracle notices in the step the last allowed attempt fails (no DLQ publish or nack
    // follows), before the extra attempt can even start.
    let v = consumer_catches(Bug::OneRetryTooMany);
    assert!(
        matches!(v.rule, Rule::MissingOutcome | Rule::TooManyAttempts),
        "{v}"
    );
    // In the producer the extra attempt may instead end in a wrong outcome (e.g. CircuitOpen
    // where `Failed` was due).
    let v = producer_catches(Bug::OneRetryTooMany);
    assert!(
        matches!(
            v.rule,
            Rule::MissingOutcome | Rule::TooManyAttempts | Rule::BadOutcome
        ),
        "{v}"
    );
}

#[test]
fn breaker_no_reset_is_caught() {
    let v = consumer_catches(Bug::BreakerNoReset);
    assert_eq!(v.rule, Rule::BreakerDiverged, "{v}");
    let v = producer_catches(Bug::BreakerNoReset);
    assert_eq!(v.rule, Rule::BreakerDiverged, "{v}");
}

#[test]
fn parallelism_off_by_one_is_caught() {
    let v = consumer_catches(Bug::ParallelismOffByOne);
    assert_eq!(v.rule, Rule::Parallelism, "{v}");
}

#[test]
fn with_no_bug_switched_on_the_same_search_finds_nothing() {
    planted::set(None);
    let r = runner().run(
        &(common::consumer_config(), common::consumer_ops(120)),
        |(cfg, ops)| {
            replay_consumer(cfg, &ops)
                .map(|_| ())
                .map_err(|v| proptest::test_runner::TestCaseError::fail(v.to_string()))
        },
    );
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn running_a_key_out_of_order_is_caught() {
    let v = consumer_catches(Bug::KeyOrderIgnored);
    assert_eq!(v.rule, Rule::KeyOrder, "{v}");
}

#[test]
fn ignoring_prior_runs_is_caught() {
    // A redelivery that starts a fresh budget runs as attempt 1 after earlier runs, or runs a
    // message whose budget is spent (instead of the nack that was due for it: MissingOutcome,
    // which is what the search finds first depends on the generators).
    let v = consumer_catches(Bug::IgnorePriorRuns);
    assert!(
        matches!(
            v.rule,
            Rule::BudgetAcrossRedeliveries
                | Rule::WrongAttempt
                | Rule::InvokeNotDue
                | Rule::MissingOutcome
        ),
        "{v}"
    );
}
