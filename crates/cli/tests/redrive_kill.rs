//! Redrive of 10,000 records with the CLI killed by SIGKILL midway, then rerun: every record is
//! back on its origin at least once (duplicates counted, from the `backstop.redrive.source`
//! property), none lost, the DLQ's backlog empty, and a third run finds nothing to do.
//!
//! Needs a real Pulsar (`BACKSTOP_PULSAR_URL`, `BACKSTOP_PULSAR_ADMIN`); fails loudly without.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backstop_cli::topic::Topic;
use common::*;

const N: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redrive_resumes_with_nothing_lost() {
    let broker = connect().await;
    let origin = unique("origin");
    let dlq = format!("{origin}-DLQ");
    init(&dlq).await;
    subscribe(&broker, &origin, "check").await;
    let records = (0..N)
        .map(|i| {
            backstop_record(
                &origin,
                "exhausted",
                "timeout",
                Some(&format!("k{}", i % 97)),
                &format!("{{\"i\":{i}}}"),
                now_ms(),
                &[("trace", &format!("t{i}"))],
            )
        })
        .collect();
    let t = Instant::now();
    publish_all(&broker, &dlq, records).await;
    say(&format!("published {N} records in {:?}", t.elapsed()));
    assert_eq!(backlog(&dlq).await, N as u64);

    // First run, rate-limited so that it is surely killed midway.
    let mut child = backstop(&["dlq", "redrive", &dlq, "--rate", "2000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn backstop");
    let origin_topic = Topic::parse(&origin).unwrap();
    let start = Instant::now();
    let at_kill = loop {
        let s = admin()
            .backlog(&origin_topic, "check")
            .await
            .unwrap()
            .unwrap_or(0);
        if s >= 3_000 {
            break s;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the first run ended before it could be killed"
        );
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(status.code().is_none(), "killed by a signal: {status:?}");
    say(&format!("killed the first run after {at_kill} republishes"));
    let left = backlog(&dlq).await;
    assert!(
        left > 0 && left < N as u64,
        "backlog after the kill: {left}"
    );

    // Second run: to the end.
    let t = Instant::now();
    let summary = run_json(&["dlq", "redrive", &dlq], 0).await;
    say(&format!("second run ({:?}): {summary}", t.elapsed()));
    let second = summary["redriven"].as_u64().unwrap();
    assert_eq!(
        second, left,
        "the rerun redrives exactly what the first left"
    );
    assert_eq!(summary["failed"], 0);
    assert_eq!(backlog(&dlq).await, 0);

    // Every record on its origin: once, or counted as a duplicate.
    let got = drain(&broker, &origin, "check", Duration::from_secs(3)).await;
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for m in &got {
        let source = props(m)["backstop.redrive.source"].clone();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let i = v["i"].as_u64().unwrap() as usize;
        assert_eq!(m.key.as_deref(), Some(format!("k{}", i % 97).as_str()));
        assert_eq!(props(m)["trace"], format!("t{i}"));
        assert_eq!(props(m)["backstop.redrive.count"], "1");
        assert!(!props(m).contains_key("backstop.reason"));
        *seen.entry(source).or_default() += 1;
    }
    let duplicates = got.len() - seen.len();
    say(&format!(
        "origin holds {} messages: {} distinct records, {duplicates} duplicate(s), 0 lost",
        got.len(),
        seen.len()
    ));
    assert_eq!(seen.len(), N, "every record back on its origin");
    assert_eq!(
        got.len() as u64,
        N as u64 + duplicates as u64,
        "only duplicates beyond N"
    );
    // A duplicate needs a confirmed republish whose ack the kill lost: at most the in-flight
    // window plus acks not yet flushed.
    assert!(duplicates <= 1_000, "{duplicates} duplicates");

    // Nothing left: a third run does nothing.
    let third = run_json(&["dlq", "redrive", &dlq], 0).await;
    assert_eq!(third["redriven"], 0);
}
