//! The demo's phases: healthy traffic with flaky dependencies, a broker outage that trips the
//! producer's breaker, a downstream outage that trips the consumer's breaker; then a summary
//! checked against what must hold (nothing lost, every metric present).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::broker::{Broker, OutgoingMessage, SubscriptionSpec};
use backstop::{Backstop, BreakerConfig, DeadLetter, DeadLetterRecord, ErrorKind, MetricsServer};
use backstop_mem::{MemBroker, Op};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinSet;

use crate::handlers::{self, PROCESSED_USERS, STORE_DOWN};
use crate::Opts;

/// What the run did, and whether it met its expectations.
#[derive(Debug, Default)]
pub struct Summary {
    failures: Vec<String>,
}

impl Summary {
    /// Whether every expectation held.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
    fn expect(&mut self, cond: bool, what: impl Into<String>) {
        let what = what.into();
        println!("  [{}] {what}", if cond { "ok" } else { "FAILED" });
        if !cond {
            self.failures.push(what);
        }
    }
}

#[derive(Default)]
struct Tally {
    published: BTreeSet<i64>,
    task_dead_lettered: BTreeSet<i64>,
    refused: u64,
    rejected_invalid: u64,
    returned_to_caller: u64,
}

#[derive(Default)]
struct DlqSeen {
    users: BTreeSet<i64>,
    decode: u64,
    sample: Option<DeadLetterRecord>,
}

/// Runs the whole demo.
pub async fn run(opts: Opts) -> Result<Summary, Box<dyn std::error::Error>> {
    let run_id = opts.run_id.clone().unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("{}", t.as_millis())
    });
    let (broker, mem): (Arc<dyn Broker>, Option<MemBroker>) = match &opts.pulsar {
        None => {
            let m = MemBroker::new();
            (Arc::new(m.clone()), Some(m))
        }
        Some(url) => (connect_pulsar(url).await?, None),
    };
    let prefix = if mem.is_some() {
        String::new()
    } else {
        format!("backstop-demo-{run_id}-")
    };
    let bs = Backstop::builder(broker.clone())
        .breaker_defaults(
            BreakerConfig::builder()
                .recovery_timeout(opts.recovery_timeout)
                .build()?,
        )
        .topic_prefix(prefix.clone())
        .build()?;
    bs.install();
    let server = MetricsServer::start(bs.metrics().clone(), opts.metrics_addr).await?;
    println!(
        "backstop seed example on {} — metrics at http://{}/metrics",
        opts.pulsar
            .as_deref()
            .unwrap_or("the embedded in-memory broker"),
        server.addr()
    );
    let b = bs.breaker_defaults();
    println!(
        "breaker: opens after {} consecutive connection/timeout failures, half-open after {:?}",
        b.failure_threshold(),
        b.recovery_timeout()
    );

    let dlq_seen = Arc::new(Mutex::new(DlqSeen::default()));
    let dlq_reader = spawn_dlq_reader(
        &bs,
        &format!("{prefix}user_updates_consumer_dlq"),
        dlq_seen.clone(),
    )
    .await?;
    let consumer = handlers::process_user_update::start(&bs).await?;
    let tally = Arc::new(Mutex::new(Tally::default()));

    // Phase 1: healthy traffic, flaky dependencies.
    println!(
        "\n== phase 1: {} user updates; some profile lookups time out, some handlers fail or panic",
        opts.messages
    );
    let ids: Vec<i64> = (1..=i64::from(opts.messages)).collect();
    publish_all(&ids, &tally, "publishing").await;
    for bad in [-1_i64, 0, -42] {
        if let Err(f) = handlers::update_user(bad, serde_json::json!({})).await {
            let mut t = tally.lock().unwrap();
            t.rejected_invalid += 1;
            if matches!(f.dead_letter, DeadLetter::Published { .. }) {
                t.task_dead_lettered.insert(bad);
            }
            println!("  invalid call rejected without retry: {f}");
        }
    }
    let poison = bs.producer(&format!("{prefix}user_updates")).await?;
    for raw in ["{not json", "\u{0}\u{1}binary"] {
        poison.send(OutgoingMessage::new(raw.as_bytes())).await?;
    }
    println!("  published 2 undecodable (poison) messages straight to the topic");
    wait_drained(&tally, &dlq_seen, 2, Duration::from_secs(120)).await;

    // Phase 2: broker outage (in-memory broker only: it can inject faults).
    if let Some(mem) = &mem {
        println!("\n== phase 2: the broker refuses every publish (connection errors)");
        mem.faults()
            .fail_until_healed(Op::Send, ErrorKind::Connection);
        let outage_ids: Vec<i64> = (10_001..10_009).collect();
        let first = tokio::spawn(publish_owned(outage_ids.clone(), tally.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let task = handlers::update_user::task(&bs)?;
        let (state, failures) = task.breaker();
        println!("  producer breaker after the first failures: {state:?} ({failures} consecutive failures)");
        let mut returned = Vec::new();
        for id in 10_101..10_106_i64 {
            match handlers::update_user(id, serde_json::json!({"phase": 2})).await {
                Err(f) if f.is_circuit_open() => {
                    tally.lock().unwrap().refused += 1;
                    returned.push(f.args.user_id);
                }
                Ok(_) => {
                    tally.lock().unwrap().published.insert(id);
                }
                Err(f) => println!("  unexpected: {f}"),
            }
        }
        println!(
            "  {} new calls failed fast (circuit open, no broker call), their arguments returned",
            returned.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        mem.faults().heal();
        println!(
            "  broker healed; the first retry after the recovery timeout is the half-open probe"
        );
        returned.extend(first.await.unwrap_or_default());
        wait_for_breaker_closed(&bs).await?;
        // The caller still holds every refused call's data: resubmit it.
        let again = publish_all(&returned, &tally, "resubmitting returned calls").await;
        if !again.is_empty() {
            println!(
                "  {} resubmitted calls came back again: {again:?}",
                again.len()
            );
        }
        wait_drained(&tally, &dlq_seen, 2, Duration::from_secs(120)).await;
    } else {
        println!("\n== phase 2 (broker outage) needs fault injection: skipped on Pulsar; the integration tests stop the real broker instead");
    }

    // Phase 3: downstream outage trips the consumer's breaker.
    println!("\n== phase 3: the user store goes down; the consumer's breaker must open, pause, probe and close");
    STORE_DOWN.store(true, Ordering::SeqCst);
    let store_ids: Vec<i64> = (20_001..20_021).collect();
    let publishing = tokio::spawn(publish_owned(store_ids, tally.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    STORE_DOWN.store(false, Ordering::SeqCst);
    println!("  user store back after 2 s; the next probe (after the recovery timeout) closes the breaker");
    let _ = publishing.await;
    wait_drained(&tally, &dlq_seen, 2, Duration::from_secs(120)).await;

    // Whole-service shutdown: every consumer drains (in-flight handlers finish, the rest is
    // nacked for redelivery) and task calls under way get the same deadline. With
    // `--until-signal` the service keeps consuming until SIGTERM or ctrl-c first.
    let drained = if opts.until_signal {
        println!("\n== serving until SIGTERM or ctrl-c (then draining)");
        bs.run_until_signal(Duration::from_secs(30)).await
    } else {
        bs.shutdown(Duration::from_secs(30)).await
    };
    println!("  shutdown: clean = {}", drained.is_clean());
    let report = consumer.shutdown().await; // already stopped: hands back its report
    dlq_reader.abort();
    let metrics_text = fetch_metrics(server.addr()).await.unwrap_or_default();

    // Summary.
    let t = std::mem::take(&mut *tally.lock().unwrap());
    let seen = std::mem::take(&mut *dlq_seen.lock().unwrap());
    let processed = PROCESSED_USERS.lock().unwrap().clone();
    println!("\n== summary");
    println!("  task calls published:           {}", t.published.len());
    println!("  task calls dead-lettered:       {} (retries exhausted or invalid; record on user_updates_dlq)", t.task_dead_lettered.len());
    println!(
        "  task calls refused (open):      {} (resubmitted by the caller)",
        t.refused
    );
    println!(
        "  calls whose data came back:     {} (unpublished, not dead-lettered: resubmitted)",
        t.returned_to_caller
    );
    println!(
        "  consumer received/acked/nacked: {}/{}/{}",
        report.received, report.acked, report.nacked
    );
    println!(
        "  consumer retries / panics:      {} / {}",
        report.retried, report.panicked
    );
    println!(
        "  consumer dead-lettered:         {} ({} poison, users {:?})",
        report.dead_lettered, seen.decode, seen.users
    );
    println!(
        "  consumer breaker transitions:   {}",
        report.breaker_transitions
    );
    println!(
        "  most handlers in flight:        {} (max_parallelism 5)",
        report.max_in_flight
    );
    if let Some(r) = &seen.sample {
        println!(
            "  a dead-letter record: {}",
            serde_json::to_string(r).unwrap_or_default()
        );
    }
    println!("\n== checks");
    let mut s = Summary::default();
    let lost: Vec<i64> = t
        .published
        .iter()
        .filter(|id| !processed.contains_key(id) && !seen.users.contains(id))
        .copied()
        .collect();
    s.expect(
        lost.is_empty(),
        format!("every published update was processed or dead-lettered (lost: {lost:?})"),
    );
    s.expect(
        seen.decode == 2,
        format!(
            "both poison messages were dead-lettered with reason decode ({})",
            seen.decode
        ),
    );
    s.expect(
        report.max_in_flight <= 5,
        "never more than max_parallelism handlers in flight",
    );
    s.expect(
        report.panicked >= 1,
        "a panicking handler was a failed attempt and the consumer kept running",
    );
    s.expect(report.retried > 0, "failed handler runs were retried");
    s.expect(
        !t.task_dead_lettered.is_empty(),
        "exhausted task calls were dead-lettered",
    );
    s.expect(
        report.breaker_transitions >= 3,
        "the consumer breaker opened, went half-open and closed",
    );
    if mem.is_some() {
        s.expect(
            t.refused > 0,
            "the producer breaker opened and failed calls fast",
        );
        s.expect(
            metrics_text.contains("from=\"half_open\",to=\"closed\""),
            "the producer breaker closed again",
        );
    }
    for name in [
        "pulsar_messages_sent_total",
        "pulsar_errors_total",
        "pulsar_message_latency_seconds_bucket",
        "pulsar_message_latency_seconds_sum",
        "pulsar_message_latency_seconds_count",
        "circuit_breaker_state",
        "circuit_breaker_failures",
        "pulsar_messages_received_total",
        "pulsar_messages_acked_total",
        "pulsar_messages_retried_total",
        "pulsar_messages_dead_lettered_total",
        "pulsar_handlers_in_flight",
        "circuit_breaker_transitions_total",
    ] {
        s.expect(
            metrics_text.contains(name),
            format!("/metrics exposes {name}"),
        );
    }
    println!("\n== key metrics");
    for line in metrics_text.lines().filter(|l| {
        l.starts_with("pulsar_messages_sent_total")
            || l.starts_with("pulsar_errors_total")
            || l.starts_with("circuit_breaker_state")
            || l.starts_with("circuit_breaker_failures")
            || l.starts_with("pulsar_messages_dead_lettered_total")
            || l.starts_with("pulsar_message_latency_seconds_count")
    }) {
        println!("  {line}");
    }
    if opts.print_metrics {
        println!("\n{metrics_text}");
    }
    if !opts.linger.is_zero() {
        println!(
            "\nserving http://{}/metrics for {:?}",
            server.addr(),
            opts.linger
        );
        tokio::time::sleep(opts.linger).await;
    }
    server.stop();
    Ok(s)
}

/// Publishes `ids` and returns the ids whose calls came back unpublished (data in hand).
async fn publish_owned(ids: Vec<i64>, tally: Arc<Mutex<Tally>>) -> Vec<i64> {
    publish_all(&ids, &tally, "").await
}

/// Calls `update_user` for every id, 20 at a time, with a progress bar. Returns the ids of calls
/// that came back unpublished and not dead-lettered (the caller holds their data).
async fn publish_all(ids: &[i64], tally: &Arc<Mutex<Tally>>, label: &str) -> Vec<i64> {
    let bar = if label.is_empty() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(ids.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("  {msg:<40} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(label.to_string());
    let sem = Arc::new(tokio::sync::Semaphore::new(20));
    let mut set = JoinSet::new();
    for &id in ids {
        let permit = sem.clone().acquire_owned().await.expect("semaphore open");
        let tally = tally.clone();
        let bar = bar.clone();
        set.spawn(async move {
            let r = handlers::update_user(
                id,
                serde_json::json!({"email": format!("user{id}@example.com")}),
            )
            .await;
            bar.inc(1);
            drop(permit);
            let mut t = tally.lock().unwrap();
            match r {
                Ok(_) => {
                    t.published.insert(id);
                    None
                }
                Err(f) => {
                    if f.is_circuit_open() {
                        t.refused += 1;
                    }
                    if matches!(f.dead_letter, DeadLetter::Published { .. }) {
                        t.task_dead_lettered.insert(id);
                        None
                    } else {
                        t.returned_to_caller += 1;
                        Some(f.args.user_id)
                    }
                }
            }
        });
    }
    let mut returned = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(Some(id)) = r {
            returned.push(id);
        }
    }
    bar.finish();
    returned.sort_unstable();
    returned
}

/// Waits until every published id was processed or dead-lettered by the consumer, and
/// `poison` undecodable messages were dead-lettered.
async fn wait_drained(
    tally: &Arc<Mutex<Tally>>,
    dlq: &Arc<Mutex<DlqSeen>>,
    poison: u64,
    limit: Duration,
) {
    let bar = ProgressBar::new_spinner();
    bar.set_message("waiting for the consumer to drain");
    let start = tokio::time::Instant::now();
    loop {
        let pending = {
            let t = tally.lock().unwrap();
            let d = dlq.lock().unwrap();
            let p = PROCESSED_USERS.lock().unwrap();
            let left = t
                .published
                .iter()
                .filter(|id| !p.contains_key(id) && !d.users.contains(id))
                .count();
            left + usize::from(d.decode < poison)
        };
        bar.set_message(format!("waiting for the consumer: {pending} pending"));
        if pending == 0 || start.elapsed() > limit {
            break;
        }
        bar.tick();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish_and_clear();
}

/// Waits until the producer's breaker has closed: the timer turns it half-open after the
/// recovery timeout, and the first call then (a retry of an outage call) is the probe. If no
/// call is pending, sends one probe call itself.
async fn wait_for_breaker_closed(bs: &Backstop) -> Result<(), Box<dyn std::error::Error>> {
    let task = handlers::update_user::task(bs)?;
    let start = tokio::time::Instant::now();
    let mut probed = false;
    while start.elapsed() < Duration::from_secs(60) {
        match task.breaker().0 {
            backstop::BreakerState::Closed => {
                println!(
                    "  producer breaker closed again after {:.1?}",
                    start.elapsed()
                );
                return Ok(());
            }
            backstop::BreakerState::HalfOpen if !probed && task.calls_in_progress() == 0 => {
                probed = true;
                let _ = handlers::update_user(30_000, serde_json::json!({"probe": true})).await;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the producer breaker did not close".into())
}

/// Reads the consumer's DLQ topic and remembers which users (or poison payloads) ended there.
async fn spawn_dlq_reader(
    bs: &Backstop,
    topic: &str,
    seen: Arc<Mutex<DlqSeen>>,
) -> Result<tokio::task::JoinHandle<()>, Box<dyn std::error::Error>> {
    let sub = bs
        .broker()
        .subscribe(&SubscriptionSpec::new(topic, "demo-dlq-reader"))
        .await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(msg) = sub.receive().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if let Ok(rec) = serde_json::from_slice::<DeadLetterRecord>(&msg.payload) {
                let mut s = seen.lock().unwrap();
                if rec.reason == "decode" {
                    s.decode += 1;
                } else if let Some(id) = rec
                    .payload_text
                    .as_deref()
                    .and_then(|p| serde_json::from_str::<handlers::UserUpdate>(p).ok())
                    .map(|u| u.user_id)
                {
                    s.users.insert(id);
                }
                if s.sample.is_none() && rec.reason != "decode" {
                    s.sample = Some(rec);
                }
            }
            let _ = sub.ack(&msg.id).await;
        }
    }))
}

async fn fetch_metrics(addr: std::net::SocketAddr) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body)
}

async fn connect_pulsar(url: &str) -> Result<Arc<dyn Broker>, Box<dyn std::error::Error>> {
    let broker =
        backstop_pulsar::PulsarBroker::connect(url, backstop_pulsar::PulsarOptions::default())
            .await?;
    Ok(Arc::new(broker))
}
