//! The attribute macros end to end on the in-memory broker.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backstop::{HandlerError, TaskError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserUpdate {
    pub status: String,
    pub user_id: i64,
}

static HANDLED: AtomicU32 = AtomicU32::new(0);

#[backstop::task(
    topic = "user_updates",
    max_retries = 3,
    retry_delay = "5s",
    dlq_topic = "user_updates_dlq"
)]
async fn update_user(user_id: i64, data: serde_json::Value) -> Result<UserUpdate, TaskError> {
    let _ = data;
    if user_id <= 0 {
        return Err(TaskError::invalid("user_id must be positive integer"));
    }
    Ok(UserUpdate {
        status: "success".into(),
        user_id,
    })
}

#[backstop::consumer(
    topic = "user_updates",
    subscription = "user_service",
    max_parallelism = 5
)]
async fn process_user_update(message: UserUpdate) -> Result<(), HandlerError> {
    if message.user_id <= 0 {
        return Err(HandlerError::invalid("Missing user_id in message"));
    }
    HANDLED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[backstop::consumer(
    topic = "audit",
    subscription = "svc",
    park_topic = "audit-parked",
    retry = "retry_topic"
)]
async fn audited(_m: serde_json::Value) -> Result<(), HandlerError> {
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_seed_example_works_through_the_macros() {
    let (bs, mem) = common::context();
    bs.install();
    let spec = process_user_update::spec().unwrap();
    assert_eq!(spec.topic(), "user_updates");
    assert_eq!(spec.subscription(), "user_service");
    assert_eq!(spec.max_parallelism_value(), 5);
    assert_eq!(update_user::spec().unwrap().dlq(), Some("user_updates_dlq"));
    assert_eq!(
        spec.parking_topic().as_deref(),
        Some("user_updates-user_service-PARKED"),
        "no DLQ: failed messages are parked"
    );
    let audit = audited::spec().unwrap();
    assert_eq!(audit.parking_topic().as_deref(), Some("audit-parked"));
    assert_eq!(
        audit
            .consumer_config(backstop::BreakerConfig::default())
            .unwrap()
            .retry_strategy(),
        backstop::RetryStrategy::Topic
    );
    assert_eq!(audit.retry_topic_name().as_deref(), Some("audit-svc-RETRY"));

    let consumer = process_user_update::start(&bs).await.unwrap();
    let sent = update_user(42, serde_json::json!({"name": "Ada"}))
        .await
        .unwrap();
    assert_eq!(
        sent.value,
        UserUpdate {
            status: "success".into(),
            user_id: 42
        }
    );
    let failed = update_user(-1, serde_json::json!({})).await.unwrap_err();
    assert_eq!(failed.attempts, 1, "validation errors are not retried");
    assert_eq!(failed.args.user_id, -1, "the arguments come back");
    assert_eq!(mem.topic_payloads("user_updates_dlq").len(), 1);
    let rec: backstop::DeadLetterRecord =
        serde_json::from_slice(&mem.topic_payloads("user_updates_dlq")[0]).unwrap();
    assert_eq!(
        rec.args,
        Some(serde_json::json!({"user_id": -1, "data": {}}))
    );
    assert_eq!(rec.reason, "permanent");

    let start = tokio::time::Instant::now();
    while HANDLED.load(Ordering::SeqCst) < 1 {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = consumer.shutdown().await;
    assert_eq!(report.acked, 1);
    // The undecorated handler is still an ordinary function.
    assert!(process_user_update(UserUpdate {
        status: "x".into(),
        user_id: 0
    })
    .await
    .is_err());
}

#[test]
fn bad_macro_arguments_are_compile_errors_pointing_at_the_argument() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui-pass/*.rs");
}
