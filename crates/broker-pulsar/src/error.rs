//! How the pulsar crate's errors map into backstop's [`ErrorKind`]s, and this crate's own
//! errors.
//!
//! The rule: whatever means "the broker could not be reached or answered in time" becomes
//! [`ErrorKind::Connection`] or [`ErrorKind::Timeout`] (retried, and counted by circuit
//! breakers); what the broker refused for good (quota, busy exclusive subscription, fenced
//! producer, too large) becomes [`ErrorKind::Rejected`]; failed authentication or
//! authorization (a wrong or expired token, no permission, a server certificate that does not
//! verify against the trusted CAs or not for the host name) becomes [`ErrorKind::Auth`];
//! broken configuration becomes [`ErrorKind::Fatal`]. Rejected, Auth and Fatal are permanent
//! and never counted by a breaker.

use std::io;

use backstop_engine::broker::BrokerError;
use backstop_engine::core::ErrorKind;
use pulsar::error::{
    AuthenticationError, ConnectionError, ConsumerError, ProducerError, ServiceDiscoveryError,
};
use pulsar::proto::ServerError;

use crate::options::ConfigError;

/// [`PulsarBroker::connect`](crate::PulsarBroker::connect) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The URL or the options are invalid; nothing was attempted.
    #[error("invalid Pulsar configuration: {0}")]
    Config(#[from] ConfigError),
    /// The broker could not be reached (Connection / Timeout) or refused the client.
    #[error("could not connect to Pulsar: {0}")]
    Broker(#[from] BrokerError),
}

impl ConnectError {
    /// The engine kind: [`ErrorKind::Fatal`] for configuration errors, else the broker error's.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConnectError::Config(_) => ErrorKind::Fatal,
            ConnectError::Broker(e) => e.kind(),
        }
    }
}

/// The engine kind of a pulsar crate error.
///
/// ```
/// use backstop_engine::core::ErrorKind;
/// use backstop_pulsar::error_kind;
/// use pulsar::error::{ConnectionError, Error};
/// assert_eq!(error_kind(&Error::Connection(ConnectionError::Disconnected)), ErrorKind::Connection);
/// ```
pub fn error_kind(error: &pulsar::Error) -> ErrorKind {
    match error {
        pulsar::Error::Connection(e) => connection_kind(e),
        pulsar::Error::Consumer(e) => consumer_kind(e),
        pulsar::Error::Producer(e) => producer_kind(e),
        pulsar::Error::ServiceDiscovery(e) => discovery_kind(e),
        pulsar::Error::Authentication(e) => authentication_kind(e),
        // Used by the crate for "tx closed", "DLQ send error", lookups that found nothing: a
        // fresh attempt may succeed.
        pulsar::Error::Custom(_) => ErrorKind::Connection,
        pulsar::Error::Executor => ErrorKind::Fatal,
    }
}

/// The pulsar crate error as a [`BrokerError`], its message prefixed with what was being done.
pub fn broker_error(context: &str, error: &pulsar::Error) -> BrokerError {
    BrokerError::new(error_kind(error), format!("{context}: {error}"))
}

/// The engine kind of a connection-level error.
pub fn connection_kind(error: &ConnectionError) -> ErrorKind {
    match error {
        ConnectionError::Io(e) => io_kind(e),
        // The send queue is full: the broker does not keep up.
        ConnectionError::SlowDown => ErrorKind::Timeout,
        ConnectionError::Disconnected
        | ConnectionError::Canceled
        | ConnectionError::Shutdown
        | ConnectionError::Unexpected(_)
        | ConnectionError::UnexpectedResponse(_)
        | ConnectionError::Decoding(_)
        | ConnectionError::SocketAddr(_) => ErrorKind::Connection,
        ConnectionError::PulsarError(Some(server), _) => server_kind(*server),
        ConnectionError::PulsarError(None, _) => ErrorKind::Connection,
        // A message that cannot be encoded will not encode next time either.
        ConnectionError::Encoding(_) => ErrorKind::Rejected,
        ConnectionError::Authentication(e) => authentication_kind(e),
        ConnectionError::Tls(e) => tls_kind(e),
        // Host name problems are configuration, not weather.
        ConnectionError::DnsName(_) | ConnectionError::NotFound => ErrorKind::Fatal,
    }
}

fn io_kind(error: &io::Error) -> ErrorKind {
    // The TLS handshake's errors come wrapped in an io::Error.
    if let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return tls_kind(tls);
    }
    match error.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::Timeout,
        _ => ErrorKind::Connection,
    }
}

/// A TLS failure: the peer could not be authenticated (its certificate did not verify, is not
/// valid for the host name, or it refused ours) is [`ErrorKind::Auth`]; anything else
/// (protocol mismatch, e.g. TLS to a plaintext port) is configuration, [`ErrorKind::Fatal`].
pub(crate) fn tls_kind(error: &rustls::Error) -> ErrorKind {
    match error {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::AlertReceived(_)
        | rustls::Error::InvalidCertRevocationList(_) => ErrorKind::Auth,
        _ => ErrorKind::Fatal,
    }
}

fn authentication_kind(error: &AuthenticationError) -> ErrorKind {
    match error {
        AuthenticationError::Retriable(_) => ErrorKind::Connection,
        AuthenticationError::Custom(_) => ErrorKind::Auth,
    }
}

fn consumer_kind(error: &ConsumerError) -> ErrorKind {
    match error {
        ConsumerError::Connection(e) => connection_kind(e),
        // Decompression failed or the payload is missing: the message itself is bad.
        ConsumerError::MissingPayload(_) | ConsumerError::Io(_) => ErrorKind::Decode,
        ConsumerError::ChannelFull => ErrorKind::Timeout,
        // The consumer engine stopped (its connection died): a new consumer will work.
        ConsumerError::Closed => ErrorKind::Connection,
        ConsumerError::BuildError => ErrorKind::Fatal,
    }
}

fn producer_kind(error: &ProducerError) -> ErrorKind {
    match error {
        ProducerError::Connection(e) => connection_kind(e),
        // "producer unexpectedly disconnected", "could not re-create the producer": transient
        // unless proven otherwise.
        ProducerError::Custom(_) => ErrorKind::Connection,
        // Compression failed.
        ProducerError::Io(_) => ErrorKind::Rejected,
        ProducerError::PartialSend(parts) => parts
            .iter()
            .find_map(|r| r.as_ref().err())
            .map(error_kind)
            .unwrap_or(ErrorKind::Connection),
        ProducerError::Batch(e) => error_kind(e),
        ProducerError::Fenced => ErrorKind::Rejected,
        // Closed or dropped under us: a re-created producer will work.
        ProducerError::Closed => ErrorKind::Connection,
    }
}

fn discovery_kind(error: &ServiceDiscoveryError) -> ErrorKind {
    match error {
        ServiceDiscoveryError::Connection(e) => connection_kind(e),
        ServiceDiscoveryError::Query(Some(server), _) => server_kind(*server),
        ServiceDiscoveryError::Query(None, _) => ErrorKind::Connection,
        ServiceDiscoveryError::NotFound => ErrorKind::Rejected,
        ServiceDiscoveryError::DnsLookupError
        | ServiceDiscoveryError::Canceled
        | ServiceDiscoveryError::Shutdown
        | ServiceDiscoveryError::Dummy => ErrorKind::Connection,
    }
}

/// The engine kind of an error code the broker answered with.
pub fn server_kind(error: ServerError) -> ErrorKind {
    use ServerError as E;
    match error {
        // Transient on the broker side: topic loading, bookies down, metadata store hiccup.
        E::ServiceNotReady
        | E::MetadataError
        | E::PersistenceError
        | E::ChecksumError
        | E::UnknownError => ErrorKind::Connection,
        // Throttled.
        E::TooManyRequests => ErrorKind::Timeout,
        E::InvalidTopicName => ErrorKind::Invalid,
        E::UnsupportedVersionError => ErrorKind::Fatal,
        // Wrong or expired credentials, no permission: not an outage, never retried.
        E::AuthenticationError | E::AuthorizationError => ErrorKind::Auth,
        // Refused: quota, exclusivity, a topic or subscription that is not there.
        E::ConsumerBusy
        | E::ProducerBusy
        | E::ProducerBlockedQuotaExceededError
        | E::ProducerBlockedQuotaExceededException
        | E::TopicNotFound
        | E::SubscriptionNotFound
        | E::ConsumerNotFound
        | E::TopicTerminatedError
        | E::IncompatibleSchema
        | E::ConsumerAssignError
        | E::NotAllowedError
        | E::ProducerFenced
        | E::TransactionCoordinatorNotFound
        | E::InvalidTxnStatus
        | E::TransactionConflict
        | E::TransactionNotFound => ErrorKind::Rejected,
    }
}

/// Whether the broker answered with an error that passes by itself (topic still loading,
/// throttling, storage hiccup), so that creating a producer or consumer again soon makes sense.
/// An unreachable broker is not one of them: that fails fast, as [`ErrorKind::Connection`].
pub(crate) fn is_transient_answer(error: &pulsar::Error) -> bool {
    use ServerError as E;
    let server = match error {
        pulsar::Error::Connection(ConnectionError::PulsarError(Some(s), _))
        | pulsar::Error::Consumer(ConsumerError::Connection(ConnectionError::PulsarError(
            Some(s),
            _,
        )))
        | pulsar::Error::Producer(ProducerError::Connection(ConnectionError::PulsarError(
            Some(s),
            _,
        )))
        | pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Query(Some(s), _))
        | pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Connection(
            ConnectionError::PulsarError(Some(s), _),
        )) => *s,
        _ => return false,
    };
    matches!(
        server,
        E::ServiceNotReady
            | E::TooManyRequests
            | E::MetadataError
            | E::PersistenceError
            | E::UnknownError
    )
}

/// Whether the error says the connection (or the object on it) is gone, so that a cached
/// producer or consumer should be dropped and built anew.
pub(crate) fn needs_rebuild(kind: ErrorKind) -> bool {
    kind.is_transient()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn conn(e: ConnectionError) -> pulsar::Error {
        pulsar::Error::Connection(e)
    }

    #[test]
    fn connection_loss_and_timeouts_reach_the_breaker() {
        let cases = [
            conn(ConnectionError::Disconnected),
            conn(ConnectionError::Shutdown),
            conn(ConnectionError::Io(io::Error::from(
                io::ErrorKind::ConnectionRefused,
            ))),
            conn(ConnectionError::Io(io::Error::from(
                io::ErrorKind::ConnectionReset,
            ))),
            pulsar::Error::Consumer(ConsumerError::Connection(ConnectionError::Disconnected)),
            pulsar::Error::Producer(ProducerError::Connection(ConnectionError::Disconnected)),
            pulsar::Error::Producer(ProducerError::Closed),
            pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Connection(
                ConnectionError::Disconnected,
            )),
            conn(ConnectionError::PulsarError(
                Some(ServerError::ServiceNotReady),
                None,
            )),
            conn(ConnectionError::PulsarError(
                Some(ServerError::PersistenceError),
                None,
            )),
        ];
        for e in &cases {
            assert_eq!(error_kind(e), ErrorKind::Connection, "{e}");
        }
        let timeouts = [
            conn(ConnectionError::Io(io::Error::from(
                io::ErrorKind::TimedOut,
            ))),
            pulsar::Error::Producer(ProducerError::Connection(ConnectionError::Io(
                io::Error::new(io::ErrorKind::TimedOut, "expired"),
            ))),
            conn(ConnectionError::SlowDown),
            conn(ConnectionError::PulsarError(
                Some(ServerError::TooManyRequests),
                None,
            )),
        ];
        for e in &timeouts {
            assert_eq!(error_kind(e), ErrorKind::Timeout, "{e}");
        }
    }

    #[test]
    fn refusals_are_rejected_and_not_retried() {
        for server in [
            ServerError::ProducerBlockedQuotaExceededError,
            ServerError::ProducerBlockedQuotaExceededException,
            ServerError::ConsumerBusy,
            ServerError::ProducerFenced,
            ServerError::TopicTerminatedError,
        ] {
            let e = conn(ConnectionError::PulsarError(
                Some(server),
                Some("no".into()),
            ));
            assert_eq!(error_kind(&e), ErrorKind::Rejected, "{server:?}");
            assert!(!error_kind(&e).is_retryable());
        }
        assert_eq!(
            error_kind(&pulsar::Error::Producer(ProducerError::Fenced)),
            ErrorKind::Rejected
        );
        assert_eq!(
            server_kind(ServerError::InvalidTopicName),
            ErrorKind::Invalid
        );
    }

    #[test]
    fn auth_failures_are_auth_and_never_transient() {
        let cases = [
            conn(ConnectionError::PulsarError(
                Some(ServerError::AuthenticationError),
                Some("bad token".into()),
            )),
            conn(ConnectionError::PulsarError(
                Some(ServerError::AuthorizationError),
                None,
            )),
            pulsar::Error::ServiceDiscovery(ServiceDiscoveryError::Query(
                Some(ServerError::AuthorizationError),
                None,
            )),
            conn(ConnectionError::Authentication(
                AuthenticationError::Custom("no token file".into()),
            )),
            conn(ConnectionError::Tls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))),
            conn(ConnectionError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
            ))),
        ];
        for e in &cases {
            assert_eq!(error_kind(e), ErrorKind::Auth, "{e}");
            assert!(!error_kind(e).is_retryable());
            assert!(!backstop_engine::core::KindSet::EXPECTED.contains(error_kind(e)));
            assert!(!is_transient_answer(e));
        }
        assert_eq!(
            error_kind(&conn(ConnectionError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::General("x".into()),
            )))),
            ErrorKind::Fatal
        );
    }

    #[test]
    fn nested_batch_and_partial_errors_use_the_inner_kind() {
        let inner = Arc::new(conn(ConnectionError::Disconnected));
        assert_eq!(
            error_kind(&pulsar::Error::Producer(ProducerError::Batch(inner))),
            ErrorKind::Connection
        );
        let partial = pulsar::Error::Producer(ProducerError::PartialSend(vec![Err(
            pulsar::Error::Producer(ProducerError::Fenced),
        )]));
        assert_eq!(error_kind(&partial), ErrorKind::Rejected);
    }

    #[test]
    fn only_broker_answers_are_transient() {
        assert!(is_transient_answer(&conn(ConnectionError::PulsarError(
            Some(ServerError::ServiceNotReady),
            None
        ))));
        assert!(is_transient_answer(&pulsar::Error::ServiceDiscovery(
            ServiceDiscoveryError::Query(Some(ServerError::ServiceNotReady), None)
        )));
        assert!(!is_transient_answer(&conn(ConnectionError::Io(
            io::Error::from(io::ErrorKind::ConnectionRefused)
        ))));
        assert!(!is_transient_answer(&conn(ConnectionError::PulsarError(
            Some(ServerError::ConsumerBusy),
            None
        ))));
    }

    #[test]
    fn decode_and_fatal() {
        assert_eq!(
            error_kind(&pulsar::Error::Consumer(ConsumerError::MissingPayload(
                "x".into()
            ))),
            ErrorKind::Decode
        );
        assert_eq!(error_kind(&pulsar::Error::Executor), ErrorKind::Fatal);
        assert_eq!(
            error_kind(&conn(ConnectionError::NotFound)),
            ErrorKind::Fatal
        );
        let e = broker_error("send to t", &conn(ConnectionError::Disconnected));
        assert_eq!(e.kind(), ErrorKind::Connection);
        assert!(e.message().starts_with("send to t: "));
    }
}
