//! Payloads near and over the broker's maximum message size (5 MiB by default), on a real
//! Pulsar: a task whose message is too large fails at once as a permanent error with its data
//! back, and a dead-letter record that would be too large is still published, cut, with the
//! original length and SHA-256 kept — never a nack loop.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backstop::{
    ConsumerSpec, DeadLetter, DeadLetterRecord, ErrorKind, HandlerError, Task, TaskError, TaskSpec,
};
use backstop_engine::broker::{Broker, OutgoingMessage, Subscription, SubscriptionSpec};
use backstop_engine::runtime::{sha256_hex, Backstop, DLQ_MESSAGE_LIMIT};

fn topic(name: &str) -> String {
    common::unique(name)
}

async fn one(sub: &dyn Subscription) -> backstop_engine::broker::ReceivedMessage {
    let m = tokio::time::timeout(Duration::from_secs(30), sub.receive())
        .await
        .expect("a DLQ record arrives within 30 s")
        .unwrap();
    sub.ack(&m.id).await.unwrap();
    m
}

#[tokio::test]
async fn an_oversize_task_message_is_permanent_with_its_data_back_and_a_cut_dlq_record() {
    let broker = Arc::new(common::connect().await);
    let t = topic("oversize-task");
    let dlq = format!("{t}-dlq");
    let dlq_sub = broker
        .subscribe(&SubscriptionSpec::new(&dlq, "check"))
        .await
        .unwrap();
    let bs = Backstop::builder(broker.clone())
        .ignore_env()
        .build()
        .unwrap();
    let spec = TaskSpec::new(&t)
        .max_retries(3)
        .retry_delay(Duration::from_secs(30))
        .dlq_topic(&dlq)
        .build()
        .unwrap();
    let task = Task::new(&bs, spec).unwrap();
    let big = "x".repeat(6 * 1024 * 1024);
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let Err(f) = task
        .call(big.clone(), move |a| {
            r.fetch_add(1, Ordering::SeqCst);
            let v = a.clone();
            async move { Ok::<String, TaskError>(v) }
        })
        .await
    else {
        panic!("a 6 MiB message must not be published")
    };
    assert_eq!(f.kind(), Some(ErrorKind::Rejected), "{f}");
    assert_eq!(f.attempts, 1, "not retried: {f}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(f.args, big, "the caller gets its data back");
    assert_eq!(task.breaker().1, 0, "the breaker does not count it");
    assert!(
        matches!(f.dead_letter, DeadLetter::Published { .. }),
        "the DLQ record is published although the payload was too large: {f}"
    );

    let m = one(dlq_sub.as_ref()).await;
    assert!(m.payload.len() <= DLQ_MESSAGE_LIMIT);
    let record: DeadLetterRecord = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(record.origin_topic, t);
    let payload = serde_json::to_vec(&big).unwrap();
    assert_eq!(m.properties["backstop.payload_truncated"], "true");
    assert_eq!(
        m.properties["backstop.payload_length"],
        payload.len().to_string()
    );
    assert_eq!(
        m.properties["backstop.payload_sha256"],
        sha256_hex(&payload)
    );
    let kept = record
        .payload_text
        .expect("a prefix of the payload is kept");
    assert!(!kept.is_empty() && big.starts_with(kept.trim_start_matches('"')));
    assert_eq!(m.properties["backstop.args_truncated"], "true");
}

#[tokio::test]
async fn a_dlq_record_over_the_limit_is_published_cut_and_the_message_acked() {
    let broker = Arc::new(common::connect().await);
    let t = topic("oversize-consume");
    let dlq = format!("{t}-dlq");
    let dlq_sub = broker
        .subscribe(&SubscriptionSpec::new(&dlq, "check"))
        .await
        .unwrap();
    let bs = Backstop::builder(broker.clone())
        .ignore_env()
        .build()
        .unwrap();
    // 4.5 MiB of binary data: the broker takes it, but as a JSON byte array in a DLQ record it
    // would be about 16 MiB.
    let payload: Vec<u8> = (0..4_500_000u32).map(|i| (i % 127) as u8 | 0x80).collect();
    let mut properties = std::collections::BTreeMap::new();
    properties.insert("huge".to_string(), "h".repeat(200_000));
    properties.insert(
        "ORIGIN_MESSAGE_ID".to_string(),
        "not:an:id:at:all".to_string(),
    );
    let invoked = Arc::new(AtomicU32::new(0));
    let i = invoked.clone();
    let spec = ConsumerSpec::new(&t, "svc").dlq_topic(&dlq).max_retries(2);
    let handle = bs
        .spawn_consumer(spec, move |_m: serde_json::Value| {
            i.fetch_add(1, Ordering::SeqCst);
            async { Err(HandlerError::invalid("never valid")) }
        })
        .await
        .unwrap();
    broker
        .producer(&t)
        .await
        .unwrap()
        .send(OutgoingMessage {
            payload: payload.clone(),
            key: Some("k".into()),
            properties,
            ..Default::default()
        })
        .await
        .unwrap();

    let m = one(dlq_sub.as_ref()).await;
    assert!(m.payload.len() <= DLQ_MESSAGE_LIMIT);
    let record: DeadLetterRecord = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(record.reason, "decode", "binary data is not JSON: poison");
    let kept = record
        .payload_bytes
        .expect("a prefix of the payload is kept");
    assert!(!kept.is_empty() && payload.starts_with(&kept));
    assert_eq!(
        m.properties["backstop.payload_length"],
        payload.len().to_string()
    );
    assert_eq!(
        m.properties["backstop.payload_sha256"],
        sha256_hex(&payload)
    );
    assert!(
        m.properties["huge"].len() < 200_000,
        "huge properties are cut"
    );
    // Nothing comes back: the original was acked after the DLQ publish, not nacked.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = handle.shutdown().await;
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    assert_eq!(report.received, 1, "no redelivery loop: {report:?}");
    assert_eq!(report.nacked, 0, "{report:?}");
    assert_eq!(
        invoked.load(Ordering::SeqCst),
        0,
        "poison never reaches the handler"
    );
}
