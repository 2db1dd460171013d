//! A readiness probe: does the broker answer this client right now?

use std::time::Duration;

use backstop_engine::broker::BrokerError;

use crate::client::PulsarBroker;
use crate::error::broker_error;

/// Asks the broker where `topic` lives (a topic lookup: it creates nothing) and waits at most
/// `within` for the answer. `Ok` means the client's connection to the broker works; use it as a
/// `/readyz` check:
///
/// ```no_run
/// use std::time::Duration;
/// use backstop_engine::runtime::Health;
/// use backstop_pulsar::{probe, PulsarBroker, PulsarOptions};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = PulsarBroker::connect("pulsar://127.0.0.1:6650", PulsarOptions::default()).await?;
/// let health = Health::new().check("pulsar", move || {
///     let broker = broker.clone();
///     async move {
///         probe(&broker, "user_updates", Duration::from_secs(2)).await.map_err(|e| e.to_string())
///     }
/// });
/// # Ok(()) }
/// ```
pub async fn probe(
    broker: &PulsarBroker,
    topic: &str,
    within: Duration,
) -> Result<(), BrokerError> {
    match tokio::time::timeout(within, broker.client().lookup_topic(topic)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(broker_error(&format!("looking up {topic}"), &e)),
        Err(_) => Err(BrokerError::timeout(format!(
            "looking up {topic}: no answer within {within:?}"
        ))),
    }
}
