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
//! The macros apply to functions at module level (they generate a sibling module of the same
//! name), not to functions declared inside another function's body.
//!
//! Underneath the macros is a plain builder API ([`Task`], [`ConsumerSpec`],
//! [`Backstop::spawn_consumer`]) and a sans-IO [`core`] that makes every decision.
#![warn(missing_docs)]

pub use backstop_engine::core::{BreakerConfig, BreakerState, ConfigError, ErrorKind, RetryPolicy};
#[cfg(feature = "protobuf")]
pub use backstop_engine::runtime::Protobuf;
pub use backstop_engine::runtime::{
    classify, global, set_global, try_global, Backstop, BackstopBuilder, ClassifyFn, CodecError,
    ConsumerHandle, ConsumerReport, ConsumerSpec, DeadLetter, DeadLetterRecord, Decoder, Delivery,
    Encoder, FailureReason, HandlerError, Json, MessageOptions, Metrics, MetricsServer, Published,
    Raw, ResultExt, ShutdownReport, StartError, Task, TaskCache, TaskError, TaskFailure, TaskSpec,
    Text, DEFAULT_METRICS_ADDR,
};
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
