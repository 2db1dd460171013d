//! Property: the circuit breaker behaves exactly like the oracle's tiny reference breaker over
//! random sequences of acquire / success / failure(kind) / release / time passing.

use std::time::Duration;

use backstop_engine::core::{
    BreakerConfig, BreakerState, CircuitBreaker, ErrorKind, KindSet, Permit, Refusal, Time,
};
use backstop_testkit::oracle::{legal_edge, BreakerModel, Ticket};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Acquire,
    Success(u8),
    Failure(u8, ErrorKind),
    Release(u8),
    Advance(u32),
    Timeout,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Acquire),
        3 => any::<u8>().prop_map(Op::Success),
        5 => (any::<u8>(), prop::sample::select(ErrorKind::ALL.to_vec()))
            .prop_map(|(p, k)| Op::Failure(p, k)),
        1 => any::<u8>().prop_map(Op::Release),
        2 => (0u32..=20_000).prop_map(Op::Advance),
        1 => Just(Op::Timeout),
    ]
}

fn config() -> impl Strategy<Value = BreakerConfig> {
    (
        1u32..=5,
        1u64..=15_000,
        1u32..=3,
        prop::collection::vec(prop::sample::select(ErrorKind::ALL.to_vec()), 1..4),
    )
        .prop_map(|(threshold, recovery, probes, kinds)| {
            BreakerConfig::builder()
                .failure_threshold(threshold)
                .recovery_timeout(Duration::from_millis(recovery))
                .half_open_probes(probes)
                .counted(KindSet::of(&kinds))
                .build()
                .unwrap()
        })
}

fn run(cfg: BreakerConfig, ops: &[Op]) -> Result<(u32, u32), TestCaseError> {
    let mut cb = CircuitBreaker::new(cfg);
    let mut model = BreakerModel::new(&cfg);
    let mut held: Vec<(Permit, Ticket)> = Vec::new();
    let mut now = Time::ZERO;
    let (mut opened, mut closed_again) = (0, 0);
    for op in ops {
        match *op {
            Op::Acquire => {
                model.advance(now);
                let want = model.admit();
                match (cb.try_acquire(now), want) {
                    (Ok(p), Some(t)) => {
                        prop_assert_eq!(p.is_probe(), t.probe);
                        held.push((p, t));
                    }
                    (Err(Refusal::Open { until }), None) => {
                        prop_assert_eq!(model.state(), BreakerState::Open);
                        prop_assert_eq!(Some(until), model.reopen_at());
                    }
                    (Err(Refusal::ProbeBusy), None) => {
                        prop_assert_eq!(model.state(), BreakerState::HalfOpen);
                        prop_assert_eq!(model.probes_in_flight(), cfg.half_open_probes());
                    }
                    (got, want) => {
                        return Err(TestCaseError::fail(format!(
                            "try_acquire at {now}: breaker {got:?}, reference {want:?}"
                        )))
                    }
                }
            }
            Op::Success(i) | Op::Failure(i, _) | Op::Release(i) if !held.is_empty() => {
                let (p, t) = held.remove(usize::from(i) % held.len());
                match *op {
                    Op::Success(_) => {
                        cb.on_success(now, p);
                        model.result(now, t, Ok(()));
                    }
                    Op::Failure(_, k) => {
                        cb.on_failure(now, p, k);
                        model.result(now, t, Err(k));
                    }
                    _ => {
                        cb.release(p);
                        model.release(t);
                    }
                }
            }
            Op::Success(_) | Op::Failure(..) | Op::Release(_) => {}
            Op::Advance(ms) => now = now + Duration::from_millis(u64::from(ms)),
            Op::Timeout => {
                cb.handle_timeout(now);
                model.advance(now);
            }
        }
        // Same state, count, probes and deadline; same transitions, all along legal edges.
        prop_assert_eq!(cb.state(), model.state());
        prop_assert_eq!(cb.failures(), model.failures());
        prop_assert_eq!(cb.probes_in_flight(), model.probes_in_flight());
        prop_assert_eq!(cb.poll_timeout(), model.reopen_at());
        prop_assert!(cb.probes_in_flight() <= cfg.half_open_probes());
        let got: Vec<_> = std::iter::from_fn(|| cb.poll_transition()).collect();
        let want = model.take_transitions();
        prop_assert_eq!(
            got.iter().map(|t| (t.from, t.to)).collect::<Vec<_>>(),
            want.clone()
        );
        for t in &got {
            prop_assert!(legal_edge(t.from, t.to), "{:?}", t);
            prop_assert_eq!(t.at, now);
            opened += u32::from(t.to == BreakerState::Open);
            closed_again += u32::from(t.to == BreakerState::Closed);
        }
    }
    Ok((opened, closed_again))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn breaker_matches_the_reference_model(
        cfg in config(),
        ops in prop::collection::vec(op(), 0..300),
    ) {
        run(cfg, &ops)?;
    }
}

#[test]
fn the_generator_reaches_open_and_closes_again() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut opened, mut closed) = (0, 0);
    for _ in 0..200 {
        let cfg = config().new_tree(&mut runner).unwrap().current();
        let ops = prop::collection::vec(op(), 0..300)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let (o, c) = run(cfg, &ops).unwrap();
        opened += u32::from(o > 0);
        closed += u32::from(c > 0);
    }
    assert!(
        opened >= 50 && closed >= 20,
        "opened in {opened}, closed again in {closed} of 200"
    );
}
