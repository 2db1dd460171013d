//! Recovery across a broker crash: kills the broker with `scripts/pulsar kill9`, checks that
//! sends fail as Connection/Timeout meanwhile, restarts it with `start --keep-data`, and checks
//! that the same producer and subscription carry on without being re-made.
//!
//! It restarts the broker, so it only runs when asked, against a broker you own:
//!
//! ```text
//! PULSAR_BROKER_PORT=6750 PULSAR_WEB_PORT=8180 PULSAR_BOOKIE_PORT=3281 BACKSTOP_PULSAR_RUN=/tmp/bp \
//!   scripts/pulsar start
//! PULSAR_BROKER_PORT=6750 PULSAR_WEB_PORT=8180 PULSAR_BOOKIE_PORT=3281 BACKSTOP_PULSAR_RUN=/tmp/bp \
//!   BACKSTOP_PULSAR_URL=pulsar://127.0.0.1:6750 BACKSTOP_PULSAR_ADMIN=http://127.0.0.1:8180 \
//!   cargo test -p backstop-pulsar --test restart -- --ignored --nocapture
//! ```

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use backstop_engine::broker::{Broker, OutgoingMessage, SubscriptionSpec};
use backstop_engine::core::ErrorKind;
use common::*;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pulsar")
}

async fn pulsar_ctl(args: &[&str]) {
    let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(script()).args(&owned).status()
    })
    .await
    .expect("join")
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()));
    assert!(status.success(), "scripts/pulsar {args:?} failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kills and restarts the broker: run with --ignored against a broker you own (see the file's doc)"]
async fn producer_and_subscription_survive_a_broker_crash() {
    bounded(Duration::from_secs(400), async {
        let broker = connect().await;
        let topic = unique("restart");
        let mut spec = SubscriptionSpec::new(&topic, "s");
        spec.nack_redelivery_delay = Duration::from_millis(100);
        let sub = broker.subscribe(&spec).await.expect("subscribe");
        let producer = broker.producer(&topic).await.expect("producer");
        producer
            .send(OutgoingMessage::new("before"))
            .await
            .expect("send before");
        let m = recv(&*sub, Duration::from_secs(10)).await;
        sub.ack(&m.id).await.expect("ack");
        producer
            .send(OutgoingMessage::new("unacked"))
            .await
            .expect("send unacked");
        let unacked = recv(&*sub, Duration::from_secs(10)).await;
        assert_eq!(unacked.payload, b"unacked");

        say("restart test: kill -9 the broker");
        pulsar_ctl(&["kill9"]).await;
        let started = Instant::now();
        let err = producer
            .send(OutgoingMessage::new("during"))
            .await
            .expect_err("send while the broker is down");
        say(&format!(
            "restart test: send while down failed after {:?}: {err}",
            started.elapsed()
        ));
        assert!(
            matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "bounded by the operation timeout"
        );
        // the broken producer was dropped: the next send tries a new one and fails fast
        let started = Instant::now();
        let err = producer
            .send(OutgoingMessage::new("during"))
            .await
            .expect_err("second send while the broker is down");
        say(&format!(
            "restart test: next send while down failed after {:?}: {err}",
            started.elapsed()
        ));
        assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "fails fast");

        say("restart test: start --keep-data");
        pulsar_ctl(&["start", "--keep-data"]).await;
        let back = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match producer.send(OutgoingMessage::new("after")).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
                        "{e}"
                    );
                    assert!(
                        back.elapsed() < Duration::from_secs(120),
                        "no recovery: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        say(&format!(
            "restart test: the same producer sent again after {:?} ({attempts} attempts)",
            back.elapsed()
        ));

        // the same subscription gets the new message and the one unacked before the crash
        let mut got = BTreeSet::new();
        while !(got.contains("after") && got.contains("unacked")) {
            let m = recv(&*sub, Duration::from_secs(60)).await;
            sub.ack(&m.id).await.expect("ack after restart");
            got.insert(String::from_utf8(m.payload).expect("utf-8"));
        }
        say(&format!(
            "restart test: the same subscription received {got:?} {:?} after the restart",
            back.elapsed()
        ));
        // the ack of the pre-crash delivery still names a valid message
        sub.ack(&unacked.id).await.expect("ack of a pre-crash id");
        sub.close().await.expect("close");
        let again = broker.subscribe(&spec).await.expect("resubscribe");
        assert_silent(&*again, Duration::from_secs(3)).await;
        again.close().await.expect("close");
    })
    .await;
}
