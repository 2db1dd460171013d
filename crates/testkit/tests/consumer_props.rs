//! Property: random driver op sequences against the consumer machine never break an oracle (docs/architecture.md)
//! invariant (checked by the oracle after every step), and after the sequence, once every run
//! and DLQ publish succeeds and time moves on, everything drains: all deliveries acked or
//! nacked, the breaker closed, no timer left.

mod common;

use backstop_testkit::replay::replay_consumer;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn consumer_machine_keeps_every_invariant_and_settles(
        cfg in common::consumer_config(),
        ops in common::consumer_ops(200),
    ) {
        let report = replay_consumer(cfg, &ops);
        prop_assert!(report.is_ok(), "{}", report.unwrap_err());
        let s = report.unwrap().stats;
        // Every delivery ended in exactly one ack or nack (the oracle also checks "exactly").
        prop_assert_eq!(s.acked + s.nacked, s.delivered);
        prop_assert!(s.max_in_flight <= cfg.max_parallelism());
    }
}

/// The generator reaches the interesting states often enough to mean something.
#[test]
fn the_op_generator_covers_breaker_retries_dlq_redeliveries_and_shutdown() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut opened, mut closed, mut retried, mut dlq, mut probes, mut parallel) =
        (0, 0, 0, 0, 0, 0);
    let (mut redelivered, mut spent, mut duplicates, mut copies) = (0, 0, 0, 0);
    let mut behind = 0;
    for _ in 0..300 {
        let cfg = common::consumer_config()
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let ops = common::consumer_ops(200)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let s = replay_consumer(cfg, &ops).expect("no violation").stats;
        opened += u32::from(s.breaker_opened > 0);
        closed += u32::from(s.breaker_closed > 0);
        retried += u32::from(s.retried > 0);
        dlq += u32::from(s.dlq_confirmed > 0);
        probes += u32::from(s.probes > 0);
        parallel += u32::from(s.max_in_flight > 1);
        redelivered += u32::from(s.redelivered > 0);
        spent += u32::from(s.arrived_spent > 0);
        duplicates += u32::from(s.duplicate_runs > 0);
        copies += u32::from(s.retry_copies > 0);
        behind += u32::from(s.held_behind_key > 0);
    }
    for (what, n) in [
        ("breaker opened", opened),
        ("breaker closed", closed),
        ("retries", retried),
        ("DLQ confirmed", dlq),
        ("probes", probes),
        ("parallel runs", parallel),
        ("redeliveries", redelivered),
        ("deliveries with their budget spent", spent),
        ("duplicate runs after a success", duplicates),
        ("retry-topic copies", copies),
        ("ordered runs that waited behind their key", behind),
    ] {
        assert!(n >= 30, "only {n} of 300 runs had {what}");
    }
}
