//! The cases, each written only against the broker traits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop_engine::broker::{
    OutgoingMessage, Producer, ReceivedMessage, Subscription, SubscriptionSpec, SubscriptionType,
};
use backstop_engine::core::ErrorKind;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::util::{
    ack, ensure, expect_nothing, fail, payload, recv, same_topic, send, text, within, Check,
    Failure,
};
use crate::{Case, Env, Features, Outcome};

/// Runs `case`.
pub(crate) async fn run(case: Case, env: &Env, f: &Features) -> Check<Outcome> {
    let skip = |needed: bool, why: &'static str| (!needed).then_some(Outcome::Skipped(why));
    let skipped = match case {
        Case::OrderingPerProducer => skip(f.ordering_per_producer, "no per-producer ordering"),
        Case::ExclusiveRejectsSecond => skip(f.exclusive_rejects_second, "no exclusive check"),
        Case::LatestPosition => skip(f.latest_initial_position, "not latest by default"),
        Case::Failover => skip(f.failover, "no failover subscriptions"),
        Case::KeyShared => skip(f.key_shared, "no key_shared subscriptions"),
        Case::ConnectionLoss => skip(env.faults.is_some(), "no connection fault injection"),
        _ => None,
    };
    if let Some(outcome) = skipped {
        return Ok(outcome);
    }
    match case {
        Case::Roundtrip => roundtrip(env, f).await,
        Case::OrderingPerProducer => ordering_per_producer(env, f).await,
        Case::AckRemoves => ack_removes(env, f).await,
        Case::NackRedelivers => nack_redelivers(env, f).await,
        Case::CloseRedelivers => close_redelivers(env, f).await,
        Case::SharedSplits => shared_splits(env, f).await,
        Case::ExclusiveRejectsSecond => exclusive_rejects_second(env, f).await,
        Case::SubscriptionsIndependent => subscriptions_independent(env, f).await,
        Case::DlqPublish => dlq_publish(env, f).await,
        Case::LatestPosition => latest_position(env, f).await,
        Case::CancelSafeReceive => cancel_safe_receive(env, f).await,
        Case::ManyMessages => many_messages(env, f).await,
        Case::Failover => failover(env, f).await,
        Case::KeyShared => key_shared(env, f).await,
        Case::ConnectionLoss => connection_loss(env, f).await,
    }?;
    let gaps: &[(bool, &'static str)] = match case {
        Case::Roundtrip | Case::CloseRedelivers => &[(
            f.redelivery_count,
            "its redelivery-count checks (the adapter does not report the broker's count)",
        )],
        Case::NackRedelivers => &[
            (
                f.redelivery_count,
                "its redelivery-count checks (the adapter does not report the broker's count)",
            ),
            (
                f.nack_delay,
                "its nack-delay check (the adapter ignores the delay)",
            ),
        ],
        Case::SharedSplits => &[(
            f.shared_round_robin,
            "its round-robin check (the adapter may give one consumer everything)",
        )],
        _ => &[],
    };
    Ok(match gaps.iter().find(|(supported, _)| !supported) {
        Some((_, what)) => Outcome::PassedWithout(what),
        None => Outcome::Passed,
    })
}

async fn subscribe(
    env: &Env,
    f: &Features,
    topic: &str,
    subscription: &str,
    kind: SubscriptionType,
) -> Check<Arc<dyn Subscription>> {
    let spec = SubscriptionSpec::new(topic, subscription).with_type(kind);
    subscribe_spec(env, f, &spec).await
}

async fn subscribe_spec(
    env: &Env,
    f: &Features,
    spec: &SubscriptionSpec,
) -> Check<Arc<dyn Subscription>> {
    within(f.timeout, "subscribe", env.broker.subscribe(spec))
        .await?
        .map_err(|e| {
            Failure::new(format!(
                "subscribe {}/{} ({:?}) failed: {e}",
                spec.topic, spec.subscription, spec.kind
            ))
        })
}

async fn producer(env: &Env, f: &Features, topic: &str) -> Check<Arc<dyn Producer>> {
    within(f.timeout, "create producer", env.broker.producer(topic))
        .await?
        .map_err(|e| Failure::new(format!("creating a producer for {topic} failed: {e}")))
}

async fn close(sub: &dyn Subscription, f: &Features) -> Check {
    within(f.timeout, "close", sub.close())
        .await?
        .map_err(|e| Failure::new(format!("close failed: {e}")))
}

/// Receives and acks until `n` messages came or `f.timeout` passed; returns them in arrival
/// order.
async fn drain(
    sub: &dyn Subscription,
    f: &Features,
    n: usize,
    what: &str,
) -> Check<Vec<ReceivedMessage>> {
    let deadline = Instant::now() + f.timeout;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = recv(sub, left, &format!("{what} ({} of {n} so far)", got.len())).await?;
        ack(sub, &m.id, f.timeout).await?;
        got.push(m);
    }
    Ok(got)
}

fn payloads(messages: &[ReceivedMessage]) -> Vec<String> {
    messages.iter().map(|m| text(&m.payload)).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn expected(range: std::ops::Range<usize>) -> Vec<String> {
    sorted(range.map(|i| text(&payload(i))).collect())
}

async fn roundtrip(env: &Env, f: &Features) -> Check {
    let topic = env.topic("roundtrip");
    let sub = subscribe(env, f, &topic, "s", SubscriptionType::Shared).await?;
    let p = producer(env, f, &topic).await?;
    ensure!(
        same_topic(p.topic(), &topic),
        "producer reports topic {:?}",
        p.topic()
    );
    let full = OutgoingMessage::new(b"hello\0\xffworld".to_vec())
        .with_key("key-1")
        .with_property("trace-id", "abc")
        .with_property("empty", "")
        .with_property("unicode", "grüße ✓");
    let bare = OutgoingMessage::new(Vec::new());
    send(&*p, full.clone(), f.timeout).await?;
    send(&*p, bare.clone(), f.timeout).await?;
    let mut got = vec![recv(&*sub, f.timeout, "first message").await?];
    got.push(recv(&*sub, f.timeout, "second message").await?);
    got.sort_by_key(|m| m.payload.is_empty());
    for (m, sent) in got.iter().zip([&full, &bare]) {
        ensure!(
            same_topic(&m.topic, &topic),
            "message topic {:?}, expected {topic:?}",
            m.topic
        );
        ensure!(
            m.payload == sent.payload,
            "payload {:?}, sent {:?}",
            m.payload,
            sent.payload
        );
        ensure!(m.key == sent.key, "key {:?}, sent {:?}", m.key, sent.key);
        ensure!(
            m.properties == sent.properties,
            "properties {:?}, sent {:?}",
            m.properties,
            sent.properties
        );
        if f.redelivery_count {
            ensure!(
                m.redelivery_count == 0,
                "first delivery has redelivery count {}",
                m.redelivery_count
            );
        }
        ack(&*sub, &m.id, f.timeout).await?;
    }
    expect_nothing(&*sub, f.quiet_period, "after acking both").await
}

async fn ordering_per_producer(env: &Env, f: &Features) -> Check {
    let topic = env.topic("ordering");
    let sub = subscribe(env, f, &topic, "s", SubscriptionType::Exclusive).await?;
    const PER_PRODUCER: usize = 50;
    let mut senders = JoinSet::new();
    for name in ["a", "b"] {
        let p = producer(env, f, &topic).await?;
        let timeout = f.timeout;
        senders.spawn(async move {
            for i in 0..PER_PRODUCER {
                let m = OutgoingMessage::new(format!("{name}-{i}")).with_property("producer", name);
                send(&*p, m, timeout).await?;
            }
            Ok::<_, Failure>(())
        });
    }
    let got = drain(&*sub, f, 2 * PER_PRODUCER, "messages of two producers").await?;
    while let Some(r) = senders.join_next().await {
        r.map_err(|e| Failure::new(format!("sender task failed: {e}")))??;
    }
    for name in ["a", "b"] {
        let seen: Vec<String> = payloads(&got)
            .into_iter()
            .filter(|p| p.starts_with(&format!("{name}-")))
            .collect();
        let want: Vec<String> = (0..PER_PRODUCER).map(|i| format!("{name}-{i}")).collect();
        ensure!(
            seen == want,
            "producer {name}'s messages arrived as {seen:?}"
        );
    }
    Ok(())
}

async fn ack_removes(env: &Env, f: &Features) -> Check {
    let topic = env.topic("ack");
    let sub = subscribe(env, f, &topic, "s", SubscriptionType::Shared).await?;
    let p = producer(env, f, &topic).await?;
    for i in 0..3 {
        send(&*p, OutgoingMessage::new(payload(i)), f.timeout).await?;
    }
    let got = drain(&*sub, f, 3, "three messages").await?;
    ensure!(
        sorted(payloads(&got)) == expected(0..3),
        "received {:?}",
        payloads(&got)
    );
    expect_nothing(&*sub, f.quiet_period, "after acking everything").await?;
    close(&*sub, f).await?;
    let again = subscribe(env, f, &topic, "s", SubscriptionType::Shared).await?;
    expect_nothing(
        &*again,
        f.quiet_period,
        "new consumer after everything was acked",
    )
    .await
}

async fn nack_redelivers(env: &Env, f: &Features) -> Check {
    let topic = env.topic("nack");
    let mut spec = SubscriptionSpec::new(&topic, "s");
    spec.nack_redelivery_delay = f.nack_redelivery_delay;
    let sub = subscribe_spec(env, f, &spec).await?;
    let p = producer(env, f, &topic).await?;
    send(&*p, OutgoingMessage::new("again"), f.timeout).await?;
    let first = recv(&*sub, f.timeout, "the message").await?;
    let nacked_at = Instant::now();
    within(f.timeout, "nack", sub.nack(&first.id))
        .await?
        .map_err(|e| Failure::new(format!("nack failed: {e}")))?;
    let second = recv(&*sub, f.timeout + f.nack_redelivery_delay, "the redelivery").await?;
    let waited = nacked_at.elapsed();
    ensure!(
        second.payload == first.payload,
        "redelivered {:?}",
        text(&second.payload)
    );
    ensure!(
        second.id == first.id,
        "redelivery has id {}, first delivery {}",
        second.id,
        first.id
    );
    if f.redelivery_count {
        ensure!(
            (first.redelivery_count, second.redelivery_count) == (0, 1),
            "redelivery counts {} then {}, expected 0 then 1",
            first.redelivery_count,
            second.redelivery_count
        );
    }
    if f.nack_delay {
        let least = f.nack_redelivery_delay.mul_f64(0.8);
        ensure!(
            waited >= least,
            "redelivered after {waited:?}, nack delay is {:?}",
            f.nack_redelivery_delay
        );
    }
    ack(&*sub, &second.id, f.timeout).await?;
    expect_nothing(
        &*sub,
        f.quiet_period.max(f.nack_redelivery_delay * 2),
        "after the ack",
    )
    .await
}

async fn close_redelivers(env: &Env, f: &Features) -> Check {
    let topic = env.topic("close");
    let a = subscribe(env, f, &topic, "s", SubscriptionType::Shared).await?;
    let p = producer(env, f, &topic).await?;
    for i in 0..3 {
        send(&*p, OutgoingMessage::new(payload(i)), f.timeout).await?;
    }
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(
            recv(
                &*a,
                f.timeout,
                &format!("message {i} on the first consumer"),
            )
            .await?,
        );
    }
    let b = subscribe(env, f, &topic, "s", SubscriptionType::Shared).await?;
    close(&*a, f).await?;
    let got = drain(&*b, f, 3, "the first consumer's messages on the second").await?;
    ensure!(
        sorted(payloads(&got)) == expected(0..3),
        "second consumer got {:?}",
        payloads(&got)
    );
    if f.redelivery_count {
        for m in &got {
            ensure!(
                m.redelivery_count >= 1,
                "{} redelivered with count 0",
                text(&m.payload)
            );
        }
    }
    expect_nothing(&*b, f.quiet_period, "after acking the redeliveries").await
}

/// Two consumers receive concurrently until `n` distinct messages came; returns what each got.
async fn receive_with_two(
    a: Arc<dyn Subscription>,
    b: Arc<dyn Subscription>,
    f: &Features,
    n: usize,
) -> Check<[Vec<ReceivedMessage>; 2]> {
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let mut tasks = JoinSet::new();
    for (index, sub) in [a, b].into_iter().enumerate() {
        let seen = seen.clone();
        let f = f.clone();
        tasks.spawn(async move {
            let deadline = Instant::now() + f.timeout;
            let mut got = Vec::new();
            while seen.lock().unwrap().len() < n && Instant::now() < deadline {
                // Short receives, so this consumer notices when the other finished the job.
                let Ok(r) = tokio::time::timeout(Duration::from_millis(50), sub.receive()).await
                else {
                    continue;
                };
                let m =
                    r.map_err(|e| Failure::new(format!("consumer {index}: receive failed: {e}")))?;
                ack(&*sub, &m.id, f.timeout).await?;
                seen.lock().unwrap().insert(m.payload.clone());
                got.push(m);
                // Give the other consumer a chance, as a handler doing work would.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok::<_, Failure>((index, got))
        });
    }
    let mut out = [Vec::new(), Vec::new()];
    while let Some(r) = tasks.join_next().await {
        let (index, got) = r.map_err(|e| Failure::new(format!("consumer task failed: {e}")))??;
        out[index] = got;
    }
    let total = seen.lock().unwrap().len();
    ensure!(
        total == n,
        "only {total} of {n} messages arrived within {:?}",
        f.timeout
    );
    Ok(out)
}

async fn shared_splits(env: &Env, f: &Features) -> Check {
    let topic = env.topic("shared");
    let a = subscribe(env, f, &topic, "s", SubscriptionType::Shared).await?;
    let b = subscribe(env, f, &topic, "s", SubscriptionType::Shared).await?;
    let p = producer(env, f, &topic).await?;
    const N: usize = 100;
    let consumers = tokio::spawn({
        let (a, b, f) = (a.clone(), b.clone(), f.clone());
        async move { receive_with_two(a, b, &f, N).await }
    });
    for i in 0..N {
        send(&*p, OutgoingMessage::new(payload(i)), f.timeout).await?;
    }
    let [got_a, got_b] = consumers
        .await
        .map_err(|e| Failure::new(format!("consumers failed: {e}")))??;
    let all: Vec<String> = payloads(&got_a)
        .into_iter()
        .chain(payloads(&got_b))
        .collect();
    ensure!(
        sorted(all.clone()) == expected(0..N),
        "got {} messages ({} distinct) instead of {N} once each",
        all.len(),
        all.iter().collect::<BTreeSet<_>>().len()
    );
    if f.shared_round_robin {
        ensure!(
            !got_a.is_empty() && !got_b.is_empty(),
            "one consumer got everything ({} / {})",
            got_a.len(),
            got_b.len()
        );
    }
    expect_nothing(&*a, f.quiet_period, "first consumer after the split").await?;
    expect_nothing(&*b, f.quiet_period, "second consumer after the split").await
}

async fn exclusive_rejects_second(env: &Env, f: &Features) -> Check {
    let topic = env.topic("exclusive");
    let spec = SubscriptionSpec::new(&topic, "s").with_type(SubscriptionType::Exclusive);
    let first = subscribe_spec(env, f, &spec).await?;
    match within(
        f.timeout,
        "second exclusive subscribe",
        env.broker.subscribe(&spec),
    )
    .await?
    {
        Ok(_) => fail!("a second consumer joined an exclusive subscription"),
        Err(e) if e.kind() == ErrorKind::Rejected => {}
        Err(e) => fail!(
            "second exclusive consumer refused with kind {}, expected rejected: {e}",
            e.kind()
        ),
    }
    close(&*first, f).await?;
    // The broker may take a moment to let go of the first consumer.
    let deadline = Instant::now() + f.timeout;
    loop {
        match within(
            f.timeout,
            "exclusive subscribe after close",
            env.broker.subscribe(&spec),
        )
        .await?
        {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Rejected && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => fail!("no consumer could join after the first closed: {e}"),
        }
    }
}

async fn subscriptions_independent(env: &Env, f: &Features) -> Check {
    let topic = env.topic("fanout");
    let one = subscribe(env, f, &topic, "one", SubscriptionType::Shared).await?;
    let two = subscribe(env, f, &topic, "two", SubscriptionType::Shared).await?;
    let p = producer(env, f, &topic).await?;
    for i in 0..5 {
        send(&*p, OutgoingMessage::new(payload(i)), f.timeout).await?;
    }
    let got_one = drain(&*one, f, 5, "subscription one").await?;
    ensure!(
        sorted(payloads(&got_one)) == expected(0..5),
        "subscription one got {:?}",
        payloads(&got_one)
    );
    let got_two = drain(&*two, f, 5, "subscription two").await?;
    ensure!(
        sorted(payloads(&got_two)) == expected(0..5),
        "subscription two got {:?}",
        payloads(&got_two)
    );
    expect_nothing(&*one, f.quiet_period, "subscription one").await?;
    expect_nothing(&*two, f.quiet_period, "subscription two").await
}

async fn dlq_publish(env: &Env, f: &Features) -> Check {
    let topic = env.topic("work");
    let dlq_topic = env.topic("work-dlq");
    let work = subscribe(env, f, &topic, "s", SubscriptionType::Shared).await?;
    let dead = subscribe(env, f, &dlq_topic, "ops", SubscriptionType::Shared).await?;
    let p = producer(env, f, &topic).await?;
    let dlq = producer(env, f, &dlq_topic).await?;
    let original = OutgoingMessage::new(b"{\"user_id\":-1}".to_vec())
        .with_key("user-1")
        .with_property("content-type", "application/json")
        .with_property("trace-id", "t-42");
    send(&*p, original.clone(), f.timeout).await?;
    let m = recv(&*work, f.timeout, "the message to dead-letter").await?;
    let mut record = OutgoingMessage::new(m.payload.clone())
        .with_property("backstop.error.kind", "invalid")
        .with_property("backstop.origin.topic", m.topic.clone());
    record.key = m.key.clone();
    for (k, v) in &m.properties {
        record.properties.insert(k.clone(), v.clone());
    }
    send(&*dlq, record.clone(), f.timeout).await?;
    ack(&*work, &m.id, f.timeout).await?;
    let d = recv(&*dead, f.timeout, "the dead-letter record").await?;
    ensure!(
        d.payload == original.payload,
        "dead-letter payload {:?}",
        text(&d.payload)
    );
    ensure!(d.key == original.key, "dead-letter key {:?}", d.key);
    ensure!(
        d.properties == record.properties,
        "dead-letter properties {:?}, sent {:?}",
        d.properties,
        record.properties
    );
    ensure!(
        same_topic(&d.topic, &dlq_topic),
        "dead-letter record from topic {:?}",
        d.topic
    );
    ack(&*dead, &d.id, f.timeout).await?;
    expect_nothing(&*work, f.quiet_period, "the original after dead-lettering").await
}

async fn latest_position(env: &Env, f: &Features) -> Check {
    let topic = env.topic("latest");
    let p = producer(env, f, &topic).await?;
    send(&*p, OutgoingMessage::new("before"), f.timeout).await?;
    let sub = subscribe(env, f, &topic, "late", SubscriptionType::Shared).await?;
    send(&*p, OutgoingMessage::new("after"), f.timeout).await?;
    let m = recv(&*sub, f.timeout, "the message sent after subscribing").await?;
    ensure!(
        m.payload == b"after",
        "a new subscription got {:?} first",
        text(&m.payload)
    );
    ack(&*sub, &m.id, f.timeout).await?;
    expect_nothing(&*sub, f.quiet_period, "after the one message").await
}

async fn cancel_safe_receive(env: &Env, f: &Features) -> Check {
    let topic = env.topic("cancel");
    let sub = subscribe(env, f, &topic, "s", SubscriptionType::Shared).await?;
    let p = producer(env, f, &topic).await?;
    // A receive dropped while nothing is there takes nothing with it.
    expect_nothing(&*sub, Duration::from_millis(50), "empty topic").await?;
    send(&*p, OutgoingMessage::new(payload(0)), f.timeout).await?;
    let first = recv(&*sub, f.timeout, "the message after a dropped receive").await?;
    ensure!(
        first.payload == payload(0),
        "got {:?}",
        text(&first.payload)
    );
    ack(&*sub, &first.id, f.timeout).await?;

    // Receives cancelled at many points while messages trickle in.
    const N: usize = 40;
    let sender = tokio::spawn({
        let (p, timeout) = (p.clone(), f.timeout);
        async move {
            for i in 1..=N {
                send(&*p, OutgoingMessage::new(payload(i)), timeout).await?;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok::<_, Failure>(())
        }
    });
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + f.timeout;
    let mut attempt = 0u64;
    while got.len() < N && Instant::now() < deadline {
        attempt += 1;
        let patience = Duration::from_micros(200 + (attempt * 397) % 3000);
        tokio::select! {
            r = sub.receive() => {
                let m = r.map_err(|e| Failure::new(format!("receive failed: {e}")))?;
                ack(&*sub, &m.id, f.timeout).await?;
                ensure!(got.insert(text(&m.payload)), "{} delivered twice", text(&m.payload));
            }
            _ = tokio::time::sleep(patience) => {}
        }
    }
    sender
        .await
        .map_err(|e| Failure::new(format!("sender failed: {e}")))??;
    let missing: Vec<String> = (1..=N)
        .map(|i| text(&payload(i)))
        .filter(|p| !got.contains(p))
        .collect();
    ensure!(
        missing.is_empty(),
        "lost across cancelled receives: {missing:?}"
    );
    expect_nothing(&*sub, f.quiet_period, "after receiving everything").await
}

async fn many_messages(env: &Env, f: &Features) -> Check {
    let topic = env.topic("many");
    let n = f.many_messages;
    let sub = subscribe(env, f, &topic, "s", SubscriptionType::Shared).await?;
    let p = producer(env, f, &topic).await?;
    let sender = tokio::spawn({
        let (p, timeout) = (p.clone(), f.timeout);
        async move {
            let mut i = 0;
            while i < n {
                let batch: Vec<_> = (i..n.min(i + 50))
                    .map(|j| {
                        let p = p.clone();
                        async move { send(&*p, OutgoingMessage::new(payload(j)), timeout).await }
                    })
                    .collect();
                i += batch.len();
                for r in futures::future::join_all(batch).await {
                    r?;
                }
            }
            Ok::<_, Failure>(())
        }
    });
    let mut acks = JoinSet::new();
    let mut got: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let deadline = Instant::now() + f.timeout;
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = recv(&*sub, left, &format!("message {} of {n}", got.len() + 1)).await?;
        *got.entry(m.payload.clone()).or_default() += 1;
        let (sub, timeout) = (sub.clone(), f.timeout);
        acks.spawn(async move { ack(&*sub, &m.id, timeout).await });
        while let Some(r) = acks.try_join_next() {
            r.map_err(|e| Failure::new(format!("ack task failed: {e}")))??;
        }
    }
    while let Some(r) = acks.join_next().await {
        r.map_err(|e| Failure::new(format!("ack task failed: {e}")))??;
    }
    sender
        .await
        .map_err(|e| Failure::new(format!("sender failed: {e}")))??;
    let duplicates: Vec<String> = got
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(p, _)| text(p))
        .collect();
    ensure!(
        duplicates.is_empty(),
        "delivered more than once without any fault: {duplicates:?}"
    );
    ensure!(
        got.keys().cloned().collect::<Vec<_>>() == {
            let mut all: Vec<Vec<u8>> = (0..n).map(payload).collect();
            all.sort();
            all
        },
        "received messages that were never sent"
    );
    expect_nothing(&*sub, f.quiet_period, "after acking everything").await
}

async fn failover(env: &Env, f: &Features) -> Check {
    let topic = env.topic("failover");
    let subs = [
        subscribe(env, f, &topic, "s", SubscriptionType::Failover).await?,
        subscribe(env, f, &topic, "s", SubscriptionType::Failover).await?,
    ];
    let p = producer(env, f, &topic).await?;
    for i in 0..5 {
        send(&*p, OutgoingMessage::new(payload(i)), f.timeout).await?;
    }
    // Poll both; every message must come from the same (active) consumer.
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + f.timeout;
    let mut turn = 0;
    while by.len() < 5 {
        ensure!(
            Instant::now() < deadline,
            "only {} of 5 messages arrived",
            by.len()
        );
        let i = turn % 2;
        turn += 1;
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(50), subs[i].receive()).await {
            let m = r.map_err(|e| Failure::new(format!("receive failed: {e}")))?;
            ack(&*subs[i], &m.id, f.timeout).await?;
            by.insert(text(&m.payload), i);
        }
    }
    let active: BTreeSet<usize> = by.values().copied().collect();
    ensure!(
        active.len() == 1,
        "messages went to both failover consumers: {by:?}"
    );
    let active = *active.first().expect("one");
    let standby = 1 - active;
    close(&*subs[active], f).await?;
    for i in 5..10 {
        send(&*p, OutgoingMessage::new(payload(i)), f.timeout).await?;
    }
    let got = drain(
        &*subs[standby],
        f,
        5,
        "messages after the active consumer closed",
    )
    .await?;
    ensure!(
        sorted(payloads(&got)) == expected(5..10),
        "the standby got {:?}",
        payloads(&got)
    );
    Ok(())
}

async fn key_shared(env: &Env, f: &Features) -> Check {
    let topic = env.topic("keyshared");
    let a = subscribe(env, f, &topic, "s", SubscriptionType::KeyShared).await?;
    let b = subscribe(env, f, &topic, "s", SubscriptionType::KeyShared).await?;
    let p = producer(env, f, &topic).await?;
    const N: usize = 64;
    let consumers = tokio::spawn({
        let (a, b, f) = (a.clone(), b.clone(), f.clone());
        async move { receive_with_two(a, b, &f, N).await }
    });
    for i in 0..N {
        let m = OutgoingMessage::new(payload(i)).with_key(format!("key-{}", i % 8));
        send(&*p, m, f.timeout).await?;
    }
    let got = consumers
        .await
        .map_err(|e| Failure::new(format!("consumers failed: {e}")))??;
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    for (index, messages) in got.iter().enumerate() {
        let mut last: BTreeMap<String, usize> = BTreeMap::new();
        for m in messages {
            let key = m.key.clone().unwrap_or_default();
            let n: usize = text(&m.payload)[2..].parse().unwrap_or(0);
            if let Some(prev) = owner.insert(key.clone(), index) {
                ensure!(prev == index, "key {key} went to both consumers");
            }
            if let Some(prev) = last.insert(key.clone(), n) {
                ensure!(prev < n, "key {key}: message {n} arrived after {prev}");
            }
        }
    }
    Ok(())
}

async fn connection_loss(env: &Env, f: &Features) -> Check {
    let faults = env.faults.clone().expect("checked by the caller");
    let topic = env.topic("connection");
    let sub = subscribe(env, f, &topic, "s", SubscriptionType::Shared).await?;
    let p = producer(env, f, &topic).await?;
    send(&*p, OutgoingMessage::new("before"), f.timeout).await?;
    let held = recv(&*sub, f.timeout, "the message sent before the break").await?;

    faults.break_connection().await;
    let is_transient = ErrorKind::is_transient;
    // Sends fail (some may still slip through while the break takes effect: they count).
    let mut sent = vec![b"before".to_vec()];
    let deadline = Instant::now() + f.timeout;
    let mut n = 0;
    loop {
        ensure!(
            Instant::now() < deadline,
            "sends kept succeeding after the connection broke"
        );
        let m = payload(1000 + n);
        n += 1;
        match tokio::time::timeout(f.timeout, p.send(OutgoingMessage::new(m.clone()))).await {
            Err(_) => break, // stalled: acceptable while cut off
            Ok(Ok(_)) => {
                sent.push(m);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(e)) if is_transient(e.kind()) => break,
            Ok(Err(e)) => fail!("send during the outage failed with kind {}: {e}", e.kind()),
        }
    }
    match tokio::time::timeout(f.quiet_period, sub.receive()).await {
        Err(_) => {}
        Ok(Err(e)) if is_transient(e.kind()) => {}
        Ok(Err(e)) => fail!(
            "receive during the outage failed with kind {}: {e}",
            e.kind()
        ),
        // A message sent just before the cut may still arrive; it must be one we sent.
        Ok(Ok(m)) => ensure!(
            sent.contains(&m.payload),
            "received {:?} during the outage",
            text(&m.payload)
        ),
    }
    faults.heal().await;

    // The same producer works again (possibly after a few transient failures).
    let deadline = Instant::now() + f.timeout;
    loop {
        match tokio::time::timeout(f.timeout, p.send(OutgoingMessage::new("after"))).await {
            Ok(Ok(_)) => break,
            Ok(Err(e)) if is_transient(e.kind()) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => fail!("send after healing failed: {e}"),
            Err(_) => fail!("send after healing stalled for {:?}", f.timeout),
        }
    }
    sent.push(b"after".to_vec());
    // The message held before the break is either still held (ack works) or was returned
    // (ack fails) and comes again.
    let mut outstanding: BTreeSet<Vec<u8>> = sent.iter().cloned().collect();
    if within(f.timeout, "ack after healing", sub.ack(&held.id))
        .await?
        .is_ok()
    {
        outstanding.remove(&held.payload);
    }
    let deadline = Instant::now() + f.timeout;
    while !outstanding.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "never received after healing: {:?}",
            outstanding.iter().map(|p| text(p)).collect::<Vec<_>>()
        );
        match tokio::time::timeout(f.timeout, sub.receive()).await {
            Ok(Ok(m)) => {
                if sub.ack(&m.id).await.is_ok() {
                    outstanding.remove(&m.payload);
                }
            }
            Ok(Err(e)) if is_transient(e.kind()) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => fail!("receive after healing failed: {e}"),
            Err(_) => {}
        }
    }
    Ok(())
}
