//! The adapter against a *secured* Apache Pulsar: TLS with a throwaway CA (host name verified),
//! JWT token authentication and per-namespace authorization, as `scripts/pulsar start --secure`
//! sets it up. Run by `scripts/test-secure` (which starts and stops that broker); run alone:
//!
//! ```sh
//! BACKSTOP_PULSAR_RUN=/tmp/bp-secure scripts/pulsar start --secure
//! BACKSTOP_PULSAR_SECURE_RUN=/tmp/bp-secure BACKSTOP_PULSAR_SECURE_URL=pulsar+ssl://127.0.0.1:6651 \
//!   cargo test -p backstop-pulsar --test secure
//! ```
//!
//! The OAuth2 tests also need `BACKSTOP_OAUTH2_ISSUER` and `BACKSTOP_OAUTH2_CREDENTIALS` (the
//! issuer of `scripts/oauth2-issuer` and a client's key file; scripts/test-secure starts it) and
//! the `oauth2` feature (`--features oauth2`; the target requires it).
//!
//! Never skips: without those variables or the broker every test fails and says why.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backstop::{ConsumerSpec, ErrorKind, Task, TaskSpec};
use backstop_engine::broker::{Broker, OutgoingMessage, SubscriptionSpec};
use backstop_engine::runtime::Backstop;
use backstop_pulsar::{ConnectError, OAuth2, PulsarBroker, PulsarOptions};

// ------------------------------------------------------------------------------------------
// where the secured broker is
// ------------------------------------------------------------------------------------------

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "\n\n*** {name} is not set. These tests need the secured broker of \
             `scripts/pulsar start --secure`; scripts/test-secure starts it and sets \
             BACKSTOP_PULSAR_SECURE_RUN (its run dir) and BACKSTOP_PULSAR_SECURE_URL \
             (pulsar+ssl://127.0.0.1:PORT). They never skip.\n\n"
        )
    })
}

/// The broker's run dir (`BACKSTOP_PULSAR_RUN` of the script).
fn run_dir() -> PathBuf {
    PathBuf::from(env("BACKSTOP_PULSAR_SECURE_RUN"))
}

/// Keys, certificates and tokens the script made.
fn secure_file(name: &str) -> PathBuf {
    let p = run_dir().join("secure").join(name);
    assert!(
        p.exists(),
        "{} is missing: is the broker at BACKSTOP_PULSAR_SECURE_RUN a --secure one?",
        p.display()
    );
    p
}

fn read(name: &str) -> String {
    std::fs::read_to_string(secure_file(name))
        .unwrap()
        .trim()
        .to_string()
}

/// `pulsar+ssl://127.0.0.1:PORT`.
fn tls_url() -> String {
    env("BACKSTOP_PULSAR_SECURE_URL")
}

/// The TLS port of the secured broker.
fn tls_port() -> u16 {
    tls_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("BACKSTOP_PULSAR_SECURE_URL has a port")
}

/// A token for `role` from `scripts/pulsar token`, expiring in `ttl` seconds if given.
fn mint(role: &str, ttl: Option<i64>) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pulsar");
    let mut c = Command::new(&script);
    c.arg("token")
        .arg(role)
        .env("BACKSTOP_PULSAR_RUN", run_dir());
    if let Some(t) = ttl {
        c.arg(t.to_string());
    }
    let out = c.output().expect("run scripts/pulsar token");
    assert!(
        out.status.success(),
        "scripts/pulsar token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{ns:x}-{n}")
}

/// A topic in the namespace `role` may use.
fn topic_of(namespace: &str, name: &str) -> String {
    format!("persistent://public/{namespace}/{}", unique(name))
}

/// Options trusting the throwaway CA, short timeouts.
fn base() -> PulsarOptions {
    PulsarOptions::default()
        .with_connect_timeout(Duration::from_secs(10))
        .with_operation_timeout(Duration::from_secs(10))
        .with_tls_ca_file(secure_file("ca.crt"))
}

async fn connect(url: &str, options: PulsarOptions) -> Result<PulsarBroker, ConnectError> {
    logs(); // every test's output goes through the capturing subscriber
    PulsarBroker::connect(url, options).await
}

async fn connect_ok(options: PulsarOptions) -> PulsarBroker {
    match connect(&tls_url(), options).await {
        Ok(b) => b,
        Err(e) => panic!(
            "\n\n*** the secured broker at {} refused a good client: {e}\n\n",
            tls_url()
        ),
    }
}

/// Publishes one message to `topic` and receives it back.
async fn round_trip(broker: &PulsarBroker, topic: &str) {
    let sub = broker
        .subscribe(&SubscriptionSpec::new(topic, "secure-test"))
        .await
        .unwrap_or_else(|e| panic!("subscribe to {topic}: {e}"));
    let body = unique("hello");
    broker
        .producer(topic)
        .await
        .unwrap_or_else(|e| panic!("producer for {topic}: {e}"))
        .send(OutgoingMessage::new(body.clone().into_bytes()))
        .await
        .unwrap_or_else(|e| panic!("send to {topic}: {e}"));
    let m = tokio::time::timeout(Duration::from_secs(20), sub.receive())
        .await
        .expect("the message arrives within 20 s")
        .unwrap();
    assert_eq!(m.payload, body.as_bytes());
    sub.ack(&m.id).await.unwrap();
    sub.close().await.unwrap();
}

fn auth_err(r: Result<PulsarBroker, ConnectError>, what: &str) -> ConnectError {
    match r {
        Ok(_) => panic!("{what}: the secured broker accepted the client"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Auth, "{what}: {e}");
            assert!(!e.kind().is_retryable());
            e
        }
    }
}

// ------------------------------------------------------------------------------------------
// log capture (one subscriber for the whole binary, at TRACE for backstop)
// ------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything logged in this process so far. Everything backstop logs (TRACE), and the pulsar
/// crate at DEBUG: at TRACE the crate prints its CONNECT frame, token bytes included
/// (docs/security.md says to keep `pulsar=debug` or lower).
fn logs() -> String {
    static CAPTURE: OnceLock<Captured> = OnceLock::new();
    let c = CAPTURE.get_or_init(|| {
        let c = Captured::default();
        let writer = c.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace,pulsar=debug"))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        c
    });
    String::from_utf8_lossy(&c.0.lock().unwrap()).into_owned()
}

// ------------------------------------------------------------------------------------------
// tests
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn tls_with_the_generated_ca_and_a_static_token_round_trips() {
    let broker = connect_ok(base().with_auth_token(read("app.jwt"))).await;
    round_trip(&broker, &topic_of("app", "static")).await;
    // The certificate is also valid for `localhost`: host names are verified, not skipped.
    let url = format!("pulsar+ssl://localhost:{}", tls_port());
    let broker = connect(&url, base().with_auth_token(read("app.jwt")))
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    round_trip(&broker, &topic_of("app", "localhost")).await;
}

#[tokio::test]
async fn token_from_a_file_and_from_the_environment() {
    let broker = connect_ok(base().with_auth_token_file(secure_file("app.jwt"))).await;
    round_trip(&broker, &topic_of("app", "file")).await;

    let var = format!("BACKSTOP_TEST_TOKEN_{}", std::process::id());
    std::env::set_var(&var, read("app.jwt"));
    let broker = connect_ok(base().with_auth_token_env(&var)).await;
    round_trip(&broker, &topic_of("app", "env")).await;
}

#[tokio::test]
async fn a_forged_token_is_auth_at_connect() {
    let e = auth_err(
        connect(&tls_url(), base().with_auth_token(read("forged.jwt"))).await,
        "token signed with another key",
    );
    assert!(
        e.to_string().to_lowercase().contains("authentication"),
        "{e}"
    );
}

#[tokio::test]
async fn an_expired_token_is_auth_at_connect() {
    auth_err(
        connect(&tls_url(), base().with_auth_token(read("expired.jwt"))).await,
        "expired token",
    );
}

#[tokio::test]
async fn no_token_is_auth_at_connect() {
    auth_err(connect(&tls_url(), base()).await, "no token");
}

#[tokio::test]
async fn an_untrusted_ca_is_auth_naming_the_certificate() {
    let options = PulsarOptions::default()
        .with_connect_timeout(Duration::from_secs(10))
        .with_tls_ca_file(secure_file("wrong-ca.crt"))
        .with_auth_token(read("app.jwt"));
    let e = auth_err(connect(&tls_url(), options).await, "wrong CA");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // Only the web PKI roots: the throwaway CA is not trusted either.
    let options = PulsarOptions::default().with_auth_token(read("app.jwt"));
    auth_err(connect(&tls_url(), options).await, "no CA");
}

/// Runs `openssl s_server` on a free port with `args`, returning it and its port once it
/// accepts connections.
async fn s_server(args: &[&std::ffi::OsStr]) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("openssl")
        .args(["s_server", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server (openssl is needed by scripts/pulsar --secure too)");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (server, port);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = server.kill();
    let _ = server.wait();
    panic!("openssl s_server did not come up on port {port}");
}

#[tokio::test]
async fn a_server_that_requires_a_client_certificate_is_auth() {
    // This client cannot present one (the pulsar crate has no client-certificate option, see
    // docs/security.md): a broker with tlsRequireTrustedClientCertOnConnect must come out as
    // a typed Auth error, not as an outage to retry.
    let (cert, key, ca) = (
        secure_file("server.crt"),
        secure_file("server.key"),
        secure_file("ca.crt"),
    );
    let (mut server, port) = s_server(&[
        "-cert".as_ref(),
        cert.as_os_str(),
        "-key".as_ref(),
        key.as_os_str(),
        "-CAfile".as_ref(),
        ca.as_os_str(),
        "-Verify".as_ref(),
        "1".as_ref(),
    ])
    .await;
    let r = connect(
        &format!("pulsar+ssl://127.0.0.1:{port}"),
        base()
            .with_auth_token(read("app.jwt"))
            .with_connect_timeout(Duration::from_secs(5)),
    )
    .await;
    let _ = server.kill();
    let _ = server.wait();
    let e = auth_err(r, "client certificate required");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test]
async fn a_certificate_for_another_host_name_is_auth() {
    // A TLS server (openssl s_server) whose certificate is signed by the trusted CA, but for
    // `wrong.example`: the client must refuse it although the CA is right.
    let (cert, key) = (secure_file("wronghost.crt"), secure_file("wronghost.key"));
    let (mut server, port) = s_server(&[
        "-cert".as_ref(),
        cert.as_os_str(),
        "-key".as_ref(),
        key.as_os_str(),
    ])
    .await;
    let r = connect(
        &format!("pulsar+ssl://127.0.0.1:{port}"),
        base()
            .with_auth_token(read("app.jwt"))
            .with_connect_timeout(Duration::from_secs(5)),
    )
    .await;
    let _ = server.kill();
    let _ = server.wait();
    let e = auth_err(r, "wrong host name");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test]
async fn no_permission_in_another_namespace_is_auth_on_first_use() {
    let broker = connect_ok(base().with_auth_token(read("app.jwt"))).await;
    let forbidden = topic_of("other", "forbidden");
    let Err(e) = broker.producer(&forbidden).await else {
        panic!("producer refused")
    };
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    let Err(e) = broker
        .subscribe(&SubscriptionSpec::new(&forbidden, "s"))
        .await
    else {
        panic!("subscription refused")
    };
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    // The same client still works where it is allowed.
    round_trip(&broker, &topic_of("app", "allowed")).await;
}

#[tokio::test]
async fn a_task_gets_auth_at_once_and_its_breaker_does_not_count_it() {
    let broker = connect_ok(base().with_auth_token(read("app.jwt"))).await;
    let bs = Backstop::builder(Arc::new(broker))
        .ignore_env()
        .build()
        .unwrap();
    let spec = TaskSpec::new(topic_of("other", "task"))
        .max_retries(3)
        .retry_delay(Duration::from_secs(30))
        .build()
        .unwrap();
    let task = Task::new(&bs, spec).unwrap();
    let runs = Arc::new(Mutex::new(0));
    let r = runs.clone();
    let started = tokio::time::Instant::now();
    let Err(f) = task
        .call(42_i64, move |a| {
            *r.lock().unwrap() += 1;
            let a = *a;
            async move { Ok::<i64, backstop::TaskError>(a) }
        })
        .await
    else {
        panic!("publishing without permission fails")
    };
    assert_eq!(f.kind(), Some(ErrorKind::Auth), "{f}");
    assert_eq!(f.attempts, 1, "not retried: {f}");
    assert_eq!(*runs.lock().unwrap(), 1);
    assert_eq!(f.args, 42, "the caller gets its data back");
    // A retry would have waited retry_delay (30 s).
    assert!(started.elapsed() < Duration::from_secs(30), "{f}");
    let (state, failures) = task.breaker();
    assert_eq!(
        failures, 0,
        "the breaker does not count auth failures ({state:?})"
    );
}

#[tokio::test]
async fn a_consumer_without_permission_fails_to_start_naming_the_cause() {
    let broker = connect_ok(base().with_auth_token(read("app.jwt"))).await;
    let bs = Backstop::builder(Arc::new(broker))
        .ignore_env()
        .build()
        .unwrap();
    let spec = ConsumerSpec::new(topic_of("other", "consumer"), "svc");
    let Err(e) = bs
        .spawn_consumer(spec, |_m: serde_json::Value| async { Ok(()) })
        .await
    else {
        panic!("the consumer must not start")
    };
    let text = e.to_string();
    assert!(
        text.contains("auth") && text.to_lowercase().contains("authoriz"),
        "the error names the cause: {text}"
    );
    match e {
        backstop::StartError::Broker(b) => assert_eq!(b.kind(), ErrorKind::Auth),
        other => panic!("expected a broker error, got {other}"),
    }
}

#[tokio::test]
async fn a_rotated_token_file_is_read_again_when_the_token_expires() {
    let dir = std::env::temp_dir().join(unique("backstop-token"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    // Valid for 6 s; the broker checks every 2 s and then challenges the client.
    std::fs::write(&file, mint("app", Some(6))).unwrap();
    let refreshing = connect_ok(base().with_auth_token_file(&file)).await;
    let fixed = connect_ok(base().with_auth_token(mint("app", Some(6)))).await;
    round_trip(&refreshing, &topic_of("app", "before")).await;
    // The rotation: a new token, as a secret manager would write it.
    std::fs::write(&file, mint("app", Some(3600))).unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    round_trip(&refreshing, &topic_of("app", "after")).await;
    // Without the file, the same expiry ends the session: the broker rejects the old token.
    let Err(e) = fixed.producer(&topic_of("app", "expired")).await else {
        panic!("an expired static token must not keep working")
    };
    assert!(
        matches!(
            e.kind(),
            ErrorKind::Auth | ErrorKind::Connection | ErrorKind::Timeout
        ),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn secrets_never_appear_in_debug_output_or_logs() {
    let token = read("app.jwt");
    let options = base().with_auth_token(token.clone());
    let broker = connect_ok(options.clone()).await;
    round_trip(&broker, &topic_of("app", "logs")).await;
    let forged = read("forged.jwt");
    let Err(e) = connect(&tls_url(), base().with_auth_token(forged.clone())).await else {
        panic!("forged token refused")
    };
    let signature = |t: &str| t.rsplit('.').next().unwrap().to_string();
    for (what, text) in [
        ("Debug of PulsarOptions", format!("{options:?}")),
        ("Debug of PulsarBroker", format!("{broker:?}")),
        ("Debug of the error", format!("{e:?}")),
        ("Display of the error", e.to_string()),
        ("logs", logs()),
    ] {
        for secret in [&token, &forged] {
            assert!(!text.contains(secret.as_str()), "{what} shows a token");
            assert!(
                !text.contains(&signature(secret)),
                "{what} shows a token's signature"
            );
        }
        let key = std::fs::read(secure_file("secret.key")).unwrap();
        assert!(!text.contains(&format!("{key:?}")), "{what} shows the key");
    }
    assert!(!logs().is_empty(), "the capture works");
}

// ------------------------------------------------------------------------------------------
// OAuth2 client credentials (scripts/oauth2-issuer: tokens for role `app`, living 5 s)
// ------------------------------------------------------------------------------------------

fn oauth2() -> OAuth2 {
    OAuth2::new(
        env("BACKSTOP_OAUTH2_ISSUER"),
        env("BACKSTOP_OAUTH2_CREDENTIALS"),
    )
}

/// The client secret of the key file scripts/test-secure wrote.
fn client_secret() -> String {
    let text = std::fs::read_to_string(env("BACKSTOP_OAUTH2_CREDENTIALS")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["client_secret"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn oauth2_client_credentials_round_trip_and_tokens_are_refreshed() {
    let broker = connect_ok(base().with_oauth2(oauth2())).await;
    round_trip(&broker, &topic_of("app", "oauth2")).await;
    // The role the issuer put in the token is the one authorized: not in `other`.
    let Err(e) = broker.producer(&topic_of("other", "oauth2")).await else {
        panic!("role app must not produce in public/other")
    };
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    // Tokens live 5 s and the broker checks every 2 s: after 12 s the session still works only
    // if the client fetched new tokens and answered the broker's challenges with them.
    tokio::time::sleep(Duration::from_secs(12)).await;
    round_trip(&broker, &topic_of("app", "oauth2-later")).await;
    let log = std::fs::read_to_string(
        PathBuf::from(env("BACKSTOP_OAUTH2_CREDENTIALS")).with_file_name("issuer.log"),
    )
    .unwrap_or_default();
    assert!(
        log.matches("POST /token").count() >= 2,
        "the issuer saw fewer than two token requests:\n{log}"
    );
}

#[tokio::test]
async fn oauth2_wrong_client_secret_is_auth_at_connect() {
    let dir = std::env::temp_dir().join(unique("backstop-oauth2"));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong = dir.join("wrong.json");
    std::fs::write(
        &wrong,
        r#"{"client_id":"app-svc","client_secret":"not-the-secret"}"#,
    )
    .unwrap();
    let issuer = env("BACKSTOP_OAUTH2_ISSUER");
    let e = auth_err(
        connect(
            &tls_url(),
            base().with_oauth2(OAuth2::new(issuer.clone(), &wrong)),
        )
        .await,
        "wrong client secret",
    );
    assert!(e.to_string().contains("OAuth2"), "{e}");
    assert!(!e.to_string().contains("not-the-secret"), "{e}");
    // An issuer that does not answer: Auth at connect too, naming the discovery.
    let e = auth_err(
        connect(
            &tls_url(),
            base().with_oauth2(OAuth2::new("http://127.0.0.1:9/", &wrong)),
        )
        .await,
        "issuer unreachable",
    );
    assert!(e.to_string().contains("discover"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn oauth2_settings_are_checked_when_the_client_is_built() {
    let e = PulsarBroker::connect(
        &tls_url(),
        base().with_oauth2(OAuth2::new("ftp://example/", "/nonexistent.json")),
    )
    .await
    .expect_err("an ftp issuer is rejected");
    assert!(e.to_string().contains("OAuth2"), "{e}");
    let both = base()
        .with_oauth2(oauth2())
        .with_auth_token(read("app.jwt"));
    let e = PulsarBroker::connect(&tls_url(), both)
        .await
        .expect_err("a token and OAuth2 together are rejected");
    assert!(e.to_string().contains("only one"), "{e}");
}

#[tokio::test]
async fn oauth2_client_secret_never_appears_in_debug_output_or_logs() {
    let options = base().with_oauth2(oauth2());
    let broker = connect_ok(options.clone()).await;
    round_trip(&broker, &topic_of("app", "oauth2-logs")).await;
    let secret = client_secret();
    for (what, text) in [
        ("Debug of PulsarOptions", format!("{options:?}")),
        ("Debug of PulsarBroker", format!("{broker:?}")),
        ("logs", logs()),
    ] {
        assert!(!text.contains(&secret), "{what} shows the client secret");
    }
}
