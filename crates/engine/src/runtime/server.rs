//! The HTTP endpoint that serves `/metrics` (Prometheus text format), `/healthz` (live) and
//! `/readyz` (ready), on loopback by default.
//!
//! - `GET /healthz`: `200 ok` while the process serves HTTP at all (liveness).
//! - `GET /readyz`: `200 ready` when every readiness check of the [`Health`] passes (each gets
//!   [`Health::check_timeout`], run concurrently) and no breaker named with
//!   [`Health::not_ready_while_open`] is open (read from the `circuit_breaker_state` gauge);
//!   otherwise `503` with one line per failing check. Without checks it is always ready.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::{routing::get, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::metrics::Metrics;

/// The default address: loopback only, so metrics are never exposed by accident.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// What `/readyz` checks: named async checks (e.g. "the broker answers") and breakers that make
/// the process not ready while they are open.
///
/// ```
/// use backstop_engine::runtime::Health;
/// let health = Health::new()
///     .check("broker", || async { Ok(()) })
///     .not_ready_while_open("user_updates");
/// assert_eq!(health.names(), vec!["broker".to_string(), "breaker user_updates".to_string()]);
/// ```
#[derive(Clone)]
pub struct Health {
    checks: Vec<(String, CheckFn)>,
    breakers: Vec<String>,
    timeout: Duration,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("checks", &self.names())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// No checks: always ready. Checks time out after 2 s.
    pub fn new() -> Health {
        Health {
            checks: Vec::new(),
            breakers: Vec::new(),
            timeout: Duration::from_secs(2),
        }
    }

    /// Adds a check: ready only while `f()` answers `Ok` within the check timeout.
    pub fn check<F, Fut>(mut self, name: impl Into<String>, f: F) -> Health
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name.into(), Arc::new(move || Box::pin(f()) as CheckFuture)));
        self
    }

    /// Not ready while the breaker `name` is open (`circuit_breaker_state{breaker=name} == 2`).
    pub fn not_ready_while_open(mut self, name: impl Into<String>) -> Health {
        self.breakers.push(name.into());
        self
    }

    /// How long one check may take before it counts as failed (default 2 s).
    pub fn check_timeout(mut self, d: Duration) -> Health {
        self.timeout = d;
        self
    }

    /// The names of the checks, breakers last.
    pub fn names(&self) -> Vec<String> {
        self.checks
            .iter()
            .map(|(n, _)| n.clone())
            .chain(self.breakers.iter().map(|b| format!("breaker {b}")))
            .collect()
    }

    /// Runs every check; `Err` lists the failing ones, one per line.
    pub async fn ready(&self, metrics: &Metrics) -> Result<(), String> {
        let runs = self.checks.iter().map(|(name, f)| {
            let fut = f();
            let timeout = self.timeout;
            async move {
                match tokio::time::timeout(timeout, fut).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(format!("{name}: {e}")),
                    Err(_) => Some(format!("{name}: no answer within {timeout:?}")),
                }
            }
        });
        let mut failing: Vec<String> = futures::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .collect();
        for b in &self.breakers {
            if breaker_open(metrics, b) {
                failing.push(format!("breaker {b}: open"));
            }
        }
        if failing.is_empty() {
            Ok(())
        } else {
            Err(failing.join("\n"))
        }
    }
}

/// Whether the `circuit_breaker_state` gauge of `breaker` says open.
fn breaker_open(metrics: &Metrics, breaker: &str) -> bool {
    metrics
        .registry()
        .gather()
        .iter()
        .filter(|f| f.name() == "circuit_breaker_state")
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "breaker" && l.value() == breaker)
        })
        .any(|m| m.get_gauge().get_value() >= 2.0)
}

/// A running metrics server; dropping it does not stop it, call [`MetricsServer::stop`].
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` (use port 0 for any free port) and serves `GET /metrics`, `GET /healthz` and
    /// a `GET /readyz` without checks (always ready).
    pub async fn start(metrics: Arc<Metrics>, addr: SocketAddr) -> std::io::Result<MetricsServer> {
        MetricsServer::start_with_health(metrics, addr, Health::new()).await
    }

    /// Like [`MetricsServer::start`], with `/readyz` answering from `health`.
    pub async fn start_with_health(
        metrics: Arc<Metrics>,
        addr: SocketAddr,
        health: Health,
    ) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let for_metrics = metrics.clone();
        let app = Router::new()
            .route(
                "/metrics",
                get(move || {
                    let m = for_metrics.clone();
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
            )
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/readyz",
                get(move || {
                    let m = metrics.clone();
                    let h = health.clone();
                    async move {
                        match h.ready(&m).await {
                            Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                            Err(e) => {
                                tracing::warn!(failing = %e.replace('\n', "; "), "not ready");
                                (StatusCode::SERVICE_UNAVAILABLE, format!("not ready\n{e}\n"))
                            }
                        }
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
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body
    }

    #[tokio::test]
    async fn serves_metrics_over_http_on_loopback() {
        let m = Arc::new(Metrics::new());
        m.record_sent("user_updates");
        let server = MetricsServer::start(m, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        assert!(server.addr().ip().is_loopback());
        let body = get(server.addr(), "/metrics").await;
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(
            body.contains("pulsar_messages_sent_total{topic=\"user_updates\"} 1"),
            "{body}"
        );
        let body = get(server.addr(), "/healthz").await;
        assert!(
            body.starts_with("HTTP/1.1 200") && body.ends_with("ok\n"),
            "{body}"
        );
        let body = get(server.addr(), "/readyz").await;
        assert!(
            body.starts_with("HTTP/1.1 200") && body.ends_with("ready\n"),
            "{body}"
        );
        server.stop();
    }

    #[tokio::test]
    async fn readyz_follows_checks_and_named_breakers() {
        use crate::core::{BreakerState, Transition};
        let m = Arc::new(Metrics::new());
        m.register_breaker("downstream");
        let up = Arc::new(AtomicBool::new(true));
        let health = {
            let up = up.clone();
            Health::new()
                .check("broker", move || {
                    let up = up.load(Ordering::SeqCst);
                    async move {
                        if up {
                            Ok(())
                        } else {
                            Err("connection refused".to_string())
                        }
                    }
                })
                .check("slow", || async { Ok(()) })
                .not_ready_while_open("downstream")
        };
        let server =
            MetricsServer::start_with_health(m.clone(), "127.0.0.1:0".parse().unwrap(), health)
                .await
                .unwrap();
        assert!(get(server.addr(), "/readyz")
            .await
            .starts_with("HTTP/1.1 200"));
        up.store(false, Ordering::SeqCst);
        let body = get(server.addr(), "/readyz").await;
        assert!(body.starts_with("HTTP/1.1 503"), "{body}");
        assert!(body.contains("broker: connection refused"), "{body}");
        assert!(get(server.addr(), "/healthz")
            .await
            .starts_with("HTTP/1.1 200"));
        up.store(true, Ordering::SeqCst);
        let open = |from, to| Transition {
            from,
            to,
            failures: 5,
            at: crate::core::Time::ZERO,
        };
        m.record_transition(
            "downstream",
            &open(BreakerState::Closed, BreakerState::Open),
        );
        let body = get(server.addr(), "/readyz").await;
        assert!(
            body.starts_with("HTTP/1.1 503") && body.contains("breaker downstream: open"),
            "{body}"
        );
        m.record_transition(
            "downstream",
            &open(BreakerState::Open, BreakerState::HalfOpen),
        );
        assert!(get(server.addr(), "/readyz")
            .await
            .starts_with("HTTP/1.1 200"));
        server.stop();
    }

    #[tokio::test]
    async fn a_check_that_hangs_fails_after_the_timeout() {
        let h = Health::new()
            .check("hang", std::future::pending)
            .check_timeout(Duration::from_millis(50));
        let e = h.ready(&Metrics::new()).await.unwrap_err();
        assert!(e.contains("hang: no answer within"), "{e}");
    }
}
