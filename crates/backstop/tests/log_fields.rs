//! The user's own log lines inside a handler and a task body carry backstop's span fields.
//!
//! Alone in its test binary on purpose: it installs a thread-local `tracing` subscriber, and
//! tests running in parallel threads of the same process register and drop dispatchers
//! concurrently, which can leave a callsite's cached interest at "never" for this thread (a
//! flake seen about once in seven runs when this test lived in handler_api.rs).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop::{ConsumerSpec, MessageOptions, Task, TaskError, TaskSpec};

/// Captures formatted log output (the test runtime is single-threaded, so a thread-local
/// subscriber sees the spawned handler tasks too).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_users_log_lines_carry_topic_subscription_message_id_key_and_attempt() {
    let capture = Capture::default();
    let c2 = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || c2.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (bs, _mem) = common::context();
    let handle = bs
        .spawn_consumer(
            ConsumerSpec::new("logged", "svc").build().unwrap(),
            |m: serde_json::Value| async move {
                tracing::info!(user = %m["user"], "user handler line");
                Ok(())
            },
        )
        .await
        .unwrap();
    let task = Task::new(&bs, TaskSpec::new("logged").build().unwrap()).unwrap();
    task.call_with_options((), MessageOptions::new().key("user-3"), |_: &()| async {
        tracing::info!("task body line");
        Ok::<_, TaskError>(serde_json::json!({"user": 3}))
    })
    .await
    .unwrap();
    let text = || String::from_utf8_lossy(&capture.0.lock().unwrap()).to_string();
    common::until(Duration::from_secs(5), || {
        text().contains("user handler line")
    })
    .await;
    handle.shutdown().await;
    let out = text();
    let line = out
        .lines()
        .find(|l| l.contains("user handler line"))
        .unwrap();
    for field in [
        "backstop.handle",
        "topic=logged",
        "subscription=svc",
        "message_id=",
        "key=\"user-3\"",
        "attempt=1",
    ] {
        assert!(line.contains(field), "`{field}` missing in: {line}");
    }
    let body = out.lines().find(|l| l.contains("task body line")).unwrap();
    assert!(
        body.contains("backstop.task") && body.contains("topic=logged"),
        "{body}"
    );
}
