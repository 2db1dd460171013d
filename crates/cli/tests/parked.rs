//! Parked messages (a consumer without a DLQ whose budget is spent parks the message on
//! `<topic>-<subscription>-PARKED`) are released by `backstop dlq redrive`, on a real Pulsar:
//! the redriven copy reaches the consumer again with a fresh budget and is handled once the
//! cause is fixed; nothing is lost, nothing is run while parked. The parking topic's durable
//! subscription is made by the runtime, before the first record (no `dlq init` needed).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::{Backstop, ConsumerSpec, HandlerError};
use backstop_engine::broker::{OutgoingMessage, Producer};
use common::*;

async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} did not happen within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_message_is_released_by_redrive_and_handled() {
    let broker = connect().await;
    let origin = unique("parkme");
    let parked = format!("{origin}-svc-PARKED");
    // No `backstop dlq init`: the runtime creates the records' durable subscription
    // (backstop-redrive) before it parks the first message, so the broker keeps it.

    let bs = Backstop::builder(Arc::new(broker.clone()))
        .env_from(BTreeMap::new())
        .build()
        .expect("context");
    let runs = Arc::new(AtomicU32::new(0));
    let handled = Arc::new(AtomicU32::new(0));
    let fixed = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (runs, handled, fixed) = (runs.clone(), handled.clone(), fixed.clone());
        bs.spawn_consumer(
            ConsumerSpec::new(&origin, "svc")
                .max_retries(1)
                .retry_delay(Duration::from_millis(100))
                .build()
                .expect("spec"),
            move |_v: serde_json::Value| {
                let (runs, handled, fixed) = (runs.clone(), handled.clone(), fixed.clone());
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    if fixed.load(Ordering::SeqCst) {
                        handled.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    } else {
                        Err(HandlerError::retryable("the user store is down"))
                    }
                }
            },
        )
        .await
        .expect("consumer")
    };
    broker
        .pulsar_producer(&origin)
        .await
        .unwrap()
        .send(
            OutgoingMessage::new(r#"{"n":1}"#)
                .with_key("k1")
                .with_property("trace", "t1"),
        )
        .await
        .unwrap();

    // max_retries 1, no DLQ: two runs, then parked
    wait_for("parking", async || {
        admin()
            .backlog(
                &backstop_cli::topic::Topic::parse(&parked).unwrap(),
                backstop_cli::DEFAULT_SUBSCRIPTION,
            )
            .await
            .expect("admin stats")
            == Some(1)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2, "no run after parking");
    let peek = run_json(&["dlq", "peek", &parked], 0).await;
    assert_eq!(peek[0]["attempts"], 2, "{peek}");
    assert!(
        peek[0]["origin_topic"].as_str().unwrap().ends_with(&origin),
        "{peek}"
    );

    // the cause is fixed; the operator releases the parked message
    fixed.store(true, Ordering::SeqCst);
    let s = run_json(&["dlq", "redrive", &parked], 0).await;
    assert_eq!(s["redriven"], 1, "{s}");
    wait_for("the released message handled", async || {
        handled.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(backlog(&parked).await, 0, "the parked record was acked");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3, "one run after the release");
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    consumer.shutdown().await;
}
