//! The suite must fail adapters that break the contract, and fail them in bounded time. Each
//! test wraps `MemBroker` in one deliberate defect and checks the case that should catch it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backstop_conformance::{
    run_all, run_case, unique_prefix, Case, Env, Features, Harness, Outcome,
};
use backstop_engine::broker::{
    Broker, BrokerError, MessageId, OutgoingMessage, Producer, ReceivedMessage, Subscription,
    SubscriptionSpec,
};
use backstop_engine::core::ErrorKind;
use backstop_mem::MemBroker;

/// A defect to plant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defect {
    None,
    /// `ack` reports success and does nothing.
    AckIgnored,
    /// `close` does not return unacked deliveries (they stay with the dead consumer).
    CloseKeepsDeliveries,
    /// `receive` awaits once more after taking a message: dropping it then loses the message.
    ReceiveNotCancelSafe,
    /// Every 100th message is dropped by the producer but confirmed.
    LosesMessages,
    /// Properties are not carried.
    DropsProperties,
    /// `receive` never returns.
    Hangs,
    /// The second exclusive consumer is refused with the wrong kind.
    ExclusiveWrongKind,
    /// `nack` redelivers at once, whatever the delay.
    NackIgnoresDelay,
}

struct Broken {
    inner: MemBroker,
    defect: Defect,
    sent: AtomicU64,
}

#[async_trait]
impl Broker for Broken {
    async fn producer(&self, topic: &str) -> Result<Arc<dyn Producer>, BrokerError> {
        let inner = self.inner.producer(topic).await?;
        Ok(Arc::new(BrokenProducer {
            inner,
            defect: self.defect,
            sent: AtomicU64::new(self.sent.load(Ordering::Relaxed)),
        }))
    }

    async fn subscribe(
        &self,
        spec: &SubscriptionSpec,
    ) -> Result<Arc<dyn Subscription>, BrokerError> {
        let mut spec = spec.clone();
        if self.defect == Defect::NackIgnoresDelay {
            spec.nack_redelivery_delay = Duration::ZERO;
        }
        match self.inner.subscribe(&spec).await {
            Err(e) if self.defect == Defect::ExclusiveWrongKind => {
                Err(BrokerError::new(ErrorKind::Fatal, e.message()))
            }
            Err(e) => Err(e),
            Ok(inner) => Ok(Arc::new(BrokenSubscription {
                inner,
                defect: self.defect,
            })),
        }
    }
}

struct BrokenProducer {
    inner: Arc<dyn Producer>,
    defect: Defect,
    sent: AtomicU64,
}

#[async_trait]
impl Producer for BrokenProducer {
    fn topic(&self) -> &str {
        self.inner.topic()
    }

    async fn send(&self, mut message: OutgoingMessage) -> Result<MessageId, BrokerError> {
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        if self.defect == Defect::LosesMessages && n % 100 == 99 {
            return Ok(MessageId(vec![0; 12]));
        }
        if self.defect == Defect::DropsProperties {
            message.properties.clear();
        }
        self.inner.send(message).await
    }
}

struct BrokenSubscription {
    inner: Arc<dyn Subscription>,
    defect: Defect,
}

#[async_trait]
impl Subscription for BrokenSubscription {
    async fn receive(&self) -> Result<ReceivedMessage, BrokerError> {
        if self.defect == Defect::Hangs {
            std::future::pending::<()>().await;
        }
        let m = self.inner.receive().await?;
        if self.defect == Defect::ReceiveNotCancelSafe {
            tokio::task::yield_now().await;
        }
        Ok(m)
    }

    async fn ack(&self, id: &MessageId) -> Result<(), BrokerError> {
        if self.defect == Defect::AckIgnored {
            return Ok(());
        }
        self.inner.ack(id).await
    }

    async fn nack(&self, id: &MessageId) -> Result<(), BrokerError> {
        self.inner.nack(id).await
    }

    async fn close(&self) -> Result<(), BrokerError> {
        if self.defect == Defect::CloseKeepsDeliveries {
            // Leak the inner handle so dropping us does not close it either.
            std::mem::forget(self.inner.clone());
            return Ok(());
        }
        self.inner.close().await
    }
}

struct BrokenHarness(Defect);

#[async_trait]
impl Harness for BrokenHarness {
    fn features(&self) -> Features {
        Features {
            timeout: Duration::from_secs(2),
            quiet_period: Duration::from_millis(200),
            many_messages: 300,
            ..Features::default()
        }
    }

    async fn env(&self, case: Case) -> Env {
        let broker = Broken {
            inner: MemBroker::new(),
            defect: self.0,
            sent: AtomicU64::new(0),
        };
        Env::new(Arc::new(broker), unique_prefix(case.name()))
    }
}

async fn fails(defect: Defect, case: Case) -> String {
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        run_case(&BrokenHarness(defect), case),
    )
    .await
    .unwrap_or_else(|_| panic!("{case:?} hung on {defect:?} instead of failing"));
    match result {
        Ok(outcome) => panic!("{case:?} passed ({outcome:?}) on an adapter with {defect:?}"),
        Err(failure) => failure.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrapper_itself_passes_everything() {
    let report = run_all(&BrokenHarness(Defect::None)).await;
    assert!(report.is_success(), "{report}");
    assert_eq!(
        report.skipped(),
        1,
        "only connection loss is skipped: {report}"
    );
    assert!(report
        .results
        .iter()
        .any(|(c, r)| *c == Case::ConnectionLoss
            && r == &Ok(Outcome::Skipped("no connection fault injection"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_acks_are_caught() {
    let msg = fails(Defect::AckIgnored, Case::AckRemoves).await;
    assert!(msg.contains("expected no message"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_kept_by_a_closed_consumer_are_caught() {
    let msg = fails(Defect::CloseKeepsDeliveries, Case::CloseRedelivers).await;
    assert!(msg.contains("timed out"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_that_is_not_cancel_safe_is_caught() {
    let msg = fails(Defect::ReceiveNotCancelSafe, Case::CancelSafeReceive).await;
    assert!(msg.contains("lost") || msg.contains("timed out"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_messages_are_caught() {
    let msg = fails(Defect::LosesMessages, Case::ManyMessages).await;
    assert!(msg.contains("timed out"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_properties_are_caught() {
    for case in [Case::Roundtrip, Case::DlqPublish] {
        let msg = fails(Defect::DropsProperties, case).await;
        assert!(msg.contains("properties"), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_adapter_fails_in_bounded_time() {
    let msg = fails(Defect::Hangs, Case::Roundtrip).await;
    assert!(msg.contains("timed out"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_error_kind_for_exclusive_is_caught() {
    let msg = fails(Defect::ExclusiveWrongKind, Case::ExclusiveRejectsSecond).await;
    assert!(msg.contains("expected rejected"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ignored_nack_delay_is_caught() {
    let msg = fails(Defect::NackIgnoresDelay, Case::NackRedelivers).await;
    assert!(msg.contains("nack delay"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_cases_are_skipped_not_failed() {
    struct Limited;
    #[async_trait]
    impl Harness for Limited {
        fn features(&self) -> Features {
            Features {
                ordering_per_producer: false,
                exclusive_rejects_second: false,
                failover: false,
                key_shared: false,
                latest_initial_position: false,
                ..Features::default()
            }
        }
        async fn env(&self, case: Case) -> Env {
            Env::new(Arc::new(MemBroker::new()), unique_prefix(case.name()))
        }
    }
    for case in [
        Case::OrderingPerProducer,
        Case::ExclusiveRejectsSecond,
        Case::Failover,
        Case::KeyShared,
        Case::LatestPosition,
        Case::ConnectionLoss,
    ] {
        assert!(
            matches!(run_case(&Limited, case).await, Ok(Outcome::Skipped(_))),
            "{case:?} not skipped"
        );
    }
}

/// A skipped case fails its generated test instead of showing as passed; a case run without
/// some checks says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_case_fails_its_generated_test() {
    struct NoFaults;
    #[async_trait]
    impl Harness for NoFaults {
        fn features(&self) -> Features {
            Features {
                redelivery_count: false,
                ..Features::default()
            }
        }
        async fn env(&self, case: Case) -> Env {
            Env::new(Arc::new(MemBroker::new()), unique_prefix(case.name()))
        }
    }
    let skipped = tokio::spawn(async {
        backstop_conformance::check_case(&NoFaults, "connection_loss_fails_then_recovers").await
    })
    .await
    .expect_err("a skipped case panics");
    let text = skipped
        .into_panic()
        .downcast::<String>()
        .map(|s| *s)
        .unwrap_or_default();
    assert!(text.contains("SKIPPED"), "{text}");
    assert!(matches!(
        run_case(&NoFaults, Case::Roundtrip).await,
        Ok(Outcome::PassedWithout(w)) if w.contains("redelivery-count")
    ));
    // The partial case still passes its generated test.
    backstop_conformance::check_case(&NoFaults, "roundtrip_keeps_payload_key_and_properties").await;
    let report = backstop_conformance::run_all(&NoFaults).await;
    assert!(report.is_success() && !report.is_complete(), "{report}");
    assert_eq!(report.skipped(), 1, "{report}");
    assert!(report.partial() >= 3, "{report}");
}
