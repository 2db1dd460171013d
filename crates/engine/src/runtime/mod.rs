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
//! | `codec` | payload codecs: JSON (default), raw bytes, text, protobuf |
//! | `delivery` | what a handler knows about its message besides the body |
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
mod codec;
mod consumer;
mod control;
mod delivery;
mod dlq;
mod dlq_fit;
mod error;
mod metrics;
mod observer;
#[cfg(feature = "otel")]
mod otel;
mod server;
mod spec;
mod task;
mod task_cache;

pub use backstop::{
    global, set_global, try_global, Backstop, BackstopBuilder, ShutdownReport, RECORDS_SUBSCRIPTION,
};
pub use clock::Clock;
#[cfg(feature = "protobuf")]
pub use codec::Protobuf;
pub use codec::{CodecError, Decoder, Encoder, Json, Raw, Text};
pub use consumer::{ConsumerHandle, ConsumerReport, StartError};
pub use control::{ConsumerControl, ConsumerStopped};
pub use delivery::Delivery;
pub use dlq::DeadLetterRecord;
pub use dlq_fit::{
    fit_dead_letter, message_size, sha256_hex, DLQ_MESSAGE_LIMIT, PROPERTY_VALUE_LIMIT,
};
pub use error::{
    classify, ClassifyFn, DeadLetter, FailureReason, HandlerError, ResultExt, TaskError,
    TaskFailure,
};
pub use metrics::Metrics;
pub use observer::Observer;
#[cfg(feature = "otel")]
pub use otel::TRACEPARENT;
pub use server::{Health, MetricsServer, DEFAULT_METRICS_ADDR};
pub use spec::{ConsumerSpec, TaskSpec};
pub use task::{MessageOptions, Published, Task};
pub use task_cache::TaskCache;
