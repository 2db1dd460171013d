//! In-memory produce path: `Task::call` against calling the in-memory broker's producer
//! directly, from the same number of tasks, in one process. The broker's own cost is the same
//! in both, so the difference is what backstop's produce path (the call's machine, the
//! producer cache, encoding, metrics, spans) costs per message.
//!
//! Run: `cargo bench -p backstop --bench task_call` (env `TASK_CALL_MESSAGES` per round,
//! default 200,000; `TASK_CALL_ROUNDS`, 5; `TASK_CALL_WINDOW`, tasks calling at once, 1000;
//! `TASK_CALL_SIZE`, JSON payload bytes, 1024). Prints CPU µs/msg and msg/s for both, and the
//! ratios measured in the same run; records them for `scripts/bench` when `BACKSTOP_BENCH_JSON`
//! is set.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::broker::{Broker, OutgoingMessage};
use backstop::{Backstop, Task, TaskError, TaskSpec};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time of every thread of this process so far, in nanoseconds (Linux schedstat; zero
/// elsewhere).
fn cpu_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn context() -> (Backstop, backstop_mem::MemBroker) {
    let mem = backstop_mem::MemBroker::new();
    let bs = Backstop::builder(Arc::new(mem.clone()))
        .ignore_env()
        .build()
        .unwrap();
    (bs, mem)
}

/// `window` tasks sending through the in-memory producer.
async fn direct(n: usize, window: usize, size: usize) -> Duration {
    let (_bs, mem) = context();
    let producer = mem.producer("bench").await.unwrap();
    let payload = format!("\"{}\"", "x".repeat(size.saturating_sub(2))).into_bytes();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..window {
        let (producer, payload, next) = (producer.clone(), payload.clone(), next.clone());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                producer
                    .send(OutgoingMessage::new(payload.clone()))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    start.elapsed()
}

/// `window` tasks calling one backstop task whose body returns a string that encodes to
/// `size` bytes of JSON.
async fn task_call(n: usize, window: usize, size: usize) -> Duration {
    let (bs, _mem) = context();
    let task = Task::new(&bs, TaskSpec::new("bench").build().unwrap()).unwrap();
    let body: &'static str = Box::leak("x".repeat(size.saturating_sub(2)).into_boxed_str());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..window {
        let (task, next) = (task.clone(), next.clone());
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                task.call((), move |_| async move { Ok::<_, TaskError>(body) })
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    start.elapsed()
}

fn main() {
    let n = env("TASK_CALL_MESSAGES", 200_000);
    let rounds = env("TASK_CALL_ROUNDS", 5);
    let window = env("TASK_CALL_WINDOW", 1000);
    let size = env("TASK_CALL_SIZE", 1024);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cpu = [Vec::new(), Vec::new()];
    let mut rate = [Vec::new(), Vec::new()];
    rt.block_on(async {
        direct(n / 10, window, size).await;
        task_call(n / 10, window, size).await;
        for round in 0..rounds {
            for who in [round % 2, 1 - round % 2] {
                let c0 = cpu_ns();
                let took = match who {
                    0 => direct(n, window, size).await,
                    _ => task_call(n, window, size).await,
                };
                cpu[who].push((cpu_ns() - c0) as f64 / 1e3 / n as f64);
                rate[who].push(n as f64 / took.as_secs_f64());
            }
            println!(
                "  round {round}: producer {:.2} µs/msg {:.0} msg/s; Task::call {:.2} µs/msg {:.0} msg/s; CPU ratio {:.2}",
                cpu[0][round], rate[0][round], cpu[1][round], rate[1][round],
                cpu[1][round] / cpu[0][round]
            );
        }
    });
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (c0, c1) = (mean(&cpu[0]), mean(&cpu[1]));
    let (r0, r1) = (mean(&rate[0]), mean(&rate[1]));
    println!("in-memory produce, {n} messages × {rounds} rounds, window {window}, {size} B:");
    println!("  mem producer directly: {c0:>7.2} µs/msg CPU {r0:>10.0} msg/s");
    println!("  Task::call:            {c1:>7.2} µs/msg CPU {r1:>10.0} msg/s");
    println!(
        "  Task::call - producer: {:>7.2} µs/msg; ratio CPU {:.2}, throughput {:.2}",
        c1 - c0,
        c1 / c0,
        r1 / r0
    );
    // for scripts/bench (no-op unless BACKSTOP_BENCH_JSON is set)
    let metric = format!("produce, window {window}");
    for (who, c, r) in [("broker-mem producer alone", c0, r0), ("backstop", c1, r1)] {
        backstop_bench_report::record("in-memory", &format!("{metric} CPU"), who, "µs/msg", c);
        backstop_bench_report::record("in-memory", &metric, who, "msg/s", r);
    }
}
