//! The suite's failure type and bounded waits.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use backstop_engine::broker::{
    MessageId, OutgoingMessage, Producer, ReceivedMessage, Subscription,
};

use crate::Case;

/// Why a case failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The case's name, once known.
    pub case: Option<&'static str>,
    /// What did not hold.
    pub message: String,
}

impl Failure {
    /// A failure saying `message`.
    pub fn new(message: impl Into<String>) -> Failure {
        Failure {
            case: None,
            message: message.into(),
        }
    }

    pub(crate) fn in_case(mut self, case: Case) -> Failure {
        self.case = Some(case.name());
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.case {
            Some(case) => write!(f, "{case}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Failure {}

/// Fails the case with a formatted message.
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::util::Failure::new(format!($($arg)*)))
    };
}

/// Fails the case unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            fail!($($arg)*);
        }
    };
}

pub(crate) use {ensure, fail};

/// The case's result.
pub(crate) type Check<T = ()> = Result<T, Failure>;

/// Waits for `fut` at most `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = T>,
) -> Check<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Failure::new(format!("timed out after {limit:?} waiting for {what}")))
}

/// Receives one message within `limit`; a broker error fails the case.
pub(crate) async fn recv(
    sub: &dyn Subscription,
    limit: Duration,
    what: &str,
) -> Check<ReceivedMessage> {
    within(limit, what, sub.receive())
        .await?
        .map_err(|e| Failure::new(format!("receive ({what}) failed: {e}")))
}

/// Watches `sub` for `quiet` and fails if a message arrives.
pub(crate) async fn expect_nothing(sub: &dyn Subscription, quiet: Duration, what: &str) -> Check {
    match tokio::time::timeout(quiet, sub.receive()).await {
        Err(_) => Ok(()),
        Ok(Ok(m)) => fail!(
            "{what}: expected no message, got {:?} (redelivery count {})",
            String::from_utf8_lossy(&m.payload),
            m.redelivery_count
        ),
        Ok(Err(e)) => fail!("{what}: receive failed while expecting no message: {e}"),
    }
}

/// Sends within `limit`; a broker error fails the case.
pub(crate) async fn send(
    producer: &dyn Producer,
    message: OutgoingMessage,
    limit: Duration,
) -> Check<MessageId> {
    within(limit, "send", producer.send(message))
        .await?
        .map_err(|e| Failure::new(format!("send to {} failed: {e}", producer.topic())))
}

/// Acks within `limit`; a broker error fails the case.
pub(crate) async fn ack(sub: &dyn Subscription, id: &MessageId, limit: Duration) -> Check {
    within(limit, "ack", sub.ack(id))
        .await?
        .map_err(|e| Failure::new(format!("ack of {id} failed: {e}")))
}

/// The payload `m-<i>`.
pub(crate) fn payload(i: usize) -> Vec<u8> {
    format!("m-{i}").into_bytes()
}

/// A payload as text, for messages.
pub(crate) fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

/// Whether `received` names `topic` (adapters may report a fully qualified name, such as
/// Pulsar's `persistent://tenant/namespace/topic`).
pub(crate) fn same_topic(received: &str, topic: &str) -> bool {
    received == topic || received.ends_with(&format!("/{topic}"))
}
