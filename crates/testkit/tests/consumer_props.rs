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

/// The observer-fed oracle (`ConsumerFeed`, used by the simulations) knows an ordered
/// consumer's held messages from the `Received` event's ordering key: a message waiting behind
/// its key's retry is not "stalled", and running it early would be a `KeyOrder` violation.
#[test]
fn the_feed_checks_an_ordered_consumer_through_its_events() {
    use backstop_engine::core::{
        ConsumerAction, ConsumerConfig, ConsumerMachine, Delivered, ErrorKind, Key, RetryPolicy,
        Time,
    };
    use backstop_testkit::feed::ConsumerFeed;
    use std::time::Duration;
    let cfg = ConsumerConfig::builder()
        .max_parallelism(2)
        .retry(
            RetryPolicy::builder()
                .max_retries(1)
                .retry_delay(Duration::from_secs(1))
                .build()
                .unwrap(),
        )
        .ordered(true)
        .build()
        .unwrap();
    let mut m = ConsumerMachine::new(cfg);
    let mut feed = ConsumerFeed::new(cfg);
    let show = |m: &mut ConsumerMachine, feed: &mut ConsumerFeed, now| -> Vec<ConsumerAction> {
        let mut out = Vec::new();
        while let Some(a) = m.poll_action() {
            feed.action(now, a).unwrap();
            out.push(a);
        }
        while let Some(e) = m.poll_event() {
            feed.event(now, e).unwrap();
        }
        feed.flush().unwrap();
        out
    };
    let t0 = Time::ZERO;
    show(&mut m, &mut feed, t0);
    let keyed = |k| Delivered {
        decoded: true,
        prior_runs: 0,
        ordering_key: Some(k),
    };
    let a = m.handle_delivery(t0, keyed(1));
    show(&mut m, &mut feed, t0);
    let b = m.handle_delivery(t0, keyed(1));
    let acts = show(&mut m, &mut feed, t0);
    assert!(!acts.contains(&ConsumerAction::Invoke { key: b, attempt: 1 }));
    m.handle_finished(t0, a, Err(ErrorKind::Handler));
    show(&mut m, &mut feed, t0);
    let t1 = Time::from_secs(1);
    m.handle_timeout(t1);
    show(&mut m, &mut feed, t1);
    m.handle_finished(t1, a, Ok(()));
    let acts = show(&mut m, &mut feed, t1);
    let runs: Vec<Key> = acts
        .iter()
        .filter_map(|x| match x {
            ConsumerAction::Invoke { key, .. } => Some(*key),
            _ => None,
        })
        .collect();
    assert_eq!(runs, vec![b], "b runs once a is done");
    m.handle_finished(t1, b, Ok(()));
    show(&mut m, &mut feed, t1);
    assert_eq!(feed.oracle().stats().held_behind_key, 1);
}
