//! In-memory end-to-end throughput: a backstop consumer on the in-memory broker against a bare
//! tokio channel pipeline with the same parallelism, decoding and no-op handler, in one process.
//!
//! Run: `cargo bench -p backstop --bench e2e` (env `E2E_MESSAGES`, `E2E_ROUNDS`,
//! `E2E_PARALLELISM` to change the load). Prints messages/s for both and the ratio, and records
//! them for `scripts/bench` when `BACKSTOP_BENCH_JSON` is set.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::broker::{Broker, OutgoingMessage};
use backstop::{Backstop, ConsumerSpec};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};

#[derive(Serialize, Deserialize)]
struct UserUpdate {
    status: String,
    user_id: i64,
}

fn payload(i: u64) -> Vec<u8> {
    serde_json::to_vec(&UserUpdate {
        status: "success".into(),
        user_id: i as i64,
    })
    .unwrap()
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Bare pipeline: channel → semaphore-bounded spawned handler (decode + no-op) → ack channel.
async fn bare(n: u64, par: usize) -> Duration {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<u64>();
    let producer = tokio::spawn(async move {
        for i in 0..n {
            tx.send(payload(i)).await.unwrap();
        }
    });
    let start = Instant::now();
    let sem = Arc::new(Semaphore::new(par));
    let consumer = tokio::spawn(async move {
        let mut i = 0;
        while let Some(bytes) = rx.recv().await {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let ack = ack_tx.clone();
            let id = i;
            i += 1;
            tokio::spawn(async move {
                let m: UserUpdate = serde_json::from_slice(&bytes).unwrap();
                std::hint::black_box(m);
                let _ = ack.send(id);
                drop(permit);
            });
        }
    });
    let mut acked = 0;
    while acked < n {
        ack_rx.recv().await.unwrap();
        acked += 1;
    }
    let d = start.elapsed();
    producer.await.unwrap();
    consumer.abort();
    d
}

/// backstop: the same messages published to the in-memory broker, consumed by a backstop
/// consumer with the same parallelism and a no-op handler, until all are acked.
async fn backstop_run(n: u64, par: u32) -> Duration {
    let mem = backstop_mem::MemBroker::new();
    let bs = Backstop::builder(Arc::new(mem.clone()))
        .ignore_env()
        .build()
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let d2 = done.clone();
    let spec = ConsumerSpec::new("bench", "svc")
        .max_parallelism(par)
        .build()
        .unwrap();
    let handle = bs
        .spawn_consumer(spec, move |m: UserUpdate| {
            std::hint::black_box(m);
            d2.fetch_add(1, Ordering::Relaxed);
            async { Ok(()) }
        })
        .await
        .unwrap();
    let p = mem.producer("bench").await.unwrap();
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        for i in 0..n {
            p.send(OutgoingMessage::new(payload(i))).await.unwrap();
        }
    });
    loop {
        let acked = mem.counters().acks;
        if acked >= n {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let d = start.elapsed();
    producer.await.unwrap();
    handle.shutdown().await;
    assert_eq!(done.load(Ordering::Relaxed), n);
    d
}

/// The broker alone: the same consumer work (receive, spawn a bounded no-op handler that
/// decodes, ack) written directly against the in-memory broker, without backstop.
async fn broker_only(n: u64, par: usize) -> Duration {
    let mem = backstop_mem::MemBroker::new();
    let sub = mem
        .subscribe(&backstop::broker::SubscriptionSpec::new("bench", "svc"))
        .await
        .unwrap();
    let p = mem.producer("bench").await.unwrap();
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        for i in 0..n {
            p.send(OutgoingMessage::new(payload(i))).await.unwrap();
        }
    });
    let sem = Arc::new(Semaphore::new(par));
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let s2 = sub.clone();
    let acker = tokio::spawn(async move {
        let mut acked = 0;
        while let Some(id) = ack_rx.recv().await {
            s2.ack(&id).await.unwrap();
            acked += 1;
            if acked == n {
                break;
            }
        }
    });
    for _ in 0..n {
        let msg = sub.receive().await.unwrap();
        let permit = sem.clone().acquire_owned().await.unwrap();
        let ack = ack_tx.clone();
        tokio::spawn(async move {
            let m: UserUpdate = serde_json::from_slice(&msg.payload).unwrap();
            std::hint::black_box(m);
            let _ = ack.send(msg.id);
            drop(permit);
        });
    }
    acker.await.unwrap();
    let d = start.elapsed();
    producer.await.unwrap();
    d
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let n = env("E2E_MESSAGES", 100_000);
    let rounds = env("E2E_ROUNDS", 5);
    let par = env("E2E_PARALLELISM", 5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut b, mut s, mut o) = (Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        // Warm-up.
        bare(n / 10, par as usize).await;
        backstop_run(n / 10, par as u32).await;
        for _ in 0..rounds {
            b.push(n as f64 / bare(n, par as usize).await.as_secs_f64());
            s.push(n as f64 / backstop_run(n, par as u32).await.as_secs_f64());
            o.push(n as f64 / broker_only(n, par as usize).await.as_secs_f64());
        }
    });
    let (bm, sm, om) = (median(b), median(s), median(o));
    println!(
        "in-memory end-to-end, {n} messages, max_parallelism {par}, {rounds} rounds (median):"
    );
    println!("  bare tokio channel pipeline: {bm:>12.0} msg/s");
    println!("  broker-mem alone, no backstop:{om:>11.0} msg/s");
    println!("  backstop on broker-mem:      {sm:>12.0} msg/s");
    println!("  ratio backstop / bare:       {:>12.2}", sm / bm);
    println!("  ratio backstop / broker-mem alone: {:>6.2}", sm / om);
    // for scripts/bench (no-op unless BACKSTOP_BENCH_JSON is set)
    let metric = format!("end to end, max_parallelism {par}");
    for (who, v) in [
        ("bare tokio pipeline", bm),
        ("broker-mem alone", om),
        ("backstop", sm),
    ] {
        backstop_bench_report::record("in-memory", &metric, who, "msg/s", v);
    }
}
