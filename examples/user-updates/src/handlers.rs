//! The seed's two functions, with a simulated flaky downstream the scenario can steer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use backstop::{HandlerError, TaskError};
use serde::{Deserialize, Serialize};

/// What `update_user` publishes and `process_user_update` consumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserUpdate {
    /// "success".
    pub status: String,
    /// The user.
    pub user_id: i64,
    /// The update.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// While set, the user store answers every call with a connection error (downstream outage).
pub static STORE_DOWN: AtomicBool = AtomicBool::new(false);
/// Handler runs that completed successfully.
pub static PROCESSED: AtomicU64 = AtomicU64::new(0);
/// Distinct users processed.
pub static PROCESSED_USERS: Mutex<BTreeMap<i64, u32>> = Mutex::new(BTreeMap::new());
static BODY_ATTEMPTS: Mutex<BTreeMap<i64, u32>> = Mutex::new(BTreeMap::new());
static HANDLER_ATTEMPTS: Mutex<BTreeMap<i64, u32>> = Mutex::new(BTreeMap::new());

/// Forgets every count and switch: a fresh process (a simulation calls this before each seed).
#[allow(dead_code)]
pub fn reset() {
    STORE_DOWN.store(false, Ordering::SeqCst);
    PROCESSED.store(0, Ordering::SeqCst);
    for m in [&PROCESSED_USERS, &BODY_ATTEMPTS, &HANDLER_ATTEMPTS] {
        m.lock().unwrap().clear();
    }
}

fn bump(map: &Mutex<BTreeMap<i64, u32>>, id: i64) -> u32 {
    let mut m = map.lock().unwrap();
    let n = m.entry(id).or_insert(0);
    *n += 1;
    *n
}

/// Users whose profile service times out on the first try (retried, then fine).
pub fn flaky_profile(user_id: i64) -> bool {
    user_id % 25 == 3
}
/// Users whose profile service never answers (retries exhausted → DLQ).
pub fn broken_profile(user_id: i64) -> bool {
    user_id % 50 == 7
}
/// Users whose handler fails twice before succeeding.
pub fn flaky_handler(user_id: i64) -> bool {
    user_id % 10 == 4
}
/// The user whose handler panics on its first run.
pub fn panicky_handler(user_id: i64) -> bool {
    user_id % 100 == 5
}
/// Users the consumer can never process (→ DLQ after max_retries).
pub fn poisoned_user(user_id: i64) -> bool {
    user_id % 100 == 9
}

/// The seed's producer: validates, "calls a profile service", returns the update to publish.
#[backstop::task(
    topic = "user_updates",
    max_retries = 3,
    retry_delay = "5s",
    dlq_topic = "user_updates_dlq"
)]
pub async fn update_user(user_id: i64, data: serde_json::Value) -> Result<UserUpdate, TaskError> {
    if user_id <= 0 {
        return Err(TaskError::invalid("user_id must be positive integer"));
    }
    let attempt = bump(&BODY_ATTEMPTS, user_id);
    if broken_profile(user_id) {
        // Retryable, but not a connectivity problem: the breaker does not count it.
        return Err(TaskError::retryable(format!(
            "profile service: record of user {user_id} is corrupt"
        )));
    }
    if flaky_profile(user_id) && attempt == 1 {
        return Err(TaskError::timeout(format!(
            "profile service timed out for user {user_id}"
        )));
    }
    Ok(UserUpdate {
        status: "success".into(),
        user_id,
        data,
    })
}

/// The seed's consumer.
#[backstop::consumer(
    topic = "user_updates",
    subscription = "user_service",
    max_parallelism = 5,
    max_retries = 3,
    retry_delay = "1s",
    dlq_topic = "user_updates_consumer_dlq"
)]
pub async fn process_user_update(message: UserUpdate) -> Result<(), HandlerError> {
    let user_id = message.user_id;
    if user_id <= 0 {
        return Err(HandlerError::invalid("Missing user_id in message"));
    }
    if STORE_DOWN.load(Ordering::SeqCst) {
        return Err(HandlerError::connection("user store unreachable"));
    }
    let attempt = bump(&HANDLER_ATTEMPTS, user_id);
    if panicky_handler(user_id) && attempt == 1 {
        panic!("bug in the update path for user {user_id}");
    }
    if flaky_handler(user_id) && attempt <= 2 {
        return Err(HandlerError::retryable(format!(
            "write conflict for user {user_id}"
        )));
    }
    if poisoned_user(user_id) {
        return Err(HandlerError::retryable(format!("user {user_id} is locked")));
    }
    // The real work would go here.
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    PROCESSED.fetch_add(1, Ordering::SeqCst);
    bump(&PROCESSED_USERS, user_id);
    Ok(())
}
