//! Crashes and outages of a real Apache Pulsar broker, on a broker this test binary owns (so the
//! shared broker at `BACKSTOP_PULSAR_URL` and the tests using it are never disturbed).
//!
//! One test function starts the broker (`scripts/pulsar start` on free ports in
//! 6700-6799 / 8100-8199 / 3200-3299 and its own run dir), runs the scenarios one after the
//! other, and stops the broker when it ends, also when a scenario fails (a drop guard). A
//! failing scenario does not hide the others: each runs, then the test fails naming the failed
//! ones.
//!
//! 1. `restart`: the adapter's producer and subscription survive `kill -9` of the broker and a
//!    restart on the same data (`start --keep-data`).
//! 2. `breaker`: a task's circuit breaker against a real outage (`stop`): publishes fail with
//!    Connection/Timeout, the breaker opens after 5, calls fail fast without a broker call,
//!    turns half-open after the recovery timeout (2 s here), a probe while the broker is still
//!    down re-opens it, and after the restart the probe succeeds and closes it; the
//!    `circuit_breaker_state` gauge follows (2, 1, 2, 0).
//! 3. `kill9_mid_stream`: 2,000 messages through a backstop task and consumer while the broker
//!    is killed with `kill -9` and restarted: every message ends handled (acked) or in the DLQ,
//!    none is lost; duplicates (at-least-once) are counted and printed.
//!
//! Needs Java 17+ and the Pulsar jar cache (`scripts/ensure-deps`); fails loudly without them.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backstop::broker::{
    Broker, BrokerError, MessageId, OutgoingMessage, Producer, Subscription, SubscriptionSpec,
};
use backstop::{
    Backstop, BreakerConfig, BreakerState, ConsumerSpec, DeadLetterRecord, ErrorKind, HandlerError,
    Task, TaskError, TaskSpec,
};
use backstop_pulsar::PulsarBroker;
use common::owned::OwnedBroker;
use common::*;
use serde::{Deserialize, Serialize};

const SCENARIOS: &[(&str, Duration)] = &[
    ("restart", Duration::from_secs(300)),
    ("breaker", Duration::from_secs(300)),
    ("kill9_mid_stream", Duration::from_secs(420)),
];

#[test]
fn crash_and_outage_scenarios_on_an_owned_broker() {
    let owned = OwnedBroker::start("crash", 20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut failed = Vec::new();
    for &(name, limit) in SCENARIOS {
        owned.ensure_running();
        say(&format!("crash: == scenario {name}"));
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            rt.block_on(async {
                tokio::time::timeout(limit, run(name, &owned))
                    .await
                    .unwrap_or_else(|_| panic!("scenario {name} did not finish within {limit:?}"))
            })
        }));
        match result {
            Ok(()) => say(&format!(
                "crash: scenario {name} ok in {:.1?}",
                started.elapsed()
            )),
            Err(_) => {
                say(&format!(
                    "crash: scenario {name} FAILED after {:.1?}",
                    started.elapsed()
                ));
                failed.push(name);
            }
        }
    }
    drop(rt);
    assert!(failed.is_empty(), "failed scenarios: {failed:?}");
}

async fn run(name: &str, owned: &OwnedBroker) {
    match name {
        "restart" => producer_and_subscription_survive_a_broker_crash(owned).await,
        "breaker" => task_breaker_opens_on_an_outage_and_closes_after_the_restart(owned).await,
        "kill9_mid_stream" => kill9_mid_stream_loses_nothing(owned).await,
        other => panic!("unknown scenario {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. restart
// ---------------------------------------------------------------------------------------------

async fn producer_and_subscription_survive_a_broker_crash(owned: &OwnedBroker) {
    let broker = connect_to(&owned.url()).await;
    let topic = unique("restart");
    let mut spec = SubscriptionSpec::new(&topic, "s");
    spec.nack_redelivery_delay = Duration::from_millis(100);
    let sub = broker.subscribe(&spec).await.expect("subscribe");
    let producer = broker.producer(&topic).await.expect("producer");
    producer
        .send(OutgoingMessage::new("before"))
        .await
        .expect("send before");
    let m = recv(&*sub, Duration::from_secs(10)).await;
    sub.ack(&m.id).await.expect("ack");
    producer
        .send(OutgoingMessage::new("unacked"))
        .await
        .expect("send unacked");
    let unacked = recv(&*sub, Duration::from_secs(10)).await;
    assert_eq!(unacked.payload, b"unacked");

    say("restart: kill -9 the broker");
    owned.kill9().await;
    let started = Instant::now();
    let err = producer
        .send(OutgoingMessage::new("during"))
        .await
        .expect_err("send while the broker is down");
    say(&format!(
        "restart: send while down failed after {:.1?}: {err}",
        started.elapsed()
    ));
    assert!(
        matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "bounded by the operation timeout"
    );
    // the broken producer was dropped: the next send tries a new one and fails fast
    let started = Instant::now();
    let err = producer
        .send(OutgoingMessage::new("during"))
        .await
        .expect_err("second send while the broker is down");
    say(&format!(
        "restart: next send while down failed after {:.1?}: {err}",
        started.elapsed()
    ));
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "fails fast");

    owned.start_keep_data().await;
    let back = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match producer.send(OutgoingMessage::new("after")).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
                    "{e}"
                );
                assert!(
                    back.elapsed() < Duration::from_secs(120),
                    "no recovery: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    say(&format!(
        "restart: the same producer sent again {:.1?} after the restart ({attempts} attempts)",
        back.elapsed()
    ));

    // the same subscription gets the new message and the one unacked before the crash
    let mut got = BTreeSet::new();
    while !(got.contains("after") && got.contains("unacked")) {
        let m = recv(&*sub, Duration::from_secs(60)).await;
        sub.ack(&m.id).await.expect("ack after restart");
        got.insert(String::from_utf8(m.payload).expect("utf-8"));
    }
    say(&format!(
        "restart: the same subscription received {got:?} {:.1?} after the restart",
        back.elapsed()
    ));
    // the ack of the pre-crash delivery still names a valid message
    sub.ack(&unacked.id).await.expect("ack of a pre-crash id");
    sub.close().await.expect("close");
    let again = broker.subscribe(&spec).await.expect("resubscribe");
    assert_silent(&*again, Duration::from_secs(3)).await;
    again.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------------
// 2. breaker
// ---------------------------------------------------------------------------------------------

/// Counts every call that reaches the broker (producer creation, send, subscribe), to prove
/// that an open breaker makes none.
#[derive(Clone)]
struct Counting {
    inner: PulsarBroker,
    calls: Arc<AtomicU64>,
}

struct CountingProducer {
    inner: Arc<dyn Producer>,
    calls: Arc<AtomicU64>,
}

#[async_trait]
impl Broker for Counting {
    async fn producer(&self, topic: &str) -> Result<Arc<dyn Producer>, BrokerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let inner = self.inner.producer(topic).await?;
        Ok(Arc::new(CountingProducer {
            inner,
            calls: self.calls.clone(),
        }))
    }

    async fn subscribe(
        &self,
        spec: &SubscriptionSpec,
    ) -> Result<Arc<dyn Subscription>, BrokerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.subscribe(spec).await
    }
}

#[async_trait]
impl Producer for CountingProducer {
    fn topic(&self) -> &str {
        self.inner.topic()
    }

    async fn send(&self, message: OutgoingMessage) -> Result<MessageId, BrokerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.send(message).await
    }
}

/// The value of `family{breaker="NAME"}` in a Prometheus text exposition.
fn breaker_gauge(text: &str, family: &str, breaker: &str) -> Option<i64> {
    let prefix = format!("{family}{{breaker=\"{breaker}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

async fn wait_for_state(task: &Task, want: BreakerState, within: Duration) {
    let started = Instant::now();
    while task.breaker().0 != want {
        assert!(
            started.elapsed() < within,
            "breaker still {:?} after {within:?}, expected {want:?}",
            task.breaker().0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn task_breaker_opens_on_an_outage_and_closes_after_the_restart(owned: &OwnedBroker) {
    const RECOVERY: Duration = Duration::from_secs(2);
    let pulsar = connect_to_with(
        &owned.url(),
        test_options().with_operation_timeout(Duration::from_secs(3)),
    )
    .await;
    let calls = Arc::new(AtomicU64::new(0));
    let broker = Counting {
        inner: pulsar.clone(),
        calls: calls.clone(),
    };
    let bs = Backstop::builder(Arc::new(broker))
        .breaker_defaults(
            BreakerConfig::builder()
                .failure_threshold(5)
                .recovery_timeout(RECOVERY)
                .build()
                .expect("breaker config"),
        )
        .env_from(BTreeMap::new())
        .build()
        .expect("context");
    let topic = unique("breaker");
    let check = pulsar
        .subscribe(&SubscriptionSpec::new(&topic, "check"))
        .await
        .expect("subscribe");
    let task = Task::new(
        &bs,
        TaskSpec::new(&topic)
            .max_retries(0)
            .send_timeout(Duration::from_secs(5))
            .build()
            .expect("spec"),
    )
    .expect("task");
    let name = task.breaker_name().to_string();
    let body = |i: &i64| {
        let i = *i;
        async move { Ok::<_, TaskError>(serde_json::json!({ "i": i })) }
    };
    let state_gauge =
        |bs: &Backstop| breaker_gauge(&bs.metrics().render(), "circuit_breaker_state", &name);

    task.call(0_i64, body)
        .await
        .expect("publish while the broker is up");
    assert_eq!(state_gauge(&bs), Some(0));

    say("breaker: stop the broker");
    owned.stop().await;
    for i in 1..=5_i64 {
        let started = Instant::now();
        let f = task.call(i, body).await.expect_err("publish while down");
        say(&format!(
            "breaker: call {i} failed after {:.1?}: {f}",
            started.elapsed()
        ));
        assert!(!f.is_circuit_open(), "{f}");
        assert!(
            matches!(f.kind(), Some(ErrorKind::Connection | ErrorKind::Timeout)),
            "{f}"
        );
        assert_eq!(f.args, i, "the caller gets its data back");
        let (state, failures) = task.breaker();
        if i < 5 {
            assert_eq!((state, failures), (BreakerState::Closed, i as u32));
        }
    }
    assert_eq!(task.breaker().0, BreakerState::Open, "opens after 5");
    let opened = Instant::now();
    assert_eq!(
        state_gauge(&bs),
        Some(2),
        "circuit_breaker_state shows open"
    );

    // fails fast, no broker call
    let before = calls.load(Ordering::SeqCst);
    let started = Instant::now();
    let f = task.call(6_i64, body).await.expect_err("refused");
    let took = started.elapsed();
    assert!(f.is_circuit_open(), "{f}");
    assert_eq!(f.args, 6);
    assert_eq!(f.attempts, 0);
    assert_eq!(calls.load(Ordering::SeqCst), before, "no broker call");
    // typically tens of µs; generous for a loaded machine (a broker call would take ms at least,
    // and the counter above proves there was none)
    assert!(took < Duration::from_millis(500), "fails fast ({took:?})");
    say(&format!(
        "breaker: open; a call failed fast in {took:?} without a broker call: {f}"
    ));

    // half-open after the recovery timeout, without any call
    wait_for_state(&task, BreakerState::HalfOpen, RECOVERY * 3).await;
    assert!(opened.elapsed() >= RECOVERY - Duration::from_millis(50));
    assert_eq!(
        state_gauge(&bs),
        Some(1),
        "circuit_breaker_state shows half-open"
    );
    // the probe while the broker is still down fails and re-opens it
    let f = task.call(7_i64, body).await.expect_err("probe while down");
    assert!(
        matches!(f.kind(), Some(ErrorKind::Connection | ErrorKind::Timeout)),
        "{f}"
    );
    assert_eq!(
        task.breaker().0,
        BreakerState::Open,
        "a failed probe re-opens"
    );
    assert_eq!(state_gauge(&bs), Some(2));
    say(&format!(
        "breaker: half-open probe while down failed, open again: {f}"
    ));

    say("breaker: restart the broker");
    owned.start_keep_data().await;
    let back = Instant::now();
    let mut probes = 0;
    let probe_id = loop {
        assert!(
            back.elapsed() < Duration::from_secs(120),
            "the breaker did not close within 120 s of the restart"
        );
        if task.breaker().0 == BreakerState::Open {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let i = 100 + probes;
        probes += 1;
        match task.call(i, body).await {
            Ok(_) => break i,
            Err(f) if f.is_circuit_open() => {}
            Err(f) => {
                assert!(
                    matches!(f.kind(), Some(ErrorKind::Connection | ErrorKind::Timeout)),
                    "{f}"
                );
                say(&format!("breaker: probe {i} failed: {f}"));
            }
        }
    };
    let (state, failures) = task.breaker();
    assert_eq!((state, failures), (BreakerState::Closed, 0));
    let text = bs.metrics().render();
    assert_eq!(
        breaker_gauge(&text, "circuit_breaker_state", &name),
        Some(0)
    );
    assert_eq!(
        breaker_gauge(&text, "circuit_breaker_failures", &name),
        Some(0)
    );
    for (from, to) in [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("half_open", "closed"),
    ] {
        let series = format!(
            "circuit_breaker_transitions_total{{breaker=\"{name}\",from=\"{from}\",to=\"{to}\"}}"
        );
        assert!(text.contains(&series), "missing {series} in\n{text}");
    }
    say(&format!(
        "breaker: closed again {:.1?} after the restart ({probes} probe call(s)); circuit_breaker_state 0",
        back.elapsed()
    ));

    // what was published is there: the call before the outage and the successful probe
    let mut got = BTreeSet::new();
    while !(got.contains(&0) && got.contains(&probe_id)) {
        let m = recv(&*check, Duration::from_secs(30)).await;
        check.ack(&m.id).await.expect("ack");
        let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
        got.insert(v["i"].as_i64().expect("i"));
    }
    check.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------------
// 3. kill -9 mid-stream
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Seq {
    seq: i64,
    pad: String,
}

/// Handled messages that the handler rejects permanently: they must end in the DLQ.
fn rejected(seq: i64) -> bool {
    seq % 100 == 42
}

async fn kill9_mid_stream_loses_nothing(owned: &OwnedBroker) {
    const N: i64 = 2000;
    const WORKERS: usize = 16;
    let pulsar = connect_to(&owned.url()).await;
    let bs = Backstop::builder(Arc::new(pulsar.clone()))
        .breaker_defaults(
            BreakerConfig::builder()
                .failure_threshold(5)
                .recovery_timeout(Duration::from_secs(1))
                .build()
                .expect("breaker config"),
        )
        .env_from(BTreeMap::new())
        .build()
        .expect("context");
    let topic = unique("chaos");
    let dlq = format!("{topic}-DLQ");

    // DLQ reader (a plain adapter subscription), then the consumer, then the producers.
    let dead: Arc<Mutex<BTreeMap<i64, u32>>> = Arc::default();
    let bad_records: Arc<Mutex<Vec<String>>> = Arc::default();
    let dlq_sub = pulsar
        .subscribe(&SubscriptionSpec::new(&dlq, "check"))
        .await
        .expect("subscribe the DLQ");
    let reader = {
        let (dead, bad_records, dlq_sub) = (dead.clone(), bad_records.clone(), dlq_sub.clone());
        tokio::spawn(async move {
            while let Ok(m) = dlq_sub.receive().await {
                let record = serde_json::from_slice::<DeadLetterRecord>(&m.payload);
                let original = record
                    .as_ref()
                    .ok()
                    .and_then(|r| serde_json::from_str::<Seq>(r.payload_text.as_deref()?).ok());
                match (record, original) {
                    (Ok(r), Some(o)) if r.reason == "permanent" => {
                        *dead.lock().unwrap().entry(o.seq).or_default() += 1;
                    }
                    (r, _) => bad_records
                        .lock()
                        .unwrap()
                        .push(format!("{r:?} / {}", String::from_utf8_lossy(&m.payload))),
                }
                let _ = dlq_sub.ack(&m.id).await;
            }
        })
    };
    let handled: Arc<Mutex<BTreeMap<i64, u32>>> = Arc::default();
    let consumer = {
        let handled = handled.clone();
        bs.spawn_consumer(
            ConsumerSpec::new(&topic, "chaos")
                .max_parallelism(5)
                .max_retries(3)
                .retry_delay(Duration::from_millis(200))
                .nack_delay(Duration::from_millis(200))
                .dlq_topic(&dlq)
                .build()
                .expect("consumer spec"),
            move |m: Seq| {
                let handled = handled.clone();
                async move {
                    if rejected(m.seq) {
                        return Err(HandlerError::invalid(format!("seq {} rejected", m.seq)));
                    }
                    *handled.lock().unwrap().entry(m.seq).or_default() += 1;
                    Ok(())
                }
            },
        )
        .await
        .expect("consumer")
    };
    let task = Task::new(
        &bs,
        TaskSpec::new(&topic)
            .max_retries(5)
            .retry_delay(Duration::from_millis(200))
            .send_timeout(Duration::from_secs(5))
            .build()
            .expect("task spec"),
    )
    .expect("task");

    let queue: Arc<Mutex<VecDeque<i64>>> = Arc::new(Mutex::new((0..N).collect()));
    let published: Arc<Mutex<BTreeSet<i64>>> = Arc::default();
    let returned = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let (queue, published, task) = (queue.clone(), published.clone(), task.clone());
        let (returned, refused) = (returned.clone(), refused.clone());
        workers.spawn(async move {
            loop {
                let next = queue.lock().unwrap().pop_front();
                let Some(seq) = next else {
                    if published.lock().unwrap().len() as i64 == N {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let r = task
                    .call(seq, |s: &i64| {
                        let seq = *s;
                        async move {
                            Ok::<_, TaskError>(Seq {
                                seq,
                                pad: "x".repeat(64),
                            })
                        }
                    })
                    .await;
                match r {
                    Ok(_) => {
                        published.lock().unwrap().insert(seq);
                    }
                    Err(f) => {
                        // nothing is dropped: the call's data came back; submit it again
                        returned.fetch_add(1, Ordering::Relaxed);
                        if f.is_circuit_open() {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        queue.lock().unwrap().push_back(f.args);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }

    // The crash: once a third is published (the consumer is then mid-stream too).
    while published.lock().unwrap().len() < N as usize / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let kill_at = published.lock().unwrap().len();
    let handled_at_kill = handled.lock().unwrap().len();
    say(&format!(
        "kill9_mid_stream: kill -9 the broker after {:.1?}: {kill_at} published, {handled_at_kill} handled",
        started.elapsed(),
    ));
    owned.kill9().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    owned.start_keep_data().await;
    let restarted = Instant::now();

    // Everything published, then everything handled or dead-lettered.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last_report = Instant::now();
    let pending = loop {
        let pending: Vec<i64> = {
            let p = published.lock().unwrap();
            let h = handled.lock().unwrap();
            let d = dead.lock().unwrap();
            (0..N)
                .filter(|s| !p.contains(s) || !(h.contains_key(s) || d.contains_key(s)))
                .collect()
        };
        if pending.is_empty() || Instant::now() > deadline {
            break pending;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            say(&format!(
                "kill9_mid_stream: {} published, {} handled, {} dead-lettered, {} pending",
                published.lock().unwrap().len(),
                handled.lock().unwrap().len(),
                dead.lock().unwrap().len(),
                pending.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let drained_after = restarted.elapsed();
    while workers.join_next().await.is_some() {}
    // a little longer, to see late redeliveries (duplicates) too
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = consumer.shutdown_within(Duration::from_secs(5)).await;
    let _ = dlq_sub.close().await;
    reader.abort();

    let published = published.lock().unwrap().clone();
    let handled = handled.lock().unwrap().clone();
    let dead = dead.lock().unwrap().clone();
    let lost: Vec<i64> = published
        .iter()
        .filter(|s| !handled.contains_key(s) && !dead.contains_key(s))
        .copied()
        .collect();
    let duplicate_seqs: Vec<(i64, u32)> = handled
        .iter()
        .chain(dead.iter())
        .filter(|(_, &n)| n > 1)
        .map(|(&s, &n)| (s, n))
        .collect();
    let duplicates: u32 = duplicate_seqs.iter().map(|(_, n)| n - 1).sum();
    let misplaced: Vec<i64> = handled
        .keys()
        .filter(|&&s| rejected(s))
        .chain(dead.keys().filter(|&&s| !rejected(s)))
        .copied()
        .collect();
    say(&format!(
        "kill9_mid_stream: RESULT N={N} published={} handled={} dead-lettered={} lost={} duplicates={duplicates} \
         (calls returned to the caller and resubmitted: {}, of them refused by the open breaker: {}; \
         killed at {} published; drained {:.1?} after the restart; consumer report {report:?})",
        published.len(),
        handled.len(),
        dead.len(),
        lost.len(),
        returned.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        kill_at,
        drained_after,
    ));
    if !duplicate_seqs.is_empty() {
        let shown: Vec<String> = duplicate_seqs
            .iter()
            .take(100)
            .map(|(s, n)| format!("{s}x{n}"))
            .collect();
        say(&format!(
            "kill9_mid_stream: duplicate deliveries (seq x times, at-least-once): {}{}",
            shown.join(" "),
            if duplicate_seqs.len() > 100 {
                " ..."
            } else {
                ""
            }
        ));
    }
    let bad_records = bad_records.lock().unwrap().clone();
    assert!(
        bad_records.is_empty(),
        "unexpected DLQ records: {bad_records:?}"
    );
    assert!(pending.is_empty(), "not drained within 300 s: {pending:?}");
    assert_eq!(
        published.len() as i64,
        N,
        "every call was published in the end"
    );
    assert!(lost.is_empty(), "lost messages: {lost:?}");
    assert!(misplaced.is_empty(), "wrong outcome for {misplaced:?}");
    assert_eq!(
        dead.len() as i64,
        (0..N).filter(|&s| rejected(s)).count() as i64
    );
    assert!(report.max_in_flight <= 5, "{report:?}");
}
