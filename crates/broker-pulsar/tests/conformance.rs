//! backstop's broker-agnostic conformance suite (`backstop-conformance`), unchanged, on a real
//! Apache Pulsar broker (`BACKSTOP_PULSAR_URL`, default `pulsar://127.0.0.1:6650`; start one
//! with `scripts/pulsar start`). Fails loudly when no broker answers.
//!
//! Features the adapter lacks: `redelivery_count` (the pulsar crate hides the broker's count;
//! the adapter counts only the deliveries its own subscription saw, so a message handed to a
//! new consumer after a close starts at 0 again).
//!
//! The connection-loss case kills and restarts the broker, so it only gets its faults when
//! `BACKSTOP_PULSAR_RESTART=1` is set (otherwise the suite skips it as "no connection fault
//! injection"). Run it alone, against a broker you own, with the `scripts/pulsar` environment of
//! that broker:
//!
//! ```text
//! BACKSTOP_PULSAR_RESTART=1 PULSAR_BROKER_PORT=6750 PULSAR_WEB_PORT=8180 PULSAR_BOOKIE_PORT=3281 \
//!   BACKSTOP_PULSAR_RUN=/tmp/bp BACKSTOP_PULSAR_URL=pulsar://127.0.0.1:6750 \
//!   BACKSTOP_PULSAR_ADMIN=http://127.0.0.1:8180 \
//!   cargo test -p backstop-pulsar --test conformance connection_loss -- --nocapture
//! ```

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backstop_conformance::{unique_prefix, Case, ConnectionFaults, Env, Features, Harness};

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
        let broker = common::connect().await;
        let env = Env::new(Arc::new(broker), unique_prefix(case.name()));
        if std::env::var("BACKSTOP_PULSAR_RESTART").as_deref() == Ok("1") {
            env.with_faults(Arc::new(BrokerRestart))
        } else {
            env
        }
    }
}

/// Connection loss by crashing the broker (`scripts/pulsar kill9`) and healing by restarting it
/// with its data (`scripts/pulsar start --keep-data`).
struct BrokerRestart;

impl BrokerRestart {
    async fn ctl(args: &'static [&'static str]) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pulsar");
        let shown = script.display().to_string();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new(script).args(args).status()
        })
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
        assert!(status.success(), "{shown} {args:?} failed: {status}");
    }
}

#[async_trait::async_trait]
impl ConnectionFaults for BrokerRestart {
    async fn break_connection(&self) {
        common::say("conformance: kill -9 the broker");
        Self::ctl(&["kill9"]).await;
    }

    async fn heal(&self) {
        common::say("conformance: restart the broker with its data");
        Self::ctl(&["start", "--keep-data"]).await;
    }
}

backstop_conformance::conformance_tests!(PulsarHarness);
