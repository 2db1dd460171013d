//! The handler API on a real Apache Pulsar broker (`BACKSTOP_PULSAR_URL`): delivery metadata
//! filled by the adapter (Java-form message id, key, ordering key, properties, publish and event
//! time, redelivery count, attempt), codecs round trip (protobuf, bytes, text, JSON), and keyed
//! publishing reaching a Key_Shared subscription in per-key order.
//!
//! Fails loudly when no broker answers; never skips.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backstop::broker::SubscriptionType;
use backstop::{
    ConsumerSpec, Delivery, HandlerError, MessageOptions, Raw, Task, TaskError, TaskSpec, Text,
};
use backstop_pulsar::PulsarMessageId;
use common::*;

#[derive(Debug, Clone)]
struct Seen {
    message_id: String,
    opaque_id: backstop::broker::MessageId,
    key: Option<String>,
    ordering_key: Option<Vec<u8>>,
    source: Option<String>,
    topic: String,
    attempt: u32,
    redelivery_count: u32,
    publish_time: Option<SystemTime>,
    event_time: Option<SystemTime>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulsar_fills_the_delivery_metadata() {
    bounded(Duration::from_secs(90), async {
        let bs = context(connect().await);
        let topic = unique("meta");
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let s2 = seen.clone();
        // The nack strategy: every retry is a broker redelivery, so the attempts and the
        // adapter's redelivery counts move together.
        let spec = ConsumerSpec::new(&topic, "svc")
            .max_retries(2)
            .retry_delay(Duration::from_millis(100))
            .retry_strategy(backstop::RetryStrategy::Nack)
            .build()
            .unwrap();
        let consumer = bs
            .spawn_consumer_with_delivery(spec, move |_m: serde_json::Value, d: Delivery| {
                s2.lock().unwrap().push(Seen {
                    message_id: d.message_id(),
                    opaque_id: d.id().clone(),
                    key: d.key().map(str::to_string),
                    ordering_key: d.ordering_key().map(<[u8]>::to_vec),
                    source: d.property("source").map(str::to_string),
                    topic: d.topic().to_string(),
                    attempt: d.attempt(),
                    redelivery_count: d.redelivery_count(),
                    publish_time: d.publish_time(),
                    event_time: d.event_time(),
                });
                // The first two runs fail (each nacked for a broker redelivery), the third,
                // the last of the budget, succeeds.
                let ok = d.attempt() == 3;
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err(HandlerError::retryable("not yet"))
                    }
                }
            })
            .await
            .expect("subscribe");
        let task = Task::new(&bs, TaskSpec::new(&topic).build().unwrap()).unwrap();
        let event = UNIX_EPOCH + Duration::from_millis(1_600_000_000_123);
        let before = SystemTime::now() - Duration::from_secs(60);
        let options = MessageOptions::new()
            .key("user-7")
            .ordering_key(b"ok-7".to_vec())
            .property("source", "signup")
            .event_time(event);
        let sent = task
            .call_with_options(7_i64, options, |id: &i64| {
                let id = *id;
                async move { Ok::<_, TaskError>(serde_json::json!({ "user_id": id })) }
            })
            .await
            .expect("published");
        wait_until(Duration::from_secs(60), || seen.lock().unwrap().len() >= 3).await;
        let seen = seen.lock().unwrap().clone();
        let java = PulsarMessageId::from_message_id(&sent.id)
            .unwrap()
            .to_string();
        for s in &seen {
            assert_eq!(s.message_id, java, "the Java form ledger:entry:partition");
            assert_eq!(s.opaque_id, sent.id);
            assert_eq!(s.key.as_deref(), Some("user-7"));
            assert_eq!(s.ordering_key.as_deref(), Some(&b"ok-7"[..]));
            assert_eq!(s.source.as_deref(), Some("signup"));
            assert_eq!(s.topic, topic);
            assert_eq!(s.event_time, Some(event));
            let published = s.publish_time.expect("Pulsar sets a publish time");
            assert!(published > before && published < SystemTime::now() + Duration::from_secs(60));
        }
        assert_eq!(
            java.split(':').count(),
            3,
            "unbatched: no batch index: {java}"
        );
        let runs: Vec<(u32, u32)> = seen
            .iter()
            .map(|s| (s.attempt, s.redelivery_count))
            .collect();
        assert_eq!(
            runs,
            vec![(1, 0), (2, 1), (3, 2)],
            "one budget across the redeliveries the adapter counted"
        );
        consumer.shutdown().await;
    })
    .await;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoUpdate {
    #[prost(int64, tag = "1")]
    pub user_id: i64,
    #[prost(string, tag = "2")]
    pub status: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codecs_round_trip_on_pulsar() {
    bounded(Duration::from_secs(90), async {
        let bs = context(connect().await);
        let (pt, bt, tt) = (unique("proto"), unique("bytes"), unique("text"));
        let protos = Arc::new(Mutex::new(Vec::new()));
        let raws = Arc::new(Mutex::new(Vec::new()));
        let texts = Arc::new(Mutex::new(Vec::new()));
        let (p2, r2, t2) = (protos.clone(), raws.clone(), texts.clone());
        let c1 = bs
            .spawn_consumer_using(
                ConsumerSpec::new(&pt, "svc").build().unwrap(),
                backstop::Protobuf,
                move |m: ProtoUpdate, _d: Delivery| {
                    p2.lock().unwrap().push(m);
                    async { Ok(()) }
                },
            )
            .await
            .unwrap();
        let c2 = bs
            .spawn_consumer_using(
                ConsumerSpec::new(&bt, "svc").build().unwrap(),
                Raw,
                move |m: bytes::Bytes, _d: Delivery| {
                    r2.lock().unwrap().push(m.to_vec());
                    async { Ok(()) }
                },
            )
            .await
            .unwrap();
        let c3 = bs
            .spawn_consumer_using(
                ConsumerSpec::new(&tt, "svc").build().unwrap(),
                Text,
                move |m: String, _d: Delivery| {
                    t2.lock().unwrap().push(m);
                    async { Ok(()) }
                },
            )
            .await
            .unwrap();
        let none = |_: &(), _: &_| MessageOptions::new();
        Task::new(&bs, TaskSpec::new(&pt).build().unwrap())
            .unwrap()
            .call_using((), backstop::Protobuf, none, |_: &()| async {
                Ok::<_, TaskError>(ProtoUpdate {
                    user_id: 9,
                    status: "ok".into(),
                })
            })
            .await
            .unwrap();
        Task::new(&bs, TaskSpec::new(&bt).build().unwrap())
            .unwrap()
            .call_using(
                (),
                Raw,
                |_: &(), _: &Vec<u8>| MessageOptions::new(),
                |_: &()| async { Ok::<_, TaskError>(vec![0u8, 159, 146, 150]) },
            )
            .await
            .unwrap();
        Task::new(&bs, TaskSpec::new(&tt).build().unwrap())
            .unwrap()
            .call_using(
                (),
                Text,
                |_: &(), _: &String| MessageOptions::new(),
                |_: &()| async { Ok::<_, TaskError>("héllo".to_string()) },
            )
            .await
            .unwrap();
        wait_until(Duration::from_secs(60), || {
            protos.lock().unwrap().len() == 1
                && raws.lock().unwrap().len() == 1
                && texts.lock().unwrap().len() == 1
        })
        .await;
        assert_eq!(
            protos.lock().unwrap()[0],
            ProtoUpdate {
                user_id: 9,
                status: "ok".into()
            }
        );
        assert_eq!(raws.lock().unwrap()[0], vec![0, 159, 146, 150]);
        assert_eq!(texts.lock().unwrap()[0], "héllo");
        for c in [c1, c2, c3] {
            c.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_publishing_reaches_key_shared_consumers_in_order() {
    bounded(Duration::from_secs(120), async {
        let bs = context(connect().await);
        let topic = unique("keyed");
        type Seen = Vec<(usize, String, i64, u32)>; // (consumer, key, user, seq)
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let mut handles = Vec::new();
        for consumer in 0..2 {
            let s2 = seen.clone();
            let spec = ConsumerSpec::new(&topic, "svc")
                .subscription_type(SubscriptionType::KeyShared)
                .max_parallelism(1)
                .build()
                .unwrap();
            handles.push(
                bs.spawn_consumer_with_delivery(spec, move |m: (i64, u32), d: Delivery| {
                    s2.lock().unwrap().push((
                        consumer,
                        d.key().unwrap_or("").to_string(),
                        m.0,
                        m.1,
                    ));
                    async { Ok(()) }
                })
                .await
                .expect("subscribe"),
            );
        }
        let task = Task::new(&bs, TaskSpec::new(&topic).build().unwrap()).unwrap();
        const USERS: i64 = 8;
        const SEQ: u32 = 10;
        for seq in 0..SEQ {
            for user in 0..USERS {
                task.call_using(
                    (user, seq),
                    backstop::Json,
                    |a: &(i64, u32), _: &(i64, u32)| MessageOptions::new().key(a.0.to_string()),
                    |a: &(i64, u32)| {
                        let a = *a;
                        async move { Ok::<_, TaskError>(a) }
                    },
                )
                .await
                .expect("published");
            }
        }
        let total = (USERS as usize) * (SEQ as usize);
        wait_until(Duration::from_secs(90), || {
            seen.lock().unwrap().len() >= total
        })
        .await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), total, "each message handled once");
        let mut used = BTreeSet::new();
        for user in 0..USERS {
            let of_user: Vec<_> = seen.iter().filter(|s| s.2 == user).collect();
            assert!(of_user.iter().all(|s| s.1 == user.to_string()));
            let seqs: Vec<u32> = of_user.iter().map(|s| s.3).collect();
            assert_eq!(
                seqs,
                (0..SEQ).collect::<Vec<_>>(),
                "per-key order of user {user}"
            );
            let consumers: BTreeSet<usize> = of_user.iter().map(|s| s.0).collect();
            assert_eq!(consumers.len(), 1, "one key, one consumer: user {user}");
            used.extend(consumers);
        }
        say(&format!("keyed: {USERS} keys over consumers {used:?}"));
        for h in handles {
            h.shutdown().await;
        }
    })
    .await;
}
