//! Why a connect failed, when the pulsar crate does not say.
//!
//! The crate reports every non-retryable failure of its first connection (a TLS certificate
//! that does not verify, a token the broker refuses, ...) as one opaque
//! "fatal error when connecting to the Pulsar server" and only logs the cause. To give the
//! caller a typed error that names the cause ([`ErrorKind::Auth`] for credentials and
//! certificates), [`diagnose`] repeats the handshake once itself — TCP, TLS with the same trust
//! roots and host name verification, and the protocol's CONNECT with the same token — and
//! reports what failed. It sends nothing else and closes the connection.

use std::time::Duration;

use backstop_engine::broker::BrokerError;
use backstop_engine::core::ErrorKind;
use futures::{SinkExt, StreamExt};
use pulsar::message::proto::{self, base_command::Type as CommandType};
use pulsar::message::{Codec, Message};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use crate::error::server_kind;
use crate::options::PulsarOptions;

/// The text of the crate's opaque connect failure.
const OPAQUE: &str = "fatal error when connecting to the Pulsar server";

/// Whether `error` is the crate's opaque "fatal error when connecting".
pub(crate) fn is_opaque(error: &pulsar::Error) -> bool {
    error.to_string().contains(OPAQUE)
}

/// Repeats the handshake with `url` once (bounded by `timeout`) and returns the failure it
/// finds: a TLS error or the broker's answer to CONNECT. `None` when the handshake succeeds or
/// the broker cannot be reached at all (then the caller's error stands).
pub(crate) async fn diagnose(
    url: &str,
    options: &PulsarOptions,
    timeout: Duration,
) -> Option<BrokerError> {
    tokio::time::timeout(timeout, run(url, options))
        .await
        .ok()
        .flatten()
}

async fn run(url: &str, options: &PulsarOptions) -> Option<BrokerError> {
    let parsed = url::Url::parse(url).ok()?;
    let tls = parsed.scheme() == "pulsar+ssl";
    let host = parsed.host_str()?.trim_matches(['[', ']']).to_string();
    let port = parsed.port().unwrap_or(if tls { 6651 } else { 6650 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .ok()?;
    if !tls {
        return connect_frame(tcp, options, &host, port).await;
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Ok(Some(pem)) = options.trusted_ca_pem() {
        for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(cert);
        }
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.clone()).ok()?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    match connector.connect(name, tcp).await {
        Ok(stream) => connect_frame(stream, options, &host, port).await,
        Err(e) => {
            let kind = crate::error::connection_kind(&pulsar::error::ConnectionError::Io(
                std::io::Error::new(e.kind(), e.to_string()),
            ));
            let tls_kind = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .map(crate::error::tls_kind)
                .unwrap_or(kind);
            Some(BrokerError::new(
                tls_kind,
                format!("TLS handshake with {host}:{port} failed: {e}"),
            ))
        }
    }
}

/// Sends CONNECT (with the token, if any) and reads the broker's answer.
async fn connect_frame<S>(
    stream: S,
    options: &PulsarOptions,
    host: &str,
    port: u16,
) -> Option<BrokerError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (auth_method_name, auth_data) = match options.token_source() {
        Some(source) => match source.read() {
            Ok(token) => (Some("token".to_string()), Some(token.into_bytes())),
            Err(reason) => return Some(BrokerError::new(ErrorKind::Auth, reason)),
        },
        None => (None, None),
    };
    let mut framed = Framed::new(stream, Codec);
    let connect = Message {
        command: proto::BaseCommand {
            r#type: CommandType::Connect as i32,
            connect: Some(proto::CommandConnect {
                auth_method_name,
                auth_data,
                client_version: "backstop-diagnose".to_string(),
                protocol_version: Some(12),
                ..Default::default()
            }),
            ..Default::default()
        },
        payload: None,
    };
    framed.send(connect).await.ok()?;
    let answer = match framed.next().await? {
        Ok(answer) => answer,
        // E.g. a TLS 1.3 server that wants a client certificate says so only now, with an
        // alert, after the client considered the handshake done.
        Err(e) => {
            return Some(BrokerError::new(
                crate::error::connection_kind(&e),
                format!("the connection to {host}:{port} failed after the TLS handshake: {e}"),
            ))
        }
    };
    let error = answer.command.error?;
    let server =
        proto::ServerError::try_from(error.error).unwrap_or(proto::ServerError::UnknownError);
    Some(BrokerError::new(
        server_kind(server),
        format!(
            "the broker at {host}:{port} refused the connection: {server:?}: {}",
            error.message
        ),
    ))
}
