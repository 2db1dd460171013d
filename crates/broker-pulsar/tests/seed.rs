//! The seed example of the original guide end to end on a real Apache Pulsar broker
//! (`BACKSTOP_PULSAR_URL`, default `pulsar://127.0.0.1:6650`): an `update_user` task with
//! `max_retries` 3, `retry_delay` 200 ms (short, to keep it fast) and a DLQ, a
//! `process_user_update` consumer with `max_parallelism` 5, its own retries and DLQ. Retries
//! happen on both sides, exhausted and invalid calls and messages are dead-lettered, a poison
//! (non-JSON) payload goes to the DLQ with reason `decode`, and every dead-letter record is read
//! back from Pulsar and checked: the `DeadLetterRecord` JSON body and the Java client's
//! `REAL_TOPIC`, `ORIGIN_MESSAGE_ID` and `RECONSUMETIMES` properties.
//!
//! Fails loudly when no broker answers; never skips.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop::broker::{Broker, OutgoingMessage, ReceivedMessage, Subscription, SubscriptionSpec};
use backstop::{
    Backstop, ConsumerSpec, DeadLetter, DeadLetterRecord, HandlerError, Task, TaskError, TaskSpec,
};
use backstop_pulsar::PulsarMessageId;
use common::*;
use serde::{Deserialize, Serialize};

/// What `update_user` publishes and `process_user_update` consumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserUpdate {
    status: String,
    user_id: i64,
    #[serde(default)]
    data: serde_json::Value,
}

const USERS: i64 = 50;
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// The profile service times out on the first try (retried, then published). Timeouts count
/// toward the task's breaker (5 in a row open it): few users, so it stays closed.
fn flaky_profile(user: i64) -> bool {
    user % 25 == 3
}
/// The profile service always fails (retries exhausted: task DLQ).
fn broken_profile(user: i64) -> bool {
    user % 20 == 7
}
/// The handler fails twice, then succeeds.
fn flaky_handler(user: i64) -> bool {
    user % 10 == 4
}
/// The handler panics on its first run.
fn panicky_handler(user: i64) -> bool {
    user % 25 == 5
}
/// The handler always fails (retries exhausted: consumer DLQ).
fn poisoned_user(user: i64) -> bool {
    user % 25 == 9
}

fn bump(map: &Mutex<BTreeMap<i64, u32>>, user: i64) -> u32 {
    let mut m = map.lock().unwrap();
    let n = m.entry(user).or_insert(0);
    *n += 1;
    *n
}

/// Receives `n` messages from `sub` (acking them), within `within`.
async fn read_n(sub: &dyn Subscription, n: usize, within: Duration) -> Vec<ReceivedMessage> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.receive()).await {
            Ok(Ok(m)) => {
                sub.ack(&m.id).await.expect("ack");
                out.push(m);
            }
            Ok(Err(e)) => panic!("receive failed: {e}"),
            Err(_) => panic!(
                "only {} of {n} dead-letter records within {within:?}: {:?}",
                out.len(),
                out.iter()
                    .map(|m| String::from_utf8_lossy(&m.payload).to_string())
                    .collect::<Vec<_>>()
            ),
        }
    }
    out
}

fn record_of(m: &ReceivedMessage) -> DeadLetterRecord {
    serde_json::from_slice(&m.payload).unwrap_or_else(|e| {
        panic!(
            "not a DeadLetterRecord ({e}): {}",
            String::from_utf8_lossy(&m.payload)
        )
    })
}

/// The Java client's `MessageId.toString()` of an id this adapter made.
fn java_id(id: &backstop::broker::MessageId) -> String {
    PulsarMessageId::from_message_id(id)
        .expect("an adapter message id")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_example_end_to_end() {
    // The handler panics on purpose (a failed attempt): keep those expected panics quiet.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("bug in the update path") {
            default_hook(info);
        }
    }));
    bounded(Duration::from_secs(180), async {
        let broker = connect().await;
        let topic = unique("user_updates");
        let task_dlq = format!("{topic}_dlq");
        let consumer_dlq = format!("{topic}_consumer_dlq");
        // DLQ readers first: a topic's messages are kept for the subscriptions that exist.
        let task_dlq_sub = broker
            .subscribe(&SubscriptionSpec::new(&task_dlq, "check"))
            .await
            .expect("subscribe the task DLQ");
        let consumer_dlq_sub = broker
            .subscribe(&SubscriptionSpec::new(&consumer_dlq, "check"))
            .await
            .expect("subscribe the consumer DLQ");

        let bs = Backstop::builder(Arc::new(broker.clone()))
            .env_from(BTreeMap::new())
            .build()
            .expect("context");

        // process_user_update: max_parallelism 5, retries 200 ms apart, DLQ.
        let processed: Arc<Mutex<BTreeMap<i64, u32>>> = Arc::default();
        let handler_attempts: Arc<Mutex<BTreeMap<i64, u32>>> = Arc::default();
        let in_flight = Arc::new(AtomicU32::new(0));
        let most_in_flight = Arc::new(AtomicU32::new(0));
        let consumer = {
            let (processed, attempts) = (processed.clone(), handler_attempts.clone());
            let (in_flight, most) = (in_flight.clone(), most_in_flight.clone());
            bs.spawn_consumer(
                ConsumerSpec::new(&topic, "user_service")
                    .max_parallelism(5)
                    .max_retries(3)
                    .retry_delay(RETRY_DELAY)
                    .nack_delay(RETRY_DELAY)
                    .dlq_topic(&consumer_dlq)
                    .build()
                    .expect("consumer spec"),
                move |message: UserUpdate| {
                    let (processed, attempts) = (processed.clone(), attempts.clone());
                    let (in_flight, most) = (in_flight.clone(), most.clone());
                    async move {
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        // some work, so that handlers overlap
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        let user = message.user_id;
                        if user <= 0 {
                            return Err(HandlerError::invalid("Missing user_id in message"));
                        }
                        let attempt = bump(&attempts, user);
                        if panicky_handler(user) && attempt == 1 {
                            panic!("bug in the update path for user {user}");
                        }
                        if flaky_handler(user) && attempt <= 2 {
                            return Err(HandlerError::retryable(format!(
                                "write conflict for user {user}"
                            )));
                        }
                        if poisoned_user(user) {
                            return Err(HandlerError::retryable(format!("user {user} is locked")));
                        }
                        bump(&processed, user);
                        Ok(())
                    }
                },
            )
            .await
            .expect("consumer")
        };

        // update_user: max_retries 3, retry_delay 200 ms, DLQ.
        let task = Task::new(
            &bs,
            TaskSpec::new(&topic)
                .max_retries(3)
                .retry_delay(RETRY_DELAY)
                .dlq_topic(&task_dlq)
                .build()
                .expect("task spec"),
        )
        .expect("task");
        let body_attempts: Arc<Mutex<BTreeMap<i64, u32>>> = Arc::default();
        let mut calls = tokio::task::JoinSet::new();
        for user in (1..=USERS).chain([-1, 0]) {
            let (task, body_attempts) = (task.clone(), body_attempts.clone());
            calls.spawn(async move {
                let data = serde_json::json!({ "email": format!("user{user}@example.com") });
                let r = task
                    .call(
                        (user, data),
                        move |(user, data): &(i64, serde_json::Value)| {
                            let (user, data) = (*user, data.clone());
                            let attempt = bump(&body_attempts, user);
                            async move {
                                if user <= 0 {
                                    return Err(TaskError::invalid(
                                        "user_id must be positive integer",
                                    ));
                                }
                                if broken_profile(user) {
                                    return Err(TaskError::retryable(format!(
                                        "profile service: record of user {user} is corrupt"
                                    )));
                                }
                                if flaky_profile(user) && attempt == 1 {
                                    return Err(TaskError::timeout(format!(
                                        "profile service timed out for user {user}"
                                    )));
                                }
                                Ok(UserUpdate {
                                    status: "success".into(),
                                    user_id: user,
                                    data,
                                })
                            }
                        },
                    )
                    .await;
                (user, r)
            });
        }
        let mut published = BTreeMap::new(); // user -> (attempts, java message id)
        let mut task_dead = BTreeSet::new();
        while let Some(joined) = calls.join_next().await {
            let (user, r) = joined.expect("call task");
            match r {
                Ok(sent) => {
                    assert_eq!(sent.value.user_id, user);
                    published.insert(user, (sent.attempts, java_id(&sent.id)));
                }
                Err(f) => {
                    assert_eq!(f.args.0, user, "the caller gets its data back");
                    match &f.dead_letter {
                        DeadLetter::Published { topic, .. } => assert_eq!(topic, &task_dlq),
                        other => {
                            panic!("user {user}: expected a task DLQ record, got {other:?}: {f}")
                        }
                    }
                    task_dead.insert(user);
                }
            }
        }
        let expected_dead: BTreeSet<i64> = (1..=USERS)
            .filter(|&u| broken_profile(u))
            .chain([-1, 0])
            .collect();
        assert_eq!(task_dead, expected_dead, "exhausted and invalid calls");
        for (&user, (attempts, _)) in &published {
            let want = if flaky_profile(user) { 2 } else { 1 };
            assert_eq!(*attempts, want, "user {user}: attempts");
        }

        // A poison payload, straight to the topic.
        let poison_id = broker
            .producer(&topic)
            .await
            .expect("producer")
            .send(
                OutgoingMessage::new("{not json")
                    .with_key("poison-key")
                    .with_property("origin-prop", "kept"),
            )
            .await
            .expect("poison published");

        // The task DLQ, read back from Pulsar.
        let records = read_n(&*task_dlq_sub, task_dead.len(), Duration::from_secs(30)).await;
        for m in &records {
            let r = record_of(m);
            let user = r.args.as_ref().and_then(|a| a[0].as_i64()).expect("args");
            assert_eq!(r.origin_topic, topic);
            assert_eq!(r.subscription, None);
            assert_eq!(r.origin_message_id, None);
            assert_eq!(
                r.args.as_ref().map(|a| a[1].clone()),
                Some(serde_json::json!({ "email": format!("user{user}@example.com") })),
                "the call's arguments"
            );
            assert!(r.first_failure_ms <= r.last_failure_ms);
            if user <= 0 {
                assert_eq!(
                    (r.reason.as_str(), r.error_kind.as_str(), r.attempts),
                    ("permanent", "invalid", 1),
                    "{r:?}"
                );
                assert!(r.error.contains("positive integer"), "{r:?}");
            } else {
                assert_eq!(
                    (r.reason.as_str(), r.error_kind.as_str(), r.attempts),
                    ("exhausted", "handler", 4),
                    "{r:?}"
                );
                assert!(r.error.contains("corrupt"), "{r:?}");
                assert!(
                    r.last_failure_ms - r.first_failure_ms
                        >= 3 * RETRY_DELAY.as_millis() as u64 - 5,
                    "three retry delays between the first and last failure: {r:?}"
                );
            }
            assert_eq!(m.properties["REAL_TOPIC"], topic);
            assert_eq!(m.properties["RECONSUMETIMES"], r.attempts.to_string());
            assert!(
                !m.properties.contains_key("ORIGIN_MESSAGE_ID"),
                "no origin message"
            );
            assert_eq!(m.properties["backstop.reason"], r.reason);
        }

        // The consumer DLQ: the poisoned users (exhausted) and the poison payload (decode).
        let poisoned: BTreeSet<i64> = published
            .keys()
            .copied()
            .filter(|&u| poisoned_user(u))
            .collect();
        let records = read_n(
            &*consumer_dlq_sub,
            poisoned.len() + 1,
            Duration::from_secs(60),
        )
        .await;
        let mut dead_users = BTreeSet::new();
        let mut decode = 0;
        for m in &records {
            let r = record_of(m);
            assert_eq!(r.origin_topic, topic);
            assert_eq!(r.subscription.as_deref(), Some("user_service"));
            assert!(r.origin_message_id.is_some(), "{r:?}");
            assert_eq!(m.properties["REAL_TOPIC"], topic);
            assert_eq!(m.properties["RECONSUMETIMES"], r.attempts.to_string());
            if r.reason == "decode" {
                decode += 1;
                assert_eq!(r.error_kind, "decode", "{r:?}");
                assert_eq!(r.attempts, 0, "poison never reaches the handler: {r:?}");
                assert_eq!(r.payload_text.as_deref(), Some("{not json"));
                assert_eq!(m.properties["ORIGIN_MESSAGE_ID"], java_id(&poison_id));
                assert_eq!(
                    m.properties["origin-prop"], "kept",
                    "origin properties kept"
                );
                assert_eq!(m.key.as_deref(), Some("poison-key"), "origin key kept");
            } else {
                assert_eq!(
                    (r.reason.as_str(), r.error_kind.as_str(), r.attempts),
                    ("exhausted", "handler", 4),
                    "{r:?}"
                );
                assert!(r.error.contains("is locked"), "{r:?}");
                let update: UserUpdate =
                    serde_json::from_str(r.payload_text.as_deref().expect("payload text"))
                        .expect("the original message");
                assert_eq!(
                    m.properties["ORIGIN_MESSAGE_ID"], published[&update.user_id].1,
                    "ORIGIN_MESSAGE_ID is the Java form of the original message's id"
                );
                dead_users.insert(update.user_id);
            }
        }
        assert_eq!(
            decode, 1,
            "the poison payload was dead-lettered with reason decode"
        );
        assert_eq!(dead_users, poisoned);

        // Everything else was processed.
        let deadline = Instant::now() + Duration::from_secs(30);
        let want: BTreeSet<i64> = published
            .keys()
            .copied()
            .filter(|&u| !poisoned_user(u))
            .collect();
        loop {
            let done: BTreeSet<i64> = processed.lock().unwrap().keys().copied().collect();
            if done == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not processed: {:?}",
                want.difference(&done).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let report = consumer.shutdown().await;
        task_dlq_sub.close().await.expect("close");
        consumer_dlq_sub.close().await.expect("close");

        let most = most_in_flight.load(Ordering::SeqCst);
        common::say(&format!(
            "seed example on Pulsar: {} published ({} after a retry), {} task calls dead-lettered, \
             consumer {report:?}, most handlers in flight {most}",
            published.len(),
            published.values().filter(|(a, _)| *a > 1).count(),
            task_dead.len(),
        ));
        assert!(most <= 5 && report.max_in_flight <= 5, "max_parallelism 5");
        assert!(most >= 2, "handlers ran in parallel ({most})");
        assert!(report.retried >= 3 * poisoned.len() as u64, "{report:?}");
        assert!(report.panicked >= 1, "{report:?}");
        assert_eq!(
            report.dead_lettered,
            poisoned.len() as u64 + 1,
            "{report:?}"
        );
        let text = bs.metrics().render();
        for line in [
            format!(
                "pulsar_messages_sent_total{{topic=\"{topic}\"}} {}",
                published.len()
            ),
            format!(
                "pulsar_messages_dead_lettered_total{{topic=\"{topic}\"}} {}",
                task_dead.len() + poisoned.len() + 1
            ),
            format!("pulsar_errors_total{{kind=\"decode\",topic=\"{topic}\"}} 1"),
            format!("circuit_breaker_state{{breaker=\"task:{topic}\"}} 0"),
            format!("circuit_breaker_state{{breaker=\"consumer:{topic}/user_service\"}} 0"),
        ] {
            assert!(text.contains(&line), "missing `{line}` in\n{text}");
        }
        assert!(text.contains(&format!(
            "pulsar_messages_retried_total{{topic=\"{topic}\"}}"
        )));
    })
    .await;
}
