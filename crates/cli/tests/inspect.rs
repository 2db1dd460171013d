//! `dlq stats`, `dlq peek` and the filters on a real Pulsar: counts and selections checked
//! against what the test wrote; a filtered redrive moves exactly the matching records and leaves
//! the others (and a foreign message) in the DLQ; bad input gives clear errors and exit codes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use backstop_engine::broker::OutgoingMessage;
use common::*;

const REASONS: [&str; 3] = ["exhausted", "permanent", "decode"];
const KINDS: [&str; 4] = ["timeout", "invalid", "connection", "panic"];
const HOUR_MS: u64 = 3_600_000;

struct Written {
    reason: &'static str,
    kind: &'static str,
    key: String,
    recent: bool,
}

fn written(i: usize) -> Written {
    Written {
        reason: REASONS[i % 3],
        kind: KINDS[i % 4],
        key: format!("k{}", i % 5),
        recent: i % 2 == 0,
    }
}

const N: usize = 60;

/// Writes N backstop records, 2 Java-style records and 1 foreign message; returns the names.
async fn setup() -> (backstop_pulsar::PulsarBroker, String, String) {
    let broker = connect().await;
    let origin = unique("inspect");
    let dlq = format!("{origin}-DLQ");
    init(&dlq).await;
    let now = now_ms();
    let mut msgs: Vec<OutgoingMessage> = (0..N)
        .map(|i| {
            let w = written(i);
            // half an hour and three hours old: far from the bucket edges, however slow the run
            let at = if w.recent {
                now - HOUR_MS / 2
            } else {
                now - 3 * HOUR_MS
            };
            backstop_record(
                &origin,
                w.reason,
                w.kind,
                Some(&w.key),
                &format!("p{i}"),
                at,
                &[],
            )
        })
        .collect();
    for j in 0..2 {
        msgs.push(
            OutgoingMessage::new(format!("java{j}"))
                .with_key("kj")
                .with_property(
                    "REAL_TOPIC",
                    format!("persistent://public/default/{origin}"),
                )
                .with_property("ORIGIN_MESSAGE_ID", "1:2:-1"),
        );
    }
    msgs.push(OutgoingMessage::new("not a dead letter"));
    // in order, one by one: peek order is publish order
    for m in msgs {
        publish_all(&broker, &dlq, vec![m]).await;
    }
    (broker, origin, dlq)
}

fn payloads(items: &serde_json::Value) -> BTreeSet<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["payload_preview"].as_str().unwrap().to_string())
        .collect()
}

fn expected(pred: impl Fn(&Written) -> bool) -> BTreeSet<String> {
    (0..N)
        .filter(|i| pred(&written(*i)))
        .map(|i| format!("p{i}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_peek_and_filters_select_exactly_the_matching_records() {
    let (broker, origin, dlq) = setup().await;

    let s = run_json(&["dlq", "stats", &dlq], 0).await;
    assert_eq!(s["total"], N as u64 + 3);
    assert_eq!(s["matching"], N as u64 + 2);
    assert_eq!(s["unrecognized"], 1);
    assert!(s.get("warning").is_none(), "complete scan: {s}");
    for r in REASONS {
        let n = (0..N).filter(|i| written(*i).reason == r).count() as u64;
        let java = if r == "exhausted" { 2 } else { 0 };
        assert_eq!(s["by_reason"][r], n + java, "{r}");
    }
    for k in KINDS {
        let n = (0..N).filter(|i| written(*i).kind == k).count() as u64;
        assert_eq!(s["by_kind"][k], n, "{k}");
    }
    assert_eq!(s["by_kind"]["unknown"], 2);
    assert_eq!(s["by_format"]["backstop"], N as u64);
    assert_eq!(s["by_format"]["java"], 2);
    assert_eq!(s["by_age"]["1m-1h"], (N / 2) as u64);
    assert_eq!(s["by_age"]["1h-1d"], (N / 2) as u64);
    assert_eq!(s["by_age"]["unknown"], 2);
    assert_eq!(s["by_origin"][&origin], N as u64);
    assert_eq!(s["by_subscription"]["svc"], N as u64);

    // Human output names the same counts.
    let out = run(&["dlq", "stats", &dlq]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "{} message(s), {} matching, 1 unrecognized",
            N + 3,
            N + 2
        )),
        "{text}"
    );

    // peek: order, limit, fields
    let items = run_json(&["dlq", "peek", &dlq, "-n", "3"], 0).await;
    let items = items.as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["payload_preview"], "p0");
    assert_eq!(items[0]["reason"], "exhausted");
    assert_eq!(items[0]["error_kind"], "timeout");
    assert_eq!(items[0]["error"], "timeout: it failed");
    assert_eq!(items[0]["attempts"], 3);
    assert_eq!(items[0]["key"], "k0");
    assert_eq!(items[0]["origin_topic"], origin.as_str());
    assert_eq!(items[0]["format"], "backstop");
    let text =
        String::from_utf8_lossy(&run(&["dlq", "peek", &dlq, "-n", "1"]).await.stdout).to_string();
    for part in [
        "reason=exhausted",
        "kind=timeout",
        "attempts=3",
        "error: timeout: it failed",
        "key: k0",
        "payload: p0",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    // the foreign message shows as unrecognized when nothing is filtered
    let all = run_json(&["dlq", "peek", &dlq, "-n", "1000"], 0).await;
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), N + 3);
    assert!(all[N + 2]["unrecognized"]
        .as_str()
        .unwrap()
        .contains("not a dead-letter record"));

    // filters
    let sel = run_json(
        &[
            "dlq",
            "peek",
            &dlq,
            "-n",
            "1000",
            "--reason",
            "permanent",
            "--kind",
            "invalid",
        ],
        0,
    )
    .await;
    assert_eq!(
        payloads(&sel),
        expected(|w| w.reason == "permanent" && w.kind == "invalid")
    );
    let sel = run_json(&["dlq", "peek", &dlq, "-n", "1000", "--key", "k2"], 0).await;
    assert_eq!(payloads(&sel), expected(|w| w.key == "k2"));
    let sel = run_json(&["dlq", "peek", &dlq, "-n", "1000", "--since", "1h"], 0).await;
    assert_eq!(payloads(&sel), expected(|w| w.recent));
    let sel = run_json(
        &["dlq", "stats", &dlq, "--kind", "panic", "--since", "1h"],
        0,
    )
    .await;
    assert_eq!(
        sel["matching"],
        expected(|w| w.kind == "panic" && w.recent).len() as u64
    );
    // peek and stats ack nothing
    assert_eq!(backlog(&dlq).await, N as u64 + 3);

    // dry run: counts, publishes and acks nothing
    let target = unique("redrive-target");
    subscribe(&broker, &target, "check").await;
    let dry = run_json(
        &[
            "dlq",
            "redrive",
            &dlq,
            "--key",
            "k3",
            "--to",
            &target,
            "--dry-run",
        ],
        6,
    )
    .await;
    assert_eq!(
        dry["would_redrive"],
        expected(|w| w.key == "k3").len() as u64
    );
    assert_eq!(backlog(&dlq).await, N as u64 + 3);

    // filtered redrive to another topic: exactly the k3 records move; the rest (and the foreign
    // message, which makes the exit code 6) stay
    let s = run_json(&["dlq", "redrive", &dlq, "--key", "k3", "--to", &target], 6).await;
    let k3 = expected(|w| w.key == "k3");
    assert_eq!(s["redriven"], k3.len() as u64);
    assert_eq!(s["skipped"], (N + 2 - k3.len()) as u64);
    assert_eq!(s["unrecognized"], 1);
    let moved = drain(&broker, &target, "check", Duration::from_secs(2)).await;
    let moved: BTreeSet<String> = moved
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).to_string())
        .collect();
    assert_eq!(moved, k3);
    assert_eq!(backlog(&dlq).await, (N + 3 - k3.len()) as u64);
    let s = run_json(&["dlq", "stats", &dlq], 0).await;
    assert_eq!(s["total"], (N + 3 - k3.len()) as u64);
    assert!(
        s.get("warning").is_none(),
        "complete scan after a redrive: {s}"
    );
    assert_eq!(
        run_json(&["dlq", "peek", &dlq, "-n", "1000", "--key", "k3"], 0).await,
        serde_json::json!([])
    );

    // --max: at most that many; the rest of the selection stays; human summary line
    let k4 = expected(|w| w.key == "k4");
    let target2 = unique("redrive-max");
    subscribe(&broker, &target2, "check").await;
    let out = run(&[
        "dlq", "redrive", &dlq, "--key", "k4", "--to", &target2, "--max", "3", "--rate", "50",
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("redriven 3, parked 0"), "{text}");
    assert_eq!(
        drain(&broker, &target2, "check", Duration::from_secs(2))
            .await
            .len(),
        3
    );
    let left = run_json(&["dlq", "stats", &dlq, "--key", "k4"], 0).await;
    assert_eq!(left["matching"], (k4.len() - 3) as u64);

    // the Java-style records go to their REAL_TOPIC origin
    subscribe(&broker, &origin, "check").await;
    let s = run_json(&["dlq", "redrive", &dlq, "--key", "kj"], 6).await;
    assert_eq!(s["redriven"], 2);
    let back = drain(&broker, &origin, "check", Duration::from_secs(2)).await;
    let back: BTreeSet<String> = back
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).to_string())
        .collect();
    assert_eq!(back, ["java0".to_string(), "java1".to_string()].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_clear_errors_and_exit_codes() {
    let _ = connect().await;
    // missing topic
    let out = run(&["dlq", "peek", &unique("missing")]).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    // unreachable broker and admin API
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"));
    c.args([
        "--url",
        &format!("pulsar://127.0.0.1:{dead}"),
        "--admin",
        &format!("http://127.0.0.1:{dead}"),
        "dlq",
        "stats",
        "x",
    ]);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
    // admin fine, broker unreachable
    let dlq = unique("unreach-DLQ");
    init(&dlq).await;
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"));
    c.args([
        "--url",
        &format!("pulsar://127.0.0.1:{dead}"),
        "--admin",
        &admin_url(),
        "dlq",
        "stats",
        &dlq,
    ]);
    let out = c.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the Pulsar broker"));
    // bad arguments
    assert_eq!(
        run(&["dlq", "peek", "non-persistent://a/b/c"])
            .await
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        run(&["dlq", "redrive", &dlq, "--rate", "0"])
            .await
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        run(&["dlq", "stats", &dlq, "--since", "whenever"])
            .await
            .status
            .code(),
        Some(2)
    );
    // a DLQ full of foreign messages: nothing acked, exit 6
    let broker = connect().await;
    publish_all(
        &broker,
        &dlq,
        vec![
            OutgoingMessage::new("x"),
            OutgoingMessage::new("y").with_property("backstop.reason", "exhausted"),
        ],
    )
    .await;
    let s = run_json(&["dlq", "redrive", &dlq], 6).await;
    assert_eq!(s["unrecognized"], 2);
    assert_eq!(backlog(&dlq).await, 2);
}
