//! [`PulsarBroker`]: the pulsar client, its settings, and the per-topic producer cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backstop_engine::broker::{Broker, BrokerError, Producer, Subscription, SubscriptionSpec};
use backstop_engine::core::ErrorKind;
use pulsar::{ConnectionRetryOptions, OperationRetryOptions, Pulsar, TokioExecutor};

use crate::auth::TokenProvider;
use crate::diagnose;

use crate::error::{broker_error, ConnectError};
use crate::nodelay;
use crate::options::{validate_url, ConfigError, PulsarOptions};
use crate::producer::PulsarProducer;
use crate::subscription::PulsarSubscription;

/// What producers and subscriptions share.
pub(crate) struct ClientInner {
    pub(crate) client: Pulsar<TokioExecutor>,
    pub(crate) options: PulsarOptions,
    pub(crate) url: String,
    /// The service port whose connections get `TCP_NODELAY` (None: left as the crate made them).
    nodelay_port: Option<u16>,
}

impl ClientInner {
    /// Sets `TCP_NODELAY` on broker connections made since the last time (see `nodelay`).
    pub(crate) fn refresh_nodelay(&self) {
        if let Some(port) = self.nodelay_port {
            nodelay::apply(port);
        }
    }
}

/// A connection to a Pulsar cluster, implementing the engine's [`Broker`].
///
/// - Producers are cached per topic (one pulsar producer per topic, shared by all callers) and
///   never batch, so every message is its own broker entry and is acked on its own.
/// - Every broker operation is bounded by [`PulsarOptions::operation_timeout`]; connection
///   loss and timeouts come out as [`ErrorKind::Connection`] / [`ErrorKind::Timeout`].
/// - After a broker restart, producers are re-created on the next send and subscriptions
///   rebuild their consumer in the background.
///
/// ```no_run
/// use backstop_engine::broker::{Broker, OutgoingMessage, SubscriptionSpec};
/// use backstop_pulsar::{PulsarBroker, PulsarOptions};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = PulsarBroker::connect("pulsar://127.0.0.1:6650", PulsarOptions::default()).await?;
/// let producer = broker.producer("user_updates").await?;
/// producer.send(OutgoingMessage::new(b"{}".to_vec()).with_key("42")).await?;
/// let subscription = broker.subscribe(&SubscriptionSpec::new("user_updates", "user_service")).await?;
/// let message = subscription.receive().await?;
/// subscription.ack(&message.id).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PulsarBroker {
    inner: Arc<ClientInner>,
    producers: Arc<Mutex<HashMap<String, Arc<PulsarProducer>>>>,
}

impl std::fmt::Debug for PulsarBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarBroker")
            .field("url", &self.inner.url)
            .field("options", &self.inner.options)
            .finish()
    }
}

impl PulsarBroker {
    /// Connects to `url` (`pulsar://host:port` or `pulsar+ssl://host:port`), waiting at most
    /// [`PulsarOptions::connect_timeout`].
    ///
    /// Fails with [`ConnectError::Config`] for a bad URL or bad options, an unreadable token or
    /// CA file (nothing attempted) and [`ConnectError::Broker`] when the broker cannot be
    /// reached ([`ErrorKind::Connection`] or [`ErrorKind::Timeout`]) or refuses the client:
    /// a wrong or expired token, a certificate that does not verify or a host name it is not
    /// valid for are [`ErrorKind::Auth`] (permanent, never counted by a breaker).
    pub async fn connect(url: &str, options: PulsarOptions) -> Result<PulsarBroker, ConnectError> {
        validate_url(url)?;
        options.validate()?;
        let mut builder = Pulsar::builder(url, TokioExecutor)
            .with_connection_retry_options(ConnectionRetryOptions {
                min_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                // Few quick retries: the adapter's own loops (bounded by the operation timeout)
                // and the consumer rebuild backoff do the rest, and never forever.
                max_retries: 2,
                connection_timeout: options.connect_timeout.min(options.operation_timeout),
                keep_alive: options.keep_alive,
                ..ConnectionRetryOptions::default()
            })
            .with_operation_retry_options(OperationRetryOptions {
                operation_timeout: options.operation_timeout,
                retry_delay: Duration::from_millis(100),
                // No retries inside the crate: it would retry ConsumerBusy (a second exclusive
                // consumer) and ServiceNotReady forever by default. The adapter retries
                // transient errors itself, within the operation timeout.
                max_retries: Some(0),
            });
        if let Some(source) = options.token_source() {
            // Read once here, so a missing file or variable is a configuration error before
            // anything is sent; the provider reads it again on every authentication.
            source.read().map_err(ConfigError::Token)?;
            if url.starts_with("pulsar://") {
                tracing::warn!(
                    url,
                    "an auth token is sent over a plaintext connection; use pulsar+ssl://"
                );
            }
            builder = builder.with_auth_provider(Box::new(TokenProvider::new(source)));
        }
        #[cfg(feature = "oauth2")]
        if let Some(oauth2) = &options.oauth2 {
            builder =
                builder.with_auth_provider(oauth2_provider(oauth2, options.connect_timeout).await?);
        }
        if let Some(pem) = options.trusted_ca_pem()? {
            builder = builder.with_certificate_chain(pem);
        }
        // Building is local (no shared connection manager yet), so cancelling it is safe.
        let client = match tokio::time::timeout(options.connect_timeout, builder.build()).await {
            Err(_) => {
                return Err(ConnectError::Broker(BrokerError::timeout(format!(
                    "connecting to {url}: no answer within {:?}",
                    options.connect_timeout
                ))))
            }
            Ok(Err(e)) => {
                // The crate hides TLS and authentication failures behind one opaque error:
                // find the cause by repeating the handshake once (see `diagnose`).
                if diagnose::is_opaque(&e) {
                    if let Some(cause) =
                        diagnose::diagnose(url, &options, options.connect_timeout).await
                    {
                        return Err(ConnectError::Broker(BrokerError::new(
                            cause.kind(),
                            format!("connecting to {url}: {}", cause.message()),
                        )));
                    }
                }
                return Err(ConnectError::Broker(broker_error(
                    &format!("connecting to {url}"),
                    &e,
                )));
            }
            Ok(Ok(client)) => client,
        };
        let nodelay_port = if options.tcp_nodelay {
            nodelay::service_port(url)
        } else {
            None
        };
        let inner = Arc::new(ClientInner {
            client,
            options,
            url: url.to_string(),
            nodelay_port,
        });
        if let Some(port) = nodelay_port {
            inner.refresh_nodelay();
            nodelay::keep_applying(port, Arc::downgrade(&inner));
        }
        Ok(PulsarBroker {
            inner,
            producers: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The service URL.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The settings in use.
    pub fn options(&self) -> &PulsarOptions {
        &self.inner.options
    }

    /// The underlying pulsar crate client, for what the engine traits do not cover.
    pub fn client(&self) -> &Pulsar<TokioExecutor> {
        &self.inner.client
    }

    /// The cached producer for `topic` (created on first use), as its concrete type.
    pub async fn pulsar_producer(&self, topic: &str) -> Result<Arc<PulsarProducer>, BrokerError> {
        if topic.trim().is_empty() {
            return Err(BrokerError::new(ErrorKind::Invalid, "empty topic name"));
        }
        let producer = {
            let mut cache = self
                .producers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            cache
                .entry(topic.to_string())
                .or_insert_with(|| Arc::new(PulsarProducer::new(self.inner.clone(), topic)))
                .clone()
        };
        producer.ensure_ready().await?;
        Ok(producer)
    }

    /// Subscribes, returning the concrete subscription type.
    pub async fn pulsar_subscribe(
        &self,
        spec: &SubscriptionSpec,
    ) -> Result<PulsarSubscription, BrokerError> {
        PulsarSubscription::start(self.inner.clone(), spec).await
    }
}

#[async_trait]
impl Broker for PulsarBroker {
    async fn producer(&self, topic: &str) -> Result<Arc<dyn Producer>, BrokerError> {
        Ok(self.pulsar_producer(topic).await?)
    }

    async fn subscribe(
        &self,
        spec: &SubscriptionSpec,
    ) -> Result<Arc<dyn Subscription>, BrokerError> {
        Ok(Arc::new(self.pulsar_subscribe(spec).await?))
    }

    /// Creates the durable subscription (Exclusive, as the `backstop` CLI reads it) by
    /// subscribing once and closing: from then on the broker keeps every message written to
    /// `topic` until that subscription acks it.
    async fn retain(&self, topic: &str, subscription: &str) -> Result<(), BrokerError> {
        let spec = SubscriptionSpec::new(topic, subscription)
            .with_type(backstop_engine::broker::SubscriptionType::Exclusive);
        let sub = self.pulsar_subscribe(&spec).await?;
        sub.close().await
    }
}

/// The OAuth2 provider, with its first token already fetched: a bad secret or an unreachable
/// issuer fails here with the identity provider's own answer (the broker would only say
/// "Failed to authenticate"), and the crate starts with the cached token (no second request).
#[cfg(feature = "oauth2")]
async fn oauth2_provider(
    oauth2: &crate::oauth2::OAuth2,
    timeout: Duration,
) -> Result<Box<dyn pulsar::authentication::Authentication>, ConnectError> {
    let mut provider = oauth2.provider();
    let first = async {
        provider.initialize().await?;
        provider.auth_data().await
    };
    match tokio::time::timeout(timeout, first).await {
        Err(_) => Err(ConnectError::Broker(BrokerError::timeout(format!(
            "OAuth2: no token from the issuer `{}` within {timeout:?}",
            oauth2.issuer_url
        )))),
        Ok(Err(e)) => Err(ConnectError::Broker(BrokerError::new(
            ErrorKind::Auth,
            format!("OAuth2: {e}"),
        ))),
        Ok(Ok(_)) => Ok(provider),
    }
}
