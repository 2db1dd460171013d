//! Producer-side batching on a real Pulsar broker (`BACKSTOP_PULSAR_URL` /
//! `BACKSTOP_PULSAR_ADMIN`; fails loudly without one):
//!
//! - batched sends each get their own id (entry + batch index), the one the consumer sees;
//! - a nack of the middle message of a batch (made by backstop's producer, and by the official
//!   Python client) brings back only that message to the handler; the others are acked once,
//!   never dead-lettered or lost, and the subscription's backlog ends at 0;
//! - keyed messages never share a batch (Key_Shared dispatches a whole entry by its key);
//! - batching off for one topic: every message its own entry;
//! - back-pressure: a producer holds at most `max_pending_bytes` of unconfirmed sends, callers
//!   wait for room, and every message arrives.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backstop_engine::broker::{Broker, OutgoingMessage, Producer, Subscription, SubscriptionSpec};
use backstop_pulsar::{PulsarBatching, PulsarMessageId};
use common::*;

const WAIT: Duration = Duration::from_secs(30);

fn id_of(id: &backstop_engine::broker::MessageId) -> PulsarMessageId {
    PulsarMessageId::from_message_id(id).expect("an id of this adapter")
}

/// Subscribes (Shared, 100 ms nack delay) before anything is produced.
async fn subscribe(
    broker: &backstop_pulsar::PulsarBroker,
    topic: &str,
    sub: &str,
) -> Arc<dyn Subscription> {
    let mut spec = SubscriptionSpec::new(topic, sub);
    spec.nack_redelivery_delay = Duration::from_millis(100);
    broker.subscribe(&spec).await.expect("subscribe")
}

/// Sends all `messages` at once (so that they share batches); returns each one's id.
async fn send_all(
    producer: Arc<dyn Producer>,
    messages: Vec<OutgoingMessage>,
) -> Vec<PulsarMessageId> {
    let sends = messages.into_iter().map(|m| {
        let p = producer.clone();
        tokio::spawn(async move { p.send(m).await })
    });
    let mut ids = Vec::new();
    for s in futures::future::join_all(sends).await {
        ids.push(id_of(&s.expect("join").expect("send")));
    }
    ids
}

async fn backlog(topic: &str, sub: &str) -> Option<u64> {
    let stats = http_get(
        &admin(),
        &format!("/admin/v2/persistent/public/default/{topic}/stats"),
    )
    .await
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&stats).ok()?;
    v["subscriptions"][sub]["msgBacklog"].as_u64()
}

/// Waits until the subscription's backlog is 0 (acks are fire-and-forget), panicking after 30 s.
async fn assert_backlog_drains(topic: &str, sub: &str) {
    let mut last = None;
    for _ in 0..150 {
        last = backlog(topic, sub).await;
        if last == Some(0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("backlog of {topic}/{sub} is {last:?}, not 0: some message was never acked");
}

/// Receives every payload of `want` once, then nacks the middle message of each batch of 3 or
/// more and acks all the others (the acks reach the adapter before the nack delay ends), then
/// receives the redeliveries: exactly the nacked messages come back (the tracker skips the
/// acked ones of a redelivered batch), are acked, and nothing else comes. Returns how many
/// were nacked.
async fn consume_nacking_batch_middles(sub: &dyn Subscription, want: &BTreeSet<Vec<u8>>) -> usize {
    let mut first = BTreeMap::new();
    while first.len() < want.len() {
        let m = recv(sub, WAIT).await;
        let name = String::from_utf8_lossy(&m.payload).to_string();
        assert!(want.contains(&m.payload), "unexpected payload {name:?}");
        assert!(
            first.insert(m.payload.clone(), m).is_none(),
            "{name:?} delivered twice before any nack"
        );
    }
    let mut nacked = BTreeSet::new();
    for (payload, m) in &first {
        let id = id_of(&m.id);
        if id.batch_size >= 3 && id.batch_index == id.batch_size / 2 {
            sub.nack(&m.id).await.expect("nack");
            nacked.insert(payload.clone());
        } else {
            sub.ack(&m.id).await.expect("ack");
        }
    }
    let mut again = BTreeSet::new();
    while again.len() < nacked.len() {
        let m = recv(sub, WAIT).await;
        let name = String::from_utf8_lossy(&m.payload).to_string();
        assert!(
            nacked.contains(&m.payload),
            "{name:?} ({}) was acked, yet it came back with its batch; nacked: {:?}",
            id_of(&m.id),
            nacked
                .iter()
                .map(|p| format!("{}={}", String::from_utf8_lossy(p), id_of(&first[p].id)))
                .collect::<Vec<_>>()
        );
        assert!(again.insert(m.payload.clone()), "{name:?} came back twice");
        sub.ack(&m.id).await.expect("ack");
    }
    assert_silent(sub, Duration::from_secs(2)).await;
    nacked.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_sends_return_their_own_ids() {
    bounded(Duration::from_secs(120), async {
        let broker = connect().await;
        let topic = unique("batch-ids");
        let sub = subscribe(&broker, &topic, "s").await;
        let producer = broker.pulsar_producer(&topic).await.expect("producer");
        assert!(producer.batching(), "batching is on by default");
        let n = 300;
        let messages = (0..n)
            .map(|i| OutgoingMessage::new(format!("m{i}")))
            .collect();
        let ids = send_all(producer, messages).await;
        let distinct: BTreeSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), n, "every send has its own id");
        let entries: BTreeSet<_> = ids.iter().map(|id| id.entry()).collect();
        say(&format!(
            "batching: {n} concurrent sends went into {} entries",
            entries.len()
        ));
        assert!(entries.len() < n, "some messages shared a batch");
        for id in &ids {
            assert!(id.is_batched(), "{id} carries its batch index");
            assert!(id.batch_index < id.batch_size, "{id}");
        }
        let mut sent: BTreeMap<Vec<u8>, PulsarMessageId> = BTreeMap::new();
        for (i, id) in ids.into_iter().enumerate() {
            sent.insert(format!("m{i}").into_bytes(), id);
        }
        for _ in 0..n {
            let m = recv(sub.as_ref(), WAIT).await;
            let got = id_of(&m.id);
            assert_eq!(
                sent.get(&m.payload),
                Some(&got),
                "the id of {:?} at the consumer is the one its send returned",
                String::from_utf8_lossy(&m.payload)
            );
            sub.ack(&m.id).await.expect("ack");
        }
        sub.close().await.expect("close");
        assert_backlog_drains(&topic, "s").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_in_the_middle_of_a_backstop_batch_loses_nothing() {
    bounded(Duration::from_secs(180), async {
        let broker = connect().await;
        let topic = unique("batch-nack");
        let sub = subscribe(&broker, &topic, "s").await;
        let producer = broker.producer(&topic).await.expect("producer");
        let want: BTreeSet<Vec<u8>> = (0..500).map(|i| format!("b{i}").into_bytes()).collect();
        let ids = send_all(
            producer,
            want.iter()
                .map(|p| OutgoingMessage::new(p.clone()))
                .collect(),
        )
        .await;
        assert!(ids.iter().any(|id| id.batch_size >= 3), "batches of 3+");
        let nacked = consume_nacking_batch_middles(sub.as_ref(), &want).await;
        say(&format!(
            "batching: nacked {nacked} batch middles, all 500 acked once"
        ));
        assert!(nacked > 0);
        sub.close().await.expect("close");
        assert_backlog_drains(&topic, "s").await;
    })
    .await;
}

fn py_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pulsar_py_smoke.py")
}

/// Has the official Python client produce `n` messages `{prefix}-{i}` in batches.
async fn python_produce_batched(topic: &str, prefix: &str, n: usize) {
    let mut command = std::process::Command::new("python3");
    command.arg(py_script()).args([
        "produce",
        "-t",
        topic,
        "-n",
        &n.to_string(),
        "--prefix",
        prefix,
        "--batching",
        "--url",
        &url(),
    ]);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}); `pip install pulsar-client==3.13.0` (scripts/ensure-deps)")
        });
    assert!(
        out.status.success(),
        "python produce failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_in_the_middle_of_a_python_batch_loses_nothing() {
    bounded(Duration::from_secs(180), async {
        let broker = connect().await;
        let topic = unique("py-batch-nack");
        let sub = subscribe(&broker, &topic, "s").await;
        python_produce_batched(&topic, "py", 200).await;
        let want: BTreeSet<Vec<u8>> = (0..200).map(|i| format!("py-{i}").into_bytes()).collect();
        let nacked = consume_nacking_batch_middles(sub.as_ref(), &want).await;
        say(&format!(
            "batching: python batches, nacked {nacked} batch middles, all 200 acked once"
        ));
        assert!(nacked > 0, "the Python client batched");
        sub.close().await.expect("close");
        assert_backlog_drains(&topic, "s").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_messages_never_share_a_batch() {
    bounded(Duration::from_secs(120), async {
        let broker = connect().await;
        let topic = unique("batch-keys");
        let sub = subscribe(&broker, &topic, "s").await;
        let producer = broker.producer(&topic).await.expect("producer");
        let mut messages = Vec::new();
        for i in 0..200 {
            let m = OutgoingMessage::new(format!("m{i}"));
            messages.push(if i % 2 == 0 {
                m.with_key(format!("k{}", i % 10))
            } else {
                m
            });
        }
        let ids = send_all(producer, messages).await;
        for (i, id) in ids.iter().enumerate() {
            if i % 2 == 0 {
                assert!(!id.is_batched(), "keyed m{i} went as its own entry: {id}");
            }
        }
        assert!(
            ids.iter().skip(1).step_by(2).any(|id| id.batch_size > 1),
            "unkeyed messages were batched"
        );
        for _ in 0..200 {
            let m = recv(sub.as_ref(), WAIT).await;
            let id = id_of(&m.id);
            let i: usize = String::from_utf8_lossy(&m.payload[1..])
                .parse()
                .expect("m<i>");
            if i % 2 == 0 {
                assert_eq!(m.key, Some(format!("k{}", i % 10)), "key kept");
                assert!(
                    !id.is_batched(),
                    "keyed m{i} delivered as its own entry: {id}"
                );
            } else {
                assert_eq!(m.key, None);
            }
            sub.ack(&m.id).await.expect("ack");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_off_for_one_topic() {
    bounded(Duration::from_secs(120), async {
        let topic = unique("batch-off");
        let other = unique("batch-on");
        let broker = connect_with(
            test_options().with_batching(PulsarBatching::default().without_topic(topic.clone())),
        )
        .await;
        let off = broker.pulsar_producer(&topic).await.expect("producer");
        let on = broker.pulsar_producer(&other).await.expect("producer");
        assert!(!off.batching());
        assert!(on.batching());
        let messages = (0..100)
            .map(|i| OutgoingMessage::new(format!("m{i}")))
            .collect();
        let ids = send_all(off, messages).await;
        assert!(ids.iter().all(|id| !id.is_batched()));
        let entries: BTreeSet<_> = ids.iter().map(|id| id.entry()).collect();
        assert_eq!(entries.len(), 100, "one entry per message");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_bytes_are_bounded_and_callers_wait() {
    bounded(Duration::from_secs(180), async {
        let limit = 256 * 1024;
        let broker = connect_with(
            test_options().with_batching(PulsarBatching::default().with_max_pending_bytes(limit)),
        )
        .await;
        let topic = unique("batch-bound");
        let sub = subscribe(&broker, &topic, "s").await;
        let producer = broker.pulsar_producer(&topic).await.expect("producer");
        let n = 200;
        let size = 32 * 1024;
        let watch = producer.clone();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let finished = done.clone();
        let sampler = tokio::spawn(async move {
            let mut max = 0;
            while !finished.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(watch.pending_bytes());
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            max
        });
        let messages = (0..n)
            .map(|i| {
                let mut payload = vec![b'x'; size];
                payload[..8].copy_from_slice(format!("{i:08}").as_bytes());
                OutgoingMessage::new(payload)
            })
            .collect();
        let dyn_producer: Arc<dyn Producer> = producer.clone();
        let ids = send_all(dyn_producer, messages).await;
        assert_eq!(ids.len(), n);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let waited = producer.sends_waited_for_room();
        let max = sampler.await.expect("sampler");
        say(&format!(
            "batching: {n} sends of {size} B with max_pending_bytes {limit}: {waited} waited for room, \
             at most {max} B pending seen"
        ));
        assert!(waited > 0, "callers outpacing the broker waited for room");
        assert!(max <= limit, "pending {max} > {limit}");
        assert_eq!(producer.pending_bytes(), 0);
        let mut got = BTreeSet::new();
        while got.len() < n {
            let m = recv(sub.as_ref(), WAIT).await;
            got.insert(m.payload[..8].to_vec());
            sub.ack(&m.id).await.expect("ack");
        }
    })
    .await;
}
