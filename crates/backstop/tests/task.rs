//! Producer tasks on the in-memory broker, under paused tokio time.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::{DeadLetter, DeadLetterRecord, ErrorKind, FailureReason, Task, TaskError, TaskSpec};
use backstop_mem::Op;
use tokio::time::Instant;

fn attempts_log() -> Arc<Mutex<Vec<Instant>>> {
    Arc::new(Mutex::new(Vec::new()))
}

#[tokio::test(start_paused = true)]
async fn retryable_body_errors_run_max_retries_plus_one_times_spaced_by_retry_delay() {
    let (bs, mem) = common::context();
    let spec = TaskSpec::new("user_updates")
        .max_retries(3)
        .retry_delay(Duration::from_secs(5))
        .dlq_topic("user_updates_dlq")
        .build()
        .unwrap();
    let task = Task::new(&bs, spec).unwrap();
    let log = attempts_log();
    let l = log.clone();
    let r = task
        .call((7_i64, "payload".to_string()), move |_| {
            l.lock().unwrap().push(Instant::now());
            async { Err::<i64, _>(TaskError::retryable("profile service flaked")) }
        })
        .await;
    let f = r.unwrap_err();
    let times = log.lock().unwrap().clone();
    assert_eq!(times.len(), 4, "max_retries 3 → 4 attempts");
    for w in times.windows(2) {
        assert_eq!(
            w[1] - w[0],
            Duration::from_secs(5),
            "retry spacing equals retry_delay"
        );
    }
    assert_eq!(f.attempts, 4);
    assert_eq!(
        f.args,
        (7, "payload".to_string()),
        "the caller gets its data back"
    );
    assert_eq!(f.kind(), Some(ErrorKind::Handler));
    let DeadLetter::Published { topic, .. } = &f.dead_letter else {
        panic!("expected a DLQ record: {f}")
    };
    assert_eq!(topic, "user_updates_dlq");
    assert!(
        f.to_string().contains("user_updates_dlq"),
        "the error says where the record went: {f}"
    );

    let records = mem.topic_payloads("user_updates_dlq");
    assert_eq!(records.len(), 1);
    let rec: DeadLetterRecord = serde_json::from_slice(&records[0]).unwrap();
    assert_eq!(rec.origin_topic, "user_updates");
    assert_eq!(rec.error_kind, "handler");
    assert_eq!(rec.reason, "exhausted");
    assert!(rec.error.contains("profile service flaked"));
    assert_eq!(rec.attempts, 4);
    assert_eq!(
        rec.last_failure_ms - rec.first_failure_ms,
        15_000,
        "first and last failure times"
    );
    assert_eq!(rec.args, Some(serde_json::json!([7, "payload"])));
    assert!(
        mem.topic_payloads("user_updates").is_empty(),
        "nothing published to the topic"
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried_and_without_dlq_the_data_comes_back() {
    let (bs, mem) = common::context();
    let task = Task::new(&bs, TaskSpec::new("t").max_retries(3).build().unwrap()).unwrap();
    let runs = Arc::new(Mutex::new(0));
    let r2 = runs.clone();
    let f = task
        .call(-1_i64, move |id| {
            *r2.lock().unwrap() += 1;
            let id = *id;
            async move {
                if id <= 0 {
                    return Err::<i64, _>(TaskError::invalid("user_id must be positive integer"));
                }
                Ok(id)
            }
        })
        .await
        .unwrap_err();
    assert_eq!(*runs.lock().unwrap(), 1, "validation errors are permanent");
    assert_eq!(f.args, -1);
    assert_eq!(f.dead_letter, DeadLetter::NotConfigured);
    assert_eq!(f.kind(), Some(ErrorKind::Invalid));
    assert!(mem.topic_payloads("t").is_empty());
}

#[tokio::test(start_paused = true)]
async fn ok_values_are_published_as_json() {
    let (bs, mem) = common::context();
    let task = Task::new(&bs, TaskSpec::new("t").build().unwrap()).unwrap();
    let sent = task
        .call(5_i64, |id| {
            let id = *id;
            async move { Ok::<_, TaskError>(serde_json::json!({"status": "success", "user_id": id})) }
        })
        .await
        .unwrap();
    assert_eq!(sent.attempts, 1);
    let payloads = mem.topic_payloads("t");
    assert_eq!(payloads.len(), 1);
    let v: serde_json::Value = serde_json::from_slice(&payloads[0]).unwrap();
    assert_eq!(v, serde_json::json!({"status": "success", "user_id": 5}));
    assert!(bs
        .metrics()
        .render()
        .contains("pulsar_messages_sent_total{topic=\"t\"} 1"));
}

#[tokio::test(start_paused = true)]
async fn publish_failures_are_retried_without_rerunning_the_body() {
    let (bs, mem) = common::context();
    let task = Task::new(
        &bs,
        TaskSpec::new("t")
            .max_retries(3)
            .retry_delay(Duration::from_secs(1))
            .build()
            .unwrap(),
    )
    .unwrap();
    bs.producer("t").await.unwrap(); // create it before injecting send faults
    mem.faults().fail_next(Op::Send, 2, ErrorKind::Timeout);
    let runs = Arc::new(Mutex::new(0));
    let r2 = runs.clone();
    let sent = task
        .call((), move |_| {
            *r2.lock().unwrap() += 1;
            async { Ok::<_, TaskError>(1_u8) }
        })
        .await
        .unwrap();
    assert_eq!(*runs.lock().unwrap(), 1, "the body ran once");
    assert_eq!(sent.attempts, 3, "two failed publishes, then success");
    assert_eq!(mem.topic_payloads("t").len(), 1);
    let text = bs.metrics().render();
    assert!(
        text.contains("pulsar_errors_total{kind=\"timeout\",topic=\"t\"} 2"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_body_is_a_failed_attempt() {
    let (bs, _mem) = common::context();
    let task = Task::new(
        &bs,
        TaskSpec::new("t")
            .max_retries(1)
            .retry_delay(Duration::from_secs(1))
            .build()
            .unwrap(),
    )
    .unwrap();
    let runs = Arc::new(Mutex::new(0));
    let r2 = runs.clone();
    let sent = task
        .call((), move |_| {
            let n = {
                let mut r = r2.lock().unwrap();
                *r += 1;
                *r
            };
            async move {
                if n == 1 {
                    panic!("boom");
                }
                Ok::<_, TaskError>(n)
            }
        })
        .await
        .unwrap();
    assert_eq!(sent.value, 2);
    assert!(bs
        .metrics()
        .render()
        .contains("pulsar_errors_total{kind=\"panic\",topic=\"t\"} 1"));
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_after_five_connection_failures_fails_fast_then_probes_and_closes() {
    let (bs, mem) = common::context();
    let task = Task::new(&bs, TaskSpec::new("t").max_retries(0).build().unwrap()).unwrap();
    bs.producer("t").await.unwrap();
    mem.faults()
        .fail_until_healed(Op::Send, ErrorKind::Connection);
    let body_runs = Arc::new(Mutex::new(0));
    let call = |n: i64| {
        let runs = body_runs.clone();
        let task = task.clone();
        async move {
            task.call(n, move |n| {
                *runs.lock().unwrap() += 1;
                let n = *n;
                async move { Ok::<_, TaskError>(n) }
            })
            .await
        }
    };
    for i in 0..5 {
        let f = call(i).await.unwrap_err();
        assert_eq!(f.kind(), Some(ErrorKind::Connection));
        assert_eq!(f.args, i);
    }
    assert_eq!(task.breaker().0, backstop::BreakerState::Open);
    let text = bs.metrics().render();
    assert!(
        text.contains("circuit_breaker_state{breaker=\"task:t\"} 2"),
        "{text}"
    );
    let faults_before = mem.counters().injected_faults; // every send attempt now fails by injection
    let runs_before = *body_runs.lock().unwrap();
    let f = call(99).await.unwrap_err();
    assert!(f.is_circuit_open(), "{f}");
    assert_eq!(f.reason, FailureReason::CircuitOpen);
    assert_eq!(f.args, 99, "fail-fast still returns the data");
    assert_eq!(
        mem.counters().injected_faults,
        faults_before,
        "no broker call while open"
    );
    assert_eq!(
        *body_runs.lock().unwrap(),
        runs_before,
        "no body run while open"
    );

    mem.faults().heal();
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(
        call(100).await.unwrap_err().is_circuit_open(),
        "still open before 30 s"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = call(101).await.unwrap();
    assert_eq!(sent.value, 101, "the half-open probe went through");
    assert_eq!(task.breaker().0, backstop::BreakerState::Closed);
    let text = bs.metrics().render();
    assert!(
        text.contains("circuit_breaker_state{breaker=\"task:t\"} 0"),
        "{text}"
    );
    assert!(text.contains(
        "circuit_breaker_transitions_total{breaker=\"task:t\",from=\"half_open\",to=\"closed\"} 1"
    ));
}

#[tokio::test(start_paused = true)]
async fn when_the_dlq_publish_fails_too_the_caller_gets_error_and_data() {
    let (bs, mem) = common::context();
    let task = Task::new(
        &bs,
        TaskSpec::new("t")
            .max_retries(0)
            .dlq_topic("t_dlq")
            .build()
            .unwrap(),
    )
    .unwrap();
    bs.producer("t_dlq").await.unwrap();
    mem.faults().fail_next(Op::Send, 1, ErrorKind::Rejected);
    let f = task
        .call("data".to_string(), |_| async {
            Err::<u8, _>(TaskError::retryable("nope"))
        })
        .await
        .unwrap_err();
    assert!(matches!(f.dead_letter, DeadLetter::Failed { .. }), "{f}");
    assert_eq!(f.args, "data");
    assert!(mem.topic_payloads("t_dlq").is_empty());
}

#[test]
fn breaker_env_overrides_are_validated_by_name() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mem = backstop_mem::MemBroker::new();
        let env = [("CB_FAILURE_THRESHOLD".to_string(), "zero".to_string())]
            .into_iter()
            .collect();
        let err = backstop::Backstop::builder(Arc::new(mem.clone()))
            .env_from(env)
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), "CB_FAILURE_THRESHOLD");
        let env = [
            ("CB_FAILURE_THRESHOLD".to_string(), "2".to_string()),
            ("CB_RECOVERY_TIMEOUT".to_string(), "10".to_string()),
        ]
        .into_iter()
        .collect();
        let bs = backstop::Backstop::builder(Arc::new(mem))
            .env_from(env)
            .build()
            .unwrap();
        assert_eq!(bs.breaker_defaults().failure_threshold(), 2);
        assert_eq!(
            bs.breaker_defaults().recovery_timeout(),
            Duration::from_secs(10)
        );
    });
}

/// Counts producer creations and makes each take a while, so concurrent first uses overlap.
struct SlowProducers {
    inner: backstop_mem::MemBroker,
    created: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl backstop::broker::Broker for SlowProducers {
    async fn producer(
        &self,
        topic: &str,
    ) -> Result<Arc<dyn backstop::broker::Producer>, backstop::broker::BrokerError> {
        self.created
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.inner.producer(topic).await
    }
    async fn subscribe(
        &self,
        spec: &backstop::broker::SubscriptionSpec,
    ) -> Result<Arc<dyn backstop::broker::Subscription>, backstop::broker::BrokerError> {
        self.inner.subscribe(spec).await
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_first_publishes_create_one_producer_per_topic() {
    let created = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let broker = SlowProducers {
        inner: backstop_mem::MemBroker::new(),
        created: created.clone(),
    };
    let bs = backstop::Backstop::builder(Arc::new(broker))
        .env_from(std::collections::BTreeMap::new())
        .build()
        .unwrap();
    let task = Task::new(&bs, TaskSpec::new("orders").build().unwrap()).unwrap();
    let calls: Vec<_> = (0..20)
        .map(|i: i64| {
            let task = task.clone();
            tokio::spawn(async move {
                task.call(i, |i: &i64| {
                    let i = *i;
                    async move { Ok::<_, TaskError>(i) }
                })
                .await
            })
        })
        .collect();
    for c in calls {
        assert!(c.await.unwrap().is_ok());
    }
    assert_eq!(
        created.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "20 concurrent first calls share one producer creation"
    );
    // A second topic gets its own producer, and the shared send path publishes to it.
    bs.send(
        "audit",
        backstop::broker::OutgoingMessage::new("x"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(created.load(std::sync::atomic::Ordering::SeqCst), 2);
}
