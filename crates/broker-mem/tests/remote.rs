//! `Server` + `RemoteBroker`: reconnection, timeouts, keepalive, idle connections, and what
//! happens to deliveries when a connection ends. In-memory pipes run under paused time;
//! loopback TCP under real time.

use std::sync::Arc;
use std::time::Duration;

use backstop_engine::broker::{
    Broker, BrokerError, OutgoingMessage, SubscriptionSpec, SubscriptionType,
};
use backstop_engine::core::ErrorKind;
use backstop_mem::{ClientConfig, MemBroker, Op, RemoteBroker, Server, ServerConfig};

fn kind<T>(r: Result<T, BrokerError>) -> ErrorKind {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.kind(),
    }
}

/// A client of `server` over in-memory pipes.
fn in_memory_client(server: &Server, config: ClientConfig) -> RemoteBroker {
    let server = server.clone();
    RemoteBroker::with_config(
        move || {
            let stream = server.connect_in_memory();
            async move { Ok(stream) }
        },
        config,
    )
}

/// Polls `cond` (under paused or real time) for up to 5 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_connection_returns_deliveries_and_the_client_reconnects() {
    let broker = MemBroker::new();
    let server = Server::new(Arc::new(broker.clone()));
    let remote = in_memory_client(&server, ClientConfig::default());
    let sub = remote
        .subscribe(&SubscriptionSpec::new("t", "s"))
        .await
        .unwrap();
    let p = remote.producer("t").await.unwrap();
    p.send(OutgoingMessage::new("x")).await.unwrap();
    let m = sub.receive().await.unwrap();
    assert_eq!(broker.unacked_count("t", "s"), 1);

    server.disconnect_all();
    eventually("the server closed the consumer", || {
        broker.unacked_count("t", "s") == 0 && server.connections() == 0
    })
    .await;
    // The delivery went back with the connection: acking it fails with Connection...
    assert_eq!(kind(sub.ack(&m.id).await), ErrorKind::Connection);
    // ...and the same handles reconnect: the message comes again.
    let again = sub.receive().await.unwrap();
    assert_eq!((again.id.clone(), again.redelivery_count), (m.id, 1));
    sub.ack(&again.id).await.unwrap();
    p.send(OutgoingMessage::new("y")).await.unwrap();
    let y = sub.receive().await.unwrap();
    sub.ack(&y.id).await.unwrap();
    assert_eq!(broker.total_backlog(), 0);
    assert!(remote.is_connected().await);
}

#[tokio::test(start_paused = true)]
async fn pending_calls_fail_with_connection_when_the_connection_breaks() {
    let broker = MemBroker::new();
    let server = Server::new(Arc::new(broker.clone()));
    let remote = in_memory_client(&server, ClientConfig::default());
    let sub = remote
        .subscribe(&SubscriptionSpec::new("t", "s"))
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let sub = sub.clone();
        async move { sub.receive().await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    remote.disconnect().await;
    assert_eq!(kind(waiting.await.unwrap()), ErrorKind::Connection);
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_is_found_dead_by_keepalive_and_calls_time_out() {
    // A "server" that accepts and then never answers: a stalled (partitioned) stream.
    let (ends_tx, mut ends_rx) = tokio::sync::mpsc::unbounded_channel();
    let connect = move || {
        let (client, server_end) = tokio::io::duplex(1024);
        let _ = ends_tx.send(server_end); // kept open, never read
        async move { Ok(client) }
    };
    let remote = RemoteBroker::with_config(
        connect.clone(),
        ClientConfig {
            call_timeout: Some(Duration::from_secs(2)),
            receive_timeout: None,
            keepalive: None,
        },
    );
    let t0 = tokio::time::Instant::now();
    assert_eq!(kind(remote.producer("t").await), ErrorKind::Timeout);
    assert_eq!(t0.elapsed(), Duration::from_secs(2));

    let remote = RemoteBroker::with_config(
        connect,
        ClientConfig {
            call_timeout: None,
            receive_timeout: None,
            keepalive: Some(Duration::from_millis(100)),
        },
    );
    let t0 = tokio::time::Instant::now();
    assert_eq!(kind(remote.producer("t").await), ErrorKind::Connection);
    assert_eq!(t0.elapsed(), Duration::from_millis(300));
    assert!(!remote.is_connected().await);
    ends_rx.close();
}

#[tokio::test(start_paused = true)]
async fn receive_timeout_loses_nothing() {
    let broker = MemBroker::new();
    let server = Server::new(Arc::new(broker.clone()));
    let config = ClientConfig {
        receive_timeout: Some(Duration::from_millis(50)),
        ..ClientConfig::default()
    };
    let remote = in_memory_client(&server, config);
    let sub = remote
        .subscribe(&SubscriptionSpec::new("t", "s"))
        .await
        .unwrap();
    for i in 0..5u8 {
        assert_eq!(kind(sub.receive().await), ErrorKind::Timeout);
        broker
            .producer("t")
            .await
            .unwrap()
            .send(OutgoingMessage::new(vec![i]))
            .await
            .unwrap();
        let m = sub.receive().await.unwrap();
        assert_eq!(m.payload, vec![i]);
        sub.ack(&m.id).await.unwrap();
    }
    assert_eq!(broker.total_backlog(), 0);
}

#[tokio::test(start_paused = true)]
async fn idle_clients_are_disconnected_by_the_server() {
    let broker = MemBroker::new();
    let server = Server::with_config(
        Arc::new(broker.clone()),
        ServerConfig {
            idle_timeout: Some(Duration::from_secs(1)),
        },
    );
    // No keepalive: the client goes silent while holding a delivery.
    let silent = ClientConfig {
        keepalive: None,
        ..ClientConfig::default()
    };
    let remote = in_memory_client(&server, silent);
    let sub = remote
        .subscribe(&SubscriptionSpec::new("t", "s"))
        .await
        .unwrap();
    broker
        .producer("t")
        .await
        .unwrap()
        .send(OutgoingMessage::new("x"))
        .await
        .unwrap();
    let m = sub.receive().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(server.connections(), 0);
    assert_eq!(broker.unacked_count("t", "s"), 0, "the delivery went back");
    assert_eq!(kind(sub.ack(&m.id).await), ErrorKind::Connection);

    // With keepalive pings well inside the idle timeout, a client stays connected.
    let pinging = ClientConfig {
        keepalive: Some(Duration::from_millis(250)),
        ..ClientConfig::default()
    };
    let remote = in_memory_client(&server, pinging);
    let sub = remote
        .subscribe(&SubscriptionSpec::new("t", "s"))
        .await
        .unwrap();
    let m = sub.receive().await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(server.connections(), 1);
    sub.ack(&m.id).await.unwrap();
}

/// A subscribe that times out on the client but then succeeds on a slow server leaves no
/// consumer behind: left open on the live connection it would never receive, yet own keys of a
/// Key_Shared subscription (or the active slot of a Failover one) for good.
#[tokio::test(start_paused = true)]
async fn a_subscribe_that_timed_out_leaves_no_consumer_behind() {
    let broker = MemBroker::new();
    let server = Server::new(Arc::new(broker.clone()));
    let config = ClientConfig {
        call_timeout: Some(Duration::from_secs(1)),
        ..ClientConfig::default()
    };
    let remote = in_memory_client(&server, config);
    let spec = SubscriptionSpec::new("t", "s").with_type(SubscriptionType::KeyShared);
    broker
        .faults()
        .set_latency(Op::Subscribe, Duration::from_secs(3));
    assert_eq!(kind(remote.subscribe(&spec).await), ErrorKind::Timeout);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        broker.subscription_stats("t", "s").is_some(),
        "the late subscribe ran"
    );
    eventually("the orphaned consumer closed", || {
        broker.subscription_stats("t", "s").unwrap().consumers == 0
    })
    .await;
    // The connection lives on, and a subscribe in time works.
    broker.faults().set_latency(Op::Subscribe, Duration::ZERO);
    let sub = remote.subscribe(&spec).await.unwrap();
    assert_eq!(broker.subscription_stats("t", "s").unwrap().consumers, 1);
    sub.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dropping_or_closing_remote_handles_closes_their_consumers() {
    let broker = MemBroker::new();
    let server = Server::new(Arc::new(broker.clone()));
    let remote = in_memory_client(&server, ClientConfig::default());
    let spec = SubscriptionSpec::new("t", "s").with_type(SubscriptionType::Exclusive);
    let first = remote.subscribe(&spec).await.unwrap();
    assert_eq!(kind(remote.subscribe(&spec).await), ErrorKind::Rejected);
    drop(first);
    eventually("the dropped consumer closed", || {
        broker.subscription_stats("t", "s").unwrap().consumers == 0
    })
    .await;
    let second = remote.subscribe(&spec).await.unwrap();
    second.close().await.unwrap();
    assert_eq!(broker.subscription_stats("t", "s").unwrap().consumers, 0);
    assert_eq!(kind(second.receive().await), ErrorKind::Fatal);
}

#[tokio::test(start_paused = true)]
async fn broker_errors_keep_their_kind_over_the_wire() {
    let broker = MemBroker::new();
    let server = Server::new(Arc::new(broker.clone()));
    let remote = in_memory_client(&server, ClientConfig::default());
    let p = remote.producer("t").await.unwrap();
    for k in [
        ErrorKind::Timeout,
        ErrorKind::Rejected,
        ErrorKind::Connection,
    ] {
        broker.faults().fail_next(backstop_mem::Op::Send, 1, k);
        assert_eq!(kind(p.send(OutgoingMessage::new("x")).await), k);
    }
    // An injected Connection error is the broker's answer, not a broken connection.
    assert!(remote.is_connected().await);
    let sub = remote
        .subscribe(&SubscriptionSpec::new("t", "s"))
        .await
        .unwrap();
    p.send(OutgoingMessage::new("y")).await.unwrap();
    let m = sub.receive().await.unwrap();
    sub.ack(&m.id).await.unwrap();
    assert_eq!(
        kind(sub.ack(&backstop_engine::broker::MessageId(vec![9])).await),
        ErrorKind::Invalid
    );
}

#[tokio::test]
async fn loopback_tcp_serves_many_clients_at_once() {
    let broker = MemBroker::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = backstop_mem::serve(Arc::new(broker.clone()), listener);
    let server = tokio::spawn(server);
    let mut clients = Vec::new();
    for c in 0..4 {
        let remote = RemoteBroker::new(move || tokio::net::TcpStream::connect(addr));
        clients.push(tokio::spawn(async move {
            let sub = remote
                .subscribe(&SubscriptionSpec::new("t", format!("sub-{c}")))
                .await
                .unwrap();
            sub
        }));
    }
    let mut subs = Vec::new();
    for c in clients {
        subs.push(c.await.unwrap());
    }
    let remote = RemoteBroker::new(move || tokio::net::TcpStream::connect(addr));
    let p = remote.producer("t").await.unwrap();
    for i in 0..20u8 {
        p.send(OutgoingMessage::new(vec![i])).await.unwrap();
    }
    for sub in &subs {
        for i in 0..20u8 {
            let m = sub.receive().await.unwrap();
            assert_eq!(m.payload, vec![i]);
            sub.ack(&m.id).await.unwrap();
        }
    }
    assert_eq!(broker.total_backlog(), 0);
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn resubscribing_waits_for_the_old_exclusive_consumer_to_go() {
    let broker = MemBroker::new();
    let server = Server::new(Arc::new(broker.clone()));
    let remote = in_memory_client(&server, ClientConfig::default());
    let spec = SubscriptionSpec::new("t", "s").with_type(SubscriptionType::Exclusive);
    let sub = remote.subscribe(&spec).await.unwrap();
    remote.disconnect().await;
    eventually("the server closed the consumer", || {
        broker.subscription_stats("t", "s").unwrap().consumers == 0
    })
    .await;
    // Stand-in for an old consumer the server has not let go of yet.
    let lingering = broker.subscribe(&spec).await.unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        lingering.close().await.unwrap();
    });
    broker
        .producer("t")
        .await
        .unwrap()
        .send(OutgoingMessage::new("x"))
        .await
        .unwrap();
    let t0 = tokio::time::Instant::now();
    let m = sub.receive().await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(m.payload, b"x");
    sub.ack(&m.id).await.unwrap();
}
