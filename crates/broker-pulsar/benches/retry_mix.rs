//! Retry strategies on a real Apache Pulsar (docs/benchmarks.md, "Retry strategies"): consume
//! throughput of a topic where 10 % of the messages fail their first run, under each strategy
//! (`in_process`, `nack`, `retry_topic`). Not a test: numbers, no assertions.
//!
//! ```text
//! scripts/pulsar start
//! cargo bench -p backstop-pulsar --bench retry_mix
//! ```
//!
//! The broker is `BACKSTOP_PULSAR_URL` / `BACKSTOP_PULSAR_ADMIN`. Settings (environment):
//! `BENCH_MESSAGES` (per round and strategy, default 2000), `BENCH_ROUNDS` (3; the strategies'
//! order rotates), `BENCH_PARALLELISM` (64), `BENCH_RETRY_MS` (retry delay, 100). Each round:
//! a fresh topic pre-filled with JSON messages (batched), then a consumer (`max_retries` 3) runs
//! until every message succeeded; throughput = messages / time from start to the last success.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backstop::broker::{Broker, OutgoingMessage, SubscriptionSpec};
use backstop::{Backstop, ConsumerSpec, Delivery, HandlerError, RetryStrategy};
use backstop_pulsar::{PulsarBroker, PulsarOptions};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let url =
        std::env::var("BACKSTOP_PULSAR_URL").unwrap_or_else(|_| "pulsar://127.0.0.1:6650".into());
    let messages = env("BENCH_MESSAGES", 2000) as usize;
    let rounds = env("BENCH_ROUNDS", 3);
    let parallelism = env("BENCH_PARALLELISM", 64) as u32;
    let retry = Duration::from_millis(env("BENCH_RETRY_MS", 100));
    let broker = PulsarBroker::connect(&url, PulsarOptions::default())
        .await
        .expect("connect (scripts/pulsar start; BACKSTOP_PULSAR_URL)");
    let strategies = [
        RetryStrategy::InProcess,
        RetryStrategy::Nack,
        RetryStrategy::Topic,
    ];
    let mut totals: BTreeMap<&str, (usize, Duration, usize)> = BTreeMap::new();
    for round in 0..rounds {
        for i in 0..strategies.len() {
            let s = strategies[(i + round as usize) % strategies.len()];
            let (elapsed, runs) = one(&broker, s, messages, parallelism, retry).await;
            let t = totals.entry(s.as_str()).or_default();
            t.0 += messages;
            t.1 += elapsed;
            t.2 += runs;
            // for scripts/bench (no-op unless BACKSTOP_BENCH_JSON is set)
            backstop_bench_report::record(
                "retries",
                &format!("retry delay {} ms, 10 % failing once", retry.as_millis()),
                s.as_str(),
                "msg/s",
                messages as f64 / elapsed.as_secs_f64(),
            );
            println!(
                "round {round} {:<12} {messages} messages in {elapsed:.2?}: {:.0} msg/s, {runs} runs",
                s.as_str(),
                messages as f64 / elapsed.as_secs_f64()
            );
        }
    }
    println!("\n| strategy | messages | time | throughput | handler runs |\n|---|---|---|---|---|");
    for (name, (n, t, runs)) in totals {
        println!(
            "| `{name}` | {n} | {t:.2?} | {:.0} msg/s | {runs} |",
            n as f64 / t.as_secs_f64()
        );
    }
}

async fn one(
    broker: &PulsarBroker,
    strategy: RetryStrategy,
    messages: usize,
    parallelism: u32,
    retry: Duration,
) -> (Duration, usize) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let topic = format!(
        "bench-retry-{}-{nanos}",
        strategy.as_str().replace('_', "-")
    );
    // the subscription exists before the topic is filled
    broker
        .subscribe(&SubscriptionSpec::new(&topic, "svc"))
        .await
        .expect("subscribe")
        .close()
        .await
        .expect("close");
    let producer = broker.producer(&topic).await.expect("producer");
    let sends = (0..messages).map(|n| {
        let p = producer.clone();
        tokio::spawn(async move { p.send(OutgoingMessage::new(format!("{{\"n\":{n}}}"))).await })
    });
    for s in futures::future::join_all(sends).await {
        s.expect("join").expect("send");
    }
    let bs = Backstop::builder(Arc::new(broker.clone()))
        .env_from(BTreeMap::new())
        .build()
        .expect("context");
    let done = Arc::new(AtomicUsize::new(0));
    let runs = Arc::new(AtomicUsize::new(0));
    let (d2, r2) = (done.clone(), runs.clone());
    let spec = ConsumerSpec::new(&topic, "svc")
        .max_parallelism(parallelism)
        .max_retries(3)
        .retry_delay(retry)
        .retry_strategy(strategy)
        .dlq_topic(format!("{topic}-DLQ"))
        .build()
        .expect("spec");
    let start = Instant::now();
    let handle = bs
        .spawn_consumer_with_delivery(spec, move |m: serde_json::Value, d: Delivery| {
            r2.fetch_add(1, Ordering::Relaxed);
            let fail = m["n"].as_u64().unwrap_or(0) % 10 == 0 && d.attempt() == 1;
            if !fail {
                d2.fetch_add(1, Ordering::Relaxed);
            }
            async move {
                if fail {
                    Err(HandlerError::retryable("first run fails"))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .expect("consumer");
    while done.load(Ordering::Relaxed) < messages {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{}: only {} of {messages} succeeded",
            strategy.as_str(),
            done.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed();
    handle.shutdown().await;
    (elapsed, runs.load(Ordering::Relaxed))
}
