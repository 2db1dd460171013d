//! backstop on a real Apache Pulsar against the bare `pulsar` crate and pulsar-perf, in one run
//! on the same broker (docs/benchmarks.md). Not a test: numbers, no assertions.
//!
//! ```text
//! scripts/pulsar start
//! cargo bench -p backstop-pulsar --bench pulsar_throughput
//! scripts/pulsar stop
//! ```
//!
//! The broker is `BACKSTOP_PULSAR_URL` / `BACKSTOP_PULSAR_ADMIN` (default
//! `pulsar://127.0.0.1:6650` / `http://127.0.0.1:8080`); pulsar-perf runs through
//! `scripts/pulsar perf-produce` against the same broker. Settings (environment):
//! `BENCH_MESSAGES` (per round and contender, default 5000), `BENCH_SIZE` (payload bytes, 1024),
//! `BENCH_WINDOW` (messages in flight when producing, 64), `BENCH_PREFETCH` (consumer flow
//! permits, 500), `BENCH_PARALLELISM` (backstop consumer `max_parallelism`, 64), `BENCH_ROUNDS`
//! (12; short rounds, the contenders' order rotating through all six permutations, throughput
//! = all messages / all time, so that load drifting on a shared machine hits each contender
//! alike), `BENCH_LATENCY` (sequential messages for
//! latency, 1000), `BENCH_PERF_SECONDS` (10; 0 skips pulsar-perf), `BENCH_ONLY` (the parts to
//! run, default `produce,consume,latency,perf`), `BENCH_NODELAY` (1: the adapter's default
//! `tcp_nodelay`, which sets `TCP_NODELAY` on every connection of the process to the broker
//! port, the bare client's included; 0: Nagle on for both, the pulsar crate's default),
//! `BENCH_BATCHING` (1: producer batching with the adapter's defaults, 1 ms / 1,000 messages /
//! 128 KiB, for the adapter, backstop and the bare crate alike; 0: no batching for any).
//!
//! Contenders, all with the same batching settings and the same window:
//! - produce: the bare crate (one producer, `send_non_blocking`, `window` receipts outstanding);
//!   the adapter (`PulsarProducer::send` from `window` tasks); backstop (`Task::call` from
//!   `window` tasks: body, JSON encoding, breaker, metrics, publish); pulsar-perf (`-db -o window`,
//!   and with its default batching).
//! - consume, twice: from a topic pre-filled with `messages` messages without batching
//!   (`consume unbatched`) and from one pre-filled by a batching producer (`consume batched`),
//!   one subscription per contender: the bare crate (receive + ack loop); the adapter
//!   (`receive` + `ack` loop); backstop (`spawn_consumer` with a no-op handler,
//!   `max_parallelism` `parallelism`), until every message is acked.
//! - latency, one message at a time: publish (call → broker receipt) and end to end (call →
//!   handler), p50 and p99: bare, adapter and backstop, and the bare crate without producer
//!   batching (the baseline for what batching and backstop add together).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop::broker::{Broker, OutgoingMessage, SubscriptionSpec};
use backstop::{Backstop, ConsumerSpec, Task, TaskError, TaskSpec};
use backstop_engine::core::{ConsumerEvent, Time};
use backstop_engine::runtime::Observer;
use backstop_pulsar::pulsar::{
    self, consumer::InitialPosition, ConsumerOptions, ProducerOptions, Pulsar, SubType,
    TokioExecutor,
};
use backstop_pulsar::{PulsarBatching, PulsarBroker, PulsarOptions};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Clone, Debug)]
struct Config {
    url: String,
    admin: String,
    messages: usize,
    size: usize,
    window: usize,
    prefetch: u32,
    parallelism: u32,
    rounds: usize,
    latency: usize,
    perf_seconds: u64,
    only: String,
    nodelay: bool,
    batching: bool,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Config {
    fn from_env() -> Config {
        Config {
            url: env_or("BACKSTOP_PULSAR_URL", "pulsar://127.0.0.1:6650".to_string()),
            admin: env_or("BACKSTOP_PULSAR_ADMIN", "http://127.0.0.1:8080".to_string()),
            messages: env_or("BENCH_MESSAGES", 5_000),
            size: env_or("BENCH_SIZE", 1024),
            window: env_or("BENCH_WINDOW", 64),
            prefetch: env_or("BENCH_PREFETCH", 500),
            parallelism: env_or("BENCH_PARALLELISM", 64),
            rounds: env_or("BENCH_ROUNDS", 12),
            latency: env_or("BENCH_LATENCY", 1000),
            perf_seconds: env_or("BENCH_PERF_SECONDS", 10),
            only: env_or("BENCH_ONLY", "produce,consume,latency,perf".to_string()),
            nodelay: env_or("BENCH_NODELAY", 1) != 0,
            batching: env_or("BENCH_BATCHING", 1) != 0,
        }
    }

    /// Whether `part` (produce, consume, latency, perf) is to run (`BENCH_ONLY`).
    fn wants(&self, part: &str) -> bool {
        self.only.split(',').any(|p| p.trim() == part)
    }
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("bench-{tag}-{nanos}")
}

/// CPU time (user + system) this process used so far, from `/proc/self/stat` (Linux; 10 ms
/// ticks), or zero elsewhere.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // fields after the ")" closing the command name: state is field 3, utime 14, stime 15
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// The order of the contenders in round `round`: all six permutations in turn, so that each
/// runs first, second and third equally often (a 2-core machine shared with a broker and
/// other work drifts in speed; short rounds in rotating order spread the drift evenly).
fn order(round: usize) -> [usize; 3] {
    const ORDERS: [[usize; 3]; 6] = [
        [0, 1, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
        [1, 0, 2],
        [0, 2, 1],
    ];
    ORDERS[round % ORDERS.len()]
}

/// Messages per second over all rounds: total messages / total time.
fn overall(times: &[Duration], n: usize) -> f64 {
    rate(n * times.len(), times.iter().sum())
}

fn mean(v: Vec<f64>) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A bare crate client with the adapter's connection settings.
async fn bare_client(cfg: &Config) -> Res<Pulsar<TokioExecutor>> {
    Ok(Pulsar::builder(cfg.url.clone(), TokioExecutor)
        .build()
        .await?)
}

/// The bare crate's producer; with `batching`, the adapter's default batch settings.
async fn bare_producer(
    client: &Pulsar<TokioExecutor>,
    topic: &str,
    batching: bool,
) -> Res<pulsar::Producer<TokioExecutor>> {
    let b = PulsarBatching::default();
    Ok(client
        .producer()
        .with_topic(topic)
        .with_options(ProducerOptions {
            batch_size: batching.then_some(b.max_messages),
            batch_byte_size: batching.then_some(b.max_bytes),
            batch_timeout: batching.then_some(b.max_delay),
            block_queue_if_full: true,
            ..Default::default()
        })
        .build()
        .await?)
}

/// Publishes `n` payloads with `window` receipts outstanding; returns the time.
async fn bare_produce(client: &Pulsar<TokioExecutor>, topic: &str, cfg: &Config) -> Res<Duration> {
    let mut producer = bare_producer(client, topic, cfg.batching).await?;
    let payload = vec![b'x'; cfg.size];
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for _ in 0..cfg.messages {
        if inflight.len() >= cfg.window {
            if let Some(r) = inflight.next().await {
                r?;
            }
        }
        inflight.push(producer.send_non_blocking(payload.clone()).await?);
    }
    while let Some(r) = inflight.next().await {
        r?;
    }
    let took = start.elapsed();
    producer.close().await?;
    Ok(took)
}

/// `window` tasks publishing through the adapter's producer.
async fn adapter_produce(broker: &PulsarBroker, topic: &str, cfg: &Config) -> Res<Duration> {
    let producer = broker.producer(topic).await?;
    let payload = vec![b'x'; cfg.size];
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..cfg.window {
        let (producer, payload, next, n) = (
            producer.clone(),
            payload.clone(),
            next.clone(),
            cfg.messages,
        );
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                producer.send(OutgoingMessage::new(payload.clone())).await?;
            }
            Ok::<_, backstop::broker::BrokerError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(start.elapsed())
}

/// `window` tasks calling a backstop task whose body returns a string that encodes to exactly
/// `size` bytes of JSON.
async fn backstop_produce(bs: &Backstop, topic: &str, cfg: &Config) -> Res<Duration> {
    let task = Task::new(bs, TaskSpec::new(topic).build()?)?;
    let body = json_body(cfg);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..cfg.window {
        let (task, next, n) = (task.clone(), next.clone(), cfg.messages);
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                task.call((), move |_| async move { Ok::<_, TaskError>(body) })
                    .await
                    .map_err(|f| f.to_string())?;
            }
            Ok::<_, String>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(start.elapsed())
}

/// A string whose JSON encoding is exactly `size` bytes (a task's value), made once.
fn json_body(cfg: &Config) -> &'static str {
    Box::leak("x".repeat(cfg.size.saturating_sub(2)).into_boxed_str())
}

/// A tiny HTTP/1.0 PUT to the (loopback) admin API.
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
    let status = text.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with('2') {
        return Err(format!("PUT {path}: {}", text.lines().next().unwrap_or("")).into());
    }
    Ok(())
}

/// Counts acks of a backstop consumer.
struct AckCounter(AtomicU64);

impl Observer for AckCounter {
    fn consumer_event(&self, _consumer: &str, _now: Time, e: &ConsumerEvent) {
        if matches!(e, ConsumerEvent::Acked { .. }) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn bare_consume(
    client: &Pulsar<TokioExecutor>,
    topic: &str,
    sub: &str,
    cfg: &Config,
) -> Res<Duration> {
    let start = Instant::now();
    let mut consumer: pulsar::Consumer<Vec<u8>, TokioExecutor> = client
        .consumer()
        .with_topic(topic)
        .with_subscription(sub)
        .with_subscription_type(SubType::Shared)
        .with_batch_size(cfg.prefetch)
        .with_options(ConsumerOptions {
            durable: Some(true),
            initial_position: InitialPosition::Earliest,
            receiver_queue_size: Some(cfg.prefetch * 2),
            ..Default::default()
        })
        .build()
        .await?;
    for _ in 0..cfg.messages {
        let m = consumer.next().await.ok_or("stream ended")??;
        consumer.ack(&m).await?;
    }
    let took = start.elapsed();
    consumer.close().await?;
    Ok(took)
}

async fn adapter_consume(
    broker: &PulsarBroker,
    topic: &str,
    sub: &str,
    cfg: &Config,
) -> Res<Duration> {
    let start = Instant::now();
    let s = broker.subscribe(&SubscriptionSpec::new(topic, sub)).await?;
    for _ in 0..cfg.messages {
        let m = s.receive().await?;
        s.ack(&m.id).await?;
    }
    let took = start.elapsed();
    s.close().await?;
    Ok(took)
}

async fn backstop_consume(
    broker: &PulsarBroker,
    topic: &str,
    sub: &str,
    cfg: &Config,
) -> Res<Duration> {
    let acks = Arc::new(AckCounter(AtomicU64::new(0)));
    let bs = Backstop::builder(Arc::new(broker.clone()))
        .observer(acks.clone())
        .env_from(BTreeMap::new())
        .build()?;
    let start = Instant::now();
    let handle = bs
        .spawn_consumer(
            ConsumerSpec::new(topic, sub)
                .max_parallelism(cfg.parallelism)
                .build()?,
            |_: serde_json::Value| async { Ok(()) },
        )
        .await?;
    while acks.0.load(Ordering::Relaxed) < cfg.messages as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = start.elapsed();
    handle.shutdown_within(Duration::from_secs(5)).await;
    Ok(took)
}

fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort();
    v
}

/// Latency samples of one contender, sorted.
type Samples = Vec<Duration>;

/// The latency contenders: the bare crate, the adapter, backstop (all with the configured
/// batching) and the bare crate without batching, the baseline of what batching adds.
type Latencies = [Samples; 4];

/// Sequential publishes (call → broker receipt): bare, adapter, backstop, bare unbatched.
async fn publish_latency(
    client: &Pulsar<TokioExecutor>,
    broker: &PulsarBroker,
    bs: &Backstop,
    cfg: &Config,
) -> Res<Latencies> {
    let topic = unique("lat-publish");
    let mut producer = bare_producer(client, &topic, cfg.batching).await?;
    let mut unbatched = bare_producer(client, &format!("{topic}-unbatched"), false).await?;
    let payload = vec![b'x'; cfg.size];
    let adapter = broker.producer(&format!("{topic}-adapter")).await?;
    let task = Task::new(bs, TaskSpec::new(format!("{topic}-bs")).build()?)?;
    let body = json_body(cfg);
    let mut out: Latencies = Default::default();
    for i in 0..=cfg.latency {
        let t = Instant::now();
        producer.send_non_blocking(payload.clone()).await?.await?;
        let bare = t.elapsed();
        let t = Instant::now();
        unbatched.send_non_blocking(payload.clone()).await?.await?;
        let bare_unbatched = t.elapsed();
        let t = Instant::now();
        adapter.send(OutgoingMessage::new(payload.clone())).await?;
        let adapted = t.elapsed();
        let t = Instant::now();
        task.call((), move |_| async move { Ok::<_, TaskError>(body) })
            .await
            .map_err(|f| f.to_string())?;
        let backstop = t.elapsed();
        if i > 0 {
            // the first round warms up (producers created, connections up)
            out[0].push(bare);
            out[1].push(adapted);
            out[2].push(backstop);
            out[3].push(bare_unbatched);
        }
    }
    producer.close().await?;
    unbatched.close().await?;
    Ok(out.map(sorted))
}

/// Sequential end to end with the bare crate's producer (`batching` or not) and consumer.
async fn bare_e2e_latency(
    client: &Pulsar<TokioExecutor>,
    topic: &str,
    batching: bool,
    cfg: &Config,
) -> Res<Samples> {
    let payload = vec![b'x'; cfg.size];
    let mut out = Samples::new();
    let mut consumer: pulsar::Consumer<Vec<u8>, TokioExecutor> = client
        .consumer()
        .with_topic(topic)
        .with_subscription("bare")
        .with_subscription_type(SubType::Shared)
        .with_batch_size(cfg.prefetch)
        .build()
        .await?;
    let mut producer = bare_producer(client, topic, batching).await?;
    for i in 0..=cfg.latency {
        let t = Instant::now();
        producer.send_non_blocking(payload.clone()).await?.await?;
        let m = consumer.next().await.ok_or("stream ended")??;
        if i > 0 {
            out.push(t.elapsed());
        }
        consumer.ack(&m).await?;
    }
    consumer.close().await?;
    producer.close().await?;
    Ok(out)
}

/// Sequential end to end (publish start → the consumer has the message): the bare crate's
/// producer and consumer, the adapter's producer and subscription, a backstop task and
/// consumer, and the bare crate again without producer batching.
async fn e2e_latency(
    client: &Pulsar<TokioExecutor>,
    broker: &PulsarBroker,
    cfg: &Config,
) -> Res<Latencies> {
    let topic = unique("lat-e2e");
    let payload = vec![b'x'; cfg.size];
    let mut out: Latencies = Default::default();
    out[0] = bare_e2e_latency(client, &topic, cfg.batching, cfg).await?;
    out[3] = bare_e2e_latency(client, &format!("{topic}-unbatched"), false, cfg).await?;

    let adapter_topic = format!("{topic}-adapter");
    let sub = broker
        .subscribe(&SubscriptionSpec::new(&adapter_topic, "adapter"))
        .await?;
    let adapter = broker.producer(&adapter_topic).await?;
    for i in 0..=cfg.latency {
        let t = Instant::now();
        adapter.send(OutgoingMessage::new(payload.clone())).await?;
        let m = sub.receive().await?;
        if i > 0 {
            out[1].push(t.elapsed());
        }
        sub.ack(&m.id).await?;
    }
    sub.close().await?;

    let bs = Backstop::builder(Arc::new(broker.clone()))
        .env_from(BTreeMap::new())
        .build()?;
    let bs_topic = format!("{topic}-bs");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let handle = bs
        .spawn_consumer(
            ConsumerSpec::new(&bs_topic, "backstop").build()?,
            move |_: serde_json::Value| {
                let _ = tx.send(Instant::now());
                async { Ok(()) }
            },
        )
        .await?;
    let task = Task::new(&bs, TaskSpec::new(&bs_topic).build()?)?;
    let body = json_body(cfg);
    for i in 0..=cfg.latency {
        let t = Instant::now();
        task.call((), move |_| async move { Ok::<_, TaskError>(body) })
            .await
            .map_err(|f| f.to_string())?;
        let handled = rx.recv().await.ok_or("consumer stopped")?;
        if i > 0 {
            out[2].push(handled - t);
        }
    }
    handle.shutdown_within(Duration::from_secs(5)).await;
    Ok(out.map(sorted))
}

/// pulsar-perf produce on the same broker; returns (msg/s, the "Aggregated throughput" line).
fn perf_produce(cfg: &Config, extra: &[&str]) -> Res<(f64, String)> {
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pulsar");
    let port = |u: &str| -> Res<String> {
        Ok(u.rsplit(':')
            .next()
            .ok_or("no port")?
            .trim_end_matches('/')
            .to_string())
    };
    let run = std::env::temp_dir().join("backstop-pulsar-bench-perf");
    let seconds = cfg.perf_seconds.to_string();
    let size = cfg.size.to_string();
    let topic = format!("persistent://public/default/{}", unique("perf"));
    let mut args = vec![
        "perf-produce",
        "-time",
        &seconds,
        "-r",
        "1000000",
        "-s",
        &size,
    ];
    args.extend_from_slice(extra);
    args.push(&topic);
    let out = Command::new(&script)
        .args(&args)
        // the script's default heap (512 MB), and later 1 GB, ran out with batching and no limit on
        // outstanding messages when the broker reset the connection
        .env(
            "PULSAR_PERF_MEM",
            std::env::var("PULSAR_PERF_MEM")
                .unwrap_or_else(|_| "-Xms256m -Xmx2g -XX:MaxDirectMemorySize=1g".to_string()),
        )
        .env("PULSAR_BROKER_PORT", port(&cfg.url)?)
        .env("PULSAR_WEB_PORT", port(&cfg.admin)?)
        .env("BACKSTOP_PULSAR_RUN", &run)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.contains("Aggregated throughput stats"))
        .ok_or_else(|| format!("no 'Aggregated throughput' line in pulsar-perf output:\n{text}"))?
        .to_string();
    // "... Aggregated throughput stats --- 123456 records sent --- 12345.678 msg/s --- ..."
    let rate = line
        .split("---")
        .find_map(|part| part.trim().strip_suffix(" msg/s"))
        .and_then(|v| v.trim().replace(',', "").parse::<f64>().ok())
        .ok_or_else(|| format!("cannot parse: {line}"))?;
    Ok((rate, line.trim().to_string()))
}

async fn produce_rounds(
    client: &Pulsar<TokioExecutor>,
    broker: &PulsarBroker,
    bs: &Backstop,
    cfg: &Config,
) -> Res<([f64; 3], [f64; 3])> {
    // Warm-up: connections, the broker's JIT.
    let warm = Config {
        messages: cfg.messages.min(5_000),
        ..cfg.clone()
    };
    bare_produce(client, &unique("warm"), &warm).await?;
    backstop_produce(bs, &unique("warm-bs"), &warm).await?;
    let mut times: [Vec<Duration>; 3] = Default::default();
    let mut cpu: [Vec<f64>; 3] = Default::default();
    for round in 0..cfg.rounds {
        for who in order(round) {
            let topic = unique("produce");
            let cpu0 = cpu_time();
            let took = match who {
                0 => bare_produce(client, &topic, cfg).await?,
                1 => adapter_produce(broker, &topic, cfg).await?,
                _ => backstop_produce(bs, &topic, cfg).await?,
            };
            cpu[who].push(per_message_us(cpu_time() - cpu0, cfg.messages));
            times[who].push(took);
        }
        let r = |who: usize| rate(cfg.messages, times[who][round]);
        println!(
            "  produce round {round}: bare {:.0}  adapter {:.0}  backstop {:.0} msg/s; client CPU {:.1} / {:.1} / {:.1} µs/msg",
            r(0), r(1), r(2), cpu[0][round], cpu[1][round], cpu[2][round]
        );
    }
    Ok((times.map(|t| overall(&t, cfg.messages)), cpu.map(mean)))
}

fn per_message_us(cpu: Duration, n: usize) -> f64 {
    cpu.as_secs_f64() * 1e6 / n as f64
}

/// Consume rounds over topics pre-filled by the bare crate, with producer batching
/// (`batched_fill`: the broker holds batches of up to 1,000 messages an entry) or without.
async fn consume_rounds(
    client: &Pulsar<TokioExecutor>,
    broker: &PulsarBroker,
    cfg: &Config,
    batched_fill: bool,
) -> Res<([f64; 3], [f64; 3])> {
    let mut times: [Vec<Duration>; 3] = Default::default();
    let mut cpu: [Vec<f64>; 3] = Default::default();
    for round in 0..cfg.rounds {
        // One pre-filled topic per round, one subscription per contender (made before the fill,
        // so the broker keeps the messages for each).
        let name = unique("consume");
        for sub in ["bare", "adapter", "backstop"] {
            http_put(
                &cfg.admin,
                &format!("/admin/v2/persistent/public/default/{name}/subscription/{sub}"),
            )
            .await?;
        }
        let topic = format!("persistent://public/default/{name}");
        // JSON payloads, so that backstop's consumer decodes them (a JSON string of `size` bytes)
        let mut producer = bare_producer(client, &topic, batched_fill).await?;
        let payload = serde_json::to_vec(json_body(cfg))?;
        let mut inflight = FuturesUnordered::new();
        for _ in 0..cfg.messages {
            if inflight.len() >= 256 {
                if let Some(r) = inflight.next().await {
                    r?;
                }
            }
            inflight.push(producer.send_non_blocking(payload.clone()).await?);
        }
        while let Some(r) = inflight.next().await {
            r?;
        }
        producer.close().await?;
        for who in order(round) {
            let cpu0 = cpu_time();
            let took = match who {
                0 => bare_consume(client, &topic, "bare", cfg).await?,
                1 => adapter_consume(broker, &topic, "adapter", cfg).await?,
                _ => backstop_consume(broker, &topic, "backstop", cfg).await?,
            };
            cpu[who].push(per_message_us(cpu_time() - cpu0, cfg.messages));
            times[who].push(took);
        }
        let r = |who: usize| rate(cfg.messages, times[who][round]);
        println!(
            "  consume ({} topic) round {round}: bare {:.0}  adapter {:.0}  backstop {:.0} msg/s; client CPU {:.1} / {:.1} / {:.1} µs/msg",
            if batched_fill { "batched" } else { "unbatched" },
            r(0), r(1), r(2), cpu[0][round], cpu[1][round], cpu[2][round]
        );
    }
    Ok((times.map(|t| overall(&t, cfg.messages)), cpu.map(mean)))
}

async fn run(cfg: Config) -> Res<()> {
    let client = bare_client(&cfg).await?;
    let broker = PulsarBroker::connect(
        &cfg.url,
        PulsarOptions::default()
            .with_receiver_queue_size(cfg.prefetch)
            .with_initial_position(backstop_pulsar::InitialPosition::Earliest)
            .with_tcp_nodelay(cfg.nodelay)
            .with_batching(if cfg.batching {
                PulsarBatching::default()
            } else {
                PulsarBatching::disabled()
            }),
    )
    .await?;
    let bs = Backstop::builder(Arc::new(broker.clone()))
        .env_from(BTreeMap::new())
        .build()?;
    if cfg.nodelay {
        // The adapter sets TCP_NODELAY on every connection of the process to the broker's port
        // once a second, the bare client's too: let it catch them before measuring.
        let mut warm = bare_producer(&client, &unique("nodelay"), false).await?;
        warm.send_non_blocking(vec![0u8]).await?.await?;
        broker.producer(&unique("nodelay")).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    println!(
        "pulsar_throughput: {} at {}; {} messages x {} B per round, window {}, prefetch {}, \
         backstop max_parallelism {}, {} rounds, producer batching {}, TCP_NODELAY {}; parts: {}",
        version(&cfg).await,
        cfg.url,
        cfg.messages,
        cfg.size,
        cfg.window,
        cfg.prefetch,
        cfg.parallelism,
        cfg.rounds,
        if cfg.batching {
            "on (1 ms / 1000 / 128 KiB, all)"
        } else {
            "off (all)"
        },
        if cfg.nodelay {
            "on (both)"
        } else {
            "off (both, the crate's default)"
        },
        cfg.only
    );
    let produce = if cfg.wants("produce") {
        Some(produce_rounds(&client, &broker, &bs, &cfg).await?)
    } else {
        None
    };
    let consume = if cfg.wants("consume") {
        Some((
            consume_rounds(&client, &broker, &cfg, false).await?,
            consume_rounds(&client, &broker, &cfg, true).await?,
        ))
    } else {
        None
    };
    let latency = if cfg.wants("latency") {
        Some((
            publish_latency(&client, &broker, &bs, &cfg).await?,
            e2e_latency(&client, &broker, &cfg).await?,
        ))
    } else {
        None
    };
    let perf = if cfg.wants("perf") && cfg.perf_seconds > 0 {
        let window = cfg.window.to_string();
        let run = |extra: &[&str]| {
            perf_produce(&cfg, extra).unwrap_or_else(|e| {
                eprintln!("pulsar-perf {extra:?} failed: {e}");
                (f64::NAN, format!("failed: {e}"))
            })
        };
        Some((run(&["-db", "-o", &window]), run(&[])))
    } else {
        None
    };

    println!(
        "\n== results ({} rounds; msg/s = all messages / all time; CPU = all CPU / all messages)",
        cfg.rounds
    );
    println!("| measure | bare `pulsar` crate | adapter | backstop | backstop / bare |");
    println!("|---|---|---|---|---|");
    if let Some(([b, a, s], [cb, ca, cs])) = produce {
        println!(
            "| produce, msg/s (window {}) | {b:.0} | {a:.0} | {s:.0} | {:.2} |",
            cfg.window,
            s / b
        );
        println!(
            "| produce, client CPU µs/msg | {cb:.1} | {ca:.1} | {cs:.1} | {:.2} |",
            cs / cb
        );
    }
    if let Some((unbatched, batched)) = consume {
        for (fill, ([b, a, s], [cb, ca, cs])) in [("unbatched", unbatched), ("batched", batched)] {
            println!(
                "| consume {fill} topic, msg/s (prefetch {}, backstop max_parallelism {}) | {b:.0} | {a:.0} | {s:.0} | {:.2} |",
                cfg.prefetch,
                cfg.parallelism,
                s / b
            );
            println!(
                "| consume {fill} topic, client CPU µs/msg | {cb:.1} | {ca:.1} | {cs:.1} | {:.2} |",
                cs / cb
            );
        }
    }
    if let Some((publish, e2e)) = &latency {
        println!("\n| latency, one message at a time | bare p50 / p99 | adapter p50 / p99 | backstop p50 / p99 | backstop - bare p50 / p99 | bare unbatched p50 / p99 | backstop - bare unbatched p50 |");
        println!("|---|---|---|---|---|---|---|");
        for (what, [bare, adapter, bs, unbatched]) in [
            ("publish (call → receipt)", publish),
            ("end to end (call → handler)", e2e),
        ] {
            let p = |v: &Samples| (ms(percentile(v, 0.5)), ms(percentile(v, 0.99)));
            let ((b50, b99), (a50, a99), (s50, s99)) = (p(bare), p(adapter), p(bs));
            let (u50, u99) = p(unbatched);
            println!(
                "| {what} | {b50:.2} / {b99:.2} ms | {a50:.2} / {a99:.2} ms | {s50:.2} / {s99:.2} ms | {:+.2} / {:+.2} ms | {u50:.2} / {u99:.2} ms | {:+.2} ms |",
                s50 - b50,
                s99 - b99,
                s50 - u50
            );
        }
    }
    if let Some(((u, uline), (b, bline))) = &perf {
        println!("\n| pulsar-perf produce | msg/s | backstop produce / pulsar-perf |");
        println!("|---|---|---|");
        let ours = produce.map(|([_, _, s], _)| s).unwrap_or(f64::NAN);
        println!(
            "| `-db -o {}` (no batching, same window) | {u:.0} | {:.2} |",
            cfg.window,
            ours / u
        );
        println!("| default (batching on) | {b:.0} | {:.2} |", ours / b);
        println!("\npulsar-perf -db: {uline}\npulsar-perf batching: {bline}");
    }
    record_results(&cfg, produce, consume, latency.as_ref(), perf.as_ref());
    Ok(())
}

/// pulsar-perf without and with batching: msg/s and its summary line.
type PerfRuns = ((f64, String), (f64, String));

/// Consume figures (msg/s and client CPU µs/msg of bare, adapter, backstop) from a topic filled
/// without batching and from one filled with batching.
type Consume = (([f64; 3], [f64; 3]), ([f64; 3], [f64; 3]));

/// The figures for `scripts/bench` (no-op unless `BACKSTOP_BENCH_JSON` is set).
fn record_results(
    cfg: &Config,
    produce: Option<([f64; 3], [f64; 3])>,
    consume: Option<Consume>,
    latency: Option<&(Latencies, Latencies)>,
    perf: Option<&PerfRuns>,
) {
    use backstop_bench_report::record;
    const WHO: [&str; 4] = [
        "bare pulsar crate",
        "adapter",
        "backstop",
        "bare pulsar crate, no batching",
    ];
    for (what, figures) in [
        ("produce", produce),
        ("consume unbatched", consume.map(|c| c.0)),
        ("consume batched", consume.map(|c| c.1)),
    ] {
        let Some((rates, cpu)) = figures else {
            continue;
        };
        for i in 0..3 {
            record("pulsar", what, WHO[i], "msg/s", rates[i]);
            record("pulsar", &format!("{what} CPU"), WHO[i], "µs/msg", cpu[i]);
        }
    }
    if let Some((publish, e2e)) = latency {
        for (what, samples) in [("publish", publish), ("end to end", e2e)] {
            for (i, v) in samples.iter().enumerate() {
                for (p, q) in [("p50", 0.5), ("p99", 0.99)] {
                    record(
                        "pulsar",
                        &format!("{what} {p}"),
                        WHO[i],
                        "ms",
                        ms(percentile(v, q)),
                    );
                }
            }
        }
    }
    if let Some(((unbatched, _), (batched, _))) = perf {
        let window = cfg.window;
        let no_batch = format!("pulsar-perf -db -o {window}");
        record("pulsar", "produce", &no_batch, "msg/s", *unbatched);
        record(
            "pulsar",
            "produce",
            "pulsar-perf (batching)",
            "msg/s",
            *batched,
        );
    }
}

async fn version(cfg: &Config) -> String {
    let hostport = cfg
        .admin
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(&hostport).await.ok()?;
        let req = format!("GET /admin/v2/brokers/version HTTP/1.0\r\nHost: {hostport}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        Some(text.split_once("\r\n\r\n")?.1.trim().to_string())
    };
    match tokio::time::timeout(Duration::from_secs(5), fetch).await {
        Ok(Some(v)) => format!("Apache Pulsar {v}"),
        _ => "Apache Pulsar (version unknown)".to_string(),
    }
}

fn main() {
    let cfg = Config::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cfg.clone())) {
        eprintln!(
            "pulsar_throughput failed against {}: {e}\n(start a broker with `scripts/pulsar start`, or set BACKSTOP_PULSAR_URL / BACKSTOP_PULSAR_ADMIN)",
            cfg.url
        );
        std::process::exit(1);
    }
}
