//! Tests written to kill mutants that survived `cargo mutants` on the core (docs/mutants.md):
//! each pins a contract that no other test held — metric and log labels, config boundaries,
//! error text — so a change to it now fails a test.

use std::time::Duration;

use backstop_engine::core::{
    parse_duration, splitmix64, BreakerConfig, BreakerState, ConsumerAction, ConsumerConfig,
    ConsumerMachine, DlqReason, ErrorKind, Key, ProducerAction, ProducerConfig, ProducerMachine,
    RetryPolicy, Time,
};

/// docs/architecture.md, "Contracts outside the core": `circuit_breaker_state` is 0 closed, 1 half-open, 2 open.
#[test]
fn breaker_gauge_values_are_the_dashboard_contract() {
    assert_eq!(BreakerState::Closed.gauge(), 0);
    assert_eq!(BreakerState::HalfOpen.gauge(), 1);
    assert_eq!(BreakerState::Open.gauge(), 2);
}

/// The state labels used in transition logs.
#[test]
fn breaker_state_labels() {
    assert_eq!(BreakerState::Closed.as_str(), "closed");
    assert_eq!(BreakerState::HalfOpen.as_str(), "half_open");
    assert_eq!(BreakerState::Open.as_str(), "open");
}

/// docs/architecture.md, "The message walk": an undecodable payload goes to the DLQ with
/// reason `decode`; the reason is part of the dead-letter record.
#[test]
fn dlq_reason_labels() {
    assert_eq!(DlqReason::Exhausted.as_str(), "exhausted");
    assert_eq!(DlqReason::Permanent.as_str(), "permanent");
    assert_eq!(DlqReason::Decode.as_str(), "decode");
}

/// Error kinds print as their metric label (`pulsar_errors_total{kind="timeout"}`, log fields,
/// the DLQ record's kind).
#[test]
fn error_kinds_display_as_their_label() {
    for k in ErrorKind::ALL {
        assert_eq!(k.to_string(), k.as_str());
    }
    assert_eq!(ErrorKind::Timeout.to_string(), "timeout");
}

/// A rejected setting says why, not only which.
#[test]
fn config_errors_carry_a_reason() {
    let e = ConsumerConfig::builder()
        .max_parallelism(0)
        .build()
        .unwrap_err();
    assert_eq!(e.setting(), "max_parallelism");
    assert_eq!(e.reason(), "must be between 1 and 10000");
    assert_eq!(
        e.to_string(),
        "invalid setting `max_parallelism`: must be between 1 and 10000"
    );
    let e = BreakerConfig::builder()
        .failure_threshold(0)
        .build()
        .unwrap_err();
    assert_eq!(e.reason(), "must be at least 1");
}

/// `max_parallelism` is documented as 1..=10 000: both ends are accepted, the next value not.
#[test]
fn max_parallelism_bounds_are_inclusive() {
    let cfg = ConsumerConfig::builder()
        .max_parallelism(10_000)
        .build()
        .unwrap();
    assert_eq!(cfg.max_parallelism(), 10_000);
    assert_eq!(cfg.max_held(), 40_000);
    assert!(ConsumerConfig::builder().max_parallelism(1).build().is_ok());
    assert!(ConsumerConfig::builder()
        .max_parallelism(10_001)
        .build()
        .is_err());
}

/// Plain seconds must be finite, non-negative and below 10^12 s; anything else is a typed
/// error, never a panic or an absurd duration.
#[test]
fn plain_second_durations_outside_the_range_are_rejected() {
    assert_eq!(parse_duration("d", "0").unwrap(), Duration::ZERO);
    assert_eq!(
        parse_duration("d", " 1.5 ").unwrap(),
        Duration::from_millis(1500)
    );
    for bad in ["-1", "-0.5", "1e12", "1e13", "inf", "-inf", "NaN"] {
        let e = parse_duration("retry_delay", bad).unwrap_err();
        assert_eq!(e.setting(), "retry_delay", "{bad}");
        assert!(e.reason().contains(bad), "{bad}: {}", e.reason());
    }
}

/// The policy reports what it was built with.
#[test]
fn retry_policy_accessors() {
    let p = RetryPolicy::builder()
        .max_retries(7)
        .retry_delay(Duration::from_millis(250))
        .build()
        .unwrap();
    assert_eq!(p.max_retries(), 7);
    assert_eq!(p.max_attempts(), 8);
    assert_eq!(p.retry_delay(), Duration::from_millis(250));
}

/// The documented limits are inclusive: at most 1000 retries, at most 24 h of delay, at most
/// 1000 ‰ of jitter.
#[test]
fn retry_policy_limits_are_inclusive() {
    let day = Duration::from_secs(24 * 3600);
    assert!(RetryPolicy::builder().max_retries(1000).build().is_ok());
    assert!(RetryPolicy::builder().max_retries(1001).build().is_err());
    assert!(RetryPolicy::builder().retry_delay(day).build().is_ok());
    assert!(RetryPolicy::builder()
        .retry_delay(Duration::from_secs(3600))
        .build()
        .is_ok());
    let e = RetryPolicy::builder()
        .retry_delay(day + Duration::from_nanos(1))
        .build()
        .unwrap_err();
    assert_eq!(e.setting(), "retry_delay");
    let max = Duration::from_secs(60);
    assert!(RetryPolicy::builder()
        .retry_delay(Duration::from_secs(1))
        .exponential(2, max, 1000)
        .build()
        .is_ok());
}

/// Jitter shaves `0..=jitter_permille` thousandths: with 1 ‰ both the full and the shaved wait
/// occur (and a tiny jitter must not divide by zero).
#[test]
fn jitter_range_includes_both_ends() {
    let p = RetryPolicy::builder()
        .retry_delay(Duration::from_secs(1))
        .exponential(2, Duration::from_secs(60), 1)
        .build()
        .unwrap();
    let seen: std::collections::BTreeSet<Duration> =
        (0..200).map(|key| p.delay_before_retry(1, key)).collect();
    let want: std::collections::BTreeSet<Duration> =
        [Duration::from_millis(999), Duration::from_secs(1)].into();
    assert_eq!(seen, want);
}

/// With the default jitter seed (0) the wait still differs from message to message: jitter
/// exists to spread retries of many messages apart.
#[test]
fn jitter_spreads_messages_with_the_default_seed() {
    let p = RetryPolicy::builder()
        .retry_delay(Duration::from_secs(1))
        .exponential(2, Duration::from_secs(10), 500)
        .build()
        .unwrap();
    let spread: std::collections::BTreeSet<Duration> =
        (0..50).map(|key| p.delay_before_retry(2, key)).collect();
    assert!(spread.len() > 10, "{} distinct waits", spread.len());
}

/// `splitmix64` is SplitMix64's output function: the reference generator seeded with 0 yields
/// 0xe220a8397b1dcdaf, then 0x6e789e6aa1b965f4.
#[test]
fn splitmix64_is_the_reference_function() {
    assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
    assert_eq!(splitmix64(0x9e37_79b9_7f4a_7c15), 0x6e78_9e6a_a1b9_65f4);
    assert_eq!(splitmix64(1), 0x910a_2dec_8902_5cc1);
    assert_eq!(splitmix64(u64::MAX), 0xe4d9_7177_1b65_2c20);
}

/// Keys name dense slot indexes (runtimes index their own tables with them), a freed slot is
/// reused under a new generation, and keys print as `<index>v<generation>`.
#[test]
fn keys_are_dense_reused_and_printable() {
    let cfg = ConsumerConfig::builder()
        .max_parallelism(4)
        .build()
        .unwrap();
    let mut m = ConsumerMachine::new(cfg);
    let t = Time::ZERO;
    let keys: Vec<Key> = (0..3).map(|_| m.handle_delivered(t, true)).collect();
    assert_eq!(
        keys.iter().map(|k| k.index()).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(keys[1].to_string(), "1v0");
    m.handle_finished(t, keys[1], Ok(()));
    let again = m.handle_delivered(t, true);
    assert_eq!(again.index(), 1);
    assert_ne!(again, keys[1]);
    assert_eq!(again.to_string(), "1v1");
    assert_eq!(Key::from_u64(again.as_u64()), again);
}

/// Times are nanoseconds and print as durations since the epoch.
#[test]
fn time_units_and_display() {
    assert_eq!(Time::from_secs(5).as_nanos(), 5_000_000_000);
    assert_eq!(Time::from_millis(1500).to_string(), "1.5s");
}

/// A cancelled call that was waiting for its retry leaves no timer behind: an idle producer
/// with a closed breaker has nothing to wake up for.
#[test]
fn cancelled_waiting_call_leaves_no_timer() {
    let mut m = ProducerMachine::new(ProducerConfig::builder().build().unwrap());
    let t = Time::ZERO;
    let call = m.handle_call(t);
    assert_eq!(
        m.poll_action(),
        Some(ProducerAction::RunBody { call, attempt: 1 })
    );
    assert!(m.handle_body_result(t, call, Err(ErrorKind::Handler)));
    assert_eq!(m.poll_timeout(), Some(Time::from_secs(5)));
    assert!(m.handle_cancelled(t, call));
    assert_eq!(m.calls_in_progress(), 0);
    assert_eq!(m.poll_timeout(), None);
}

/// Retries due at the same time run in the order they were scheduled, also when they were
/// scheduled out of deadline order (exponential backoff puts later-scheduled retries earlier).
#[test]
fn retries_due_together_run_in_scheduling_order() {
    let retry = RetryPolicy::builder()
        .max_retries(3)
        .retry_delay(Duration::from_millis(100))
        .exponential(2, Duration::from_secs(10), 0)
        .build()
        .unwrap();
    let cfg = ConsumerConfig::builder()
        .max_parallelism(3)
        .retry(retry)
        .build()
        .unwrap();
    let mut m = ConsumerMachine::new(cfg);
    let ms = Time::from_millis;
    let [a, b, c] = [0; 3].map(|_| m.handle_delivered(ms(0), true));
    m.handle_finished(ms(0), a, Err(ErrorKind::Handler)); // a: retry at 100
    m.handle_timeout(ms(100)); // a: attempt 2
    m.handle_finished(ms(100), a, Err(ErrorKind::Handler)); // a: retry at 300
    m.handle_finished(ms(150), c, Err(ErrorKind::Handler)); // c: retry at 250, scheduled first
    m.handle_finished(ms(150), b, Err(ErrorKind::Handler)); // b: retry at 250
    while m.poll_action().is_some() {}
    m.handle_timeout(ms(250));
    let invoked: Vec<Key> = std::iter::from_fn(|| m.poll_action())
        .filter_map(|a| match a {
            ConsumerAction::Invoke { key, .. } => Some(key),
            _ => None,
        })
        .collect();
    assert_eq!(invoked, vec![c, b]);
}
