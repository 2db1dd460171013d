//! backstop makes message handling on Apache Pulsar safe by default: retries, dead-letter
//! queues, bounded consumer parallelism, circuit breakers, Prometheus metrics and structured
//! logs, around producers and consumers, with two attribute macros.
//!
//! ```no_run
//! use backstop::{Backstop, HandlerError, TaskError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! pub struct UserUpdate { pub status: String, pub user_id: i64 }
//!
//! #[backstop::task(topic = "user_updates", max_retries = 3, retry_delay = "5s",
//!                  dlq_topic = "user_updates_dlq")]
//! async fn update_user(user_id: i64, data: serde_json::Value) -> Result<UserUpdate, TaskError> {
//!     if user_id <= 0 {
//!         return Err(TaskError::invalid("user_id must be positive integer"));
//!     }
//!     Ok(UserUpdate { status: "success".into(), user_id })
//! }
//!
//! #[backstop::consumer(topic = "user_updates", subscription = "user_service", max_parallelism = 5)]
//! async fn process_user_update(message: UserUpdate) -> Result<(), HandlerError> {
//!     println!("Processing update for user {}", message.user_id);
//!     Ok(())
//! }
//!
//! # async fn run(broker: std::sync::Arc<dyn backstop::broker::Broker>) -> Result<(), Box<dyn std::error::Error>> {
//! let bs = Backstop::builder(broker).build()?;
//! bs.install(); // the context the macro-generated functions use
//! let consumer = process_user_update::start(&bs).await?;
//! let sent = update_user(42, serde_json::json!({"name": "Ada"})).await?;
//! println!("published {}", sent.id);
//! consumer.shutdown().await;
//! # Ok(()) }
//! # fn main() {}
//! ```
//!
//! A handler for a real service: its delivery, shared state, `?` on ordinary errors, a
//! timeout, and keyed publishing (all generated items take an explicit context):
//!
//! ```no_run
//! # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
//! # pub struct UserUpdate { pub status: String, pub user_id: i64 }
//! # pub struct ProfileClient;
//! # impl ProfileClient {
//! #     async fn connect(_url: &str) -> std::io::Result<ProfileClient> { Ok(ProfileClient) }
//! #     async fn put(&self, _id: i64, _status: &str) -> std::io::Result<()> { Ok(()) }
//! # }
//! use std::sync::Arc;
//! use backstop::{Backstop, Delivery, HandlerError, TaskError};
//!
//! /// Shared by every handler run: a client, a pool, a cache…
//! pub struct AppState {
//!     profiles: ProfileClient,
//! }
//!
//! #[backstop::consumer(topic = "user_updates", subscription = "profile_sync",
//!                      max_parallelism = 5, handler_timeout = "10s", dlq_topic = "profile_sync_dlq")]
//! async fn sync_profile(msg: UserUpdate, delivery: &Delivery, state: &AppState) -> Result<(), HandlerError> {
//!     tracing::info!(user = msg.user_id, id = %delivery.message_id(), attempt = delivery.attempt(),
//!                    redelivered = delivery.redelivery_count(), "syncing profile");
//!     // `?` on an ordinary error: io ConnectionRefused/Reset/… → Connection, TimedOut and
//!     // tokio's Elapsed → Timeout (retried, counted by the breaker), anything else → Handler.
//!     state.profiles.put(msg.user_id, &msg.status).await?;
//!     Ok(())
//! }
//!
//! /// Keyed publishing: all updates of one user share a key, so Key_Shared consumers and
//! /// partitioned topics keep their order.
//! #[backstop::task(topic = "user_updates", key = "user_id", body_timeout = "5s")]
//! async fn update_user_keyed(user_id: i64, status: String) -> Result<UserUpdate, TaskError> {
//!     Ok(UserUpdate { status, user_id })
//! }
//!
//! # async fn run(broker: std::sync::Arc<dyn backstop::broker::Broker>) -> Result<(), Box<dyn std::error::Error>> {
//! let bs = Backstop::builder(broker).build()?;
//! let state = Arc::new(AppState { profiles: ProfileClient::connect("http://profiles").await? });
//! let _sync = sync_profile::start(&bs, state).await?;
//! update_user_keyed::call_with(&bs, 42, "active".into()).await?;
//! bs.run_until_signal(std::time::Duration::from_secs(30)).await; // SIGTERM/ctrl-c, then drain
//! # Ok(()) }
//! # fn main() {}
//! ```
//!
//! The macros apply to functions at module level (they generate a sibling module of the same
//! name), not to functions declared inside another function's body.
//!
//! Underneath the macros is a plain builder API ([`Task`], [`ConsumerSpec`],
//! [`Backstop::spawn_consumer`]) and a sans-IO [`core`] that makes every decision.
#![warn(missing_docs)]

pub use backstop_engine::core::{
    BreakerConfig, BreakerState, ConfigError, ErrorKind, RetryPolicy, RetryStrategy,
};
#[cfg(feature = "protobuf")]
pub use backstop_engine::runtime::Protobuf;
#[cfg(feature = "otel")]
pub use backstop_engine::runtime::TRACEPARENT;
pub use backstop_engine::runtime::{
    classify, global, set_global, try_global, Backstop, BackstopBuilder, ClassifyFn, CodecError,
    ConsumerHandle, ConsumerReport, ConsumerSpec, DeadLetter, DeadLetterRecord, Decoder, Delivery,
    Encoder, FailureReason, HandlerError, Json, MessageOptions, Metrics, MetricsServer, Published,
    Raw, ResultExt, ShutdownReport, StartError, Task, TaskCache, TaskError, TaskFailure, TaskSpec,
    Text, DEFAULT_METRICS_ADDR,
};
pub use backstop_engine::runtime::{ConsumerControl, ConsumerStopped, Health};
pub use backstop_engine::{broker, core};
pub use backstop_macros::{consumer, task};

/// Re-exports the macros' expansions rely on. Not part of the API.
#[doc(hidden)]
pub mod __private {
    #[cfg(feature = "protobuf")]
    pub use prost;
    pub use serde;
    pub use serde_json;
    pub use std::time::Duration;
}
