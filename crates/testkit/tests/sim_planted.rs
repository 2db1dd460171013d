//! The user-facing simulation catches backstop's own bugs too: with a planted bug in the
//! engine, a user's plain consumer run under `Simulation` fails with the oracle's rule.
//!
//! Run: `cargo test -p backstop-testkit --features planted-bugs --test sim_planted`
#![cfg(feature = "planted-bugs")]

use std::time::Duration;

use backstop_engine::core::planted::{self, Bug};
use backstop_engine::runtime::{ConsumerSpec, HandlerError};
use backstop_testkit::oracle::Rule;
use backstop_testkit::{Broke, FaultProfile, Simulation};

fn run(bug: Option<Bug>, seed: u64) -> backstop_testkit::Report {
    let mut sim = Simulation::new(seed);
    sim.consumer(
        ConsumerSpec::new("orders", "billing")
            .max_parallelism(1)
            .max_retries(2)
            .retry_delay(Duration::from_millis(100))
            .dlq_topic("orders-dlq"),
        |order: u64| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if order % 3 == 0 {
                return Err(HandlerError::retryable("always fails"));
            }
            Ok(())
        },
    );
    for order in 0..12u64 {
        sim.publish_at(Duration::from_millis(10), "orders", order.to_string());
    }
    sim.faults(FaultProfile::none().broker_restarts());
    planted::set(bug);
    let report = sim.run();
    planted::set(None);
    report
}

fn caught(bug: Bug, rules: &[Rule]) {
    let report = run(Some(bug), 1);
    match report.violation.as_ref().map(|v| &v.broke) {
        Some(Broke::Oracle { violation, .. }) if rules.contains(&violation.rule) => {}
        _ => panic!("{bug:?} not caught as {rules:?}:\n{report}"),
    }
    let clean = run(None, 1);
    assert!(clean.passed(), "{clean}");
}

#[test]
fn parallelism_off_by_one_is_caught() {
    caught(Bug::ParallelismOffByOne, &[Rule::Parallelism]);
}

#[test]
fn one_retry_too_many_is_caught() {
    caught(
        Bug::OneRetryTooMany,
        &[Rule::TooManyAttempts, Rule::MissingOutcome],
    );
}

#[test]
fn ack_before_dlq_confirmed_is_caught() {
    caught(
        Bug::AckBeforeDlqConfirmed,
        &[
            Rule::AckWithoutSuccess,
            Rule::DoubleTerminal,
            Rule::BadDeadLetter,
        ],
    );
}
