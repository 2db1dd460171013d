//! MemBroker's own semantics: subscription types, ack rules, nack delays, faults, inspection.
//! Time is paused: waits jump straight to the next timer.

use std::sync::Arc;
use std::time::Duration;

use backstop_engine::broker::{
    Broker, BrokerError, MessageId, OutgoingMessage, Subscription, SubscriptionSpec,
    SubscriptionType,
};
use backstop_engine::core::ErrorKind;
use backstop_mem::{InitialPosition, MemBroker, MemConfig, Op};
use tokio::time::Instant;

/// The kind of an expected error.
trait ErrKind {
    fn err_kind(self) -> ErrorKind;
}

impl<T> ErrKind for Result<T, BrokerError> {
    fn err_kind(self) -> ErrorKind {
        match self {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.kind(),
        }
    }
}

fn spec(kind: SubscriptionType) -> SubscriptionSpec {
    SubscriptionSpec::new("t", "s").with_type(kind)
}

async fn publish(broker: &MemBroker, payloads: &[&str]) -> Vec<MessageId> {
    let p = broker.producer("t").await.unwrap();
    let mut ids = Vec::new();
    for payload in payloads {
        ids.push(p.send(OutgoingMessage::new(*payload)).await.unwrap());
    }
    ids
}

/// Whether a receive would return something right now (without waiting).
async fn ready(sub: &Arc<dyn Subscription>) -> bool {
    tokio::time::timeout(Duration::from_millis(1), sub.receive())
        .await
        .is_ok()
}

#[tokio::test(start_paused = true)]
async fn latest_by_default_earliest_on_request() {
    let broker = MemBroker::new();
    publish(&broker, &["old"]).await;
    let sub = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    assert!(
        !ready(&sub).await,
        "latest: the old message is not delivered"
    );
    assert_eq!(broker.topic_payloads("t"), vec![b"old".to_vec()]);

    let broker = MemBroker::with_config(MemConfig {
        initial_position: InitialPosition::Earliest,
    });
    publish(&broker, &["old"]).await;
    let sub = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    assert_eq!(sub.receive().await.unwrap().payload, b"old");
}

#[tokio::test(start_paused = true)]
async fn subscriptions_are_durable_while_no_consumer_is_attached() {
    let broker = MemBroker::new();
    let sub = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    sub.close().await.unwrap();
    publish(&broker, &["while-away"]).await;
    assert_eq!(broker.backlog("t", "s"), 1);
    let sub = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    assert_eq!(sub.receive().await.unwrap().payload, b"while-away");
}

#[tokio::test(start_paused = true)]
async fn exclusive_and_type_mismatch_are_rejected() {
    let broker = MemBroker::new();
    let first = broker
        .subscribe(&spec(SubscriptionType::Exclusive))
        .await
        .unwrap();
    let err = broker
        .subscribe(&spec(SubscriptionType::Exclusive))
        .await
        .err_kind();
    assert_eq!(err, ErrorKind::Rejected);
    let err = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .err_kind();
    assert_eq!(err, ErrorKind::Rejected);
    drop(first); // dropping the handle closes the consumer
    broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    assert_eq!(
        broker.subscription_stats("t", "s").unwrap().kind,
        SubscriptionType::Shared
    );
}

#[tokio::test(start_paused = true)]
async fn ack_rules_redundant_rejected_and_foreign() {
    let broker = MemBroker::new();
    let a = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    let b = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    let ids = publish(&broker, &["x", "y"]).await;
    let m = a.receive().await.unwrap();
    assert_eq!(m.id, ids[0]);
    // b does not hold it.
    assert_eq!(b.ack(&m.id).await.err_kind(), ErrorKind::Invalid);
    // never delivered
    assert_eq!(a.ack(&ids[1]).await.err_kind(), ErrorKind::Invalid);
    // not an id of this broker
    let foreign = MessageId(vec![1, 2, 3]);
    assert_eq!(a.ack(&foreign).await.err_kind(), ErrorKind::Invalid);
    a.ack(&m.id).await.unwrap();
    // acking again is a no-op, as is acking from another consumer once acked
    a.ack(&m.id).await.unwrap();
    b.ack(&m.id).await.unwrap();
    let c = broker.counters();
    assert_eq!((c.acks, c.redundant_acks, c.rejected_acks), (1, 2, 3));
    let stats = broker.subscription_stats("t", "s").unwrap();
    assert_eq!((stats.acked, stats.available, stats.unacked), (1, 1, 0));
    assert_eq!(broker.acked_ids("t", "s"), vec![ids[0].clone()]);
}

#[tokio::test(start_paused = true)]
async fn nack_waits_for_the_delay_and_counts_redeliveries() {
    let broker = MemBroker::new();
    let mut s = spec(SubscriptionType::Shared);
    s.nack_redelivery_delay = Duration::from_secs(5);
    let sub = broker.subscribe(&s).await.unwrap();
    publish(&broker, &["x"]).await;
    let m = sub.receive().await.unwrap();
    let t0 = Instant::now();
    sub.nack(&m.id).await.unwrap();
    assert_eq!(broker.subscription_stats("t", "s").unwrap().delayed, 1);
    // nack of a nacked delivery is refused: the consumer no longer holds it
    assert_eq!(sub.nack(&m.id).await.err_kind(), ErrorKind::Invalid);
    let again = sub.receive().await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_secs(5));
    assert_eq!((again.id.clone(), again.redelivery_count), (m.id, 1));
    sub.nack(&again.id).await.unwrap();
    let third = sub.receive().await.unwrap();
    assert_eq!(third.redelivery_count, 2);
    sub.ack(&third.id).await.unwrap();
    let c = broker.counters();
    assert_eq!((c.delivered, c.redelivered, c.nacks, c.acks), (3, 2, 2, 1));
}

#[tokio::test(start_paused = true)]
async fn a_nack_wakes_a_waiting_receive_at_the_right_time() {
    let broker = MemBroker::new();
    let mut s = spec(SubscriptionType::Shared);
    s.nack_redelivery_delay = Duration::from_millis(300);
    let sub = broker.subscribe(&s).await.unwrap();
    let other = broker.subscribe(&s).await.unwrap();
    publish(&broker, &["x"]).await;
    let m = sub.receive().await.unwrap();
    let waiting = tokio::spawn(async move {
        let m = other.receive().await.unwrap();
        (m, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let nacked_at = Instant::now();
    sub.nack(&m.id).await.unwrap();
    let (got, at) = waiting.await.unwrap();
    assert_eq!(got.payload, b"x");
    assert_eq!(at - nacked_at, Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn close_returns_deliveries_and_fails_later_calls() {
    let broker = MemBroker::new();
    let a = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    publish(&broker, &["x"]).await;
    let m = a.receive().await.unwrap();
    let pending = tokio::spawn({
        let a = a.clone();
        async move { a.receive().await }
    });
    tokio::task::yield_now().await;
    a.close().await.unwrap();
    a.close().await.unwrap(); // twice is fine
    assert_eq!(
        pending.await.unwrap().err_kind(),
        ErrorKind::Fatal,
        "a receive waiting on a closed consumer fails"
    );
    assert_eq!(a.ack(&m.id).await.err_kind(), ErrorKind::Fatal);
    let stats = broker.subscription_stats("t", "s").unwrap();
    assert_eq!((stats.consumers, stats.available, stats.unacked), (0, 1, 0));
    let b = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    assert_eq!(b.receive().await.unwrap().redelivery_count, 1);
}

#[tokio::test(start_paused = true)]
async fn shared_alternates_between_waiting_consumers() {
    let broker = MemBroker::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let sub = broker
            .subscribe(&spec(SubscriptionType::Shared))
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), sub.receive()).await
            {
                sub.ack(&m.id).await.unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        }));
    }
    tokio::task::yield_now().await;
    let p = broker.producer("t").await.unwrap();
    for i in 0..20 {
        p.send(OutgoingMessage::new(vec![i])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap());
    }
    assert_eq!(counts.iter().sum::<i32>(), 20);
    assert!(counts.iter().all(|n| *n >= 5), "unbalanced: {counts:?}");
    assert_eq!(broker.total_backlog(), 0);
}

#[tokio::test(start_paused = true)]
async fn injected_failures_are_used_up_in_order() {
    let broker = MemBroker::new();
    let faults = broker.faults();
    faults.fail_next(Op::Subscribe, 1, ErrorKind::Connection);
    faults.fail_next(Op::CreateProducer, 1, ErrorKind::Rejected);
    assert_eq!(
        broker
            .subscribe(&spec(SubscriptionType::Shared))
            .await
            .err_kind(),
        ErrorKind::Connection
    );
    assert_eq!(broker.producer("t").await.err_kind(), ErrorKind::Rejected);
    let sub = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    let p = broker.producer("t").await.unwrap();

    faults.fail_next(Op::Send, 2, ErrorKind::Timeout);
    faults.fail_next(Op::Send, 1, ErrorKind::Rejected);
    let kinds: Vec<_> = futures_kinds(&*p).await;
    assert_eq!(
        kinds,
        vec![
            Some(ErrorKind::Timeout),
            Some(ErrorKind::Timeout),
            Some(ErrorKind::Rejected),
            None
        ]
    );
    assert_eq!(
        broker.topic_payloads("t").len(),
        1,
        "failed sends publish nothing"
    );

    faults.fail_next(Op::Receive, 1, ErrorKind::Connection);
    faults.fail_next(Op::Ack, 1, ErrorKind::Timeout);
    faults.fail_next(Op::Nack, 1, ErrorKind::Connection);
    assert_eq!(sub.receive().await.err_kind(), ErrorKind::Connection);
    let m = sub.receive().await.unwrap();
    assert_eq!(sub.nack(&m.id).await.err_kind(), ErrorKind::Connection);
    assert_eq!(sub.ack(&m.id).await.err_kind(), ErrorKind::Timeout);
    sub.ack(&m.id).await.unwrap();
    assert_eq!(broker.counters().injected_faults, 8);
}

async fn futures_kinds(p: &dyn backstop_engine::broker::Producer) -> Vec<Option<ErrorKind>> {
    let mut out = Vec::new();
    for i in 0..4u8 {
        out.push(
            p.send(OutgoingMessage::new(vec![i]))
                .await
                .err()
                .map(|e| e.kind()),
        );
    }
    out
}

#[tokio::test(start_paused = true)]
async fn after_effect_failures_take_effect() {
    let broker = MemBroker::new();
    let faults = broker.faults();
    let sub = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    let p = broker.producer("t").await.unwrap();
    faults.fail_next_after_effect(Op::Send, 1, ErrorKind::Timeout);
    assert_eq!(
        p.send(OutgoingMessage::new("x")).await.err_kind(),
        ErrorKind::Timeout
    );
    assert_eq!(
        broker.topic_payloads("t"),
        vec![b"x".to_vec()],
        "published anyway"
    );

    faults.fail_next_after_effect(Op::Receive, 1, ErrorKind::Connection);
    assert_eq!(sub.receive().await.err_kind(), ErrorKind::Connection);
    assert_eq!(
        broker.unacked_count("t", "s"),
        1,
        "the delivery is held, lost in transit"
    );
    sub.close().await.unwrap();
    let sub = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    let m = sub.receive().await.unwrap();
    assert_eq!(m.redelivery_count, 1);

    faults.fail_next_after_effect(Op::Ack, 1, ErrorKind::Timeout);
    assert_eq!(sub.ack(&m.id).await.err_kind(), ErrorKind::Timeout);
    assert_eq!(broker.acked_ids("t", "s"), vec![m.id.clone()]);
    sub.ack(&m.id).await.unwrap(); // redundant, accepted
}

#[tokio::test(start_paused = true)]
async fn fail_until_healed_and_latency() {
    let broker = MemBroker::new();
    let faults = broker.faults();
    let p = broker.producer("t").await.unwrap();
    faults.fail_until_healed(Op::Send, ErrorKind::Connection);
    for _ in 0..3 {
        assert!(p.send(OutgoingMessage::new("x")).await.is_err());
    }
    faults.heal();
    p.send(OutgoingMessage::new("x")).await.unwrap();

    faults.set_latency(Op::Send, Duration::from_millis(250));
    let t0 = Instant::now();
    p.send(OutgoingMessage::new("slow")).await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_millis(250));
    faults.set_latency(Op::Send, Duration::ZERO);
    let t0 = Instant::now();
    p.send(OutgoingMessage::new("fast")).await.unwrap();
    assert_eq!(t0.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn offline_fails_everything_then_nothing_changed() {
    let broker = MemBroker::new();
    let faults = broker.faults();
    let sub = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    let p = broker.producer("t").await.unwrap();
    p.send(OutgoingMessage::new("x")).await.unwrap();
    let m = sub.receive().await.unwrap();
    let waiting = tokio::spawn({
        let sub = sub.clone();
        async move { sub.receive().await }
    });
    tokio::task::yield_now().await;
    faults.set_offline(true);
    assert!(faults.is_offline());
    assert_eq!(waiting.await.unwrap().err_kind(), ErrorKind::Connection);
    assert_eq!(
        p.send(OutgoingMessage::new("y")).await.err_kind(),
        ErrorKind::Connection
    );
    assert_eq!(sub.ack(&m.id).await.err_kind(), ErrorKind::Connection);
    assert_eq!(broker.producer("t").await.err_kind(), ErrorKind::Connection);
    faults.set_offline(false);
    sub.ack(&m.id).await.unwrap();
    p.send(OutgoingMessage::new("y")).await.unwrap();
    assert_eq!(sub.receive().await.unwrap().payload, b"y");
}

#[tokio::test(start_paused = true)]
async fn dropped_connections_need_new_handles() {
    let broker = MemBroker::new();
    let sub = broker
        .subscribe(&spec(SubscriptionType::Exclusive))
        .await
        .unwrap();
    let p = broker.producer("t").await.unwrap();
    p.send(OutgoingMessage::new("x")).await.unwrap();
    let m = sub.receive().await.unwrap();
    broker.faults().drop_connections();
    assert_eq!(
        p.send(OutgoingMessage::new("y")).await.err_kind(),
        ErrorKind::Connection
    );
    assert_eq!(sub.ack(&m.id).await.err_kind(), ErrorKind::Connection);
    assert_eq!(sub.receive().await.err_kind(), ErrorKind::Connection);
    // The exclusive consumer was closed by the broker, so a new one can attach, and the
    // delivery came back.
    let sub = broker
        .subscribe(&spec(SubscriptionType::Exclusive))
        .await
        .unwrap();
    let again = sub.receive().await.unwrap();
    assert_eq!((again.id.clone(), again.redelivery_count), (m.id, 1));
    broker
        .producer("t")
        .await
        .unwrap()
        .send(OutgoingMessage::new("y"))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn crash_returns_deliveries_and_fails_in_flight_operations() {
    let broker = MemBroker::new();
    let faults = broker.faults();
    let mut s = spec(SubscriptionType::Shared);
    s.nack_redelivery_delay = Duration::ZERO;
    let a = broker.subscribe(&s).await.unwrap();
    let b = broker.subscribe(&s).await.unwrap();
    let ids = publish(&broker, &["x", "y"]).await;
    let mx = a.receive().await.unwrap();
    let my = b.receive().await.unwrap();
    let waiting = tokio::spawn({
        let a = a.clone();
        async move { a.receive().await }
    });
    faults.set_latency(Op::Ack, Duration::from_secs(1));
    let slow_ack = tokio::spawn({
        let b = b.clone();
        let id = my.id.clone();
        async move { b.ack(&id).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    faults.crash();
    faults.heal();
    assert_eq!(waiting.await.unwrap().err_kind(), ErrorKind::Connection);
    assert_eq!(slow_ack.await.unwrap().err_kind(), ErrorKind::Connection);
    assert_eq!(broker.unacked_count("t", "s"), 0);
    assert_eq!(broker.backlog("t", "s"), 2, "nothing acked, nothing lost");
    // Late acks of returned deliveries fail with Connection (once), not Invalid.
    assert_eq!(a.ack(&mx.id).await.err_kind(), ErrorKind::Connection);
    // Handles keep working; both messages come again with a redelivery count.
    let r1 = a.receive().await.unwrap();
    let r2 = a.receive().await.unwrap();
    assert_eq!(
        (r1.id.clone(), r2.id.clone()),
        (ids[0].clone(), ids[1].clone())
    );
    assert_eq!((r1.redelivery_count, r2.redelivery_count), (1, 1));
    a.ack(&r1.id).await.unwrap();
    a.ack(&r2.id).await.unwrap();
    assert_eq!(broker.counters().crashes, 1);
    assert_eq!(broker.total_backlog(), 0);
}

#[tokio::test(start_paused = true)]
async fn receive_dropped_in_select_loses_nothing() {
    let broker = MemBroker::new();
    let sub = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    let p = broker.producer("t").await.unwrap();
    let mut got = Vec::new();
    for i in 0..10u8 {
        // A receive that loses the race is dropped while waiting...
        tokio::select! {
            _ = sub.receive() => panic!("nothing was published yet"),
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        assert_eq!(broker.subscription_stats("t", "s").unwrap().unacked, 0);
        p.send(OutgoingMessage::new(vec![i])).await.unwrap();
        // ...and the message goes to the next receive.
        let m = tokio::select! {
            m = sub.receive() => m.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(5)) => panic!("message {i} lost"),
        };
        sub.ack(&m.id).await.unwrap();
        got.push(m.payload[0]);
    }
    assert_eq!(got, (0..10).collect::<Vec<u8>>());
    assert_eq!(broker.total_backlog(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiting_receive_leaves_the_queue() {
    let broker = MemBroker::new();
    let a = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    let b = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    // a waits first, then gives up; b, waiting behind it, must get the message.
    let a_wait = tokio::spawn({
        let a = a.clone();
        async move { tokio::time::timeout(Duration::from_millis(10), a.receive()).await }
    });
    tokio::task::yield_now().await;
    let b_wait = tokio::spawn({
        let b = b.clone();
        async move { b.receive().await }
    });
    tokio::task::yield_now().await;
    assert!(a_wait.await.unwrap().is_err());
    publish(&broker, &["x"]).await;
    let m = tokio::time::timeout(Duration::from_secs(1), b_wait)
        .await
        .expect("b got the message")
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, b"x");
}

#[tokio::test(start_paused = true)]
async fn inspection_shows_the_state() {
    let broker = MemBroker::new();
    let sub = broker
        .subscribe(&SubscriptionSpec::new("orders", "billing"))
        .await
        .unwrap();
    broker
        .subscribe(&SubscriptionSpec::new("orders", "audit"))
        .await
        .unwrap();
    let p = broker.producer("orders").await.unwrap();
    p.send(
        OutgoingMessage::new("a")
            .with_key("k")
            .with_property("p", "1"),
    )
    .await
    .unwrap();
    p.send(OutgoingMessage::new("b")).await.unwrap();
    let m = sub.receive().await.unwrap();
    assert_eq!(broker.topics(), vec!["orders".to_string()]);
    assert_eq!(
        broker.subscriptions("orders"),
        vec!["audit".to_string(), "billing".to_string()]
    );
    let messages = broker.topic_messages("orders");
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].id, m.id);
    assert_eq!(messages[0].key.as_deref(), Some("k"));
    assert_eq!(messages[0].properties["p"], "1");
    let stats = broker.subscription_stats("orders", "billing").unwrap();
    assert_eq!(
        (
            stats.consumers,
            stats.available,
            stats.unacked,
            stats.acked,
            stats.backlog()
        ),
        (1, 1, 1, 0, 2)
    );
    assert_eq!(broker.unacked_count("orders", "billing"), 1);
    assert_eq!(broker.backlog("orders", "audit"), 2);
    assert_eq!(broker.total_backlog(), 4);
    assert!(broker.subscription_stats("orders", "nope").is_none());
    assert!(broker.topic_messages("nope").is_empty());
    let c = broker.counters();
    assert_eq!(
        (c.published, c.delivered, c.subscribes, c.producers),
        (2, 1, 2, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn key_shared_rebalances_without_reordering_a_key() {
    let broker = MemBroker::new();
    let a = broker
        .subscribe(&spec(SubscriptionType::KeyShared))
        .await
        .unwrap();
    let p = broker.producer("t").await.unwrap();
    for i in 0..4u8 {
        p.send(OutgoingMessage::new(vec![i]).with_key("k"))
            .await
            .unwrap();
    }
    let first = a.receive().await.unwrap();
    // A second consumer joins; whoever owns "k" now, the next "k" message waits until the
    // first one is acked.
    let b = broker
        .subscribe(&spec(SubscriptionType::KeyShared))
        .await
        .unwrap();
    let mut next = Vec::new();
    for sub in [&a, &b] {
        if ready(sub).await {
            next.push(());
        }
    }
    // a may continue only if it still owns the key; b never gets it while a holds message 0.
    assert!(next.len() <= 1);
    a.ack(&first.id).await.unwrap();
    let stats = broker.subscription_stats("t", "s").unwrap();
    assert_eq!(stats.acked, 1);
}

/// One scenario with three consumers, nacks, faults and a crash; returns who got what, when.
async fn scenario_trace() -> Vec<String> {
    let broker = MemBroker::new();
    let faults = broker.faults();
    let trace = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut spec = spec(SubscriptionType::Shared);
    spec.nack_redelivery_delay = Duration::from_millis(30);
    let mut tasks = Vec::new();
    for c in 0..3 {
        let sub = broker.subscribe(&spec).await.unwrap();
        let trace = trace.clone();
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            while let Ok(r) = tokio::time::timeout(Duration::from_secs(2), sub.receive()).await {
                let line = match r {
                    Ok(m) => {
                        let settle = if (m.payload[0] + c) % 4 == 0 {
                            sub.nack(&m.id).await
                        } else {
                            sub.ack(&m.id).await
                        };
                        format!(
                            "{c} got {} ({}) {:?}",
                            m.payload[0],
                            m.redelivery_count,
                            settle.err().map(|e| e.kind())
                        )
                    }
                    Err(e) => format!("{c} error {}", e.kind()),
                };
                trace
                    .lock()
                    .unwrap()
                    .push(format!("{:?} {line}", t0.elapsed()));
                tokio::time::sleep(Duration::from_millis(u64::from(c) * 3 + 1)).await;
            }
        }));
    }
    let p = broker.producer("t").await.unwrap();
    faults.fail_next(Op::Ack, 3, ErrorKind::Timeout);
    faults.set_latency(Op::Receive, Duration::from_millis(2));
    for i in 0..40u8 {
        p.send(OutgoingMessage::new(vec![i])).await.unwrap();
        if i == 20 {
            faults.crash();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut trace = trace.lock().unwrap().clone();
    trace.push(format!("{:?}", broker.counters()));
    trace
}

#[test]
fn the_same_calls_give_the_same_trace() {
    let run = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(scenario_trace())
    };
    let first = run();
    assert!(first.len() > 40, "{first:?}");
    assert_eq!(first, run());
}

#[tokio::test(start_paused = true)]
async fn delayed_messages_are_delivered_after_their_delay_and_others_pass_them() {
    let broker = MemBroker::with_config(MemConfig {
        initial_position: InitialPosition::Earliest,
    });
    let p = broker.producer("t").await.unwrap();
    let start = Instant::now();
    p.send(OutgoingMessage::new("later").with_deliver_after(Duration::from_secs(5)))
        .await
        .unwrap();
    p.send(OutgoingMessage::new("now")).await.unwrap();
    let sub = broker
        .subscribe(&spec(SubscriptionType::Shared))
        .await
        .unwrap();
    let first = sub.receive().await.unwrap();
    assert_eq!(first.payload, b"now");
    assert_eq!(start.elapsed(), Duration::ZERO);
    let second = sub.receive().await.unwrap();
    assert_eq!(second.payload, b"later");
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(5),
        "not before its time"
    );
    // A subscription that exists when it is published holds it back too.
    p.send(OutgoingMessage::new("again").with_deliver_after(Duration::from_secs(3)))
        .await
        .unwrap();
    let t = Instant::now();
    assert_eq!(sub.receive().await.unwrap().payload, b"again");
    assert_eq!(t.elapsed(), Duration::from_secs(3));
}
