//! proptest strategies for fault schedules of both tiers, so a failing schedule shrinks to a
//! minimal one (fewer faults, earlier, shorter, smaller counts).

use backstop_engine::core::ErrorKind;
use backstop_mem::Op;
use proptest::prelude::*;

use crate::core_sim::CoreFault;
use crate::scenario::Fault;

fn kind() -> impl Strategy<Value = ErrorKind> {
    prop::sample::select(ErrorKind::ALL.to_vec())
}

fn expected_kind() -> impl Strategy<Value = ErrorKind> {
    prop::sample::select(vec![ErrorKind::Connection, ErrorKind::Timeout])
}

/// One turmoil-tier fault starting in `0..last_ms`, on one of `services` hosts.
pub fn fault(services: u8, last_ms: u32) -> impl Strategy<Value = Fault> {
    let at = 0..last_ms;
    let host = 0..services.max(1);
    prop_oneof![
        (at.clone(), 100u32..8_000, host.clone()).prop_map(|(at_ms, dur_ms, host)| {
            Fault::Partition {
                at_ms,
                dur_ms,
                host,
            }
        }),
        (at.clone(), 100u32..4_000, host.clone()).prop_map(|(at_ms, dur_ms, host)| Fault::Hold {
            at_ms,
            dur_ms,
            host
        }),
        (at.clone(), 500u32..10_000, 100u32..1_500).prop_map(|(at_ms, dur_ms, max_ms)| {
            Fault::Latency {
                at_ms,
                dur_ms,
                max_ms,
            }
        }),
        (at.clone(), 100u32..5_000)
            .prop_map(|(at_ms, dur_ms)| Fault::BrokerHostCrash { at_ms, dur_ms }),
        at.clone().prop_map(|at_ms| Fault::BrokerRestart { at_ms }),
        (
            at.clone(),
            prop::sample::select(Op::ALL.to_vec()),
            1u8..6,
            kind(),
            any::<bool>()
        )
            .prop_map(
                |(at_ms, op, count, kind, after_effect)| Fault::BrokerOpFailure {
                    at_ms,
                    op,
                    count,
                    kind,
                    after_effect,
                }
            ),
        (at.clone(), 500u32..8_000)
            .prop_map(|(at_ms, dur_ms)| Fault::BrokerOffline { at_ms, dur_ms }),
        at.clone()
            .prop_map(|at_ms| Fault::DropConnections { at_ms }),
        (at.clone(), 100u32..6_000, host).prop_map(|(at_ms, dur_ms, host)| {
            Fault::ServiceCrash {
                at_ms,
                dur_ms,
                host,
            }
        }),
        (at.clone(), 500u32..12_000, expected_kind()).prop_map(|(at_ms, dur_ms, kind)| {
            Fault::DownstreamOutage {
                at_ms,
                dur_ms,
                kind,
            }
        }),
        (at.clone(), 1u8..8, kind()).prop_map(|(at_ms, count, kind)| Fault::HandlerErrors {
            at_ms,
            count,
            kind
        }),
        (at, 100u32..5_000, 50u32..2_000).prop_map(|(at_ms, dur_ms, extra_ms)| {
            Fault::SlowHandlers {
                at_ms,
                dur_ms,
                extra_ms,
            }
        }),
    ]
}

/// A turmoil-tier schedule of up to `max` faults.
pub fn faults(services: u8, last_ms: u32, max: usize) -> impl Strategy<Value = Vec<Fault>> {
    prop::collection::vec(fault(services, last_ms), 0..=max)
}

/// One pure-core fault starting in `0..last_ms`.
pub fn core_fault(last_ms: u32) -> impl Strategy<Value = CoreFault> {
    let at = 0..last_ms;
    prop_oneof![
        3 => (at.clone(), 1u8..10, kind())
            .prop_map(|(at_ms, count, kind)| CoreFault::HandlerErrors { at_ms, count, kind }),
        2 => (at.clone(), 100u32..15_000, expected_kind())
            .prop_map(|(at_ms, dur_ms, kind)| CoreFault::Outage { at_ms, dur_ms, kind }),
        1 => (at.clone(), 100u32..8_000)
            .prop_map(|(at_ms, dur_ms)| CoreFault::DlqOutage { at_ms, dur_ms }),
        1 => (at.clone(), 100u32..8_000)
            .prop_map(|(at_ms, dur_ms)| CoreFault::BrokerOutage { at_ms, dur_ms }),
        1 => (at.clone(), 1u8..6, kind())
            .prop_map(|(at_ms, count, kind)| CoreFault::PublishErrors { at_ms, count, kind }),
        1 => (at.clone(), 100u32..5_000, 50u32..3_000)
            .prop_map(|(at_ms, dur_ms, extra_ms)| CoreFault::Slow { at_ms, dur_ms, extra_ms }),
        1 => at.clone().prop_map(|at_ms| CoreFault::Crash { at_ms }),
        2 => (at.clone(), 1u8..20).prop_map(|(at_ms, count)| CoreFault::Burst { at_ms, count }),
        1 => at.prop_map(|at_ms| CoreFault::Poison { at_ms }),
    ]
}

/// A pure-core schedule of up to `max` faults.
pub fn core_faults(last_ms: u32, max: usize) -> impl Strategy<Value = Vec<CoreFault>> {
    prop::collection::vec(core_fault(last_ms), 0..=max)
}
