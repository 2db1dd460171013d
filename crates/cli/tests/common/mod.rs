//! Helpers of the CLI's integration tests: the broker (failing loudly when it is not there),
//! running the `backstop` binary, writing dead-letter records, reading topics back.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backstop_cli::admin::Admin;
use backstop_cli::topic::Topic;
use backstop_engine::broker::{
    MessageId, OutgoingMessage, Producer, ReceivedMessage, Subscription, SubscriptionSpec,
};
use backstop_engine::runtime::DeadLetterRecord;
use backstop_pulsar::{InitialPosition, PulsarBatching, PulsarBroker, PulsarOptions};
use futures::StreamExt;

/// `BACKSTOP_PULSAR_URL`, default `pulsar://127.0.0.1:6650`.
pub fn url() -> String {
    std::env::var("BACKSTOP_PULSAR_URL").unwrap_or_else(|_| "pulsar://127.0.0.1:6650".into())
}

/// `BACKSTOP_PULSAR_ADMIN`, default `http://127.0.0.1:8080`.
pub fn admin_url() -> String {
    std::env::var("BACKSTOP_PULSAR_ADMIN").unwrap_or_else(|_| "http://127.0.0.1:8080".into())
}

/// The admin client.
pub fn admin() -> Admin {
    Admin::new(&admin_url(), None).expect("admin URL")
}

/// Prints past libtest's capture.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Connects (reading from the earliest message), or panics saying how to start a broker.
pub async fn connect() -> PulsarBroker {
    // Unbatched, so that the admin API's backlog (which counts broker entries, and a batch is
    // one entry) equals the number of records the tests wrote.
    let options = PulsarOptions::default()
        .with_initial_position(InitialPosition::Earliest)
        .with_connect_timeout(Duration::from_secs(5))
        .with_batching(PulsarBatching::disabled());
    match PulsarBroker::connect(&url(), options).await {
        Ok(b) => b,
        Err(e) => panic!(
            "\n\n*** Pulsar broker NOT reachable at {} ({e}). Start one with `scripts/pulsar start` \
             and set BACKSTOP_PULSAR_URL / BACKSTOP_PULSAR_ADMIN. These tests never skip.\n\n",
            url()
        ),
    }
}

/// A topic name unique to this run.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!(
        "{prefix}-{t}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `backstop` command with the test broker's URLs.
pub fn backstop(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_backstop"));
    c.args(["--url", &url(), "--admin", &admin_url()])
        .args(args);
    c
}

/// Runs `backstop args` to completion.
pub async fn run(args: &[&str]) -> Output {
    let mut c = backstop(args);
    let out = tokio::task::spawn_blocking(move || c.output())
        .await
        .unwrap()
        .expect("run the backstop binary");
    say(&format!(
        "backstop {} -> {:?}\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    ));
    out
}

/// Runs `backstop args --json`, expecting exit code `code`, and parses stdout.
pub async fn run_json(args: &[&str], code: i32) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = run(&all).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(code), "backstop {all:?}: {stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Creates the CLI's subscription on `dlq` (so records written later are kept).
pub async fn init(dlq: &str) {
    let out = run(&["dlq", "init", dlq]).await;
    assert!(out.status.success(), "dlq init {dlq}");
}

/// A backstop dead-letter record of `origin`, as the runtime writes it.
#[allow(clippy::too_many_arguments)]
pub fn backstop_record(
    origin: &str,
    reason: &str,
    kind: &str,
    key: Option<&str>,
    payload: &str,
    last_failure_ms: u64,
    properties: &[(&str, &str)],
) -> OutgoingMessage {
    let received = ReceivedMessage {
        id: MessageId(vec![7]),
        topic: origin.into(),
        payload: payload.as_bytes().to_vec(),
        key: key.map(str::to_string),
        properties: properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        redelivery_count: 0,
        metadata: Default::default(),
    };
    DeadLetterRecord {
        origin_topic: origin.into(),
        subscription: Some("svc".into()),
        reason: reason.into(),
        error_kind: kind.into(),
        error: format!("{kind}: it failed"),
        attempts: 3,
        first_failure_ms: last_failure_ms.saturating_sub(1000),
        last_failure_ms,
        origin_message_id: Some("0a0b".into()),
        payload_text: None,
        payload_bytes: None,
        args: None,
    }
    .with_payload(payload.as_bytes())
    .to_message(Some(&received))
}

/// Publishes all of `messages` to `topic` (many in flight), panicking on a failure.
pub async fn publish_all(broker: &PulsarBroker, topic: &str, messages: Vec<OutgoingMessage>) {
    let p = broker.pulsar_producer(topic).await.expect("producer");
    let results: Vec<_> = futures::stream::iter(messages)
        .map(|m| {
            let p = p.clone();
            async move { p.send(m).await }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    for r in results {
        r.expect("publish");
    }
}

/// Creates subscription `sub` on `topic` (earliest) without reading.
pub async fn subscribe(broker: &PulsarBroker, topic: &str, sub: &str) {
    let s = broker
        .pulsar_subscribe(&SubscriptionSpec::new(topic, sub))
        .await
        .expect("subscribe");
    s.close().await.expect("close");
}

/// Reads `sub` on `topic` until nothing arrives for `idle`, acking everything.
pub async fn drain(
    broker: &PulsarBroker,
    topic: &str,
    sub: &str,
    idle: Duration,
) -> Vec<ReceivedMessage> {
    let s = broker
        .pulsar_subscribe(&SubscriptionSpec::new(topic, sub))
        .await
        .expect("subscribe");
    let mut out = Vec::new();
    while let Ok(m) = tokio::time::timeout(idle, s.receive()).await {
        let m = m.expect("receive");
        s.ack(&m.id).await.expect("ack");
        out.push(m);
    }
    s.close().await.expect("close");
    out
}

/// The backlog of the CLI's subscription on `dlq`.
pub async fn backlog(dlq: &str) -> u64 {
    admin()
        .backlog(
            &Topic::parse(dlq).unwrap(),
            backstop_cli::DEFAULT_SUBSCRIPTION,
        )
        .await
        .expect("admin stats")
        .expect("the CLI's subscription exists")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    backstop_cli::filter::now_ms()
}

/// Properties as a map, for asserts.
pub fn props(m: &ReceivedMessage) -> &BTreeMap<String, String> {
    &m.properties
}
