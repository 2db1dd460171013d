//! Proptest strategies shared by the property suites and the planted-bug proofs.
#![allow(dead_code)]

use std::time::Duration;

use backstop_engine::core::{
    BreakerConfig, ConsumerConfig, ErrorKind, KindSet, ProducerConfig, RetryPolicy, RetryStrategy,
};
use backstop_testkit::replay::{ConsumerOp, ProducerOp};
use proptest::prelude::*;

/// Results as handlers and brokers produce them: mostly Ok, the breaker's kinds often.
pub fn result() -> impl Strategy<Value = Result<(), ErrorKind>> {
    prop_oneof![
        4 => Just(Ok(())),
        3 => prop_oneof![Just(ErrorKind::Connection), Just(ErrorKind::Timeout)].prop_map(Err),
        2 => prop::sample::select(ErrorKind::ALL.to_vec()).prop_map(Err),
    ]
}

/// A retry policy: 0..=3 retries, 0..=3 s apart, fixed or exponential with jitter.
pub fn retry_policy() -> impl Strategy<Value = RetryPolicy> {
    (
        0u32..=3,
        0u64..=3000,
        prop::option::of((1u32..=3, 0u64..=6000, 0u16..=1000)),
        any::<u64>(),
    )
        .prop_map(|(retries, delay, exp, seed)| {
            let delay = Duration::from_millis(delay);
            let mut b = RetryPolicy::builder()
                .max_retries(retries)
                .retry_delay(delay)
                .jitter_seed(seed);
            if let Some((factor, extra, jitter)) = exp {
                b = b.exponential(factor, delay + Duration::from_millis(extra), jitter);
            }
            b.build().expect("valid policy")
        })
}

/// A breaker: threshold 1..=5, recovery 1 ms..=10 s, one probe.
pub fn breaker_config() -> impl Strategy<Value = BreakerConfig> {
    (1u32..=5, 1u64..=10_000).prop_map(|(threshold, recovery)| {
        BreakerConfig::builder()
            .failure_threshold(threshold)
            .recovery_timeout(Duration::from_millis(recovery))
            .build()
            .expect("valid breaker")
    })
}

pub fn consumer_config() -> impl Strategy<Value = ConsumerConfig> {
    (
        1u32..=4,
        0u32..=6,
        retry_policy(),
        consumer_breaker_config(),
        any::<bool>(),
        prop::sample::select(vec![
            RetryStrategy::InProcess,
            RetryStrategy::InProcess,
            RetryStrategy::Nack,
            RetryStrategy::Topic,
        ]),
        any::<bool>(),
    )
        .prop_map(|(par, extra, retry, breaker, dlq, strategy, ordered)| {
            ConsumerConfig::builder()
                .max_parallelism(par)
                .max_held(par + extra)
                .retry(retry)
                .breaker(breaker)
                .dead_letter(dlq)
                .retry_strategy(strategy)
                .ordered(ordered && strategy == RetryStrategy::InProcess)
                .build()
                .expect("valid consumer")
        })
}

pub fn producer_config() -> impl Strategy<Value = ProducerConfig> {
    (retry_policy(), breaker_config(), any::<bool>()).prop_map(|(retry, breaker, dlq)| {
        ProducerConfig::builder()
            .retry(retry)
            .breaker(breaker)
            .dead_letter(dlq)
            .build()
            .expect("valid producer")
    })
}

/// How a DLQ, parking or retry-topic publish fails: mostly a transient kind (which the consumer's
/// breaker counts), sometimes one it must not count.
pub fn record_failure() -> impl Strategy<Value = ErrorKind> {
    prop::sample::select(vec![
        ErrorKind::Connection,
        ErrorKind::Connection,
        ErrorKind::Timeout,
        ErrorKind::Rejected,
        ErrorKind::Auth,
    ])
}

/// A consumer's breaker: sometimes it also counts Rejected, so a rejected DLQ or retry-topic
/// publish (never counted: only transient record failures are) is told apart by the oracle.
fn consumer_breaker_config() -> impl Strategy<Value = BreakerConfig> {
    (breaker_config(), prop::bool::weighted(0.3)).prop_map(|(b, rejected)| {
        if !rejected {
            return b;
        }
        BreakerConfig::builder()
            .failure_threshold(b.failure_threshold())
            .recovery_timeout(b.recovery_timeout())
            .half_open_probes(b.half_open_probes())
            .counted(KindSet::TRANSIENT.with(ErrorKind::Rejected))
            .build()
            .expect("valid breaker")
    })
}

pub fn consumer_op() -> impl Strategy<Value = ConsumerOp> {
    prop_oneof![
        4 => prop::bool::weighted(0.1).prop_map(|poison| ConsumerOp::Deliver { poison }),
        3 => (prop::bool::weighted(0.05), any::<u8>())
            .prop_map(|(poison, key)| ConsumerOp::DeliverKeyed { poison, key }),
        6 => (any::<u8>(), result()).prop_map(|(pick, result)| ConsumerOp::Finish { pick, result }),
        2 => (any::<u8>(), prop::bool::weighted(0.7), record_failure())
            .prop_map(|(pick, ok, kind)| ConsumerOp::DlqResult {
                pick,
                result: if ok { Ok(()) } else { Err(kind) },
            }),
        1 => (any::<u8>(), prop::bool::weighted(0.7), record_failure())
            .prop_map(|(pick, ok, kind)| ConsumerOp::RetryResult {
                pick,
                result: if ok { Ok(()) } else { Err(kind) },
            }),
        1 => any::<u8>().prop_map(|pick| ConsumerOp::Late { pick }),
        2 => (any::<u8>(), prop::bool::weighted(0.05))
            .prop_map(|(pick, poison)| ConsumerOp::Redeliver { pick, poison }),
        2 => (0u16..=4000).prop_map(|millis| ConsumerOp::Advance { millis }),
        1 => Just(ConsumerOp::Timeout),
        2 => Just(ConsumerOp::JumpToTimeout),
        // Rare, so most runs get far before shutting down.
        1 => prop::bool::weighted(0.08).prop_flat_map(|now| {
            if now {
                (0u16..=3000).prop_map(|grace_millis| ConsumerOp::Shutdown { grace_millis }).boxed()
            } else {
                Just(ConsumerOp::Timeout).boxed()
            }
        }),
    ]
}

pub fn consumer_ops(max: usize) -> impl Strategy<Value = Vec<ConsumerOp>> {
    prop::collection::vec(consumer_op(), 0..max)
}

pub fn producer_op() -> impl Strategy<Value = ProducerOp> {
    prop_oneof![
        5 => Just(ProducerOp::Call),
        5 => (any::<u8>(), result()).prop_map(|(pick, result)| ProducerOp::Body { pick, result }),
        5 => (any::<u8>(), result()).prop_map(|(pick, result)| ProducerOp::Publish { pick, result }),
        2 => (any::<u8>(), prop::bool::weighted(0.7)).prop_map(|(pick, ok)| ProducerOp::Dlq {
            pick,
            result: if ok { Ok(()) } else { Err(ErrorKind::Timeout) },
        }),
        1 => any::<u8>().prop_map(|pick| ProducerOp::Cancel { pick }),
        1 => any::<u8>().prop_map(|pick| ProducerOp::Late { pick }),
        2 => (0u16..=4000).prop_map(|millis| ProducerOp::Advance { millis }),
        1 => Just(ProducerOp::Timeout),
        2 => Just(ProducerOp::JumpToTimeout),
    ]
}

pub fn producer_ops(max: usize) -> impl Strategy<Value = Vec<ProducerOp>> {
    prop::collection::vec(producer_op(), 0..max)
}
