//! The loop guard on a real Pulsar, end to end with backstop's runtime: a consumer that always
//! rejects a message dead-letters it; a redrive sends it back (redrive count 1); the consumer
//! dead-letters it again, keeping the count; the next redrive with `--max-redrives 1` parks it
//! on the parking topic instead of looping it.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::{Backstop, ConsumerSpec, HandlerError};
use backstop_engine::broker::{OutgoingMessage, Producer};
use common::*;

async fn wait_backlog(dlq: &str, n: u64) {
    let start = Instant::now();
    while backlog(dlq).await != n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "DLQ backlog never reached {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_keeps_failing_is_parked_not_looped() {
    let broker = connect().await;
    let origin = unique("loop");
    let dlq = format!("{origin}-DLQ");
    let parked = format!("{dlq}-PARKED");
    init(&dlq).await;
    subscribe(&broker, &parked, "check").await;

    let bs = Backstop::builder(Arc::new(broker.clone()))
        .env_from(BTreeMap::new())
        .build()
        .expect("context");
    let runs = Arc::new(AtomicU32::new(0));
    let consumer = {
        let runs = runs.clone();
        bs.spawn_consumer(
            ConsumerSpec::new(&origin, "svc")
                .max_retries(0)
                .dlq_topic(&dlq)
                .build()
                .expect("spec"),
            move |_v: serde_json::Value| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>(HandlerError::invalid("always rejected"))
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
                .with_key("kx")
                .with_property("trace", "t1"),
        )
        .await
        .unwrap();
    wait_backlog(&dlq, 1).await;

    // first redrive: back to the origin, count 1; the consumer rejects it again
    let s = run_json(&["dlq", "redrive", &dlq, "--max-redrives", "1"], 0).await;
    assert_eq!(
        (s["redriven"].as_u64(), s["parked"].as_u64()),
        (Some(1), Some(0))
    );
    wait_backlog(&dlq, 1).await;
    let again = run_json(&["dlq", "peek", &dlq], 0).await;
    assert_eq!(again[0]["redrive_count"], 1, "{again}");

    // second redrive: the loop guard parks it
    let s = run_json(&["dlq", "redrive", &dlq, "--max-redrives", "1"], 0).await;
    assert_eq!(
        (s["redriven"].as_u64(), s["parked"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(backlog(&dlq).await, 0);
    let p = drain(&broker, &parked, "check", Duration::from_secs(2)).await;
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key.as_deref(), Some("kx"));
    assert_eq!(props(&p[0])["trace"], "t1");
    assert_eq!(props(&p[0])["backstop.redrive.count"], "1");
    assert!(props(&p[0])["backstop.parked_from"].contains(&dlq));
    // handler runs: the original and the one redriven copy; nothing after parking
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    consumer.shutdown().await;
}
