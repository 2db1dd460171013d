//! Interop with the official Apache Pulsar Python client (`pulsar-client` 3.13.0 from PyPI,
//! installed by `scripts/ensure-deps`), driven through `scripts/pulsar_py_smoke.py`, on the broker
//! at `BACKSTOP_PULSAR_URL` (default `pulsar://127.0.0.1:6650`).
//!
//! Messages produced by Python (one producer without batching, one with producer-side batches)
//! are consumed by a backstop consumer; the ones it rejects, and a non-JSON one, go to its DLQ;
//! Python reads those dead-letter records back and finds the Java client's property names
//! (`REAL_TOPIC`, `ORIGIN_MESSAGE_ID` with the id Python got when it produced the message,
//! `RECONSUMETIMES`) and a JSON body it can parse.
//!
//! A retry-topic copy written by backstop (issue 10) is read by the Python client with the Java
//! client's retry properties (`RECONSUMETIMES`, `DELAY_TIME`, `REAL_TOPIC`, `RETRY_TOPIC`,
//! `ORIGIN_MESSAGE_ID`).
//!
//! Fails loudly when no broker answers or the Python client is missing; never skips.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop::broker::{Broker, SubscriptionSpec};
use backstop::{Backstop, ConsumerSpec, HandlerError};
use common::*;

const PER_PRODUCER: u64 = 20;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pulsar_py_smoke.py")
}

/// Runs the Python client script with `args` against the test broker; returns the object it
/// printed on its `JSON ...` line (or `null`). Panics with its output if it fails.
async fn python(args: &[&str]) -> serde_json::Value {
    let mut command = std::process::Command::new("python3");
    command.arg(script()).args(args).args(["--url", &url()]);
    let shown = format!("python3 {} {}", script().display(), args.join(" "));
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}); install it and `pip install pulsar-client==3.13.0` (scripts/ensure-deps)")
        });
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n--- stdout\n{stdout}--- stderr\n{stderr}\n\
         (the official client comes from `pip install pulsar-client==3.13.0`, see scripts/ensure-deps)",
        out.status
    );
    for line in stdout.lines().filter(|l| l.starts_with("OK ")) {
        say(&format!("interop: python: {line}"));
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("JSON "))
        .map(|j| serde_json::from_str(j).expect("the script's JSON line"))
        .unwrap_or(serde_json::Value::Null)
}

/// `(prefix, i)` of a JSON message the script produced.
fn key_of(v: &serde_json::Value) -> Option<(String, u64)> {
    Some((v["prefix"].as_str()?.to_string(), v["i"].as_u64()?))
}

fn rejected(i: u64) -> bool {
    i % 5 == 3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_produces_backstop_consumes_python_reads_the_dlq() {
    bounded(Duration::from_secs(180), async {
        let broker = connect().await;
        // Fully qualified names, as the Java client writes REAL_TOPIC.
        let name = unique("interop");
        let topic = format!("persistent://public/default/{name}");
        let dlq = format!("{topic}-DLQ");
        // Python reads the DLQ later from the earliest message; a subscription must exist before
        // the records are written, or the broker may not keep them.
        http_put(
            &admin(),
            &format!("/admin/v2/persistent/public/default/{name}-DLQ/subscription/py-dlq"),
            "",
        )
        .await
        .expect("create the Python DLQ subscription");

        let bs = Backstop::builder(Arc::new(broker.clone()))
            .env_from(BTreeMap::new())
            .build()
            .expect("context");
        let handled: Arc<Mutex<BTreeMap<(String, u64), u32>>> = Arc::default();
        let consumer = {
            let handled = handled.clone();
            bs.spawn_consumer(
                ConsumerSpec::new(&topic, "backstop-interop")
                    .max_parallelism(5)
                    .max_retries(1)
                    .retry_delay(Duration::from_millis(100))
                    .dlq_topic(&dlq)
                    .build()
                    .expect("consumer spec"),
                move |v: serde_json::Value| {
                    let handled = handled.clone();
                    async move {
                        let Some((prefix, i)) = key_of(&v) else {
                            return Err(HandlerError::invalid(format!("unexpected message {v}")));
                        };
                        if rejected(i) {
                            return Err(HandlerError::invalid(format!("{prefix}-{i} rejected")));
                        }
                        *handled.lock().unwrap().entry((prefix, i)).or_default() += 1;
                        Ok(())
                    }
                },
            )
            .await
            .expect("consumer")
        };

        let n = PER_PRODUCER.to_string();
        let plain = python(&[
            "produce", "-t", &topic, "-n", &n, "--json", "--prefix", "plain", "--print-ids",
        ])
        .await;
        let batched = python(&[
            "produce",
            "-t",
            &topic,
            "-n",
            &n,
            "--json",
            "--prefix",
            "batched",
            "--batching",
            "--raw",
            "not json, from python",
            "--print-ids",
        ])
        .await;
        // the Java-form id Python got for each message
        let mut ids: BTreeMap<(String, u64), String> = BTreeMap::new();
        for (prefix, produced) in [("plain", &plain), ("batched", &batched)] {
            for (i, id) in produced["ids"].as_object().expect("ids") {
                ids.insert(
                    (prefix.to_string(), i.parse().expect("index")),
                    id.as_str().expect("id").to_string(),
                );
            }
        }
        let raw_id = batched["raw_ids"][0].as_str().expect("raw id").to_string();
        let batched_ids = ids
            .iter()
            .filter(|((p, _), id)| p == "batched" && id.split(':').count() == 4)
            .count();
        assert!(
            batched_ids > 0,
            "the batching producer made batches: {batched}"
        );

        // backstop consumed every message the handler accepts
        let want: BTreeSet<(String, u64)> = ids.keys().filter(|(_, i)| !rejected(*i)).cloned().collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got: BTreeSet<(String, u64)> = handled.lock().unwrap().keys().cloned().collect();
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not consumed: {:?}",
                want.difference(&got).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Python reads backstop's DLQ: the rejected messages and the non-JSON one
        let dead_expected = ids.keys().filter(|(_, i)| rejected(*i)).count() + 1;
        let dead = python(&[
            "dlq",
            "-t",
            &dlq,
            "-s",
            "py-dlq",
            "-n",
            &dead_expected.to_string(),
        ])
        .await;
        let records = dead["records"].as_array().expect("records");
        assert_eq!(records.len(), dead_expected);
        let mut seen = BTreeSet::new();
        let mut decode = 0;
        for r in records {
            let props = &r["properties"];
            let body = &r["body"];
            assert_eq!(props["REAL_TOPIC"], topic.as_str(), "{r}");
            assert_eq!(body["origin_topic"], topic.as_str(), "{r}");
            assert_eq!(body["subscription"], "backstop-interop", "{r}");
            assert_eq!(
                props["RECONSUMETIMES"].as_str(),
                Some(body["attempts"].to_string().as_str()),
                "{r}"
            );
            let text = body["payload_text"].as_str().expect("payload_text");
            match serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| key_of(&v))
            {
                Some(key) => {
                    assert!(rejected(key.1), "{r}");
                    assert_eq!((&body["reason"], &body["error_kind"]), (&"permanent".into(), &"invalid".into()), "{r}");
                    assert_eq!(props["ORIGIN_MESSAGE_ID"], ids[&key].as_str(), "{r}");
                    assert_eq!(props["i"], key.1.to_string(), "origin properties kept: {r}");
                    seen.insert(key);
                }
                None => {
                    decode += 1;
                    assert_eq!(text, "not json, from python", "{r}");
                    assert_eq!(body["reason"], "decode", "{r}");
                    assert_eq!(props["ORIGIN_MESSAGE_ID"], raw_id.as_str(), "{r}");
                }
            }
        }
        assert_eq!(decode, 1);
        let rejected_keys: BTreeSet<(String, u64)> =
            ids.keys().filter(|(_, i)| rejected(*i)).cloned().collect();
        assert_eq!(seen, rejected_keys);
        say(&format!(
            "interop: Python produced {} messages ({batched_ids} in producer-side batches) + 1 raw; \
             backstop handled {}, dead-lettered {}; Python read the {} DLQ records with \
             REAL_TOPIC, ORIGIN_MESSAGE_ID (its own ids) and RECONSUMETIMES",
            ids.len(),
            want.len(),
            dead_expected,
            records.len()
        ));

        // every message, batched or not, was acked at the broker: nothing comes back
        let report = consumer.shutdown().await;
        assert_eq!(report.acked, ids.len() as u64 + 1, "{report:?}");
        let again = broker
            .subscribe(&SubscriptionSpec::new(&topic, "backstop-interop"))
            .await
            .expect("resubscribe");
        assert_silent(&*again, Duration::from_secs(3)).await;
        again.close().await.expect("close");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_reads_backstops_retry_topic_copies_with_the_java_properties() {
    bounded(Duration::from_secs(120), async {
        let broker = connect().await;
        let bs = Backstop::builder(Arc::new(broker.clone()))
            .env_from(BTreeMap::new())
            .build()
            .expect("context");
        let topic = unique("py-retry");
        let retry_topic = format!("{topic}-svc-RETRY");
        let dlq = format!("{topic}-DLQ");
        let records = broker
            .subscribe(&SubscriptionSpec::new(&dlq, "check"))
            .await
            .expect("subscribe dlq");
        let consumer = bs
            .spawn_consumer(
                ConsumerSpec::new(&topic, "svc")
                    .max_retries(1)
                    .retry_delay(Duration::from_millis(1500))
                    .retry_strategy(backstop::RetryStrategy::Topic)
                    .dlq_topic(&dlq)
                    .build()
                    .expect("spec"),
                |_v: serde_json::Value| async { Err::<(), _>(HandlerError::retryable("busy")) },
            )
            .await
            .expect("consumer");
        let sent = broker
            .producer(&topic)
            .await
            .expect("producer")
            .send(
                backstop::broker::OutgoingMessage::new(r#"{"user_id":7}"#)
                    .with_key("user-7")
                    .with_property("trace", "t7"),
            )
            .await
            .expect("published");
        let java = backstop_pulsar::PulsarMessageId::from_message_id(&sent)
            .unwrap()
            .to_string();
        // Two runs: the original, then its retry copy; then the DLQ record.
        recv(&*records, Duration::from_secs(60)).await;
        consumer.shutdown().await;
        let read = python(&["retry", "-t", &retry_topic, "-s", "py-retry", "-n", "1"]).await;
        let copies = read["copies"].as_array().expect("copies");
        assert_eq!(copies.len(), 1);
        let c = &copies[0];
        let p = &c["properties"];
        assert_eq!(p["RECONSUMETIMES"], "1", "{c}");
        assert_eq!(p["DELAY_TIME"], "1500", "{c}");
        assert_eq!(p["REAL_TOPIC"], topic.as_str(), "{c}");
        assert_eq!(p["RETRY_TOPIC"], retry_topic.as_str(), "{c}");
        assert_eq!(p["ORIGIN_MESSAGE_ID"], java.as_str(), "{c}");
        assert_eq!(
            p["trace"], "t7",
            "the original's properties ride along: {c}"
        );
        assert_eq!(c["key"], "user-7", "{c}");
        assert_eq!(c["body"]["user_id"], 7, "{c}");
    })
    .await;
}
