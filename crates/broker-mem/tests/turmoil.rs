//! The broker as a separate turmoil host: partitions and a host crash between the application
//! and the broker, on turmoil's simulated network and clock.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use backstop_engine::broker::{Broker, OutgoingMessage, SubscriptionSpec};
use backstop_engine::core::ErrorKind;
use backstop_mem::{ClientConfig, MemBroker, RemoteBroker, Server, ServerConfig};

const PORT: u16 = 6650;

/// Adds the broker host. The `MemBroker` lives outside the host, so it is durable: a crashed
/// and bounced host serves the same topics and subscriptions again.
fn broker_host(sim: &mut turmoil::Sim<'_>, broker: &MemBroker) {
    let broker = broker.clone();
    sim.host("broker", move || {
        let broker = broker.clone();
        async move {
            let listener =
                turmoil::net::TcpListener::bind((IpAddr::from(Ipv4Addr::UNSPECIFIED), PORT))
                    .await?;
            let config = ServerConfig {
                idle_timeout: Some(Duration::from_secs(3)),
            };
            Server::with_config(Arc::new(broker), config)
                .serve(listener)
                .await?;
            Ok(())
        }
    });
}

fn client() -> RemoteBroker {
    RemoteBroker::with_config(
        || turmoil::net::TcpStream::connect(("broker", PORT)),
        ClientConfig {
            call_timeout: Some(Duration::from_secs(2)),
            receive_timeout: Some(Duration::from_secs(2)),
            keepalive: Some(Duration::from_millis(500)),
        },
    )
}

/// Sends until the broker confirms, as a retrying producer would; every error must be
/// transient.
async fn send_until_ok(remote: &RemoteBroker, topic: &str, payload: &str) {
    for _ in 0..60 {
        let result = match remote.producer(topic).await {
            Ok(p) => p.send(OutgoingMessage::new(payload)).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                assert!(
                    matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
                    "unexpected error kind: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    panic!("the broker never came back");
}

/// Receives until every payload in `want` came, acking each; returns the redelivery counts.
async fn receive_all(
    sub: &dyn backstop_engine::broker::Subscription,
    mut want: Vec<&str>,
) -> Vec<(String, u32)> {
    let mut got = Vec::new();
    for _ in 0..120 {
        if want.is_empty() {
            return got;
        }
        match sub.receive().await {
            Ok(m) => {
                let text = String::from_utf8(m.payload.clone()).unwrap();
                if sub.ack(&m.id).await.is_ok() {
                    want.retain(|w| *w != text);
                    got.push((text, m.redelivery_count));
                }
            }
            Err(e) => {
                assert!(
                    matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
                    "unexpected error kind: {e}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    panic!("never received {want:?}");
}

#[test]
fn a_partition_fails_calls_and_heals_without_losing_deliveries() -> turmoil::Result {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .build();
    let broker = MemBroker::new();
    broker_host(&mut sim, &broker);
    let oracle = broker.clone();
    sim.client("app", async move {
        let remote = client();
        let sub = remote.subscribe(&SubscriptionSpec::new("t", "s")).await?;
        let p = remote.producer("t").await?;
        p.send(OutgoingMessage::new("held")).await?;
        let held = sub.receive().await?;
        assert_eq!(oracle.unacked_count("t", "s"), 1);

        turmoil::partition("app", "broker");
        let err = p.send(OutgoingMessage::new("during")).await.unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
            "{err}"
        );
        let err = sub.ack(&held.id).await.unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
            "{err}"
        );
        // The server notices the silent client and gives its delivery back.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(oracle.unacked_count("t", "s"), 0);
        turmoil::repair("app", "broker");

        send_until_ok(&remote, "t", "after").await;
        let got = receive_all(&*sub, vec!["held", "after"]).await;
        let held_again = got.iter().find(|(p, _)| p == "held").unwrap();
        assert!(held_again.1 >= 1, "redelivered with count {}", held_again.1);
        assert_eq!(oracle.total_backlog(), 0);
        Ok(())
    });
    sim.run()
}

#[test]
fn a_crashed_broker_host_comes_back_with_its_messages() -> turmoil::Result {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .build();
    let broker = MemBroker::new();
    broker_host(&mut sim, &broker);
    let holding = Rc::new(Cell::new(false));
    let oracle = broker.clone();
    sim.client("app", {
        let holding = holding.clone();
        async move {
            let remote = client();
            let sub = remote.subscribe(&SubscriptionSpec::new("t", "s")).await?;
            let p = remote.producer("t").await?;
            p.send(OutgoingMessage::new("held")).await?;
            p.send(OutgoingMessage::new("waiting")).await?;
            let _held = sub.receive().await?;
            holding.set(true);
            // The host crashes now; the calls below fail until it is back.
            tokio::time::sleep(Duration::from_secs(1)).await;
            send_until_ok(&remote, "t", "after").await;
            let got = receive_all(&*sub, vec!["held", "waiting", "after"]).await;
            assert_eq!(got.len(), 3, "{got:?}");
            assert_eq!(oracle.total_backlog(), 0);
            Ok(())
        }
    });
    while !holding.get() {
        sim.step()?;
    }
    sim.crash("broker");
    // The crashed host's connections are gone: its consumer was closed, the delivery returned.
    assert_eq!(broker.unacked_count("t", "s"), 0);
    assert_eq!(broker.backlog("t", "s"), 2);
    for _ in 0..100 {
        sim.step()?;
    }
    sim.bounce("broker");
    sim.run()
}
