//! Integration tests against a real Apache Pulsar broker (`BACKSTOP_PULSAR_URL`, default
//! `pulsar://127.0.0.1:6650`; start one with `scripts/pulsar start`). They fail loudly when no
//! broker answers; they never skip.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop_engine::broker::{
    Broker, MessageId, OutgoingMessage, SubscriptionSpec, SubscriptionType,
};
use backstop_engine::core::ErrorKind;
use backstop_pulsar::pulsar::ProducerOptions;
use backstop_pulsar::{
    dlq_properties, ConnectError, InitialPosition, PulsarBroker, PulsarMessageId, PulsarOptions,
};
use common::*;

const LIMIT: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(10);

async fn publish(broker: &PulsarBroker, topic: &str, payloads: &[&str]) -> Vec<MessageId> {
    let producer = broker.producer(topic).await.expect("producer");
    let mut ids = Vec::new();
    for p in payloads {
        ids.push(
            producer
                .send(OutgoingMessage::new(p.as_bytes().to_vec()))
                .await
                .expect("send"),
        );
    }
    ids
}

fn text(m: &backstop_engine::broker::ReceivedMessage) -> String {
    String::from_utf8(m.payload.clone()).expect("utf-8 payload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_keeps_payload_key_and_properties() {
    bounded(LIMIT, async {
        let broker = connect().await;
        let topic = unique("roundtrip");
        let sub = broker
            .subscribe(&SubscriptionSpec::new(&topic, "s"))
            .await
            .expect("subscribe");
        let producer = broker.producer(&topic).await.expect("producer");
        assert_eq!(producer.topic(), topic);
        let sent = producer
            .send(
                OutgoingMessage::new(b"hello \xff bytes".to_vec())
                    .with_key("user-42")
                    .with_property("trace", "abc")
                    .with_property("ünïcode", "välue"),
            )
            .await
            .expect("send");
        let sent_id = PulsarMessageId::from_message_id(&sent).expect("receipt id decodes");

        let m = recv(&*sub, WAIT).await;
        assert_eq!(m.payload, b"hello \xff bytes".to_vec());
        assert_eq!(m.key.as_deref(), Some("user-42"));
        assert_eq!(m.properties.get("trace").map(String::as_str), Some("abc"));
        assert_eq!(
            m.properties.get("ünïcode").map(String::as_str),
            Some("välue")
        );
        assert_eq!(m.topic, topic);
        assert_eq!(m.redelivery_count, 0);
        let got = PulsarMessageId::from_message_id(&m.id).expect("delivery id decodes");
        assert_eq!(
            (got.ledger_id, got.entry_id),
            (sent_id.ledger_id, sent_id.entry_id),
            "the receipt names the delivered message"
        );
        assert!(!got.is_batched(), "adapter producers never batch");
        sub.ack(&m.id).await.expect("ack");
        sub.close().await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_are_not_delivered_again_unacked_ones_are() {
    bounded(LIMIT, async {
        // published before the subscription exists: only an Earliest subscription sees them
        let broker =
            connect_with(test_options().with_initial_position(InitialPosition::Earliest)).await;
        let topic = unique("ack");
        publish(&broker, &topic, &["a", "b", "c"]).await;
        let spec = SubscriptionSpec::new(&topic, "s");
        let sub = broker.subscribe(&spec).await.expect("subscribe");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let m = recv(&*sub, WAIT).await;
            if text(&m) != "b" {
                sub.ack(&m.id).await.expect("ack");
            }
            seen.push(text(&m));
        }
        assert_eq!(seen, ["a", "b", "c"], "earliest position, in order");
        sub.close().await.expect("close");

        let again = broker.subscribe(&spec).await.expect("resubscribe");
        let m = recv(&*again, WAIT).await;
        assert_eq!(text(&m), "b", "only the unacked message comes back");
        assert_eq!(m.redelivery_count, 0, "a new subscription counts afresh");
        again.ack(&m.id).await.expect("ack");
        assert_silent(&*again, Duration::from_secs(2)).await;
        again.close().await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_redelivers_after_the_delay_with_a_count() {
    bounded(LIMIT, async {
        let broker = connect().await;
        let topic = unique("nack");
        let mut spec = SubscriptionSpec::new(&topic, "s");
        spec.nack_redelivery_delay = Duration::from_millis(800);
        let sub = broker.subscribe(&spec).await.expect("subscribe");
        publish(&broker, &topic, &["x"]).await;
        let first = recv(&*sub, WAIT).await;
        let nacked_at = Instant::now();
        sub.nack(&first.id).await.expect("nack");
        let second = recv(&*sub, WAIT).await;
        let waited = nacked_at.elapsed();
        assert_eq!(second.id, first.id);
        assert_eq!(text(&second), "x");
        assert_eq!(second.redelivery_count, 1);
        assert!(
            waited >= Duration::from_millis(700),
            "redelivered after {waited:?}, before the 800 ms nack delay"
        );
        sub.nack(&second.id).await.expect("nack again");
        let third = recv(&*sub, WAIT).await;
        assert_eq!(third.redelivery_count, 2);
        sub.ack(&third.id).await.expect("ack");
        assert_silent(&*sub, Duration::from_secs(2)).await;
        sub.close().await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_spreads_over_two_consumers() {
    bounded(LIMIT, async {
        // small flow window so one consumer cannot take everything
        let broker = connect_with(test_options().with_receiver_queue_size(2)).await;
        let topic = unique("shared");
        let spec = SubscriptionSpec::new(&topic, "workers");
        let a = broker.subscribe(&spec).await.expect("subscribe a");
        let b = broker.subscribe(&spec).await.expect("subscribe b");
        let payloads: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
        publish(&broker, &topic, &refs).await;

        let mut from_a = BTreeSet::new();
        let mut from_b = BTreeSet::new();
        while from_a.len() + from_b.len() < 20 {
            tokio::select! {
                r = a.receive() => { let m = r.expect("a"); a.ack(&m.id).await.expect("ack"); from_a.insert(text(&m)); }
                r = b.receive() => { let m = r.expect("b"); b.ack(&m.id).await.expect("ack"); from_b.insert(text(&m)); }
                _ = tokio::time::sleep(WAIT) => panic!("stalled with {} + {}", from_a.len(), from_b.len()),
            }
        }
        assert!(!from_a.is_empty() && !from_b.is_empty(), "a={from_a:?} b={from_b:?}");
        assert!(from_a.is_disjoint(&from_b));
        let all: BTreeSet<String> = from_a.union(&from_b).cloned().collect();
        assert_eq!(all, payloads.into_iter().collect());
        a.close().await.expect("close");
        b.close().await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_rejects_a_second_consumer_until_the_first_closes() {
    bounded(LIMIT, async {
        let broker = connect().await;
        let topic = unique("exclusive");
        let spec = SubscriptionSpec::new(&topic, "only").with_type(SubscriptionType::Exclusive);
        let first = broker.subscribe(&spec).await.expect("first");
        let started = Instant::now();
        let err = match broker.subscribe(&spec).await {
            Ok(_) => panic!("a second exclusive consumer was accepted"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "rejected fast, not after retries"
        );
        publish(&broker, &topic, &["e"]).await;
        let m = recv(&*first, WAIT).await;
        first.ack(&m.id).await.expect("ack");
        first.close().await.expect("close");
        let second = broker
            .subscribe(&spec)
            .await
            .expect("free again after close");
        second.close().await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_and_key_shared_deliver() {
    bounded(LIMIT, async {
        let broker = connect().await;
        for kind in [SubscriptionType::Failover, SubscriptionType::KeyShared] {
            let topic = unique("types");
            let spec = SubscriptionSpec::new(&topic, "s").with_type(kind);
            let one = broker.subscribe(&spec).await.expect("first");
            let two = broker.subscribe(&spec).await.expect("second (standby / other keys)");
            let producer = broker.producer(&topic).await.expect("producer");
            for i in 0..6 {
                producer
                    .send(OutgoingMessage::new(format!("{i}")).with_key(format!("k{}", i % 3)))
                    .await
                    .expect("send");
            }
            let mut got = BTreeSet::new();
            while got.len() < 6 {
                tokio::select! {
                    r = one.receive() => { let m = r.expect("one"); one.ack(&m.id).await.expect("ack"); got.insert(text(&m)); }
                    r = two.receive() => { let m = r.expect("two"); two.ack(&m.id).await.expect("ack"); got.insert(text(&m)); }
                    _ = tokio::time::sleep(WAIT) => panic!("{kind:?}: stalled with {got:?}"),
                }
            }
            one.close().await.expect("close");
            two.close().await.expect("close");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_is_cancel_safe() {
    bounded(LIMIT, async {
        let broker = connect().await;
        let topic = unique("cancel");
        let sub = broker
            .subscribe(&SubscriptionSpec::new(&topic, "s"))
            .await
            .expect("subscribe");
        let n = 30;
        let publisher = {
            let broker = broker.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                let producer = broker.producer(&topic).await.expect("producer");
                for i in 0..n {
                    producer
                        .send(OutgoingMessage::new(format!("{i}")))
                        .await
                        .expect("send");
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            })
        };
        let mut got = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < n && Instant::now() < deadline {
            // receive futures dropped mid-wait, over and over
            if let Ok(r) = tokio::time::timeout(Duration::from_micros(500), sub.receive()).await {
                let m = r.expect("receive");
                sub.ack(&m.id).await.expect("ack");
                got.insert(text(&m).parse::<usize>().expect("number"));
            }
        }
        publisher.await.expect("publisher");
        assert_eq!(
            got,
            (0..n).collect::<BTreeSet<_>>(),
            "nothing lost to cancellation"
        );
        sub.close().await.expect("close");
    })
    .await;
}

/// Messages of a producer-side batch (from a foreign, batching producer) are acked at the
/// broker only once all of them were acked; nacking one brings back only the unacked ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_batches_are_not_lost_to_partial_acks() {
    bounded(LIMIT, async {
        let broker =
            connect_with(test_options().with_initial_position(InitialPosition::Earliest)).await;
        let topic = unique("batch");
        let mut batching = broker
            .client()
            .producer()
            .with_topic(topic.clone())
            .with_options(ProducerOptions {
                batch_size: Some(3),
                batch_timeout: Some(Duration::from_secs(5)),
                ..Default::default()
            })
            .build()
            .await
            .expect("batching producer");
        let mut receipts = Vec::new();
        for p in ["b0", "b1", "b2"] {
            receipts.push(
                batching
                    .send_non_blocking(p.as_bytes().to_vec())
                    .await
                    .expect("enqueue"),
            );
        }
        for r in receipts {
            r.await.expect("batch stored");
        }

        let mut spec = SubscriptionSpec::new(&topic, "s");
        spec.nack_redelivery_delay = Duration::from_millis(200);
        let sub = broker.subscribe(&spec).await.expect("subscribe");
        let mut msgs = Vec::new();
        for _ in 0..3 {
            msgs.push(recv(&*sub, WAIT).await);
        }
        let ids: Vec<PulsarMessageId> = msgs
            .iter()
            .map(|m| PulsarMessageId::from_message_id(&m.id).expect("id"))
            .collect();
        assert!(
            ids.iter().all(|i| i.is_batched() && i.batch_size == 3),
            "{ids:?}"
        );
        assert!(ids.iter().all(|i| i.entry() == ids[0].entry()), "one entry");

        // ack b0 only, nack b1: the batch comes back without b0
        sub.ack(&msgs[0].id).await.expect("ack b0");
        sub.nack(&msgs[1].id).await.expect("nack b1");
        let mut back = BTreeSet::new();
        while back.len() < 2 {
            let m = recv(&*sub, WAIT).await;
            back.insert(text(&m));
        }
        assert_eq!(back, ["b1", "b2"].map(String::from).into_iter().collect());
        sub.close().await.expect("close");

        // a partial ack must not have acked the batch at the broker
        let sub = broker.subscribe(&spec).await.expect("resubscribe");
        let mut again = BTreeSet::new();
        for _ in 0..3 {
            let m = recv(&*sub, WAIT).await;
            sub.ack(&m.id).await.expect("ack");
            again.insert(text(&m));
        }
        assert_eq!(
            again,
            ["b0", "b1", "b2"].map(String::from).into_iter().collect()
        );
        sub.close().await.expect("close");

        // now every message was acked: the batch is gone
        let sub = broker.subscribe(&spec).await.expect("resubscribe");
        assert_silent(&*sub, Duration::from_secs(2)).await;
        sub.close().await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_subscription_fails_fast_and_hands_messages_over() {
    bounded(LIMIT, async {
        let broker = connect().await;
        let topic = unique("close");
        let spec = SubscriptionSpec::new(&topic, "s");
        let sub = broker.subscribe(&spec).await.expect("subscribe");
        publish(&broker, &topic, &["keep"]).await;
        let m = recv(&*sub, WAIT).await;
        sub.close().await.expect("close");
        sub.close().await.expect("close twice is fine");
        assert_eq!(sub.receive().await.unwrap_err().kind(), ErrorKind::Fatal);
        assert_eq!(sub.ack(&m.id).await.unwrap_err().kind(), ErrorKind::Fatal);

        let other = broker.subscribe(&spec).await.expect("subscribe");
        let again = recv(&*other, WAIT).await;
        assert_eq!(
            text(&again),
            "keep",
            "unacked at close: delivered to the next consumer"
        );
        other.ack(&again.id).await.expect("ack");
        assert_eq!(
            other
                .ack(&MessageId(vec![1, 2, 3]))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Invalid
        );
        other.close().await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_are_cached_and_oversized_messages_rejected() {
    bounded(LIMIT, async {
        let broker = connect_with(test_options().with_max_message_size(1024)).await;
        let topic = unique("cache");
        let p1 = broker.pulsar_producer(&topic).await.expect("producer");
        let p2 = broker.pulsar_producer(&topic).await.expect("producer");
        assert!(Arc::ptr_eq(&p1, &p2));
        let err = broker
            .producer(&topic)
            .await
            .expect("producer")
            .send(OutgoingMessage::new(vec![0u8; 2048]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
        assert_eq!(
            broker.producer(" ").await.err().map(|e| e.kind()),
            Some(ErrorKind::Invalid)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_properties_of_a_real_delivery() {
    bounded(LIMIT, async {
        let broker = connect().await;
        let topic = unique("dlq");
        let sub = broker
            .subscribe(&SubscriptionSpec::new(&topic, "s"))
            .await
            .expect("subscribe");
        let producer = broker.producer(&topic).await.expect("producer");
        producer
            .send(OutgoingMessage::new("poison").with_property("origin-prop", "1"))
            .await
            .expect("send");
        let m = recv(&*sub, WAIT).await;
        let props = dlq_properties(&m);
        assert_eq!(props["REAL_TOPIC"], topic);
        let id = PulsarMessageId::from_message_id(&m.id).expect("id");
        // the Java form, with the batch index when the (default batching) producer batched it
        assert_eq!(props["ORIGIN_MESSAGE_ID"], id.to_string());
        assert_eq!(props["RECONSUMETIMES"], "0");
        assert_eq!(props["origin-prop"], "1");

        let dlq_topic = format!("{topic}-DLQ");
        let dlq_sub = broker
            .subscribe(&SubscriptionSpec::new(&dlq_topic, "s"))
            .await
            .expect("subscribe dlq");
        broker
            .producer(&dlq_topic)
            .await
            .expect("dlq producer")
            .send(backstop_pulsar::dead_letter_message(&m))
            .await
            .expect("dlq publish");
        sub.ack(&m.id).await.expect("ack after the DLQ publish");
        let dead = recv(&*dlq_sub, WAIT).await;
        assert_eq!(dead.payload, b"poison".to_vec());
        assert_eq!(dead.properties["REAL_TOPIC"], topic);
        sub.close().await.expect("close");
        dlq_sub.close().await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_a_connection_error_and_bad_urls_are_config_errors() {
    bounded(LIMIT, async {
        // make sure the real broker is there, so this test's failure means what it says
        print_version_once().await;
        // port 9 (discard) on loopback: nothing listens there
        let started = Instant::now();
        let err = PulsarBroker::connect(
            "pulsar://127.0.0.1:9",
            PulsarOptions::default().with_connect_timeout(Duration::from_secs(3)),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(6));
        let err = PulsarBroker::connect("http://127.0.0.1:6650", PulsarOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Config(_)), "{err}");
        assert_eq!(err.kind(), ErrorKind::Fatal);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_topics_route_acks_to_their_partition() {
    bounded(LIMIT, async {
        let broker = connect().await;
        let topic = unique("partitioned");
        http_put(
            &admin(),
            &format!("/admin/v2/persistent/public/default/{topic}/partitions"),
            "3",
        )
        .await
        .expect("create a partitioned topic with 3 partitions");
        let spec = SubscriptionSpec::new(&topic, "s");
        let sub = broker.subscribe(&spec).await.expect("subscribe");
        let producer = broker.producer(&topic).await.expect("producer");
        for i in 0..12 {
            producer
                .send(OutgoingMessage::new(format!("{i}")).with_key(format!("key-{i}")))
                .await
                .expect("send");
        }
        let mut got = BTreeSet::new();
        let mut partitions = BTreeSet::new();
        while got.len() < 12 {
            let m = recv(&*sub, WAIT).await;
            assert_eq!(m.topic, topic, "the logical topic, not the partition");
            let id = PulsarMessageId::from_message_id(&m.id).expect("id");
            partitions.insert(id.partition);
            assert_eq!(
                m.metadata.partition,
                Some(id.partition),
                "the delivery names its partition (Delivery::partition)"
            );
            sub.ack(&m.id).await.expect("ack");
            got.insert(text(&m));
        }
        assert!(
            partitions.len() > 1 && partitions.iter().all(|p| (0..3).contains(p)),
            "partitions {partitions:?}"
        );
        sub.close().await.expect("close");
        let again = broker.subscribe(&spec).await.expect("resubscribe");
        assert_silent(&*again, Duration::from_secs(3)).await;
        again.close().await.expect("close");
    })
    .await;
}

/// Messages compressed by a foreign producer (here the pulsar crate with ZSTD and LZ4) are
/// decompressed (the default `compression` feature).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_messages_from_foreign_producers_decode() {
    use backstop_pulsar::pulsar::compression::{Compression, CompressionLz4, CompressionZstd};
    bounded(LIMIT, async {
        let broker = connect().await;
        for (name, compression) in [
            ("zstd", Compression::Zstd(CompressionZstd::default())),
            ("lz4", Compression::Lz4(CompressionLz4::default())),
        ] {
            let topic = unique(name);
            let sub = broker
                .subscribe(&SubscriptionSpec::new(&topic, "s"))
                .await
                .expect("subscribe");
            let mut producer = broker
                .client()
                .producer()
                .with_topic(topic.clone())
                .with_options(ProducerOptions {
                    compression: Some(compression),
                    ..Default::default()
                })
                .build()
                .await
                .expect("compressing producer");
            let body = "compress me ".repeat(100);
            producer
                .send_non_blocking(body.clone())
                .await
                .expect("enqueue")
                .await
                .expect("stored");
            let m = recv(&*sub, WAIT).await;
            assert_eq!(text(&m), body, "{name}");
            sub.ack(&m.id).await.expect("ack");
            sub.close().await.expect("close");
        }
    })
    .await;
}

/// A topic unload (what the broker's load balancer does) closes producers and consumers on the
/// broker side; the same producer and subscription carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_subscription_survive_a_topic_unload() {
    bounded(LIMIT, async {
        let broker = connect().await;
        let topic = unique("unload");
        let sub = broker
            .subscribe(&SubscriptionSpec::new(&topic, "s"))
            .await
            .expect("subscribe");
        let producer = broker.producer(&topic).await.expect("producer");
        producer
            .send(OutgoingMessage::new("one"))
            .await
            .expect("send");
        let held = recv(&*sub, WAIT).await;
        for round in 0..2 {
            http_put(
                &admin(),
                &format!("/admin/v2/persistent/public/default/{topic}/unload"),
                "",
            )
            .await
            .expect("unload the topic");
            let started = Instant::now();
            loop {
                match producer
                    .send(OutgoingMessage::new(format!("after-{round}")))
                    .await
                {
                    Ok(_) => break,
                    Err(e) => {
                        assert!(
                            matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
                            "{e}"
                        );
                        assert!(started.elapsed() < Duration::from_secs(30), "{e}");
                    }
                }
            }
            let mut got = BTreeSet::new();
            while !got.contains(&format!("after-{round}")) {
                let m = recv(&*sub, Duration::from_secs(30)).await;
                sub.ack(&m.id).await.expect("ack");
                got.insert(text(&m));
            }
        }
        // the delivery from before the unloads can still be acked
        sub.ack(&held.id).await.expect("ack");
        sub.close().await.expect("close");
    })
    .await;
}
