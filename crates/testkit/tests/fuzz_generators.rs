//! The fuzz harness (`fuzz/src`) run by plain `cargo test`, so every CI run exercises the same
//! op generators and checks as the cargo-fuzz targets, without a fuzzer:
//!
//! - deterministic pseudo-random byte buffers decoded into cases, as libFuzzer would;
//! - the checked-in seed corpus (`fuzz/corpus/<target>/seed-*`) and every input the fuzzer
//!   ever crashed on (`fuzz/regressions/<target>/*`);
//! - hand-written regression cases;
//! - a check that the generators still reach the interesting situations (breaker opening and
//!   closing, probes, retries, dead-lettering, late results, shutdown ...);
//! - with `--features planted-bugs`: proof that the harness finds each planted bug.
//!
//! `BACKSTOP_FUZZ_CASES=<n>` changes the number of random cases per target (default 1000);
//! `BACKSTOP_FUZZ_SEED=<seed>` replays one case. See docs/fuzzing.md.

#[path = "../../../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

use backstop_engine::core::{splitmix64, ErrorKind};
use backstop_testkit::replay::{ConsumerOp, ProducerOp};
use harness::breaker::{BreakerCase, BreakerOp, BreakerStats};
use harness::consumer::{ConsumerCase, ConsumerSetup};
use harness::producer::{ProducerCase, ProducerSetup};
use harness::{AnyKind, BreakerSetup, Failure};

/// Pseudo-random bytes for case `seed`: a length up to `max_len`, then splitmix64 output.
fn bytes(seed: u64, max_len: u64) -> Vec<u8> {
    let mut x = splitmix64(seed ^ 0x6261_636b_7374_6f70);
    let len = (x % (max_len + 1)) as usize;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = splitmix64(x);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn cases() -> u64 {
    std::env::var("BACKSTOP_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn seeds() -> Vec<u64> {
    match std::env::var("BACKSTOP_FUZZ_SEED") {
        Ok(v) => vec![v.parse().expect("BACKSTOP_FUZZ_SEED is a u64")],
        Err(_) => (0..cases()).collect(),
    }
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `check` on random buffers; on a failure, panics with the seed, the case and how to
/// replay it (here and under cargo-fuzz).
fn random<C: std::fmt::Debug + for<'a> arbitrary::Arbitrary<'a>>(
    target: &str,
    test: &str,
    max_len: u64,
    check: impl Fn(&[u8]) -> Result<(), Failure>,
) {
    harness::plant_from_env();
    for seed in seeds() {
        let data = bytes(seed, max_len);
        if let Err(f) = check(&data) {
            panic!(
                "{target}: seed {seed}: {f}\n{:#?}\nreplay: BACKSTOP_FUZZ_SEED={seed} cargo test \
                 -p backstop-engine --test fuzz_generators {test}\nas a fuzz input \
                 (echo {} | xxd -r -p > fuzz/regressions/{target}/seed-{seed}):\n",
                harness::decode::<C>(&data),
                hex(&data),
            );
        }
    }
}

fn fuzz_dir(sub: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(sub)
        .join(target)
}

/// Replays the checked-in seed corpus and every kept crash input of `target`.
fn replay_files(target: &str, check: impl Fn(&[u8]) -> Result<(), Failure>) -> usize {
    let mut n = 0;
    for (sub, only_seeds) in [("corpus", true), ("regressions", false)] {
        let Ok(dir) = std::fs::read_dir(fuzz_dir(sub, target)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = dir.map(|e| e.expect("readable dir").path()).collect();
        files.sort();
        for path in files {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if only_seeds && !name.starts_with("seed-") {
                continue;
            }
            let data = std::fs::read(&path).expect("readable input");
            if let Err(f) = check(&data) {
                panic!("{}: {f}", path.display());
            }
            n += 1;
        }
    }
    n
}

// ---------------------------------------------------------------------------------------------
// Random cases
// ---------------------------------------------------------------------------------------------

#[test]
fn breaker_random_cases() {
    random::<BreakerCase>(
        "breaker",
        "breaker_random_cases",
        600,
        harness::breaker::check,
    );
}

#[test]
fn consumer_random_cases() {
    random::<ConsumerCase>(
        "consumer",
        "consumer_random_cases",
        1200,
        harness::consumer::check,
    );
}

#[test]
fn producer_random_cases() {
    random::<ProducerCase>(
        "producer",
        "producer_random_cases",
        1200,
        harness::producer::check,
    );
}

#[test]
fn corpus_and_regression_inputs_pass() {
    assert!(replay_files("breaker", harness::breaker::check) >= 3);
    assert!(replay_files("consumer", harness::consumer::check) >= 3);
    assert!(replay_files("producer", harness::producer::check) >= 3);
}

// ---------------------------------------------------------------------------------------------
// The generators reach what matters
// ---------------------------------------------------------------------------------------------

#[test]
fn breaker_generator_reaches_every_transition() {
    let mut sum = BreakerStats::default();
    for seed in 0..300 {
        let Some(case) = harness::decode::<BreakerCase>(&bytes(seed, 600)) else {
            continue;
        };
        let s = harness::breaker::run(&case).unwrap_or_else(|f| panic!("seed {seed}: {f}"));
        sum.opened += s.opened;
        sum.reopened += s.reopened;
        sum.half_opened += s.half_opened;
        sum.closed += s.closed;
        sum.probes += s.probes;
        sum.probe_busy += s.probe_busy;
        sum.stale += s.stale;
    }
    let counts = [
        sum.opened,
        sum.reopened,
        sum.half_opened,
        sum.closed,
        sum.probes,
        sum.probe_busy,
        sum.stale,
    ];
    assert!(counts.iter().all(|n| *n > 0), "{sum:?}");
}

#[test]
fn consumer_generator_reaches_retries_dlq_breaker_and_late_results() {
    let mut seen = [0u64; 9];
    let mut max_in_flight = 0;
    for seed in 0..300 {
        let Some(case) = harness::decode::<ConsumerCase>(&bytes(seed, 1200)) else {
            continue;
        };
        let s = harness::consumer::run(&case)
            .unwrap_or_else(|f| panic!("seed {seed}: {f}"))
            .stats;
        let now = [
            s.invoked,
            s.retried,
            s.acked,
            s.nacked,
            s.dlq_requested,
            s.dlq_confirmed,
            s.breaker_opened,
            s.probes,
            s.late_results,
        ];
        for (total, n) in seen.iter_mut().zip(now) {
            *total += n;
        }
        max_in_flight = max_in_flight.max(s.max_in_flight);
    }
    assert!(seen.iter().all(|n| *n > 0), "{seen:?}");
    assert!(max_in_flight >= 3, "max in flight {max_in_flight}");
}

/// The generator draws every retry strategy and ordered consumers, and reaches what each adds:
/// retry copies (retry topic), keyed deliveries and runs held behind their key (ordered).
#[test]
fn consumer_generator_reaches_every_strategy_and_ordered_keys() {
    let mut modes = [0u64; 4];
    let (mut copies, mut keyed, mut held) = (0, 0, 0);
    for seed in 0..400 {
        let Some(case) = harness::decode::<ConsumerCase>(&bytes(seed, 1200)) else {
            continue;
        };
        let s = harness::consumer::run(&case)
            .unwrap_or_else(|f| panic!("seed {seed}: {f}"))
            .stats;
        let mode = usize::from(case.setup.mode % 4);
        modes[mode] += 1;
        copies += s.retry_copies;
        if mode == 1 {
            keyed += s.keyed;
            held += s.held_behind_key;
        }
    }
    assert!(modes.iter().all(|n| *n > 0), "cases per mode {modes:?}");
    assert!(
        copies > 0 && keyed > 0 && held > 0,
        "copies {copies}, keyed {keyed}, held {held}"
    );
}

/// An ordered consumer: key 1's head fails and waits for its retry, the next key-1 message is
/// held (not run) while a key-2 message runs; when the head succeeds, key 1 resumes.
#[test]
fn consumer_ordered_holds_a_key_behind_its_retrying_head() {
    let mut setup = consumer_setup(3, 2, true);
    setup.mode = 1;
    let ops = vec![
        ConsumerOp::DeliverKeyed {
            poison: false,
            key: 1,
        },
        ConsumerOp::Finish {
            pick: 0,
            result: Err(ErrorKind::Handler),
        }, // the head waits 100 ms for its retry
        ConsumerOp::DeliverKeyed {
            poison: false,
            key: 1,
        }, // held behind it
        ConsumerOp::DeliverKeyed {
            poison: false,
            key: 2,
        }, // runs
        ConsumerOp::Finish {
            pick: 0,
            result: Ok(()),
        },
        ConsumerOp::JumpToTimeout, // the head's retry runs
        ConsumerOp::Finish {
            pick: 0,
            result: Ok(()),
        }, // then key 1's second message
        ConsumerOp::Finish {
            pick: 0,
            result: Ok(()),
        },
    ];
    let s = harness::consumer::run(&ConsumerCase { setup, ops })
        .unwrap()
        .stats;
    assert_eq!((s.keyed, s.acked, s.retried), (3, 3, 1));
    assert!(s.held_behind_key >= 1, "{s:?}");
}

/// The retry-topic strategy: a failed run becomes a retry copy (acked once its publish is
/// confirmed), with the same budget.
#[test]
fn consumer_retry_topic_publishes_a_copy_and_acks() {
    let mut setup = consumer_setup(1, 2, true);
    setup.mode = 3;
    let ops = vec![
        ConsumerOp::Deliver { poison: false },
        ConsumerOp::Finish {
            pick: 0,
            result: Err(ErrorKind::Handler),
        },
        ConsumerOp::RetryResult {
            pick: 0,
            result: Ok(()),
        },
    ];
    let s = harness::consumer::run(&ConsumerCase { setup, ops })
        .unwrap()
        .stats;
    assert_eq!((s.retry_copies, s.acked, s.invoked), (1, 1, 1), "{s:?}");
}

#[test]
fn producer_generator_reaches_refusals_dlq_and_cancels() {
    let mut seen = [0u64; 6];
    for seed in 0..300 {
        let Some(case) = harness::decode::<ProducerCase>(&bytes(seed, 1200)) else {
            continue;
        };
        let s = harness::producer::run(&case)
            .unwrap_or_else(|f| panic!("seed {seed}: {f}"))
            .stats;
        let now = [
            s.sent,
            s.failed,
            s.circuit_open,
            s.dlq_requested,
            s.breaker_opened,
            s.cancelled,
        ];
        for (total, n) in seen.iter_mut().zip(now) {
            *total += n;
        }
    }
    assert!(seen.iter().all(|n| *n > 0), "{seen:?}");
}

// ---------------------------------------------------------------------------------------------
// Hand-written regressions (inputs the fuzzer crashed on are also kept as files under fuzz/regressions/)
// ---------------------------------------------------------------------------------------------

fn kind(k: ErrorKind) -> AnyKind {
    AnyKind(k)
}

/// Found by the first breaker fuzz run (a harness bug, not an engine bug): after the clock
/// jumps past the end of the open period without a timeout, `poll_timeout` names a time in the
/// past. That is allowed; the driver fires it at once.
#[test]
fn overdue_breaker_wake_up_fires_at_once() {
    let setup = BreakerSetup {
        threshold: 0,
        recovery_ms: 3454,
        probes: 1,
        counted: 0b0101_1010, // Timeout, Decode, Invalid, Panic
    };
    let ops = vec![
        BreakerOp::Acquire,
        BreakerOp::Acquire,
        BreakerOp::Fail {
            permit: 1,
            kind: kind(ErrorKind::Decode),
        },
        BreakerOp::AdvanceToEndOfTime,
        BreakerOp::AdvanceToWake,
        BreakerOp::Acquire,
        BreakerOp::Timeout,
        BreakerOp::Release { permit: 1 },
        BreakerOp::Succeed { permit: 0 },
    ];
    let s = harness::breaker::run(&BreakerCase { setup, ops }).unwrap();
    assert_eq!((s.opened, s.half_opened, s.probes), (1, 1, 1));
}

/// Stale permits from before an open → half-open → closed round trip change nothing.
#[test]
fn stale_results_after_a_round_trip_are_ignored() {
    let setup = BreakerSetup {
        threshold: 1, // 2 failures
        recovery_ms: 99,
        probes: 0,
        counted: 0,
    };
    let fail = |permit| BreakerOp::Fail {
        permit,
        kind: kind(ErrorKind::Timeout),
    };
    let ops = vec![
        BreakerOp::Acquire,
        BreakerOp::Acquire,
        BreakerOp::Acquire,
        BreakerOp::Acquire,
        fail(0),
        fail(0), // opens; two permits left, both stale
        BreakerOp::Advance { ms: 100 },
        BreakerOp::Acquire, // the probe
        BreakerOp::Succeed { permit: 2 },
        fail(0),
        fail(0),
    ];
    let s = harness::breaker::run(&BreakerCase { setup, ops }).unwrap();
    assert_eq!((s.opened, s.closed, s.stale), (1, 1, 2));
}

fn consumer_setup(parallelism: u8, retries: u8, dlq: bool) -> ConsumerSetup {
    ConsumerSetup {
        parallelism: parallelism - 1,
        held_extra: 0,
        retries,
        delay_ms: 100,
        backoff: None,
        dlq,
        breaker: BreakerSetup {
            threshold: 1, // 2 failures
            recovery_ms: 999,
            probes: 0,
            counted: 0,
        },
        mode: 0,
    }
}

/// Two messages fail until the breaker opens; the consumer waits, probes, closes and resumes.
#[test]
fn consumer_pauses_probes_and_resumes() {
    let timeout = Err(ErrorKind::Timeout);
    let ops = vec![
        ConsumerOp::Deliver { poison: false },
        ConsumerOp::Deliver { poison: false },
        ConsumerOp::Finish {
            pick: 0,
            result: timeout,
        },
        ConsumerOp::Finish {
            pick: 0,
            result: timeout,
        }, // opens: both wait for their retry, nothing is invoked
        ConsumerOp::JumpToTimeout, // the retries are due, the breaker is still open
        ConsumerOp::JumpToTimeout, // half-open at 1 s: one probe
        ConsumerOp::Finish {
            pick: 0,
            result: Ok(()),
        },
    ];
    let r = harness::consumer::run(&ConsumerCase {
        setup: consumer_setup(2, 3, true),
        ops,
    })
    .unwrap();
    let s = r.stats;
    assert_eq!((s.breaker_opened, s.breaker_closed, s.probes), (1, 1, 1));
    assert_eq!((s.acked, s.retried), (2, 2));
}

/// Poison goes to the DLQ; a failed DLQ publish nacks; a permanent error is dead-lettered; late
/// results are ignored; shutdown nacks what is not running and lets the run finish.
#[test]
fn consumer_poison_dlq_failure_late_results_and_shutdown() {
    let ops = vec![
        ConsumerOp::Deliver { poison: true },
        ConsumerOp::DlqResult {
            pick: 0,
            result: Err(ErrorKind::Connection),
        },
        ConsumerOp::Deliver { poison: false },
        ConsumerOp::Finish {
            pick: 0,
            result: Err(ErrorKind::Invalid),
        },
        ConsumerOp::Late { pick: 0 },
        ConsumerOp::DlqResult {
            pick: 0,
            result: Ok(()),
        },
        ConsumerOp::Late { pick: 1 },
        ConsumerOp::Deliver { poison: false },
        ConsumerOp::Shutdown { grace_millis: 50 },
        ConsumerOp::Deliver { poison: false },
        ConsumerOp::Finish {
            pick: 0,
            result: Ok(()),
        },
    ];
    let s = harness::consumer::run(&ConsumerCase {
        setup: consumer_setup(1, 2, true),
        ops,
    })
    .unwrap()
    .stats;
    assert_eq!((s.dlq_requested, s.dlq_confirmed), (2, 1));
    // Acked: the dead-lettered one and the run that finished during shutdown. Nacked: the one
    // whose DLQ publish failed and the one delivered during shutdown. Late: one handler result
    // (a late DLQ result is not counted as a handler result).
    assert_eq!((s.acked, s.nacked, s.late_results), (2, 2, 1));
}

/// A call fails over to the DLQ, another is refused while open, the probe call is cancelled and
/// a late result for the first is ignored.
#[test]
fn producer_dlq_refusal_cancel_and_late_result() {
    let setup = ProducerSetup {
        retries: 0,
        delay_ms: 10,
        dlq: true,
        breaker: BreakerSetup {
            threshold: 0, // 1 failure
            recovery_ms: 999,
            probes: 0,
            counted: 0,
        },
    };
    let ops = vec![
        ProducerOp::Call,
        ProducerOp::Body {
            pick: 0,
            result: Ok(()),
        },
        ProducerOp::Publish {
            pick: 0,
            result: Err(ErrorKind::Connection),
        },
        ProducerOp::Call, // refused: open
        ProducerOp::Dlq {
            pick: 0,
            result: Ok(()),
        },
        ProducerOp::Late { pick: 0 },
        ProducerOp::Advance { millis: 1000 },
        ProducerOp::Call, // the probe
        ProducerOp::Cancel { pick: 0 },
    ];
    let s = harness::producer::run(&ProducerCase { setup, ops })
        .unwrap()
        .stats;
    assert_eq!((s.circuit_open, s.dlq_requested, s.cancelled), (1, 1, 1));
}

// ---------------------------------------------------------------------------------------------
// Planted bugs: the harness must find each one (`--features planted-bugs`)
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "planted-bugs")]
mod planted {
    use super::*;
    use backstop_engine::core::planted::{self, Bug};

    /// The first seed below `limit` whose case fails with `bug` planted.
    fn first_failure(
        bug: Bug,
        limit: u64,
        max_len: u64,
        check: impl Fn(&[u8]) -> Result<(), Failure>,
    ) -> Option<(u64, Failure)> {
        planted::set(Some(bug));
        let found =
            (0..limit).find_map(|seed| check(&bytes(seed, max_len)).err().map(|f| (seed, f)));
        planted::set(None);
        found
    }

    #[test]
    fn breaker_target_finds_breaker_no_reset() {
        let found = first_failure(Bug::BreakerNoReset, 2000, 600, harness::breaker::check);
        assert!(found.is_some(), "BreakerNoReset not found");
    }

    #[test]
    fn consumer_target_finds_every_consumer_bug() {
        for bug in [
            Bug::AckBeforeDlqConfirmed,
            Bug::OneRetryTooMany,
            Bug::ParallelismOffByOne,
            Bug::BreakerNoReset,
        ] {
            let found = first_failure(bug, 2000, 1200, harness::consumer::check);
            assert!(found.is_some(), "{bug:?} not found");
        }
    }
}
