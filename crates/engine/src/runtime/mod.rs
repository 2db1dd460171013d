//! The async runtime: drives the core machines against a [`Broker`](crate::broker::Broker) with
//! tokio, turns core events into Prometheus metrics and `tracing` events, and shuts down
//! gracefully.
//!
//! | module | its one job |
//! |---|---|
//! | `backstop` | the shared context: broker, metrics, clock, producer cache, defaults |
//! | `spec` | validated task and consumer settings (what the macros fill in) |
//! | `task_cache` | one task per context for macro-generated tasks |
//! | `task` | runs task calls through a [`ProducerMachine`](crate::core::ProducerMachine) |
//! | `consumer` | runs one subscription through a [`ConsumerMachine`](crate::core::ConsumerMachine) |
//! | `observer` | a hook that sees every core action and event (simulations, tests) |
//! | `metrics` | the Prometheus families |
//! | `server` | the `/metrics`, `/healthz` and `/readyz` HTTP endpoint |
//! | `control` | operator control of a consumer (pause, force the breaker) and its operator series |
//! | `dlq` | the dead-letter record |
//! | `dlq_fit` | dead-letter records cut to the broker's size limit (length and SHA-256 kept) |
//! | `error` | handler errors and task failures |
//! | `clock` | tokio time as core time |

mod backstop;
mod clock;
mod consumer;
mod control;
mod dlq;
mod dlq_fit;
mod error;
mod metrics;
mod observer;
mod server;
mod spec;
mod task;
mod task_cache;

pub use backstop::{global, set_global, try_global, Backstop, BackstopBuilder};
pub use clock::Clock;
pub use consumer::{ConsumerHandle, ConsumerReport, StartError};
pub use control::{ConsumerControl, ConsumerStopped};
pub use dlq::DeadLetterRecord;
pub use dlq_fit::{
    fit_dead_letter, message_size, sha256_hex, DLQ_MESSAGE_LIMIT, PROPERTY_VALUE_LIMIT,
};
pub use error::{DeadLetter, FailureReason, HandlerError, TaskError, TaskFailure};
pub use metrics::Metrics;
pub use observer::Observer;
pub use server::{Health, MetricsServer, DEFAULT_METRICS_ADDR};
pub use spec::{ConsumerSpec, TaskSpec};
pub use task::{Published, Task};
pub use task_cache::TaskCache;
