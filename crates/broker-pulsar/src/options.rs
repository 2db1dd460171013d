//! The adapter's settings, their defaults and their validation.

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::TokenSource;
use crate::batching::PulsarBatching;
use crate::oauth2::OAuth2;

/// Where a new subscription starts reading. Only matters the first time a subscription name is
/// used on a topic; afterwards the broker remembers its position.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum InitialPosition {
    /// Only messages published after the subscription was created (the default, as in the
    /// Java client and backstop's in-memory broker).
    #[default]
    Latest,
    /// From the oldest message still in the topic (Pulsar keeps messages only while some
    /// subscription has not acked them, or as long as a retention policy says).
    Earliest,
}

/// Settings of a [`PulsarBroker`](crate::PulsarBroker). Start from [`PulsarOptions::default`]
/// and change what you need with the `with_*` methods; [`PulsarOptions::validate`] runs on
/// connect.
///
/// ```
/// use std::time::Duration;
/// use backstop_pulsar::PulsarOptions;
/// let options = PulsarOptions::default()
///     .with_operation_timeout(Duration::from_secs(5))
///     .with_auth_token("eyJhbGciOi...");
/// assert!(options.validate().is_ok());
/// assert!(PulsarOptions::default().with_operation_timeout(Duration::ZERO).validate().is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PulsarOptions {
    /// Time limit for establishing the first TCP + protocol connection (`connect`). Default 10 s.
    pub connect_timeout: Duration,
    /// Time limit for one broker operation: creating a producer, subscribing, one send (until
    /// the broker's receipt), closing. The pulsar crate would otherwise retry some of these
    /// forever. Default 10 s.
    pub operation_timeout: Duration,
    /// Ping interval on idle broker connections (detects dead peers). Default 30 s.
    pub keep_alive: Duration,
    /// How often a subscription that received nothing checks that its consumer is still alive
    /// (and rebuilds it if not). Default 5 s.
    pub health_check_interval: Duration,
    /// First delay before rebuilding a consumer that died; doubles up to
    /// [`PulsarOptions::reconnect_max_backoff`]. Default 100 ms.
    pub reconnect_min_backoff: Duration,
    /// Longest delay between consumer rebuild attempts. Default 5 s.
    pub reconnect_max_backoff: Duration,
    /// Messages the broker may push to one consumer ahead of `receive` (flow permits; the
    /// pulsar crate buffers up to twice as many). Default 100, smaller than the Java client's
    /// 1000: with slow handlers a big prefetch hoards messages other Shared consumers could
    /// take, and the crate's consumer handles acks behind the deliveries it holds, so a smaller
    /// queue gets acks to the broker sooner.
    pub receiver_queue_size: u32,
    /// Largest payload a send accepts, in bytes; larger ones fail as Rejected without reaching
    /// the broker (which would drop the connection). Default 5 MiB, the broker's default
    /// `maxMessageSize`.
    pub max_message_size: usize,
    /// Where a new subscription starts. Default [`InitialPosition::Latest`].
    pub initial_position: InitialPosition,
    /// A JWT for token authentication (`authenticationToken`), if the broker wants one.
    /// At most one of `auth_token`, `auth_token_file` and `auth_token_env` may be set.
    pub auth_token: Option<String>,
    /// A file holding the JWT, read on connect and again whenever the client authenticates
    /// (each new broker connection, and the broker's challenge when the token it holds
    /// expires): a token rotated in the file is used without a restart.
    pub auth_token_file: Option<PathBuf>,
    /// An environment variable holding the JWT, read like [`PulsarOptions::auth_token_file`].
    pub auth_token_env: Option<String>,
    /// OAuth2 client-credentials authentication instead of a token (feature `oauth2`; see
    /// [`OAuth2`]). Excludes `auth_token`, `auth_token_file` and `auth_token_env`.
    pub oauth2: Option<OAuth2>,
    /// PEM certificates to trust for `pulsar+ssl://` URLs, in addition to the web PKI roots.
    /// The broker's host name is always verified against its certificate.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// A PEM file of certificates to trust, read on connect (added to
    /// [`PulsarOptions::tls_ca_pem`]).
    pub tls_ca_file: Option<PathBuf>,
    /// Turn Nagle's algorithm off (`TCP_NODELAY`) on the broker connections, as the Java client
    /// does; the pulsar crate leaves it on, which delays an ack or a publish written right after
    /// another small write by the broker's delayed TCP acknowledgement (about 40 ms). Linux only
    /// (the adapter finds the crate's sockets in `/proc/self/fd`: TCP sockets to the service
    /// URL's port); elsewhere the crate's behaviour stays. Default `true`.
    pub tcp_nodelay: bool,
    /// Producer-side batching and the producers' memory bound (see [`PulsarBatching`]). Default:
    /// on, 1 ms / 1,000 messages / 128 KiB, 16 MiB pending per producer.
    pub batching: PulsarBatching,
}

impl std::fmt::Debug for PulsarOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("health_check_interval", &self.health_check_interval)
            .field("reconnect_min_backoff", &self.reconnect_min_backoff)
            .field("reconnect_max_backoff", &self.reconnect_max_backoff)
            .field("receiver_queue_size", &self.receiver_queue_size)
            .field("max_message_size", &self.max_message_size)
            .field("initial_position", &self.initial_position)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("auth_token_file", &self.auth_token_file)
            .field("auth_token_env", &self.auth_token_env)
            .field("oauth2", &self.oauth2)
            .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(|p| p.len()))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tcp_nodelay", &self.tcp_nodelay)
            .field("batching", &self.batching)
            .finish()
    }
}

impl Default for PulsarOptions {
    fn default() -> Self {
        PulsarOptions {
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(30),
            health_check_interval: Duration::from_secs(5),
            reconnect_min_backoff: Duration::from_millis(100),
            reconnect_max_backoff: Duration::from_secs(5),
            receiver_queue_size: 100,
            max_message_size: 5 * 1024 * 1024,
            initial_position: InitialPosition::Latest,
            auth_token: None,
            auth_token_file: None,
            auth_token_env: None,
            oauth2: None,
            tls_ca_pem: None,
            tls_ca_file: None,
            tcp_nodelay: true,
            batching: PulsarBatching::default(),
        }
    }
}

/// An invalid setting or URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A duration that must be positive is zero.
    #[error("`{0}` must be greater than zero")]
    ZeroDuration(&'static str),
    /// A count or size that must be positive is zero.
    #[error("`{0}` must be greater than zero")]
    Zero(&'static str),
    /// `reconnect_min_backoff` is larger than `reconnect_max_backoff`.
    #[error("`reconnect_min_backoff` ({min:?}) is larger than `reconnect_max_backoff` ({max:?})")]
    BackoffOrder {
        /// The minimum.
        min: Duration,
        /// The maximum.
        max: Duration,
    },
    /// More than one of `auth_token`, `auth_token_file`, `auth_token_env`, `oauth2` is set.
    #[error("set only one of `auth_token`, `auth_token_file`, `auth_token_env` and `oauth2`")]
    ConflictingAuth,
    /// The OAuth2 settings are unusable (no `oauth2` feature, a bad issuer URL, an unreadable
    /// credentials file). Names the file, never the secret.
    #[error("OAuth2: {0}")]
    OAuth2(String),
    /// The token could not be read (missing file or variable, empty). Names where it was
    /// looked for, never the token.
    #[error("auth token: {0}")]
    Token(String),
    /// The trusted certificates could not be read or hold no PEM certificate.
    #[error("TLS trust certificates: {0}")]
    TlsCa(String),
    /// The service URL is not `pulsar://host[:port]` or `pulsar+ssl://host[:port]`.
    #[error("invalid Pulsar service URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl PulsarOptions {
    /// Sets [`PulsarOptions::connect_timeout`].
    pub fn with_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Sets [`PulsarOptions::operation_timeout`].
    pub fn with_operation_timeout(mut self, d: Duration) -> Self {
        self.operation_timeout = d;
        self
    }
    /// Sets [`PulsarOptions::keep_alive`].
    pub fn with_keep_alive(mut self, d: Duration) -> Self {
        self.keep_alive = d;
        self
    }
    /// Sets [`PulsarOptions::health_check_interval`].
    pub fn with_health_check_interval(mut self, d: Duration) -> Self {
        self.health_check_interval = d;
        self
    }
    /// Sets both reconnect backoff bounds.
    pub fn with_reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min_backoff = min;
        self.reconnect_max_backoff = max;
        self
    }
    /// Sets [`PulsarOptions::receiver_queue_size`].
    pub fn with_receiver_queue_size(mut self, n: u32) -> Self {
        self.receiver_queue_size = n;
        self
    }
    /// Sets [`PulsarOptions::max_message_size`].
    pub fn with_max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }
    /// Sets [`PulsarOptions::initial_position`].
    pub fn with_initial_position(mut self, p: InitialPosition) -> Self {
        self.initial_position = p;
        self
    }
    /// Sets [`PulsarOptions::auth_token`].
    pub fn with_auth_token(mut self, token: impl Into<String>) -> Self {
        self.auth_token = Some(token.into());
        self
    }
    /// Sets [`PulsarOptions::auth_token_file`].
    pub fn with_auth_token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth_token_file = Some(path.into());
        self
    }
    /// Sets [`PulsarOptions::auth_token_env`].
    pub fn with_auth_token_env(mut self, var: impl Into<String>) -> Self {
        self.auth_token_env = Some(var.into());
        self
    }
    /// Sets [`PulsarOptions::tls_ca_pem`].
    pub fn with_tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }
    /// Sets [`PulsarOptions::tls_ca_file`].
    pub fn with_tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// Where the auth token comes from, if one is configured.
    pub fn token_source(&self) -> Option<TokenSource> {
        if let Some(t) = &self.auth_token {
            Some(TokenSource::Static(t.clone()))
        } else if let Some(p) = &self.auth_token_file {
            Some(TokenSource::File(p.clone()))
        } else {
            self.auth_token_env.clone().map(TokenSource::Env)
        }
    }

    /// Every trusted certificate (PEM): [`PulsarOptions::tls_ca_pem`] and the contents of
    /// [`PulsarOptions::tls_ca_file`]; `None` when neither is set.
    pub fn trusted_ca_pem(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let mut pem = self.tls_ca_pem.clone();
        if let Some(path) = &self.tls_ca_file {
            let file = std::fs::read(path).map_err(|e| {
                ConfigError::TlsCa(format!("cannot read `{}`: {e}", path.display()))
            })?;
            let all = pem.get_or_insert_with(Vec::new);
            if !all.is_empty() {
                all.push(b'\n');
            }
            all.extend_from_slice(&file);
        }
        if let Some(p) = &pem {
            let has_cert = p
                .windows(b"-----BEGIN CERTIFICATE-----".len())
                .any(|w| w == b"-----BEGIN CERTIFICATE-----");
            if !has_cert {
                return Err(ConfigError::TlsCa(
                    "no PEM certificate (-----BEGIN CERTIFICATE-----) found".to_string(),
                ));
            }
        }
        Ok(pem)
    }

    /// Sets [`PulsarOptions::tcp_nodelay`].
    pub fn with_tcp_nodelay(mut self, on: bool) -> Self {
        self.tcp_nodelay = on;
        self
    }

    /// Sets [`PulsarOptions::oauth2`].
    pub fn with_oauth2(mut self, oauth2: OAuth2) -> Self {
        self.oauth2 = Some(oauth2);
        self
    }

    /// Sets [`PulsarOptions::batching`].
    pub fn with_batching(mut self, batching: PulsarBatching) -> Self {
        self.batching = batching;
        self
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("operation_timeout", self.operation_timeout),
            ("keep_alive", self.keep_alive),
            ("health_check_interval", self.health_check_interval),
            ("reconnect_min_backoff", self.reconnect_min_backoff),
            ("reconnect_max_backoff", self.reconnect_max_backoff),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        if self.reconnect_min_backoff > self.reconnect_max_backoff {
            return Err(ConfigError::BackoffOrder {
                min: self.reconnect_min_backoff,
                max: self.reconnect_max_backoff,
            });
        }
        if self.receiver_queue_size == 0 {
            return Err(ConfigError::Zero("receiver_queue_size"));
        }
        if self.max_message_size == 0 {
            return Err(ConfigError::Zero("max_message_size"));
        }
        let sources = [
            self.auth_token.is_some(),
            self.auth_token_file.is_some(),
            self.auth_token_env.is_some(),
            self.oauth2.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(ConfigError::ConflictingAuth);
        }
        if self
            .auth_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(ConfigError::Token(
                "the configured auth token is empty".into(),
            ));
        }
        if let Some(o) = &self.oauth2 {
            o.validate()?;
        }
        self.batching.validate()?;
        Ok(())
    }
}

/// Checks a service URL: `pulsar://host[:port]` or `pulsar+ssl://host[:port]`.
///
/// ```
/// use backstop_pulsar::validate_url;
/// assert!(validate_url("pulsar://127.0.0.1:6650").is_ok());
/// assert!(validate_url("http://127.0.0.1:8080").is_err());
/// ```
pub fn validate_url(url: &str) -> Result<(), ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    match parsed.scheme() {
        "pulsar" | "pulsar+ssl" => {}
        other => {
            return Err(invalid(&format!(
                "scheme `{other}` (expected pulsar:// or pulsar+ssl://)"
            )))
        }
    }
    match parsed.host_str() {
        Some(h) if !h.is_empty() => {}
        _ => return Err(invalid("no host")),
    }
    if parsed.path() != "" && parsed.path() != "/" {
        return Err(invalid("a service URL has no path"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(PulsarOptions::default().validate(), Ok(()));
    }

    #[test]
    fn each_bad_setting_is_named() {
        assert_eq!(
            PulsarOptions::default()
                .with_connect_timeout(Duration::ZERO)
                .validate(),
            Err(ConfigError::ZeroDuration("connect_timeout"))
        );
        assert_eq!(
            PulsarOptions::default()
                .with_receiver_queue_size(0)
                .validate(),
            Err(ConfigError::Zero("receiver_queue_size"))
        );
        assert!(matches!(
            PulsarOptions::default()
                .with_reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1))
                .validate(),
            Err(ConfigError::BackoffOrder { .. })
        ));
    }

    #[test]
    fn urls() {
        assert!(validate_url("pulsar://localhost").is_ok());
        assert!(validate_url("pulsar+ssl://broker.example:6651").is_ok());
        assert!(validate_url("pulsar://127.0.0.1:6650/").is_ok());
        for bad in [
            "",
            "localhost:6650",
            "http://x:1",
            "pulsar://",
            "pulsar://h:1/x",
        ] {
            assert!(validate_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_token_source_at_most() {
        let o = PulsarOptions::default()
            .with_auth_token("a")
            .with_auth_token_file("/x");
        assert_eq!(o.validate(), Err(ConfigError::ConflictingAuth));
        assert!(matches!(
            PulsarOptions::default().with_auth_token(" ").validate(),
            Err(ConfigError::Token(_))
        ));
        let o = PulsarOptions::default().with_auth_token_env("V");
        assert_eq!(o.token_source(), Some(TokenSource::Env("V".into())));
    }

    #[test]
    fn ca_file_is_checked() {
        let o = PulsarOptions::default().with_tls_ca_file("/nonexistent/ca.pem");
        assert!(
            matches!(o.trusted_ca_pem(), Err(ConfigError::TlsCa(m)) if m.contains("/nonexistent/ca.pem"))
        );
        let o = PulsarOptions::default().with_tls_ca_pem("not a pem");
        assert!(matches!(o.trusted_ca_pem(), Err(ConfigError::TlsCa(_))));
        assert_eq!(PulsarOptions::default().trusted_ca_pem(), Ok(None));
    }

    #[test]
    fn debug_hides_the_token() {
        let s = format!("{:?}", PulsarOptions::default().with_auth_token("secret"));
        assert!(!s.contains("secret"));
    }
}
