//! Durable retry semantics on a real Apache Pulsar broker (`BACKSTOP_PULSAR_URL`, issue 10):
//! one attempt budget per message, the retry-topic strategy (delayed delivery, the Java
//! client's properties, the budget carried across a new consumer), and parking without a DLQ.
//!
//! Fails loudly when no broker answers; never skips.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop::broker::{Broker, SubscriptionSpec};
use backstop::{
    Backstop, ConsumerSpec, DeadLetterRecord, Delivery, HandlerError, RetryStrategy, Task, TaskSpec,
};
use backstop_pulsar::PulsarMessageId;
use common::*;

async fn publish(bs: &Backstop, topic: &str, n: i64) -> backstop::broker::MessageId {
    let task = Task::new(bs, TaskSpec::new(topic).build().unwrap()).unwrap();
    task.call(n, |n: &i64| {
        let n = *n;
        async move { Ok::<_, backstop::TaskError>(serde_json::json!({ "n": n })) }
    })
    .await
    .expect("published")
    .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_topic_strategy_on_pulsar_delays_copies_with_java_properties() {
    bounded(Duration::from_secs(120), async {
        let broker = connect().await;
        let bs = context(broker.clone());
        let topic = unique("retry");
        let retry_topic = format!("{topic}-svc-RETRY");
        let dlq = format!("{topic}-DLQ");
        // Subscriptions that see every copy and record.
        let copies = broker
            .subscribe(&SubscriptionSpec::new(&retry_topic, "check"))
            .await
            .expect("subscribe retry topic");
        let records = broker
            .subscribe(&SubscriptionSpec::new(&dlq, "check"))
            .await
            .expect("subscribe dlq");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let spec = ConsumerSpec::new(&topic, "svc")
            .max_retries(2)
            .retry_delay(Duration::from_secs(2))
            .retry_strategy(RetryStrategy::Topic)
            .dlq_topic(&dlq)
            .build()
            .unwrap();
        assert_eq!(
            spec.retry_topic_name().as_deref(),
            Some(retry_topic.as_str())
        );
        let consumer = bs
            .spawn_consumer_with_delivery(spec, move |_m: serde_json::Value, d: Delivery| {
                s2.lock()
                    .unwrap()
                    .push((Instant::now(), d.attempt(), d.topic().to_string()));
                async { Err(HandlerError::retryable("not yet")) }
            })
            .await
            .expect("consumer");
        let sent = publish(&bs, &topic, 1).await;
        let java = PulsarMessageId::from_message_id(&sent).unwrap().to_string();
        wait_until(Duration::from_secs(60), || seen.lock().unwrap().len() >= 3).await;
        let record = recv(&*records, Duration::from_secs(30)).await;
        let rec: DeadLetterRecord = serde_json::from_slice(&record.payload).unwrap();
        assert_eq!((rec.reason.as_str(), rec.attempts), ("exhausted", 3));
        // The record names the original (not the copy it was made from), as the copy's
        // ORIGIN_MESSAGE_ID does: in the Java client's form.
        assert_eq!(rec.origin_message_id.as_deref(), Some(java.as_str()));
        assert_eq!(
            record.properties.get("ORIGIN_MESSAGE_ID"),
            Some(&java),
            "{:?}",
            record.properties
        );
        let seen = seen.lock().unwrap().clone();
        let runs: Vec<u32> = seen.iter().map(|s| s.1).collect();
        assert_eq!(runs, vec![1, 2, 3], "one budget");
        assert!(seen[0].2.ends_with(&topic));
        assert!(seen[1].2.ends_with(&retry_topic) && seen[2].2.ends_with(&retry_topic));
        for w in seen.windows(2) {
            // Pulsar's delayed delivery holds the copy; by default it may release it up to one
            // tick (`delayedDeliveryTickTimeMillis`, 1 s) before its deliver_at.
            assert!(
                w[1].0 - w[0].0 >= Duration::from_millis(900),
                "a copy was delivered {:?} after the run before it",
                w[1].0 - w[0].0
            );
        }
        for expect in 1..=2u32 {
            let c = recv(&*copies, Duration::from_secs(30)).await;
            let p = |k: &str| c.properties.get(k).cloned();
            assert_eq!(p("RECONSUMETIMES"), Some(expect.to_string()));
            assert_eq!(p("DELAY_TIME").as_deref(), Some("2000"));
            assert_eq!(p("REAL_TOPIC").as_deref(), Some(topic.as_str()));
            assert_eq!(p("RETRY_TOPIC").as_deref(), Some(retry_topic.as_str()));
            assert_eq!(p("ORIGIN_MESSAGE_ID").as_deref(), Some(java.as_str()));
            assert_eq!(c.payload, br#"{"n":1}"#);
            copies.ack(&c.id).await.unwrap();
        }
        let report = consumer.shutdown().await;
        assert_eq!(
            (
                report.invoked,
                report.retried,
                report.dead_lettered,
                report.nacked
            ),
            (3, 2, 1, 0),
            "{report:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_retry_copy_carries_the_budget_to_a_new_consumer_on_pulsar() {
    bounded(Duration::from_secs(120), async {
        let topic = unique("restart");
        let spec = ConsumerSpec::new(&topic, "svc")
            .max_retries(1)
            .retry_delay(Duration::from_secs(3))
            .retry_strategy(RetryStrategy::Topic)
            .build()
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        // The first "process": its own connection and context.
        let first_bs = context(connect().await);
        let s2 = seen.clone();
        let first = first_bs
            .spawn_consumer_with_delivery(
                spec.clone(),
                move |_m: serde_json::Value, d: Delivery| {
                    s2.lock().unwrap().push(d.attempt());
                    async { Err(HandlerError::retryable("down")) }
                },
            )
            .await
            .expect("consumer");
        publish(&first_bs, &topic, 1).await;
        wait_until(Duration::from_secs(30), || seen.lock().unwrap().len() == 1).await;
        let report = first.shutdown().await;
        assert_eq!((report.invoked, report.acked), (1, 1), "{report:?}");
        drop(first_bs);
        // The second: a new connection, nothing in memory; the copy is still waiting.
        let second_bs = context(connect().await);
        let parked = format!("{topic}-svc-PARKED");
        let parked_check = connect()
            .await
            .subscribe(&SubscriptionSpec::new(&parked, "check"))
            .await
            .expect("subscribe parked");
        let s3 = seen.clone();
        let second = second_bs
            .spawn_consumer_with_delivery(spec, move |_m: serde_json::Value, d: Delivery| {
                s3.lock().unwrap().push(d.attempt());
                async { Err(HandlerError::retryable("still down")) }
            })
            .await
            .expect("consumer");
        let record = recv(&*parked_check, Duration::from_secs(60)).await;
        let rec: DeadLetterRecord = serde_json::from_slice(&record.payload).unwrap();
        assert_eq!((rec.reason.as_str(), rec.attempts), ("exhausted", 2));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![1, 2],
            "max_retries + 1 runs across the two consumers"
        );
        let report = second.shutdown().await;
        assert_eq!((report.invoked, report.parked), (1, 1), "{report:?}");
    })
    .await;
}

/// The probe of issue 10 on Pulsar: no DLQ, `max_retries = 1`, an always-failing handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dlq_a_message_is_parked_after_its_budget_on_pulsar() {
    bounded(Duration::from_secs(90), async {
        let broker = connect().await;
        let bs = context(broker.clone());
        let topic = unique("park");
        let parked = broker
            .subscribe(&SubscriptionSpec::new(
                format!("{topic}-svc-PARKED"),
                "check",
            ))
            .await
            .expect("subscribe parked");
        let runs = Arc::new(Mutex::new(0u32));
        let r2 = runs.clone();
        let consumer = bs
            .spawn_consumer(
                ConsumerSpec::new(&topic, "svc")
                    .max_retries(1)
                    .retry_delay(Duration::from_millis(200))
                    .nack_delay(Duration::from_millis(100))
                    .build()
                    .unwrap(),
                move |_m: serde_json::Value| {
                    *r2.lock().unwrap() += 1;
                    async { Err(HandlerError::retryable("never")) }
                },
            )
            .await
            .expect("consumer");
        publish(&bs, &topic, 1).await;
        let record = recv(&*parked, Duration::from_secs(30)).await;
        let rec: DeadLetterRecord = serde_json::from_slice(&record.payload).unwrap();
        assert_eq!((rec.reason.as_str(), rec.attempts), ("exhausted", 2));
        assert_silent(&*parked, Duration::from_secs(3)).await;
        assert_eq!(
            *runs.lock().unwrap(),
            2,
            "max_retries + 1 runs, then parked"
        );
        let text = bs.metrics().render();
        assert!(
            text.lines()
                .any(|l| l.starts_with("pulsar_messages_parked_total")
                    && l.contains(&topic)
                    && l.ends_with(" 1")),
            "{text}"
        );
        let report = consumer.shutdown().await;
        assert_eq!(
            (report.invoked, report.parked, report.acked),
            (2, 1, 1),
            "{report:?}"
        );
    })
    .await;
}

/// Per-key ordered retries on a Key_Shared subscription with two consumers: the first message
/// of every key fails once and waits for its retry; later messages of its key wait behind it,
/// so per key the handler runs follow publish order (the broker spreads the keys over both
/// consumers; which got which is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_retries_keep_per_key_order_on_key_shared_with_two_consumers() {
    bounded(Duration::from_secs(120), async {
        let bs = context(connect().await);
        let topic = unique("ordered");
        type Seen = Vec<(usize, i64, u32, u32)>; // (consumer, user, seq, attempt)
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let mut handles = Vec::new();
        for consumer in 0..2 {
            let s2 = seen.clone();
            let spec = ConsumerSpec::new(&topic, "svc")
                .subscription_type(backstop::broker::SubscriptionType::KeyShared)
                .ordered(true)
                .max_parallelism(4)
                .max_retries(2)
                .retry_delay(Duration::from_millis(300))
                .build()
                .unwrap();
            handles.push(
                bs.spawn_consumer_with_delivery(spec, move |m: (i64, u32), d: Delivery| {
                    s2.lock().unwrap().push((consumer, m.0, m.1, d.attempt()));
                    let fail = m.1 == 0 && d.attempt() == 1;
                    async move {
                        if fail {
                            Err(HandlerError::retryable("first message of a key fails once"))
                        } else {
                            Ok(())
                        }
                    }
                })
                .await
                .expect("subscribe"),
            );
        }
        let task = Task::new(&bs, TaskSpec::new(&topic).build().unwrap()).unwrap();
        const USERS: i64 = 8;
        const SEQ: u32 = 6;
        for seq in 0..SEQ {
            for user in 0..USERS {
                task.call_using(
                    (user, seq),
                    backstop::Json,
                    |a: &(i64, u32), _: &(i64, u32)| {
                        backstop::MessageOptions::new().key(a.0.to_string())
                    },
                    |a: &(i64, u32)| {
                        let a = *a;
                        async move { Ok::<_, backstop::TaskError>(a) }
                    },
                )
                .await
                .expect("published");
            }
        }
        let total = (USERS as usize) * (SEQ as usize + 1);
        wait_until(Duration::from_secs(90), || {
            seen.lock().unwrap().len() >= total
        })
        .await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.len(),
            total,
            "each message once, plus one retry per key"
        );
        let mut used = std::collections::BTreeSet::new();
        for user in 0..USERS {
            let runs: Vec<(u32, u32)> = seen
                .iter()
                .filter(|s| s.1 == user)
                .map(|s| (s.2, s.3))
                .collect();
            let mut want = vec![(0, 1), (0, 2)];
            want.extend((1..SEQ).map(|s| (s, 1)));
            assert_eq!(runs, want, "user {user}: per-key order through the retry");
            used.extend(seen.iter().filter(|s| s.1 == user).map(|s| s.0));
        }
        say(&format!("ordered: {USERS} keys over consumers {used:?}"));
        for h in handles {
            h.shutdown().await;
        }
    })
    .await;
}
