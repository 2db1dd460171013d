//! The HTTP endpoint that serves `/metrics` (Prometheus text format), on loopback by default.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::{routing::get, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::metrics::Metrics;

/// The default address: loopback only, so metrics are never exposed by accident.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

/// A running metrics server; dropping it does not stop it, call [`MetricsServer::stop`].
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` (use port 0 for any free port) and serves `GET /metrics`.
    pub async fn start(metrics: Arc<Metrics>, addr: SocketAddr) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        );
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
        Ok(MetricsServer { addr, task })
    }

    /// Serves `GET /metrics` on [`DEFAULT_METRICS_ADDR`] (`127.0.0.1:9464`): loopback only.
    /// Exposing metrics beyond the host is an explicit choice: [`MetricsServer::start`] with,
    /// e.g., `0.0.0.0:9464`.
    pub async fn start_default(metrics: Arc<Metrics>) -> std::io::Result<MetricsServer> {
        let addr: SocketAddr = DEFAULT_METRICS_ADDR
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        MetricsServer::start(metrics, addr).await
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_metrics_over_http_on_loopback() {
        let m = Arc::new(Metrics::new());
        m.record_sent("user_updates");
        let server = MetricsServer::start(m, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        assert!(server.addr().ip().is_loopback());
        let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(
            body.contains("pulsar_messages_sent_total{topic=\"user_updates\"} 1"),
            "{body}"
        );
        server.stop();
    }
}
