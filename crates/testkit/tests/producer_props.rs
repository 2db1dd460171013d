//! Property: random op sequences against the producer machine: every call ends with exactly one
//! `Complete` carrying the right outcome, attempts ≤ max_retries + 1, the body never re-runs
//! after it succeeded, no `RunBody`/`Publish` while the breaker refuses, the breaker moves like
//! the reference; afterwards everything completes and the breaker closes.

mod common;

use backstop_testkit::replay::replay_producer;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn producer_machine_keeps_every_invariant_and_settles(
        cfg in common::producer_config(),
        ops in common::producer_ops(200),
    ) {
        let report = replay_producer(cfg, &ops);
        prop_assert!(report.is_ok(), "{}", report.unwrap_err());
        let s = report.unwrap().stats;
        prop_assert_eq!(s.sent + s.failed + s.circuit_open + s.cancelled, s.calls);
    }
}

#[test]
fn the_op_generator_covers_refusals_dlq_and_retries() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut open, mut refused, mut dlq, mut sent) = (0, 0, 0, 0);
    for _ in 0..300 {
        let cfg = common::producer_config()
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let ops = common::producer_ops(200)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let s = replay_producer(cfg, &ops).expect("no violation").stats;
        open += u32::from(s.breaker_opened > 0);
        refused += u32::from(s.circuit_open > 0);
        dlq += u32::from(s.dlq_requested > 0);
        sent += u32::from(s.sent > 0);
    }
    for (what, n) in [
        ("breaker opened", open),
        ("refusals", refused),
        ("DLQ", dlq),
        ("sent", sent),
    ] {
        assert!(n >= 30, "only {n} of 300 runs had {what}");
    }
}
