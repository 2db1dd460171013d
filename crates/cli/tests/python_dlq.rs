//! A dead-letter topic written by the official Python client's dead-letter policy (Java
//! property names: `REAL_TOPIC`, `ORIGIN_MESSAGE_ID`) is read and redriven: every record back
//! on its origin with its payload, key and properties. Needs python3 with `pulsar-client`
//! (scripts/ensure-deps) and a real Pulsar; fails loudly without.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

const N: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_dlq_records_are_redriven_to_their_origin() {
    let broker = connect().await;
    let name = unique("py");
    let origin = format!("persistent://public/default/{name}");
    let dlq = format!("{origin}-DLQ");
    init(&dlq).await;
    subscribe(&broker, &origin, "check").await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py_dlq.py");
    let args = [
        script.display().to_string(),
        "--url".into(),
        url(),
        "--topic".into(),
        origin.clone(),
        "--dlq".into(),
        dlq.clone(),
        "-n".into(),
        N.to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3").args(&args).output()
    })
    .await
    .unwrap()
    .expect("python3 (install it and `pip install pulsar-client==3.13.0`, scripts/ensure-deps)");
    assert!(
        out.status.success(),
        "py_dlq.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    while backlog(&dlq).await < N as u64 {
        assert!(start.elapsed() < Duration::from_secs(30), "DLQ not filled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let s = run_json(&["dlq", "stats", &dlq], 0).await;
    assert_eq!(s["matching"], N as u64, "{s}");
    assert_eq!(s["by_format"]["java"], N as u64);
    assert_eq!(s["by_origin"][&origin], N as u64);
    let peeked = run_json(&["dlq", "peek", &dlq, "-n", "1"], 0).await;
    // the C++-based Python client writes ORIGIN_MESSAGE_ID as `(ledger,entry,partition,batch)`
    let origin_id = peeked[0]["origin_message_id"].as_str().unwrap();
    assert!(origin_id.contains(','), "{origin_id}");
    assert_eq!(peeked[0]["format"], "java");
    assert_eq!(peeked[0]["payload_preview"], "py-0");

    let s = run_json(&["dlq", "redrive", &dlq], 0).await;
    assert_eq!(s["redriven"], N as u64, "{s}");
    assert_eq!(backlog(&dlq).await, 0);
    // the origin holds the N originals and N redriven copies
    let got = drain(&broker, &origin, "check", Duration::from_secs(3)).await;
    let redriven: Vec<_> = got
        .iter()
        .filter(|m| m.properties.contains_key("backstop.redrive.source"))
        .collect();
    assert_eq!(redriven.len(), N);
    let mut seen = BTreeSet::new();
    for m in redriven {
        let text = String::from_utf8_lossy(&m.payload).to_string();
        let i: usize = text.strip_prefix("py-").unwrap().parse().unwrap();
        assert_eq!(m.key.as_deref(), Some(format!("k{i}").as_str()));
        assert_eq!(m.properties["i"], i.to_string());
        assert_eq!(m.properties["backstop.redrive.count"], "1");
        assert!(!m.properties.contains_key("REAL_TOPIC"));
        assert!(!m.properties.contains_key("ORIGIN_MESSAGE_ID"));
        seen.insert(i);
    }
    assert_eq!(seen, (0..N).collect());
}
