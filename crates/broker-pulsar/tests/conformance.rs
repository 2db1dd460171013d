//! backstop's broker-agnostic conformance suite (`backstop-conformance`), unchanged, on a real
//! Apache Pulsar broker (`BACKSTOP_PULSAR_URL`, default `pulsar://127.0.0.1:6650`; start one
//! with `scripts/pulsar start`). Fails loudly when no broker answers; no case is skipped.
//!
//! Features the adapter lacks: `redelivery_count` (the pulsar crate hides the broker's count;
//! the adapter counts only the deliveries its own subscription saw, so a message handed to a
//! new consumer after a close starts at 0 again).
//!
//! The connection-loss case crashes its broker, so it does not use the shared one: it starts a
//! broker of its own (free ports in 67xx/81xx/32xx, run dir `$TMPDIR/backstop-pulsar-conformance-*`)
//! with `scripts/pulsar`, breaks the connection with `kill9`, heals it with
//! `start --keep-data`, and stops that broker when the case ends, also on failure.

mod common;

use std::sync::Arc;
use std::time::Duration;

use backstop_conformance::{unique_prefix, Case, ConnectionFaults, Env, Features, Harness};
use common::owned::OwnedBroker;

struct PulsarHarness;

#[async_trait::async_trait]
impl Harness for PulsarHarness {
    fn features(&self) -> Features {
        Features {
            redelivery_count: false,
            // a real broker on a small machine: generous bounds, longer quiet periods
            timeout: Duration::from_secs(30),
            quiet_period: Duration::from_secs(1),
            ..Features::default()
        }
    }

    async fn env(&self, case: Case) -> Env {
        if case == Case::ConnectionLoss {
            // make sure the shared broker is there too: this binary tests both
            common::print_version_once().await;
            let owned = tokio::task::spawn_blocking(|| OwnedBroker::start("conformance", 10))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            let broker = common::connect_to(&owned.url()).await;
            // The Env owns the broker through the faults: it is stopped when the case ends.
            return Env::new(Arc::new(broker), unique_prefix(case.name()))
                .with_faults(Arc::new(BrokerRestart { owned }));
        }
        let broker = common::connect().await;
        Env::new(Arc::new(broker), unique_prefix(case.name()))
    }
}

/// Connection loss by crashing the case's own broker (`scripts/pulsar kill9`) and healing by
/// restarting it with its data (`scripts/pulsar start --keep-data`).
struct BrokerRestart {
    owned: OwnedBroker,
}

#[async_trait::async_trait]
impl ConnectionFaults for BrokerRestart {
    async fn break_connection(&self) {
        common::say("conformance: kill -9 the own broker");
        self.owned.kill9().await;
    }

    async fn heal(&self) {
        common::say("conformance: restart the own broker with its data");
        self.owned.start_keep_data().await;
    }
}

backstop_conformance::conformance_tests!(PulsarHarness);
