//! Topic names are checked against Pulsar's grammar when a task or consumer is built: a bad one
//! is a `ConfigError` naming the setting and the topic, before any broker is touched.

use backstop_engine::runtime::{ConsumerSpec, TaskSpec};

#[test]
fn a_task_with_a_malformed_topic_is_rejected_naming_it() {
    let err = TaskSpec::new("http://public/default/orders")
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "topic");
    assert!(
        err.to_string().contains("http://public/default/orders"),
        "{err}"
    );
    let err = TaskSpec::new("orders")
        .dlq_topic("orders/dlq")
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "dlq_topic");
    assert!(err.to_string().contains("orders/dlq"), "{err}");
}

#[test]
fn a_consumer_with_a_malformed_topic_is_rejected_naming_it() {
    let err = ConsumerSpec::new("persistent://public/default/t-partition-x", "svc")
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "topic");
    assert!(err.to_string().contains("t-partition-x"), "{err}");
}

#[test]
fn every_pulsar_form_builds() {
    for topic in [
        "orders",
        "public/default/orders",
        "persistent://public/default/orders",
        "non-persistent://public/default/orders",
        "persistent://public/default/orders-partition-1",
    ] {
        TaskSpec::new(topic)
            .build()
            .unwrap_or_else(|e| panic!("{topic}: {e}"));
        ConsumerSpec::new(topic, "svc")
            .build()
            .unwrap_or_else(|e| panic!("{topic}: {e}"));
    }
}
