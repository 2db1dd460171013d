//! Memory of a backstop consumer working through a large backlog on a real Apache Pulsar: the
//! process's resident set (`VmRSS` in `/proc/self/status`, Linux) sampled every 100 ms while a
//! `spawn_consumer` with a no-op handler drains a pre-filled topic. Not a test: numbers, no
//! assertions.
//!
//! ```text
//! scripts/pulsar start
//! BENCH_BACKLOG=1000000 cargo bench -p backstop-pulsar --bench pulsar_backlog_rss
//! scripts/pulsar stop
//! ```
//!
//! The broker is `BACKSTOP_PULSAR_URL` / `BACKSTOP_PULSAR_ADMIN` (defaults
//! `pulsar://127.0.0.1:6650` / `http://127.0.0.1:8080`). Settings: `BENCH_BACKLOG` (messages,
//! default 200,000), `BENCH_SIZE` (payload bytes, 100), `BENCH_PARALLELISM` (the consumer's
//! `max_parallelism`, 64). The topic is filled by a child process (this binary again, with the
//! bare crate's batching producer), so the measured process holds only the consumer. The
//! adapter's defaults apply (receiver queue 100).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::{Backstop, ConsumerSpec};
use backstop_engine::core::{ConsumerEvent, Time};
use backstop_engine::runtime::Observer;
use backstop_pulsar::pulsar::{ProducerOptions, Pulsar, TokioExecutor};
use backstop_pulsar::{PulsarBroker, PulsarOptions};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const FILL_ENV: &str = "BENCH_RSS_FILL";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `VmRSS` of this process in MiB (NaN where `/proc` is not there).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The payload: a JSON string of `size` bytes (backstop's consumer decodes JSON).
fn payload(size: usize) -> Vec<u8> {
    serde_json::to_vec(&"x".repeat(size.saturating_sub(2))).expect("json")
}

/// Child mode: fills `topic` with `n` messages through the bare crate's batching producer.
async fn fill(url: &str, topic: &str, n: usize, size: usize) -> Res<()> {
    let client = Pulsar::builder(url.to_string(), TokioExecutor)
        .build()
        .await?;
    let mut producer = client
        .producer()
        .with_topic(topic)
        .with_options(ProducerOptions {
            batch_size: Some(1000),
            batch_byte_size: Some(128 * 1024),
            batch_timeout: Some(Duration::from_millis(1)),
            block_queue_if_full: true,
            ..Default::default()
        })
        .build()
        .await?;
    let body = payload(size);
    let mut inflight = FuturesUnordered::new();
    for _ in 0..n {
        if inflight.len() >= 4000 {
            if let Some(r) = inflight.next().await {
                r?;
            }
        }
        inflight.push(producer.send_non_blocking(body.clone()).await?);
    }
    while let Some(r) = inflight.next().await {
        r?;
    }
    producer.close().await?;
    Ok(())
}

async fn http_put(base: &str, path: &str) -> Res<()> {
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(hostport).await?;
    let request = format!(
        "PUT {path} HTTP/1.0\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    if !text
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .starts_with('2')
    {
        return Err(format!("PUT {path}: {}", text.lines().next().unwrap_or("")).into());
    }
    Ok(())
}

struct AckCounter(AtomicU64);

impl Observer for AckCounter {
    fn consumer_event(&self, _consumer: &str, _now: Time, e: &ConsumerEvent) {
        if matches!(e, ConsumerEvent::Acked { .. }) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn run() -> Res<()> {
    let url = env_or("BACKSTOP_PULSAR_URL", "pulsar://127.0.0.1:6650".to_string());
    let admin = env_or("BACKSTOP_PULSAR_ADMIN", "http://127.0.0.1:8080".to_string());
    let n: usize = env_or("BENCH_BACKLOG", 200_000);
    let size: usize = env_or("BENCH_SIZE", 100);
    let parallelism: u32 = env_or("BENCH_PARALLELISM", 64);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let name = format!("bench-rss-{nanos}");
    let topic = format!("persistent://public/default/{name}");
    http_put(
        &admin,
        &format!("/admin/v2/persistent/public/default/{name}/subscription/rss"),
    )
    .await?;
    let baseline = rss_mib();
    let started = Instant::now();
    let status = std::process::Command::new(std::env::current_exe()?)
        .env(FILL_ENV, &topic)
        .status()?;
    if !status.success() {
        return Err(format!("the fill child failed: {status}").into());
    }
    println!(
        "pulsar_backlog_rss: backlog of {n} messages x {size} B filled in {:.1?} (batched, by a child process)",
        started.elapsed()
    );

    let broker = PulsarBroker::connect(&url, PulsarOptions::default()).await?;
    let acks = Arc::new(AckCounter(AtomicU64::new(0)));
    let bs = Backstop::builder(Arc::new(broker))
        .observer(acks.clone())
        .env_from(BTreeMap::new())
        .build()?;
    let connected = rss_mib();
    let start = Instant::now();
    let handle = bs
        .spawn_consumer(
            ConsumerSpec::new(&topic, "rss")
                .max_parallelism(parallelism)
                .build()?,
            |_: serde_json::Value| async { Ok(()) },
        )
        .await?;
    let mut max = connected;
    let mut samples = Vec::new();
    let mut next_report = n / 10;
    loop {
        let done = acks.0.load(Ordering::Relaxed) as usize;
        let rss = rss_mib();
        max = max.max(rss);
        samples.push(rss);
        if done >= next_report || done >= n {
            println!(
                "  {done:>9} acked after {:>6.1?}: RSS {rss:.1} MiB (max so far {max:.1})",
                start.elapsed()
            );
            next_report = done + n / 10;
        }
        if done >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = start.elapsed();
    handle.shutdown_within(Duration::from_secs(5)).await;
    let end = rss_mib();
    // RSS over the second half of the run: flat means no growth with the messages handled
    let half = &samples[samples.len() / 2..];
    let (lo, hi) = half
        .iter()
        .fold((f64::INFINITY, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    println!("\n| backlog | consume time | msg/s | RSS before connect | RSS connected | RSS max | RSS 2nd half (min–max) | RSS after shutdown |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} x {size} B | {:.1} s | {:.0} | {baseline:.1} MiB | {connected:.1} MiB | {max:.1} MiB | {lo:.1}–{hi:.1} MiB | {end:.1} MiB |",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    // for scripts/bench (no-op unless BACKSTOP_BENCH_JSON is set)
    let metric = format!("{n} message backlog");
    for (what, mib) in [
        ("RSS before connect", baseline),
        ("RSS connected", connected),
        ("consumer RSS max", max),
        ("RSS 2nd half min", lo),
        ("RSS 2nd half max", hi),
        ("RSS after shutdown", end),
    ] {
        backstop_bench_report::record("pulsar memory", &metric, what, "MiB", mib);
    }
    backstop_bench_report::record(
        "pulsar memory",
        &metric,
        "backstop drain",
        "msg/s",
        n as f64 / took.as_secs_f64(),
    );
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Ok(topic) = std::env::var(FILL_ENV) {
        let url = env_or("BACKSTOP_PULSAR_URL", "pulsar://127.0.0.1:6650".to_string());
        let n = env_or("BENCH_BACKLOG", 200_000);
        let size = env_or("BENCH_SIZE", 100);
        if let Err(e) = rt.block_on(fill(&url, &topic, n, size)) {
            eprintln!("fill failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = rt.block_on(run()) {
        eprintln!("pulsar_backlog_rss failed: {e}\n(start a broker with `scripts/pulsar start`, or set BACKSTOP_PULSAR_URL / BACKSTOP_PULSAR_ADMIN)");
        std::process::exit(1);
    }
}
