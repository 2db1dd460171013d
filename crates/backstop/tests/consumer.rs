//! Consumers on the in-memory broker, under paused tokio time.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::broker::{Broker, OutgoingMessage};
use backstop::{ConsumerSpec, DeadLetterRecord, HandlerError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Msg {
    n: u32,
}

async fn publish(mem: &backstop_mem::MemBroker, topic: &str, ns: impl IntoIterator<Item = u32>) {
    let p = mem.producer(topic).await.unwrap();
    for n in ns {
        p.send(OutgoingMessage::new(
            serde_json::to_vec(&Msg { n }).unwrap(),
        ))
        .await
        .unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn retries_max_retries_plus_one_times_then_dead_letters_and_acks_after_confirmation() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .max_retries(3)
        .retry_delay(Duration::from_secs(5))
        .dlq_topic("in_dlq")
        .build()
        .unwrap();
    let times = Arc::new(Mutex::new(Vec::new()));
    let t2 = times.clone();
    let handle = bs
        .spawn_consumer(spec, move |_m: Msg| {
            t2.lock().unwrap().push(Instant::now());
            async { Err(HandlerError::retryable("write conflict")) }
        })
        .await
        .unwrap();
    publish(&mem, "in", [1]).await;
    common::until(Duration::from_secs(60), || {
        mem.topic_payloads("in_dlq").len() == 1
    })
    .await;
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 4);
    for w in times.windows(2) {
        assert_eq!(w[1] - w[0], Duration::from_secs(5));
    }
    let rec: DeadLetterRecord = serde_json::from_slice(&mem.topic_payloads("in_dlq")[0]).unwrap();
    assert_eq!(rec.origin_topic, "in");
    assert_eq!(rec.subscription.as_deref(), Some("svc"));
    assert_eq!(rec.reason, "exhausted");
    assert_eq!(rec.error_kind, "handler");
    assert!(rec.error.contains("write conflict"));
    assert_eq!(rec.attempts, 4);
    assert_eq!(rec.last_failure_ms - rec.first_failure_ms, 15_000);
    assert_eq!(rec.payload_text.as_deref(), Some("{\"n\":1}"));
    assert!(rec.origin_message_id.is_some());
    let props = mem.topic_messages("in_dlq")[0].properties.clone();
    assert_eq!(props.get("REAL_TOPIC").map(String::as_str), Some("in"));
    assert_eq!(props.get("RECONSUMETIMES").map(String::as_str), Some("4"));
    assert!(props.contains_key("ORIGIN_MESSAGE_ID"));
    common::settle().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let stats = mem.subscription_stats("in", "svc").unwrap();
    assert_eq!(stats.backlog(), 0, "acked after the DLQ publish: {stats:?}");
    let report = handle.shutdown().await;
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(report.acked, 1);
    assert_eq!(report.retried, 3);
}

/// The probe of issue 10: `max_retries = 1`, `retry_delay = 1s`, no DLQ, a handler that always
/// fails. It used to run 300 times in 300 s (every redelivery a fresh budget); now it runs
/// `max_retries + 1` times, is parked on `<topic>-<subscription>-PARKED` and acked only after
/// that record is confirmed.
#[tokio::test(start_paused = true)]
async fn without_a_dlq_an_exhausted_message_is_parked_after_max_retries_plus_one_runs() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .max_retries(1)
        .retry_delay(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_eq!(spec.parking_topic().as_deref(), Some("in-svc-PARKED"));
    let runs = Arc::new(AtomicU32::new(0));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let (r2, a2) = (runs.clone(), attempts.clone());
    let handle = bs
        .spawn_consumer_with_delivery(spec, move |_m: Msg, d: backstop::Delivery| {
            r2.fetch_add(1, Ordering::SeqCst);
            a2.lock().unwrap().push(d.attempt());
            async { Err(HandlerError::retryable("nope")) }
        })
        .await
        .unwrap();
    publish(&mem, "in", [1]).await;
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "max_retries + 1 runs in 300 s"
    );
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2]);
    let parked = mem.topic_messages("in-svc-PARKED");
    assert_eq!(parked.len(), 1, "one parked record");
    let rec: DeadLetterRecord = serde_json::from_slice(&parked[0].payload).unwrap();
    assert_eq!(
        (rec.reason.as_str(), rec.attempts, rec.origin_topic.as_str()),
        ("exhausted", 2, "in")
    );
    assert_eq!(rec.payload_text.as_deref(), Some("{\"n\":1}"));
    let stats = mem.subscription_stats("in", "svc").unwrap();
    assert_eq!(
        stats.backlog(),
        0,
        "acked after the park was confirmed: {stats:?}"
    );
    let text = bs.metrics().render();
    assert!(
        text.contains("pulsar_messages_parked_total{subscription=\"svc\",topic=\"in\"} 1"),
        "{text}"
    );
    let report = handle.shutdown().await;
    assert_eq!(
        (
            report.invoked,
            report.parked,
            report.dead_lettered,
            report.acked,
            report.nacked
        ),
        (2, 1, 0, 1, 0),
        "{report:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_park_is_nacked_and_the_redelivery_is_parked_without_another_run() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .max_retries(1)
        .retry_delay(Duration::from_secs(1))
        .nack_delay(Duration::from_secs(1))
        .build()
        .unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let r2 = runs.clone();
    let handle = bs
        .spawn_consumer(spec, move |_m: Msg| {
            r2.fetch_add(1, Ordering::SeqCst);
            async { Err(HandlerError::retryable("nope")) }
        })
        .await
        .unwrap();
    publish(&mem, "in", [1]).await;
    // The first park publish fails: nothing acked, the message comes back.
    mem.faults()
        .fail_next(backstop_mem::Op::Send, 1, backstop::ErrorKind::Rejected);
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "no run after the budget was spent"
    );
    assert_eq!(mem.topic_messages("in-svc-PARKED").len(), 1);
    assert_eq!(mem.subscription_stats("in", "svc").unwrap().backlog(), 0);
    let report = handle.shutdown().await;
    assert_eq!(
        (
            report.parked,
            report.nacked,
            report.arrived_spent,
            report.acked
        ),
        (1, 1, 1, 1),
        "{report:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn with_parking_off_an_exhausted_message_is_nacked_never_acked_and_not_run_again() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .max_retries(1)
        .retry_delay(Duration::from_secs(1))
        .parking(false)
        .build()
        .unwrap();
    assert_eq!(spec.parking_topic(), None);
    let runs = Arc::new(AtomicU32::new(0));
    let r2 = runs.clone();
    let handle = bs
        .spawn_consumer(spec, move |_m: Msg| {
            r2.fetch_add(1, Ordering::SeqCst);
            async { Err(HandlerError::retryable("nope")) }
        })
        .await
        .unwrap();
    publish(&mem, "in", [1]).await;
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "max_retries + 1 runs in 300 s"
    );
    let report = handle.shutdown_within(Duration::from_secs(1)).await;
    assert_eq!(report.acked, 0, "never acked: {report:?}");
    assert!(
        report.nacked >= 2 && report.arrived_spent >= 1,
        "{report:?}"
    );
    let stats = mem.subscription_stats("in", "svc").unwrap();
    assert_eq!(
        stats.backlog(),
        1,
        "the message is still there to be redelivered: {stats:?}"
    );
}

/// A retry copy (the Java client's properties) continues the budget of the runs before it.
#[tokio::test(start_paused = true)]
async fn a_copy_with_reconsumetimes_for_this_topic_continues_the_budget() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .max_retries(3)
        .retry_delay(Duration::from_secs(1))
        .dlq_topic("in_dlq")
        .build()
        .unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let a2 = attempts.clone();
    let handle = bs
        .spawn_consumer_with_delivery(spec, move |m: Msg, d: backstop::Delivery| {
            a2.lock().unwrap().push((m.n, d.attempt()));
            async { Err(HandlerError::retryable("nope")) }
        })
        .await
        .unwrap();
    let p = mem.producer("in").await.unwrap();
    let copy = |n: u32, real: &str, times: &str| {
        let mut m = OutgoingMessage::new(serde_json::to_vec(&Msg { n }).unwrap());
        m.properties.insert("REAL_TOPIC".into(), real.into());
        m.properties.insert("RECONSUMETIMES".into(), times.into());
        m
    };
    p.send(copy(1, "in", "2")).await.unwrap(); // two runs before: attempts 3 and 4
    p.send(copy(2, "persistent://public/default/in", "9"))
        .await
        .unwrap(); // spent
    p.send(copy(3, "other", "9")).await.unwrap(); // a copy made for another topic: afresh
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut seen = attempts.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, vec![(1, 3), (1, 4), (3, 1), (3, 2), (3, 3), (3, 4)]);
    let dlq = mem.topic_messages("in_dlq");
    assert_eq!(dlq.len(), 3);
    let report = handle.shutdown().await;
    assert_eq!(
        (report.arrived_spent, report.dead_lettered),
        (1, 3),
        "{report:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn poison_goes_straight_to_the_dlq_with_reason_decode() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .dlq_topic("in_dlq")
        .build()
        .unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let r2 = runs.clone();
    let handle = bs
        .spawn_consumer(spec, move |_m: Msg| {
            r2.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
        .await
        .unwrap();
    mem.producer("in")
        .await
        .unwrap()
        .send(OutgoingMessage::new(b"{not json".to_vec()))
        .await
        .unwrap();
    common::until(Duration::from_secs(5), || {
        mem.topic_payloads("in_dlq").len() == 1
    })
    .await;
    let rec: DeadLetterRecord = serde_json::from_slice(&mem.topic_payloads("in_dlq")[0]).unwrap();
    assert_eq!(rec.reason, "decode");
    assert_eq!(rec.error_kind, "decode");
    assert_eq!(rec.attempts, 0);
    assert_eq!(rec.payload_text.as_deref(), Some("{not json"));
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the handler never saw it");
    handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn never_more_than_max_parallelism_handlers_in_flight() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .max_parallelism(5)
        .build()
        .unwrap();
    let now = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let (n2, p2, d2) = (now.clone(), peak.clone(), done.clone());
    let handle = bs
        .spawn_consumer(spec, move |_m: Msg| {
            let (n, p, d) = (n2.clone(), p2.clone(), d2.clone());
            async move {
                let cur = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(cur, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                d.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .unwrap();
    publish(&mem, "in", 0..50).await;
    common::until(Duration::from_secs(60), || {
        done.load(Ordering::SeqCst) == 50
    })
    .await;
    assert_eq!(
        peak.load(Ordering::SeqCst),
        5,
        "the bound is reached and never exceeded"
    );
    let report = handle.shutdown().await;
    assert_eq!(report.max_in_flight, 5);
    assert_eq!(report.acked, 50);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_is_a_failed_attempt_and_the_consumer_keeps_running() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .max_retries(2)
        .retry_delay(Duration::from_secs(1))
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let handle = bs
        .spawn_consumer(spec, move |m: Msg| {
            let first = {
                let mut s = s2.lock().unwrap();
                let first = !s.contains(&m.n);
                s.push(m.n);
                first
            };
            async move {
                if m.n == 1 && first {
                    panic!("handler bug");
                }
                Ok(())
            }
        })
        .await
        .unwrap();
    publish(&mem, "in", [1, 2, 3]).await;
    common::until(Duration::from_secs(10), || seen.lock().unwrap().len() == 4).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(&mem, "in", [4]).await;
    common::until(Duration::from_secs(10), || {
        seen.lock().unwrap().contains(&4)
    })
    .await;
    let report = handle.shutdown().await;
    assert_eq!(report.panicked, 1);
    assert_eq!(report.acked, 4);
    assert!(bs
        .metrics()
        .render()
        .contains("pulsar_errors_total{kind=\"panic\",topic=\"in\"} 1"));
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_after_five_connection_failures_pauses_then_probes_once_after_30s() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .max_parallelism(5)
        .max_retries(10)
        .retry_delay(Duration::from_secs(1))
        .build()
        .unwrap();
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let calls = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let (d2, c2) = (down.clone(), calls.clone());
    let handle = bs
        .spawn_consumer(spec, move |_m: Msg| {
            c2.lock().unwrap().push(Instant::now());
            let down = d2.load(Ordering::SeqCst);
            async move {
                if down {
                    Err(HandlerError::connection("user store unreachable"))
                } else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
    let start = Instant::now();
    publish(&mem, "in", 0..10).await;
    common::until(Duration::from_secs(5), || calls.lock().unwrap().len() >= 5).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let text = bs.metrics().render();
    assert!(
        text.contains("circuit_breaker_state{breaker=\"consumer:in/svc\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("circuit_breaker_failures{breaker=\"consumer:in/svc\"} 5"),
        "{text}"
    );
    // Slots freed by the first four failures were refilled before the fifth opened the breaker:
    // 5 + 4 invocations, the last four of which report after the transition and are ignored.
    let at_open = calls.lock().unwrap().len();
    assert_eq!(at_open, 9);
    // Open for 30 s: retries fall due after 1 s but must not run.
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(
        calls.lock().unwrap().len(),
        at_open,
        "no invocation while open, retries not burned"
    );
    down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(990)).await;
    let probe_time = {
        let c = calls.lock().unwrap();
        assert_eq!(
            c.len(),
            at_open + 1,
            "exactly one probe at the recovery timeout"
        );
        c[at_open]
    };
    assert!(probe_time - start >= Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        calls.lock().unwrap().len(),
        at_open + 1,
        "nothing else while the probe runs"
    );
    common::until(Duration::from_secs(30), || {
        calls.lock().unwrap().len() >= at_open + 10
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = handle.shutdown().await;
    assert_eq!(report.acked, 10, "{report:?}");
    let text = bs.metrics().render();
    assert!(
        text.contains("circuit_breaker_state{breaker=\"consumer:in/svc\"} 0"),
        "{text}"
    );
    assert!(text.contains("from=\"open\",to=\"half_open\""));
    assert!(text.contains("from=\"half_open\",to=\"closed\""));
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_lets_in_flight_finish_within_the_grace() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .max_parallelism(2)
        .build()
        .unwrap();
    let handle = bs
        .spawn_consumer(spec, |_m: Msg| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(())
        })
        .await
        .unwrap();
    publish(&mem, "in", 0..6).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = handle.shutdown_within(Duration::from_secs(5)).await;
    assert_eq!(
        report.acked, 2,
        "the two in flight finished and were acked: {report:?}"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    let stats = mem.subscription_stats("in", "svc").unwrap();
    assert_eq!(
        stats.backlog(),
        4,
        "the rest stays for redelivery: {stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_deadline_nacks_what_is_still_running_and_acks_nothing_unhandled() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .max_parallelism(2)
        .build()
        .unwrap();
    let handle = bs
        .spawn_consumer(spec, |_m: Msg| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        })
        .await
        .unwrap();
    publish(&mem, "in", 0..3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = handle.shutdown_within(Duration::from_secs(1)).await;
    assert_eq!(report.acked, 0, "{report:?}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let stats = mem.subscription_stats("in", "svc").unwrap();
    assert_eq!(stats.backlog(), 3, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_transiently_failing_ack_is_retried_until_the_broker_has_it() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc").build().unwrap();
    let handle = bs
        .spawn_consumer(spec, |_m: Msg| async { Ok(()) })
        .await
        .unwrap();
    mem.faults()
        .fail_next(backstop_mem::Op::Ack, 2, backstop::ErrorKind::Connection);
    publish(&mem, "in", [1]).await;
    common::until(Duration::from_secs(5), || {
        mem.subscription_stats("in", "svc")
            .is_some_and(|s| s.acked == 1)
    })
    .await;
    let stats = mem.subscription_stats("in", "svc").unwrap();
    assert_eq!(stats.backlog(), 0, "{stats:?}");
    assert!(bs
        .metrics()
        .render()
        .contains("pulsar_errors_total{kind=\"connection\",topic=\"in\"} 2"));
    handle.shutdown().await;
}

/// The nack strategy: each retry is a broker redelivery after the retry delay; the budget is
/// the same as in process.
#[tokio::test(start_paused = true)]
async fn the_nack_strategy_retries_through_the_broker_with_one_budget() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .max_retries(2)
        .retry_delay(Duration::from_secs(2))
        .retry_strategy(backstop::RetryStrategy::Nack)
        .dlq_topic("in_dlq")
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let handle = bs
        .spawn_consumer_with_delivery(spec, move |_m: Msg, d: backstop::Delivery| {
            s2.lock()
                .unwrap()
                .push((Instant::now(), d.attempt(), d.redelivery_count()));
            async { Err(HandlerError::retryable("nope")) }
        })
        .await
        .unwrap();
    publish(&mem, "in", [1]).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    let seen = seen.lock().unwrap().clone();
    let attempts: Vec<(u32, u32)> = seen.iter().map(|s| (s.1, s.2)).collect();
    assert_eq!(
        attempts,
        vec![(1, 0), (2, 1), (3, 2)],
        "one budget of 3 runs"
    );
    for w in seen.windows(2) {
        assert!(
            w[1].0 - w[0].0 >= Duration::from_secs(2),
            "the broker kept it 2 s"
        );
    }
    let rec: DeadLetterRecord = serde_json::from_slice(&mem.topic_payloads("in_dlq")[0]).unwrap();
    assert_eq!((rec.reason.as_str(), rec.attempts), ("exhausted", 3));
    assert_eq!(mem.subscription_stats("in", "svc").unwrap().backlog(), 0);
    let report = handle.shutdown().await;
    assert_eq!(
        (
            report.invoked,
            report.retried,
            report.nacked,
            report.dead_lettered
        ),
        (3, 2, 2, 1),
        "{report:?}"
    );
}

/// The retry-topic strategy: each retry is a copy on `<topic>-<subscription>-RETRY` delivered
/// after the retry delay, with the Java client's properties; the original is acked once the
/// copy is confirmed; the budget is the same.
#[tokio::test(start_paused = true)]
async fn the_retry_topic_strategy_republishes_with_java_properties_and_one_budget() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .max_retries(2)
        .retry_delay(Duration::from_secs(5))
        .retry_strategy(backstop::RetryStrategy::Topic)
        .dlq_topic("in_dlq")
        .build()
        .unwrap();
    assert_eq!(spec.retry_topic_name().as_deref(), Some("in-svc-RETRY"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let handle = bs
        .spawn_consumer_with_delivery(spec, move |_m: Msg, d: backstop::Delivery| {
            s2.lock()
                .unwrap()
                .push((Instant::now(), d.attempt(), d.topic().to_string()));
            async { Err(HandlerError::retryable("nope")) }
        })
        .await
        .unwrap();
    publish(&mem, "in", [1]).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    let seen = seen.lock().unwrap().clone();
    let runs: Vec<(u32, &str)> = seen.iter().map(|s| (s.1, s.2.as_str())).collect();
    assert_eq!(
        runs,
        vec![(1, "in"), (2, "in-svc-RETRY"), (3, "in-svc-RETRY")],
        "one budget of 3 runs"
    );
    for w in seen.windows(2) {
        assert!(
            w[1].0 - w[0].0 >= Duration::from_secs(5),
            "delivered after the delay"
        );
    }
    let original = mem.topic_messages("in")[0].id.to_string();
    let copies = mem.topic_messages("in-svc-RETRY");
    assert_eq!(copies.len(), 2);
    for (i, c) in copies.iter().enumerate() {
        let p = |k: &str| c.properties.get(k).map(String::as_str);
        assert_eq!(p("RECONSUMETIMES"), Some((i + 1).to_string().as_str()));
        assert_eq!(p("DELAY_TIME"), Some("5000"));
        assert_eq!(p("REAL_TOPIC"), Some("in"));
        assert_eq!(p("RETRY_TOPIC"), Some("in-svc-RETRY"));
        assert_eq!(p("ORIGIN_MESSAGE_ID"), Some(original.as_str()));
        assert_eq!(c.payload, b"{\"n\":1}");
    }
    let rec: DeadLetterRecord = serde_json::from_slice(&mem.topic_payloads("in_dlq")[0]).unwrap();
    assert_eq!((rec.reason.as_str(), rec.attempts), ("exhausted", 3));
    assert_eq!(rec.origin_message_id.as_deref(), Some(original.as_str()));
    assert_eq!(mem.subscription_stats("in", "svc").unwrap().backlog(), 0);
    assert_eq!(
        mem.subscription_stats("in-svc-RETRY", "svc")
            .unwrap()
            .backlog(),
        0
    );
    let report = handle.shutdown().await;
    assert_eq!(
        (
            report.invoked,
            report.retried,
            report.acked,
            report.nacked,
            report.dead_lettered
        ),
        (3, 2, 3, 0, 1),
        "{report:?}"
    );
}

/// A retry waiting in the retry topic survives the consumer: a new consumer (nothing in
/// memory) runs it when it is due, as the next attempt of the same budget.
#[tokio::test(start_paused = true)]
async fn a_retry_in_the_retry_topic_survives_a_restart_with_its_budget() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .max_retries(1)
        .retry_delay(Duration::from_secs(60))
        .retry_strategy(backstop::RetryStrategy::Topic)
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let first = bs
        .spawn_consumer_with_delivery(spec.clone(), move |_m: Msg, d: backstop::Delivery| {
            s2.lock().unwrap().push(d.attempt());
            async { Err(HandlerError::retryable("nope")) }
        })
        .await
        .unwrap();
    publish(&mem, "in", [1]).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let report = first.shutdown().await;
    assert_eq!(
        (report.invoked, report.acked, report.nacked),
        (1, 1, 0),
        "{report:?}"
    );
    assert_eq!(mem.subscription_stats("in", "svc").unwrap().backlog(), 0);
    let s3 = seen.clone();
    let second = bs
        .spawn_consumer_with_delivery(spec, move |_m: Msg, d: backstop::Delivery| {
            s3.lock().unwrap().push(d.attempt());
            async { Err(HandlerError::retryable("still no")) }
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![1, 2],
        "max_retries + 1 runs in all"
    );
    assert_eq!(mem.topic_messages("in-svc-PARKED").len(), 1, "then parked");
    let report = second.shutdown().await;
    assert_eq!((report.invoked, report.parked), (1, 1), "{report:?}");
}

/// With the retry-topic strategy and a single credit (`max_held` 1), the consumer still reads
/// both topics: a retry copy is not stuck behind an idle main topic, nor the main topic behind
/// an empty retry topic. (Found by the turmoil tier: two receivers each holding the only
/// credit while waiting starved the other topic for good.)
#[tokio::test(start_paused = true)]
async fn with_one_credit_the_retry_topic_and_the_main_topic_both_flow() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .max_parallelism(1)
        .max_held(1)
        .max_retries(2)
        .retry_delay(Duration::from_secs(1))
        .retry_strategy(backstop::RetryStrategy::Topic)
        .build()
        .unwrap();
    let runs = Arc::new(Mutex::new(Vec::new()));
    let r2 = runs.clone();
    let consumer = bs
        .spawn_consumer_with_delivery(spec, move |m: Msg, d: backstop::Delivery| {
            r2.lock().unwrap().push((m.n, d.attempt()));
            let fail = d.attempt() == 1;
            async move {
                if fail {
                    Err(HandlerError::retryable("first run fails"))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
    for round in 0..3 {
        publish(&mem, "in", [round]).await;
        let r3 = runs.clone();
        common::until(Duration::from_secs(30), move || {
            r3.lock().unwrap().contains(&(round, 2))
        })
        .await;
    }
    let report = consumer.shutdown().await;
    assert_eq!((report.invoked, report.retried), (6, 3), "{report:?}");
    assert_eq!(mem.subscription_stats("in", "svc").unwrap().backlog(), 0);
    assert_eq!(
        mem.subscription_stats("in-svc-RETRY", "svc")
            .unwrap()
            .backlog(),
        0
    );
}

/// Per-key ordered retries (on by default for Exclusive subscriptions): while a message of key
/// K waits for its retry, later messages of K are held; other keys flow.
#[tokio::test(start_paused = true)]
async fn ordered_later_messages_of_a_key_wait_for_its_retry_and_other_keys_flow() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .subscription_type(backstop::broker::SubscriptionType::Exclusive)
        .max_parallelism(4)
        .max_retries(2)
        .retry_delay(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(spec.is_ordered(), "the default on Exclusive");
    let runs = Arc::new(Mutex::new(Vec::new()));
    let r2 = runs.clone();
    let handle = bs
        .spawn_consumer_with_delivery(spec, move |m: Msg, d: backstop::Delivery| {
            r2.lock()
                .unwrap()
                .push((d.key().unwrap_or("").to_string(), m.n, d.attempt()));
            let fail = m.n == 1 && d.attempt() == 1;
            async move {
                if fail {
                    Err(HandlerError::retryable("first run of 1 fails"))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
    let p = mem.producer("in").await.unwrap();
    for (key, n) in [("a", 1), ("a", 2), ("b", 3), ("a", 4), ("c", 5)] {
        p.send(OutgoingMessage::new(serde_json::to_vec(&Msg { n }).unwrap()).with_key(key))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let early: Vec<u32> = runs.lock().unwrap().iter().map(|r| r.1).collect();
    assert_eq!(
        early,
        vec![1, 3, 5],
        "a's later messages wait; b and c flow"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    let a: Vec<(u32, u32)> = runs
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.0 == "a")
        .map(|r| (r.1, r.2))
        .collect();
    assert_eq!(
        a,
        vec![(1, 1), (1, 2), (2, 1), (4, 1)],
        "key a in publish order"
    );
    assert_eq!(mem.subscription_stats("in", "svc").unwrap().backlog(), 0);
    let report = handle.shutdown().await;
    assert_eq!((report.acked, report.invoked), (5, 6), "{report:?}");
}

#[test]
fn ordered_is_rejected_where_it_cannot_hold() {
    let err = ConsumerSpec::new("in", "svc")
        .ordered(true)
        .build()
        .unwrap_err();
    assert_eq!(
        err.setting(),
        "ordered",
        "Shared spreads a key over consumers"
    );
    let err = ConsumerSpec::new("in", "svc")
        .subscription_type(backstop::broker::SubscriptionType::KeyShared)
        .ordered(true)
        .retry_strategy(backstop::RetryStrategy::Nack)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "ordered");
    let ks = ConsumerSpec::new("in", "svc")
        .subscription_type(backstop::broker::SubscriptionType::KeyShared)
        .build()
        .unwrap();
    assert!(!ks.is_ordered(), "opt-in on Key_Shared");
    assert!(ConsumerSpec::new("in", "svc")
        .subscription_type(backstop::broker::SubscriptionType::KeyShared)
        .ordered(true)
        .build()
        .unwrap()
        .is_ordered());
}

/// A DLQ publish that fails transiently is retried in place with backoff (the message stays
/// unacked, not nacked) and the failed producer is replaced once; a lasting failure is nacked.
#[tokio::test(start_paused = true)]
async fn transient_dlq_publish_failures_are_retried_in_place_then_nacked() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .max_retries(0)
        .dlq_topic("in_dlq")
        .build()
        .unwrap();
    // The handler rejects the message and breaks the next two sends: the DLQ publish's.
    let faults = mem.faults();
    let handle = bs
        .spawn_consumer(spec, move |_m: Msg| {
            faults.fail_next(backstop_mem::Op::Send, 2, backstop::ErrorKind::Connection);
            async { Err(HandlerError::invalid("rejected")) }
        })
        .await
        .unwrap();
    let producers_before = mem.counters().producers;
    publish(&mem, "in", [1]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        mem.topic_messages("in_dlq").len(),
        1,
        "the third attempt went through"
    );
    assert_eq!(mem.subscription_stats("in", "svc").unwrap().backlog(), 0);
    // one producer for "in" (the test's), DLQ producers: the first and one replacement per
    // failed attempt at most
    let created = mem.counters().producers - producers_before;
    assert!(created <= 4, "{created} producers created");
    let report = handle.shutdown().await;
    assert_eq!((report.dead_lettered, report.nacked), (1, 0), "{report:?}");
    // A lasting outage of the DLQ: after the attempts, nacked (never acked), redelivered.
    let (bs, mem) = common::context();
    let faults = mem.faults();
    let handle = bs
        .spawn_consumer(
            ConsumerSpec::new("in", "svc")
                .max_retries(0)
                .dlq_topic("in_dlq")
                .nack_delay(Duration::from_secs(60))
                .build()
                .unwrap(),
            move |_m: Msg| {
                faults.fail_next(backstop_mem::Op::Send, 3, backstop::ErrorKind::Timeout);
                async { Err(HandlerError::invalid("rejected")) }
            },
        )
        .await
        .unwrap();
    publish(&mem, "in", [1]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(mem.topic_messages("in_dlq").is_empty());
    let stats = mem.subscription_stats("in", "svc").unwrap();
    assert_eq!((stats.acked, stats.nacks), (0, 1), "{stats:?}");
    let report = handle.shutdown_within(Duration::from_secs(1)).await;
    assert_eq!(report.acked, 0, "{report:?}");
}

/// A broker that cannot take DLQ records is an outage the consumer's breaker sees: each DLQ
/// publish that finally fails with Connection counts as a failure, so after five of them the
/// breaker opens and the consumer pauses instead of cycling nack → redelivery → failed
/// publish. Nothing is lost: the messages stay unacked, and once sends work again they are
/// dead-lettered. Rejected publishes (a broker that is up) would not count.
#[tokio::test(start_paused = true)]
async fn dlq_publishes_failing_with_connection_open_the_breaker_and_nothing_is_lost() {
    let (bs, mem) = common::context();
    let spec = ConsumerSpec::new("in", "svc")
        .max_parallelism(5)
        .max_retries(0)
        .dlq_topic("in_dlq")
        .nack_delay(Duration::from_secs(1))
        .build()
        .unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let r2 = runs.clone();
    let handle = bs
        .spawn_consumer(spec, move |_m: Msg| {
            r2.fetch_add(1, Ordering::SeqCst);
            // Invalid: not a kind the breaker counts, so only the DLQ publishes can open it.
            async { Err(HandlerError::invalid("rejected")) }
        })
        .await
        .unwrap();
    publish(&mem, "in", 0..5).await;
    // From now on every send (only the DLQ's) fails with a connection error.
    mem.faults()
        .fail_until_healed(backstop_mem::Op::Send, backstop::ErrorKind::Connection);
    let state = |bs: &backstop::Backstop| {
        let text = bs.metrics().render();
        ["0", "1", "2"]
            .into_iter()
            .find(|s| {
                text.contains(&format!(
                    "circuit_breaker_state{{breaker=\"consumer:in/svc\"}} {s}"
                ))
            })
            .map(str::to_owned)
    };
    common::until(Duration::from_secs(20), || {
        state(&bs).as_deref() == Some("2")
    })
    .await;
    assert_eq!(state(&bs).as_deref(), Some("2"), "the breaker is open");
    let text = bs.metrics().render();
    assert!(
        text.contains("circuit_breaker_failures{breaker=\"consumer:in/svc\"} 5"),
        "{text}"
    );
    assert!(text.contains("from=\"closed\",to=\"open\""), "{text}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        5,
        "one run each, the budget holds"
    );
    // Open: the consumer is paused, nothing is acked and nothing reaches the DLQ.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(mem.topic_messages("in_dlq").is_empty());
    let stats = mem.subscription_stats("in", "svc").unwrap();
    assert_eq!((stats.acked, stats.backlog()), (0, 5), "{stats:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 5);
    // The broker takes records again: after the recovery timeout every message is
    // dead-lettered, none lost, and no handler ran again.
    mem.faults().heal();
    common::until(Duration::from_secs(120), || {
        mem.topic_messages("in_dlq").len() >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(mem.topic_messages("in_dlq").len(), 5);
    assert_eq!(mem.subscription_stats("in", "svc").unwrap().backlog(), 0);
    assert_eq!(runs.load(Ordering::SeqCst), 5);
    let report = handle.shutdown().await;
    assert_eq!(report.dead_lettered, 5, "{report:?}");
    assert!(report.breaker_transitions >= 2, "{report:?}");
}
