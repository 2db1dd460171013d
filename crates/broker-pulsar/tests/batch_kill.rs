//! `kill -9` of a consumer in the middle of batches, on a real Pulsar broker
//! (`BACKSTOP_PULSAR_URL` / `BACKSTOP_PULSAR_ADMIN`; fails loudly without one): 0 lost.
//!
//! The topic gets 3,000 messages from backstop's batching producer and 300 in batches from the
//! official Python client. A child process (this binary again, `BP_BATCH_KILL_CHILD` set)
//! consumes them through the adapter, nacking the middle message of every batch on its first
//! delivery and acking the rest, printing each message it handled; it is killed with SIGKILL
//! after about a third. A second consumer then takes the subscription over. Every message must
//! be handled by one of them, and the subscription's backlog must end at 0. Duplicates
//! (at-least-once: messages the child handled whose ack died with it) are counted and printed.
//!
//! A plain `main` (no libtest harness) so that the child can be this same binary.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop_engine::broker::{Broker, OutgoingMessage, Producer, SubscriptionSpec};
use backstop_pulsar::PulsarMessageId;
use common::*;

const CHILD_ENV: &str = "BP_BATCH_KILL_CHILD";
const OURS: usize = 3000;
const PYTHON: usize = 300;

fn main() {
    parent_or_child("batch_kill", CHILD_ENV, child, parent);
}

fn spec(topic: &str) -> SubscriptionSpec {
    let mut spec = SubscriptionSpec::new(topic, "s");
    spec.nack_redelivery_delay = Duration::from_millis(100);
    spec
}

/// The consumer that gets killed: handles slowly (1 ms each), prints `HANDLED <payload>`
/// before acking, nacks each batch's middle message once.
async fn child(topic: String) {
    let broker = connect().await;
    let sub = broker
        .subscribe(&spec(&topic))
        .await
        .expect("child subscribe");
    let mut nacked = BTreeSet::new();
    let mut out = std::io::stdout();
    loop {
        let m = sub.receive().await.expect("child receive");
        let id = PulsarMessageId::from_message_id(&m.id).expect("id");
        if id.batch_size >= 3 && id.batch_index == id.batch_size / 2 && nacked.insert(id) {
            sub.nack(&m.id).await.expect("nack");
            continue;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        writeln!(out, "HANDLED {}", String::from_utf8_lossy(&m.payload)).expect("stdout");
        out.flush().expect("flush");
        sub.ack(&m.id).await.expect("ack");
    }
}

fn py_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pulsar_py_smoke.py")
}

async fn backlog(topic: &str) -> Option<u64> {
    let stats = http_get(
        &admin(),
        &format!("/admin/v2/persistent/public/default/{topic}/stats"),
    )
    .await
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&stats).ok()?;
    v["subscriptions"]["s"]["msgBacklog"].as_u64()
}

async fn parent() {
    let broker = connect().await;
    let topic = unique("batch-kill");
    // the durable subscription exists before anything is produced
    broker
        .subscribe(&spec(&topic))
        .await
        .expect("subscribe")
        .close()
        .await
        .expect("close");

    let producer = broker.producer(&topic).await.expect("producer");
    let mut batched = 0;
    for chunk in (0..OURS).collect::<Vec<_>>().chunks(500) {
        let sends = chunk.iter().map(|i| {
            let p: Arc<dyn Producer> = producer.clone();
            let m = OutgoingMessage::new(format!("bs-{i}"));
            tokio::spawn(async move { p.send(m).await })
        });
        for s in futures::future::join_all(sends).await {
            let id = s.expect("join").expect("send");
            if PulsarMessageId::from_message_id(&id)
                .expect("id")
                .is_batched()
            {
                batched += 1;
            }
        }
    }
    assert!(
        batched > OURS / 2,
        "backstop's producer batched ({batched})"
    );
    let out = Command::new("python3")
        .arg(py_script())
        .args(["produce", "-t", &topic, "-n", &PYTHON.to_string()])
        .args(["--prefix", "py", "--batching", "--url", &url()])
        .output()
        .expect("python3 (pip install pulsar-client==3.13.0, scripts/ensure-deps)");
    assert!(
        out.status.success(),
        "python produce: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: BTreeSet<String> = (0..OURS)
        .map(|i| format!("bs-{i}"))
        .chain((0..PYTHON).map(|i| format!("py-{i}")))
        .collect();

    // the child consumes about a third, then dies with SIGKILL
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env(CHILD_ENV, &topic)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child consumer");
    let handled = Arc::new(Mutex::new(Vec::<String>::new()));
    let stdout = child.stdout.take().expect("child stdout");
    let lines = handled.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(p) = line.strip_prefix("HANDLED ") {
                lines.lock().expect("lock").push(p.to_string());
            }
        }
    });
    let target = all.len() / 3;
    for _ in 0..1200 {
        if handled.lock().expect("lock").len() >= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before_kill = handled.lock().expect("lock").len();
    assert!(
        before_kill > 0 && before_kill < all.len(),
        "the child handled {before_kill} of {} before the kill",
        all.len()
    );
    child.kill().expect("kill -9 the child");
    let status = child.wait().expect("wait");
    reader.join().expect("reader");
    let by_child: Vec<String> = handled.lock().expect("lock").clone();
    say(&format!(
        "batch_kill: child killed ({status}) after handling {} of {} messages",
        by_child.len(),
        all.len()
    ));

    // a new consumer takes over
    let sub = broker.subscribe(&spec(&topic)).await.expect("subscribe");
    let mut done: BTreeSet<String> = by_child.iter().cloned().collect();
    let mut duplicates = by_child.len() - done.len();
    while done.len() < all.len() {
        let m = match tokio::time::timeout(Duration::from_secs(30), sub.receive()).await {
            Ok(r) => r.expect("receive"),
            Err(_) => {
                let lost: Vec<_> = all.difference(&done).take(20).collect();
                panic!(
                    "LOST: {} messages never came back after the kill, e.g. {lost:?}",
                    all.len() - done.len()
                );
            }
        };
        let payload = String::from_utf8_lossy(&m.payload).to_string();
        assert!(all.contains(&payload), "unexpected {payload:?}");
        if !done.insert(payload) {
            duplicates += 1;
        }
        sub.ack(&m.id).await.expect("ack");
    }
    sub.close().await.expect("close");
    let mut last = None;
    for _ in 0..150 {
        last = backlog(&topic).await;
        if last == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last, Some(0), "backlog after everything was handled");
    say(&format!(
        "batch_kill: all {} handled, 0 lost, {duplicates} duplicates (at-least-once), backlog 0",
        all.len()
    ));
}
