//! `kill -9` of a consumer process while its retries wait in the retry topic, on a real Pulsar
//! broker (`BACKSTOP_PULSAR_URL` / `BACKSTOP_PULSAR_ADMIN`; fails loudly without one), issue 10:
//! 0 lost, and the attempt budget holds across the kill.
//!
//! The topic gets 40 JSON messages. A child process (this binary again, `BP_RETRY_KILL_CHILD`
//! set) runs a backstop consumer with the retry-topic strategy (`max_retries = 3`, retry delay
//! 3 s, a DLQ): the handler prints `RUN <n> <attempt>` and fails the first two runs of every
//! even message, then prints `OK <n>` on success. Once every message ran once, the child is
//! killed with SIGKILL (its even messages' copies wait in the retry topic), and a second child
//! takes over. Checked: every message succeeded (none lost), no run beyond
//! attempt `max_retries + 1`, runs repeating an attempt number (a delivery whose ack or copy
//! died with the first child) counted and printed as duplicates, at least one waiting copy run
//! by the second child as a later attempt (the budget carried across the kill), and both
//! backlogs end at 0.
//!
//! A plain `main` (no libtest harness) so that the child can be this same binary.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::{ConsumerSpec, Delivery, HandlerError, RetryStrategy, Task, TaskSpec};
use common::*;

const CHILD_ENV: &str = "BP_RETRY_KILL_CHILD";
const N: u32 = 40;
const MAX_RETRIES: u32 = 3;

fn main() {
    parent_or_child("retry_kill", CHILD_ENV, child, parent);
}

fn spec(topic: &str) -> ConsumerSpec {
    ConsumerSpec::new(topic, "svc")
        .max_parallelism(4)
        .max_retries(MAX_RETRIES)
        .retry_delay(Duration::from_secs(3))
        .retry_strategy(RetryStrategy::Topic)
        .dlq_topic(format!("{topic}-DLQ"))
        .build()
        .expect("spec")
}

/// The consumer that gets killed (and its successor).
async fn child(topic: String) {
    let bs = context(connect().await);
    let handle = bs
        .spawn_consumer_with_delivery(spec(&topic), |m: serde_json::Value, d: Delivery| {
            let n = m["n"].as_u64().unwrap_or(u64::MAX);
            let attempt = d.attempt();
            let mut out = std::io::stdout();
            writeln!(out, "RUN {n} {attempt}").expect("stdout");
            let fail = n % 2 == 0 && attempt < 3;
            if !fail {
                writeln!(out, "OK {n}").expect("stdout");
            }
            out.flush().expect("flush");
            async move {
                if fail {
                    Err(HandlerError::retryable("not yet"))
                } else {
                    Ok(())
                }
            }
        })
        .await
        .expect("child consumer");
    std::future::pending::<()>().await;
    drop(handle);
}

#[derive(Default)]
struct Seen {
    /// (child, n, attempt) per run.
    runs: Vec<(u32, u32, u32)>,
    ok: BTreeSet<u32>,
}

fn spawn_child(
    topic: &str,
    which: u32,
    seen: &Arc<Mutex<Seen>>,
) -> (Child, std::thread::JoinHandle<()>) {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env(CHILD_ENV, topic)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child consumer");
    let stdout = child.stdout.take().expect("child stdout");
    let seen = seen.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut s = seen.lock().expect("lock");
            if let Some(rest) = line.strip_prefix("RUN ") {
                let mut it = rest.split(' ').filter_map(|x| x.parse::<u32>().ok());
                if let (Some(n), Some(a)) = (it.next(), it.next()) {
                    s.runs.push((which, n, a));
                }
            } else if let Some(n) = line.strip_prefix("OK ").and_then(|x| x.parse().ok()) {
                s.ok.insert(n);
            }
        }
    });
    (child, reader)
}

async fn backlog(topic: &str, sub: &str) -> Option<u64> {
    let stats = http_get(
        &admin(),
        &format!("/admin/v2/persistent/public/default/{topic}/stats"),
    )
    .await
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&stats).ok()?;
    v["subscriptions"][sub]["msgBacklog"].as_u64()
}

async fn parent() {
    let topic = unique("retry-kill");
    let retry_topic = format!("{topic}-svc-RETRY");
    let bs = context(connect().await);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (mut first, first_reader) = spawn_child(&topic, 1, &seen);
    // The child subscribes (to the topic and its retry topic) before anything is published.
    let task = Task::new(&bs, TaskSpec::new(&topic).build().expect("task spec")).expect("task");
    for _ in 0..600 {
        if backlog(&topic, "svc").await.is_some() && backlog(&retry_topic, "svc").await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in 0..N {
        task.call(n, |n: &u32| {
            let n = *n;
            async move { Ok::<_, backstop::TaskError>(serde_json::json!({ "n": n })) }
        })
        .await
        .expect("published");
    }
    // Every message ran once: the even ones' copies wait in the retry topic (3 s).
    for _ in 0..600 {
        let firsts: BTreeSet<u32> = seen
            .lock()
            .expect("lock")
            .runs
            .iter()
            .map(|r| r.1)
            .collect();
        if firsts.len() == N as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().expect("kill -9 the child");
    let status = first.wait().expect("wait");
    first_reader.join().expect("reader");
    let before = seen.lock().expect("lock").runs.len();
    say(&format!(
        "retry_kill: first child killed ({status}) after {before} runs"
    ));
    assert!(
        before >= N as usize,
        "every message ran once before the kill"
    );

    let (mut second, second_reader) = spawn_child(&topic, 2, &seen);
    for _ in 0..3000 {
        if seen.lock().expect("lock").ok.len() == N as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut drained = (None, None);
    for _ in 0..300 {
        drained = (
            backlog(&topic, "svc").await,
            backlog(&retry_topic, "svc").await,
        );
        if drained == (Some(0), Some(0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.kill().expect("stop the second child");
    second.wait().expect("wait");
    second_reader.join().expect("reader");

    let s = seen.lock().expect("lock");
    let lost: Vec<u32> = (0..N).filter(|n| !s.ok.contains(n)).collect();
    assert!(lost.is_empty(), "LOST: never succeeded: {lost:?}");
    let mut per: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (_, n, a) in &s.runs {
        per.entry(*n).or_default().push(*a);
    }
    let mut duplicates = 0;
    for (n, attempts) in &per {
        assert!(
            attempts.iter().all(|a| *a <= MAX_RETRIES + 1),
            "message {n} ran beyond its budget: {attempts:?}"
        );
        let distinct: BTreeSet<u32> = attempts.iter().copied().collect();
        duplicates += attempts.len() - distinct.len();
    }
    let carried = s.runs.iter().filter(|(c, _, a)| *c == 2 && *a >= 2).count();
    assert!(
        carried > 0,
        "the second child ran no waiting copy as a later attempt: {:?}",
        s.runs
    );
    assert_eq!(
        drained,
        (Some(0), Some(0)),
        "backlogs (topic, retry topic) at the end"
    );
    say(&format!(
        "retry_kill: all {N} succeeded, 0 lost, {} runs, {carried} runs of copies carried across the kill as later attempts, {duplicates} duplicates (at-least-once), max attempt {}",
        s.runs.len(),
        s.runs.iter().map(|r| r.2).max().unwrap_or(0)
    ));
}
