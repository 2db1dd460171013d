//! `/readyz` with a Pulsar readiness check flips with the broker: ready while it runs, not ready
//! (503) after it is stopped, ready again after it is started; `/healthz` stays 200 throughout.
//! Uses a broker of its own (scripts/pulsar on free ports), never the shared one.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backstop_engine::runtime::{Health, Metrics, MetricsServer};
use backstop_pulsar::probe;
use common::owned::OwnedBroker;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn status(addr: SocketAddr, path: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn wait_for(addr: SocketAddr, want: u16, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = status(addr, "/readyz").await;
        if got == want {
            return start.elapsed();
        }
        assert_eq!(status(addr, "/healthz").await, 200, "liveness stays up");
        assert!(
            start.elapsed() < within,
            "/readyz still {got}, wanted {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_flips_with_the_broker_stopped_and_started() {
    let owned = tokio::task::spawn_blocking(|| OwnedBroker::start("health", 40))
        .await
        .unwrap();
    let broker = connect_to(&owned.url()).await;
    let health = {
        let broker = broker.clone();
        Health::new().check("pulsar", move || {
            let broker = broker.clone();
            async move {
                probe(&broker, "health-probe", Duration::from_secs(2))
                    .await
                    .map_err(|e| e.to_string())
            }
        })
    };
    let server = MetricsServer::start_with_health(
        Arc::new(Metrics::new()),
        "127.0.0.1:0".parse().unwrap(),
        health,
    )
    .await
    .unwrap();
    let addr = server.addr();
    wait_for(addr, 200, Duration::from_secs(30)).await;
    owned.stop().await;
    let t = wait_for(addr, 503, Duration::from_secs(60)).await;
    say(&format!(
        "health: /readyz 503 {t:?} after the broker stopped"
    ));
    owned.start_keep_data().await;
    let t = wait_for(addr, 200, Duration::from_secs(120)).await;
    say(&format!(
        "health: /readyz 200 {t:?} after the broker started"
    ));
    server.stop();
}
