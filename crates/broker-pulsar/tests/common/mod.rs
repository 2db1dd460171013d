//! Shared helpers of the integration tests: where the broker is, connecting (failing loudly when
//! it is not there), unique names, bounded waits.
#![allow(dead_code)]

pub mod owned;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backstop_engine::broker::{ReceivedMessage, Subscription};
use backstop_pulsar::{PulsarBroker, PulsarOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The broker's service URL: `BACKSTOP_PULSAR_URL`, default `pulsar://127.0.0.1:6650`.
pub fn url() -> String {
    std::env::var("BACKSTOP_PULSAR_URL").unwrap_or_else(|_| "pulsar://127.0.0.1:6650".into())
}

/// The broker's admin URL: `BACKSTOP_PULSAR_ADMIN`, default `http://127.0.0.1:8080`.
pub fn admin() -> String {
    std::env::var("BACKSTOP_PULSAR_ADMIN").unwrap_or_else(|_| "http://127.0.0.1:8080".into())
}

/// Writes to the real stderr, past libtest's output capture, so it shows in every run.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn how_to_start() -> String {
    format!(
        "Start one with `scripts/pulsar start` (it listens on pulsar://127.0.0.1:6650 and \
         http://127.0.0.1:8080), or point BACKSTOP_PULSAR_URL (now {}) and BACKSTOP_PULSAR_ADMIN \
         (now {}) at a running broker. These tests never skip.",
        url(),
        admin()
    )
}

/// Options for tests: short timeouts so failures show quickly.
pub fn test_options() -> PulsarOptions {
    PulsarOptions::default()
        .with_connect_timeout(Duration::from_secs(5))
        .with_operation_timeout(Duration::from_secs(10))
}

/// Connects, or panics naming the URL and how to start a broker.
pub async fn connect() -> PulsarBroker {
    connect_with(test_options()).await
}

/// Connects with `options`, or panics naming the URL and how to start a broker.
pub async fn connect_with(options: PulsarOptions) -> PulsarBroker {
    let url = url();
    let broker = match PulsarBroker::connect(&url, options).await {
        Ok(b) => b,
        Err(e) => panic!(
            "\n\n*** Pulsar broker NOT reachable at {url}: {e}\n*** {}\n\n",
            how_to_start()
        ),
    };
    print_version_once().await;
    broker
}

/// Connects to a broker this test process started itself (see [`owned::OwnedBroker`]), or
/// panics.
pub async fn connect_to(url: &str) -> PulsarBroker {
    connect_to_with(url, test_options()).await
}

/// Connects to `url` with `options`, or panics.
pub async fn connect_to_with(url: &str, options: PulsarOptions) -> PulsarBroker {
    match PulsarBroker::connect(url, options).await {
        Ok(b) => b,
        Err(e) => panic!("\n\n*** own Pulsar broker NOT reachable at {url}: {e}\n\n"),
    }
}

static VERSION: OnceLock<String> = OnceLock::new();

/// Prints the broker version (admin API) once per test binary.
pub async fn print_version_once() {
    if VERSION.get().is_some() {
        return;
    }
    let version = match http_get(&admin(), "/admin/v2/brokers/version").await {
        Ok(v) => v,
        Err(e) => panic!(
            "\n\n*** Pulsar admin API NOT reachable at {}: {e}\n*** {}\n\n",
            admin(),
            how_to_start()
        ),
    };
    if VERSION.set(version.clone()).is_ok() {
        say(&format!(
            "backstop-pulsar tests: Apache Pulsar {version} at {} (admin {})",
            url(),
            admin()
        ));
    }
}

/// A tiny HTTP/1.0 GET (loopback admin API only): returns the body of a 200 answer.
pub async fn http_get(base: &str, path: &str) -> Result<String, String> {
    http(base, "GET", path, None).await
}

/// A tiny HTTP/1.0 PUT of a JSON body (loopback admin API only): returns the body of a 2xx
/// answer.
pub async fn http_put(base: &str, path: &str, json: &str) -> Result<String, String> {
    http(base, "PUT", path, Some(json)).await
}

async fn http(base: &str, method: &str, path: &str, json: Option<&str>) -> Result<String, String> {
    let hostport = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("admin URL `{base}` is not http://"))?
        .trim_end_matches('/');
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(hostport)
            .await
            .map_err(|e| e.to_string())?;
        let request = match json {
            None => format!("{method} {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n"),
            Some(body) => format!(
                "{method} {path} HTTP/1.0\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        };
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| "malformed HTTP answer".to_string())?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if !status.starts_with('2') {
            return Err(format!(
                "HTTP answer: {}",
                head.lines().next().unwrap_or("")
            ));
        }
        Ok(body.trim().to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
}

/// A name no other test run uses (topics persist in the broker).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "bp-{prefix}-{nanos}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The next delivery within `within`, panicking otherwise.
pub async fn recv(sub: &dyn Subscription, within: Duration) -> ReceivedMessage {
    match tokio::time::timeout(within, sub.receive()).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => panic!("receive failed: {e}"),
        Err(_) => panic!("no message within {within:?}"),
    }
}

/// Asserts nothing is delivered within `within`.
pub async fn assert_silent(sub: &dyn Subscription, within: Duration) {
    if let Ok(r) = tokio::time::timeout(within, sub.receive()).await {
        panic!("expected no delivery, got {r:?}");
    }
}

/// Runs a test body with an overall time limit.
pub async fn bounded<F: std::future::Future<Output = ()>>(limit: Duration, f: F) {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"));
}

/// A backstop context over `broker`, ignoring the process environment.
pub fn context(broker: PulsarBroker) -> backstop::Backstop {
    backstop::Backstop::builder(std::sync::Arc::new(broker))
        .env_from(std::collections::BTreeMap::new())
        .build()
        .expect("context")
}

/// Polls `cond` every 20 ms until it holds, failing the test after `limit`.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "condition not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `main` of a test binary that kills a copy of itself: run as the child (the environment
/// variable `child_env` is set, its value handed to `child`) or as the parent, which must finish
/// within 300 s. Both on a 2-worker runtime.
pub fn parent_or_child<C, P>(
    name: &str,
    child_env: &str,
    child: impl FnOnce(String) -> C,
    parent: impl FnOnce() -> P,
) where
    C: std::future::Future<Output = ()>,
    P: std::future::Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Ok(arg) = std::env::var(child_env) {
        rt.block_on(child(arg));
        return;
    }
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(300), parent())
            .await
            .unwrap_or_else(|_| panic!("{name} did not finish within 300 s"));
    });
    say(&format!("{name}: ok"));
}
