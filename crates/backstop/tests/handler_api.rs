//! The handler API on the in-memory broker under paused time: delivery metadata, state,
//! `?` and classification, timeouts, codecs, keyed publishing, whole-service shutdown, and
//! macro-generated functions without an installed context.
//!
//! No test here installs a global context (the `no_context` test relies on it).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backstop::broker::{Broker, OutgoingMessage, SubscriptionType};
use backstop::{
    ConsumerSpec, DeadLetterRecord, Delivery, ErrorKind, FailureReason, HandlerError,
    MessageOptions, Raw, Task, TaskError, TaskSpec, Text,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UserUpdate {
    pub status: String,
    pub user_id: i64,
}

fn dlq_records(mem: &backstop_mem::MemBroker, topic: &str) -> Vec<DeadLetterRecord> {
    mem.topic_payloads(topic)
        .iter()
        .map(|p| serde_json::from_slice(p).unwrap())
        .collect()
}

#[derive(Debug, Clone)]
struct Seen {
    user_id: i64,
    message_id: String,
    key: Option<String>,
    ordering_key: Option<Vec<u8>>,
    properties: BTreeMap<String, String>,
    topic: String,
    subscription: String,
    attempt: u32,
    redelivery_count: u32,
    publish_time: Option<SystemTime>,
    event_time: Option<SystemTime>,
}

#[tokio::test(start_paused = true)]
async fn a_handler_sees_its_delivery_and_the_attempt_number() {
    let (bs, _mem) = common::context();
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let s2 = seen.clone();
    let spec = ConsumerSpec::new("users", "svc")
        .max_retries(1)
        .retry_delay(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = bs
        .spawn_consumer_with_delivery(spec, move |m: UserUpdate, d: Delivery| {
            s2.lock().unwrap().push(Seen {
                user_id: m.user_id,
                message_id: d.message_id(),
                key: d.key().map(str::to_string),
                ordering_key: d.ordering_key().map(<[u8]>::to_vec),
                properties: d.properties().clone(),
                topic: d.topic().to_string(),
                subscription: d.subscription().to_string(),
                attempt: d.attempt(),
                redelivery_count: d.redelivery_count(),
                publish_time: d.publish_time(),
                event_time: d.event_time(),
            });
            let first = d.attempt() == 1;
            async move {
                if first {
                    return Err(HandlerError::retryable("first run fails"));
                }
                Ok(())
            }
        })
        .await
        .unwrap();
    let task = Task::new(&bs, TaskSpec::new("users").build().unwrap()).unwrap();
    let event = UNIX_EPOCH + Duration::from_millis(1_600_000_000_123);
    let options = MessageOptions::new()
        .key("user-7")
        .ordering_key(b"ok-7".to_vec())
        .property("source", "signup")
        .event_time(event);
    let sent = task
        .call_with_options(7_i64, options, |id: &i64| {
            let user_id = *id;
            async move {
                Ok::<_, TaskError>(UserUpdate {
                    status: "success".into(),
                    user_id,
                })
            }
        })
        .await
        .unwrap();
    common::until(Duration::from_secs(10), || seen.lock().unwrap().len() == 2).await;
    let seen = seen.lock().unwrap().clone();
    let (first, second) = (&seen[0], &seen[1]);
    assert_eq!(first.user_id, 7);
    assert_eq!(first.key.as_deref(), Some("user-7"));
    assert_eq!(first.ordering_key.as_deref(), Some(&b"ok-7"[..]));
    assert_eq!(
        first.properties.get("source").map(String::as_str),
        Some("signup")
    );
    assert_eq!(first.topic, "users");
    assert_eq!(first.subscription, "svc");
    assert_eq!(first.event_time, Some(event));
    assert!(first.publish_time.is_some());
    // The in-memory broker's Java-like form: topic number, log position, no partition.
    let parts: Vec<&str> = first.message_id.split(':').collect();
    assert_eq!(parts.len(), 3, "{}", first.message_id);
    assert_eq!(parts[2], "-1");
    assert!(sent.id.to_string().len() > 3);
    assert_eq!((first.attempt, second.attempt), (1, 2));
    assert_eq!(first.message_id, second.message_id);
    assert_eq!(
        first.redelivery_count, 0,
        "a local retry is not a broker redelivery"
    );
    handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn redelivery_count_comes_from_the_broker() {
    let (bs, mem) = common::context();
    let seen = Arc::new(Mutex::new(Vec::new()));
    // The first consumer's run outlives the shutdown grace: abandoned and nacked, the broker
    // redelivers it to the next consumer, which knows nothing of the run but the broker's count.
    let spec = ConsumerSpec::new("rd", "svc")
        .max_retries(3)
        .shutdown_grace(Duration::from_secs(1))
        .build()
        .unwrap();
    let s2 = seen.clone();
    let first = bs
        .spawn_consumer_with_delivery(spec.clone(), move |_m: serde_json::Value, d: Delivery| {
            s2.lock().unwrap().push((d.redelivery_count(), d.attempt()));
            async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }
        })
        .await
        .unwrap();
    let p = mem.producer("rd").await.unwrap();
    p.send(OutgoingMessage::new(b"{}".to_vec())).await.unwrap();
    common::until(Duration::from_secs(30), || seen.lock().unwrap().len() == 1).await;
    let report = first.shutdown().await;
    assert_eq!(report.nacked, 1, "{report:?}");
    let s3 = seen.clone();
    let second = bs
        .spawn_consumer_with_delivery(spec, move |_m: serde_json::Value, d: Delivery| {
            s3.lock().unwrap().push((d.redelivery_count(), d.attempt()));
            async { Ok(()) }
        })
        .await
        .unwrap();
    common::until(Duration::from_secs(30), || seen.lock().unwrap().len() == 2).await;
    // The redelivery is charged as one earlier run: attempt 2 of the message's one budget.
    assert_eq!(*seen.lock().unwrap(), vec![(0, 1), (1, 2)]);
    second.shutdown().await;
}

struct Db {
    saved: Mutex<Vec<i64>>,
    refuse: AtomicU32,
}

impl Db {
    async fn save(&self, id: i64) -> std::io::Result<()> {
        if self.refuse.load(Ordering::SeqCst) > 0 {
            self.refuse.fetch_sub(1, Ordering::SeqCst);
            return Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        }
        self.saved.lock().unwrap().push(id);
        Ok(())
    }
}

#[backstop::consumer(
    topic = "state_in",
    subscription = "svc",
    max_retries = 0,
    dlq_topic = "state_dlq"
)]
async fn save_user(msg: UserUpdate, d: &Delivery, db: &Db) -> Result<(), HandlerError> {
    assert_eq!(d.topic(), "state_in");
    db.save(msg.user_id).await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn macro_state_and_question_mark_classify_io_errors() {
    let (bs, mem) = common::context();
    let db = Arc::new(Db {
        saved: Mutex::new(Vec::new()),
        refuse: AtomicU32::new(1),
    });
    let handle = save_user::start(&bs, db.clone()).await.unwrap();
    let p = mem.producer("state_in").await.unwrap();
    for id in [1, 2] {
        let body = serde_json::to_vec(&UserUpdate {
            status: "s".into(),
            user_id: id,
        })
        .unwrap();
        p.send(OutgoingMessage::new(body)).await.unwrap();
    }
    common::until(Duration::from_secs(10), || {
        db.saved.lock().unwrap().len() == 1 && mem.topic_payloads("state_dlq").len() == 1
    })
    .await;
    let rec = &dlq_records(&mem, "state_dlq")[0];
    assert_eq!(
        rec.error_kind, "connection",
        "io ConnectionRefused → Connection"
    );
    assert_eq!(*db.saved.lock().unwrap(), vec![2]);
    handle.shutdown().await;
}

#[derive(Debug, thiserror::Error)]
#[error("quota exceeded")]
struct QuotaExceeded;

#[tokio::test(start_paused = true)]
async fn a_spec_classifier_decides_the_kind_of_a_user_error() {
    let (bs, mem) = common::context();
    let runs = Arc::new(AtomicU32::new(0));
    let r2 = runs.clone();
    let spec = ConsumerSpec::new("cls", "svc")
        .max_retries(3)
        .retry_delay(Duration::from_secs(1))
        .dlq_topic("cls_dlq")
        .classify(|e| e.is::<QuotaExceeded>().then_some(ErrorKind::Rejected))
        .build()
        .unwrap();
    let handle = bs
        .spawn_consumer(spec, move |_m: serde_json::Value| {
            r2.fetch_add(1, Ordering::SeqCst);
            async move {
                Err(QuotaExceeded)?;
                Ok(())
            }
        })
        .await
        .unwrap();
    let p = mem.producer("cls").await.unwrap();
    p.send(OutgoingMessage::new(b"{}".to_vec())).await.unwrap();
    common::until(Duration::from_secs(30), || {
        mem.topic_payloads("cls_dlq").len() == 1
    })
    .await;
    let rec = &dlq_records(&mem, "cls_dlq")[0];
    assert_eq!(rec.error_kind, "rejected");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "a permanent kind is not retried"
    );
    handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_hung_handler_is_cancelled_and_frees_its_slot() {
    let (bs, mem) = common::context();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let h2 = handled.clone();
    let spec = ConsumerSpec::new("hang", "svc")
        .max_parallelism(1)
        .max_retries(0)
        .dlq_topic("hang_dlq")
        .handler_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let handle = bs
        .spawn_consumer(spec, move |m: serde_json::Value| {
            let h2 = h2.clone();
            async move {
                if m["hang"] == true {
                    std::future::pending::<()>().await;
                }
                h2.lock()
                    .unwrap()
                    .push((m["n"].as_i64().unwrap(), Instant::now()));
                Ok(())
            }
        })
        .await
        .unwrap();
    let started = Instant::now();
    let p = mem.producer("hang").await.unwrap();
    p.send(OutgoingMessage::new(br#"{"n":1,"hang":true}"#.to_vec()))
        .await
        .unwrap();
    p.send(OutgoingMessage::new(br#"{"n":2}"#.to_vec()))
        .await
        .unwrap();
    common::until(Duration::from_secs(10), || {
        handled.lock().unwrap().len() == 1
    })
    .await;
    let (n, at) = handled.lock().unwrap()[0];
    assert_eq!(n, 2);
    let waited = at - started;
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "the second message ran once the hung one was cancelled at 2 s, not later: {waited:?}"
    );
    common::until(Duration::from_secs(10), || {
        mem.topic_payloads("hang_dlq").len() == 1
    })
    .await;
    let rec = &dlq_records(&mem, "hang_dlq")[0];
    assert_eq!(rec.error_kind, "timeout");
    let report = handle.shutdown().await;
    assert_eq!(report.max_in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn handler_timeouts_feed_the_breaker() {
    let breaker = backstop::BreakerConfig::builder()
        .failure_threshold(2)
        .recovery_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let (bs, mem) = common::context_with(breaker);
    let spec = ConsumerSpec::new("hang2", "svc")
        .max_parallelism(2)
        .max_retries(5)
        .retry_delay(Duration::from_millis(100))
        .handler_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = bs
        .spawn_consumer(spec, |_m: serde_json::Value| async {
            std::future::pending::<()>().await;
            Ok(())
        })
        .await
        .unwrap();
    let p = mem.producer("hang2").await.unwrap();
    p.send(OutgoingMessage::new(b"{}".to_vec())).await.unwrap();
    p.send(OutgoingMessage::new(b"{}".to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = handle.shutdown_within(Duration::from_millis(10)).await;
    assert!(
        report.breaker_transitions >= 1,
        "two handler timeouts open a breaker with threshold 2: {report:?}"
    );
    assert!(report.invoked >= 2);
    assert!(report.retried >= 2);
}

#[backstop::task(
    topic = "slow_out",
    max_retries = 1,
    retry_delay = "1s",
    body_timeout = "1s"
)]
async fn slow_body(n: u32) -> Result<u32, TaskError> {
    if n > 0 {
        std::future::pending::<()>().await;
    }
    Ok(n)
}

#[tokio::test(start_paused = true)]
async fn a_hung_task_body_is_a_timeout_attempt() {
    let (bs, _mem) = common::context();
    let started = Instant::now();
    let f = slow_body::call_with(&bs, 1).await.unwrap_err();
    assert_eq!(f.kind(), Some(ErrorKind::Timeout));
    assert_eq!(f.attempts, 2);
    assert_eq!(f.args.n, 1);
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(slow_body::call_with(&bs, 0).await.unwrap().value, 0);
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoUpdate {
    #[prost(int64, tag = "1")]
    pub user_id: i64,
    #[prost(string, tag = "2")]
    pub status: String,
}

#[backstop::task(topic = "proto_t", codec = "protobuf", key = "user_id")]
async fn send_proto(user_id: i64) -> Result<ProtoUpdate, TaskError> {
    Ok(ProtoUpdate {
        user_id,
        status: "ok".into(),
    })
}

#[backstop::consumer(topic = "proto_t", subscription = "svc", codec = "protobuf")]
async fn recv_proto(m: ProtoUpdate, got: &Mutex<Vec<ProtoUpdate>>) -> Result<(), HandlerError> {
    got.lock().unwrap().push(m);
    Ok(())
}

#[backstop::task(topic = "bytes_t")]
async fn send_bytes(b: Vec<u8>) -> Result<Vec<u8>, TaskError> {
    Ok(b)
}

#[backstop::consumer(topic = "bytes_t", subscription = "svc")]
async fn recv_bytes(m: bytes::Bytes, got: &Mutex<Vec<Vec<u8>>>) -> Result<(), HandlerError> {
    got.lock().unwrap().push(m.to_vec());
    Ok(())
}

#[backstop::task(topic = "text_t")]
async fn send_text(s: String) -> Result<String, TaskError> {
    Ok(s)
}

#[backstop::consumer(
    topic = "text_t",
    subscription = "svc",
    max_retries = 3,
    dlq_topic = "text_dlq"
)]
async fn recv_text(m: String, got: &Mutex<Vec<String>>) -> Result<(), HandlerError> {
    got.lock().unwrap().push(m);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn codecs_round_trip_and_undecodable_payloads_are_poison() {
    let (bs, mem) = common::context();
    let protos = Arc::new(Mutex::new(Vec::new()));
    let bytes_got = Arc::new(Mutex::new(Vec::new()));
    let texts = Arc::new(Mutex::new(Vec::new()));
    let c1 = recv_proto::start(&bs, protos.clone()).await.unwrap();
    let c2 = recv_bytes::start(&bs, bytes_got.clone()).await.unwrap();
    let c3 = recv_text::start(&bs, texts.clone()).await.unwrap();
    send_proto::call_with(&bs, 9).await.unwrap();
    send_bytes::call_with(&bs, vec![0, 159, 146, 150])
        .await
        .unwrap();
    send_text::call_with(&bs, "héllo".into()).await.unwrap();
    // Not UTF-8: the text consumer cannot decode it.
    let p = mem.producer("text_t").await.unwrap();
    p.send(OutgoingMessage::new(vec![0xff, 0xfe]))
        .await
        .unwrap();
    common::until(Duration::from_secs(10), || {
        protos.lock().unwrap().len() == 1
            && bytes_got.lock().unwrap().len() == 1
            && texts.lock().unwrap().len() == 1
            && mem.topic_payloads("text_dlq").len() == 1
    })
    .await;
    assert_eq!(
        protos.lock().unwrap()[0],
        ProtoUpdate {
            user_id: 9,
            status: "ok".into()
        }
    );
    assert_eq!(mem.topic_messages("proto_t")[0].key.as_deref(), Some("9"));
    assert_eq!(bytes_got.lock().unwrap()[0], vec![0, 159, 146, 150]);
    assert_eq!(mem.topic_payloads("bytes_t")[0], vec![0, 159, 146, 150]);
    assert_eq!(texts.lock().unwrap()[0], "héllo");
    let rec = &dlq_records(&mem, "text_dlq")[0];
    assert_eq!(rec.reason, "decode");
    assert_eq!(rec.attempts, 0, "poison is never handed to the handler");
    for c in [c1, c2, c3] {
        c.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn builder_codecs_round_trip() {
    let (bs, _mem) = common::context();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g2 = got.clone();
    let handle = bs
        .spawn_consumer_using(
            ConsumerSpec::new("raw_b", "svc").build().unwrap(),
            Raw,
            move |m: Vec<u8>, _d: Delivery| {
                g2.lock().unwrap().push(m);
                async { Ok(()) }
            },
        )
        .await
        .unwrap();
    let task = Task::new(&bs, TaskSpec::new("raw_b").build().unwrap()).unwrap();
    task.call_using(
        (),
        Raw,
        |_: &(), _: &Vec<u8>| MessageOptions::new(),
        |_: &()| async { Ok::<_, TaskError>(vec![1u8, 2, 3]) },
    )
    .await
    .unwrap();
    let text_task = Task::new(&bs, TaskSpec::new("text_b").build().unwrap()).unwrap();
    let sent = text_task
        .call_using(
            (),
            Text,
            |_: &(), s: &String| MessageOptions::new().key(s.clone()),
            |_: &()| async { Ok::<_, TaskError>("k1".to_string()) },
        )
        .await
        .unwrap();
    assert_eq!(sent.value, "k1");
    common::until(Duration::from_secs(5), || got.lock().unwrap().len() == 1).await;
    assert_eq!(got.lock().unwrap()[0], vec![1, 2, 3]);
    handle.shutdown().await;
}

#[backstop::task(topic = "keyed", key = "user_id")]
async fn keyed_update(user_id: i64, seq: u32) -> Result<(i64, u32), TaskError> {
    Ok((user_id, seq))
}

#[tokio::test(start_paused = true)]
async fn keyed_publishing_keeps_per_key_order_on_key_shared() {
    let (bs, mem) = common::context();
    type Seen = Vec<(usize, String, i64, u32)>; // (consumer, key, user, seq)
    let seen: Arc<Mutex<Seen>> = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for consumer in 0..2 {
        let s2 = seen.clone();
        let spec = ConsumerSpec::new("keyed", "svc")
            .subscription_type(SubscriptionType::KeyShared)
            .max_parallelism(1)
            .build()
            .unwrap();
        handles.push(
            bs.spawn_consumer_with_delivery(spec, move |m: (i64, u32), d: Delivery| {
                s2.lock()
                    .unwrap()
                    .push((consumer, d.key().unwrap_or("").to_string(), m.0, m.1));
                async { Ok(()) }
            })
            .await
            .unwrap(),
        );
    }
    for seq in 0..10u32 {
        for user in [1_i64, 2, 3, 4] {
            keyed_update::call_with(&bs, user, seq).await.unwrap();
        }
    }
    common::until(Duration::from_secs(10), || seen.lock().unwrap().len() == 40).await;
    let seen = seen.lock().unwrap().clone();
    for user in [1_i64, 2, 3, 4] {
        let of_user: Vec<_> = seen.iter().filter(|s| s.2 == user).collect();
        assert!(
            of_user.iter().all(|s| s.1 == user.to_string()),
            "key is the user id"
        );
        let seqs: Vec<u32> = of_user.iter().map(|s| s.3).collect();
        assert_eq!(
            seqs,
            (0..10).collect::<Vec<_>>(),
            "per-key order for user {user}"
        );
        let consumers: std::collections::BTreeSet<usize> = of_user.iter().map(|s| s.0).collect();
        assert_eq!(consumers.len(), 1, "one key, one consumer");
    }
    let _ = mem;
    for h in handles {
        h.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_consumers_and_hands_back_unfinished_task_calls() {
    let (bs, mem) = common::context();
    let done = Arc::new(AtomicU32::new(0));
    let d2 = done.clone();
    let spec = ConsumerSpec::new("drain", "svc")
        .max_parallelism(2)
        .build()
        .unwrap();
    let _handle = bs
        .spawn_consumer(spec, move |_m: serde_json::Value| {
            let d2 = d2.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                d2.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .await
        .unwrap();
    let p = mem.producer("drain").await.unwrap();
    p.send(OutgoingMessage::new(b"{}".to_vec())).await.unwrap();
    p.send(OutgoingMessage::new(b"{}".to_vec())).await.unwrap();
    common::until(Duration::from_secs(1), || {
        mem.unacked_count("drain", "svc") == 2
    })
    .await;
    // One task call that finishes within the grace, one that never does.
    let task = Task::new(&bs, TaskSpec::new("drain_out").build().unwrap()).unwrap();
    let (t1, t2) = (task.clone(), task.clone());
    let quick = tokio::spawn(async move {
        t1.call(1_u32, |_: &u32| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, TaskError>(1)
        })
        .await
    });
    let stuck = tokio::spawn(async move {
        t2.call(2_u32, |_: &u32| async {
            std::future::pending::<()>().await;
            Ok::<_, TaskError>(2)
        })
        .await
    });
    common::settle().await;
    assert_eq!(bs.calls_in_progress(), 2);
    let report = bs.shutdown(Duration::from_secs(10)).await;
    assert_eq!(report.consumers_left, 0);
    assert_eq!(report.calls_left, 1);
    assert_eq!(
        done.load(Ordering::SeqCst),
        2,
        "in-flight handlers finished"
    );
    assert_eq!(mem.unacked_count("drain", "svc"), 0);
    assert_eq!(mem.acked_ids("drain", "svc").len(), 2, "and were acked");
    assert!(quick.await.unwrap().is_ok());
    let f = stuck.await.unwrap().unwrap_err();
    assert_eq!(f.reason, FailureReason::ShuttingDown);
    assert_eq!(f.args, 2, "the data comes back");
    assert_eq!(bs.calls_in_progress(), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_of_an_idle_context_is_clean() {
    let (bs, _mem) = common::context();
    let h = bs
        .spawn_consumer(
            ConsumerSpec::new("idle", "svc").build().unwrap(),
            |_m: serde_json::Value| async { Ok(()) },
        )
        .await
        .unwrap();
    assert!(bs.shutdown(Duration::from_secs(1)).await.is_clean());
    assert!(h.is_finished());
}

#[backstop::task(topic = "nowhere")]
async fn without_context(n: u32) -> Result<u32, TaskError> {
    Ok(n)
}

#[tokio::test(start_paused = true)]
async fn a_macro_task_without_context_is_a_typed_error_not_a_panic() {
    assert!(backstop::try_global().is_none());
    let f = without_context(5).await.unwrap_err();
    assert_eq!(f.reason, FailureReason::NoContext);
    assert_eq!(f.args.n, 5);
    assert!(f.to_string().contains("no backstop context"));
    let (bs, _mem) = common::context();
    assert_eq!(without_context::call_with(&bs, 5).await.unwrap().value, 5);
}
