//! The turmoil tier's proof that the retry-topic strategy keeps the attempt budget across a
//! service crash (issue 10): the service host is killed while retry copies wait in
//! `orders-svc-RETRY`, restarts, and its new consumer continues every message's budget from the
//! copies' `RECONSUMETIMES` — no message is lost, none runs more than `max_retries + 1` times
//! (the broker-side ledger checks this exactly: no network or broker fault is on), and the
//! always-failing messages end in the DLQ after exactly their budget.

use std::time::Duration;

use backstop_engine::core::{ErrorKind, RetryPolicy, RetryStrategy};
use backstop_sim::net;
use backstop_sim::scenario::{Fault, Options, Plan, Scenario};

/// One service; 12 messages published in the first 3 s, every third always failing; retries
/// wait 4 s in the retry topic; the host crashes at 6 s (copies waiting) and is down 5 s.
fn scenario(opts: &Options) -> Scenario {
    let mut sc = Scenario::from_seed(7, opts).calm();
    sc.services = 1;
    sc.consumer.strategy = RetryStrategy::Topic;
    sc.consumer.dlq = true;
    sc.consumer.retry = RetryPolicy::builder()
        .max_retries(2)
        .retry_delay(Duration::from_secs(4))
        .build()
        .expect("valid policy");
    sc.knobs.service_crash = true;
    sc.workload.truncate(12);
    for (i, p) in sc.workload.iter_mut().enumerate() {
        p.host = 0;
        p.at_ms = 500 + 200 * i as u32;
        if i % 3 == 0 {
            p.plan = Plan::Always(ErrorKind::Handler);
        }
    }
    sc.faults = vec![Fault::ServiceCrash {
        at_ms: 6_000,
        dur_ms: 5_000,
        host: 0,
    }];
    sc
}

#[test]
fn a_service_crash_while_copies_wait_keeps_each_messages_budget() {
    let opts = Options {
        trace_lines: 100_000,
        ..Options::default()
    };
    let sc = scenario(&opts);
    let failing = sc
        .workload
        .iter()
        .filter(|p| matches!(p.plan, Plan::Always(_)))
        .count() as u64;
    let passed = net::run(&sc, &opts).unwrap_or_else(|f| panic!("{f}"));
    let trace = passed.trace.expect("trace kept");
    // The crash came mid-retry: copies were published before it, and the restarted consumer
    // (incarnation #1) received copies that carried earlier runs.
    let crash = trace
        .lines()
        .position(|l| l.contains("ServiceCrash"))
        .expect("the crash is in the trace");
    assert!(
        trace
            .lines()
            .take(crash)
            .any(|l| l.contains("PublishRetry")),
        "no retry copy waited when the host crashed"
    );
    let resumed = trace
        .lines()
        .filter(|l| l.contains("svc0#1 consumer event  Received") && !l.contains("prior_runs: 0"))
        .count();
    assert!(
        resumed > 0,
        "the restarted consumer never continued a budget"
    );
    assert_eq!(
        passed.stats.dead_lettered, failing,
        "every always-failing message ends in the DLQ"
    );
    // At most max_retries + 1 runs per failing message, plus what the crash repeated
    // (at-least-once; the ledger bounds it per message). A copy the broker had handed to the
    // dead consumer comes back redelivered, and a redelivery counts as a run that may not have
    // happened: such a message gets one run fewer, never one more.
    assert!(passed.stats.handler_runs <= 12 - failing + 3 * failing + passed.stats.duplicates);
    println!(
        "{resumed} copies resumed after the restart; {} handler runs, {} duplicates",
        passed.stats.handler_runs, passed.stats.duplicates
    );
}

/// The same scenario catches a consumer that ignores the runs a copy carries.
#[cfg(feature = "planted-bugs")]
#[test]
fn ignoring_the_copies_runs_is_caught_after_the_crash() {
    use backstop_engine::core::planted::{self, Bug};
    let opts = Options {
        trace_lines: 0,
        ..Options::default()
    };
    planted::set(Some(Bug::IgnorePriorRuns));
    let r = net::run(&scenario(&opts), &opts);
    planted::set(None);
    let f = r.expect_err("the planted bug must be caught");
    assert!(
        f.detail.contains("attempt budget") || f.rule.is_some(),
        "{f}"
    );
}
