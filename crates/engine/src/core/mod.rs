//! The sans-IO core: plain state machines that take inputs with `now` and emit actions, events
//! and timeouts. No async, no I/O, no clock, no randomness. The oracle that checks these
//! machines from outside lives in `backstop-testkit` (docs/architecture.md).
//!
//! | module | its one job |
//! |---|---|
//! | [`time`](Time) | the driver-supplied clock value |
//! | `error` | the error taxonomy ([`ErrorKind`]) and which kinds are retried |
//! | `config_error` | the typed error for rejected settings |
//! | `topic` | Pulsar's topic name grammar ([`topic_name_problem`]) |
//! | `breaker` | the circuit breaker |
//! | `retry` | attempts and delays |
//! | `consumer` | one subscription's message lifecycle |
//! | `producer` | one task's call lifecycle |
//! | `slab`, `timers` | allocation-free keyed storage and the retry timer queue |
//! | `planted` | deliberate bugs for proving the checks work (`planted-bugs` feature only) |

mod breaker;
mod config_error;
mod consumer;
mod error;
#[cfg(feature = "planted-bugs")]
pub mod planted;
mod producer;
mod retry;
pub(crate) mod settings_text;
mod slab;
mod time;
mod timers;
mod topic;

pub use breaker::{
    BreakerConfig, BreakerConfigBuilder, BreakerState, CircuitBreaker, ForcedState, Permit,
    Refusal, Transition,
};
pub use config_error::{parse_duration, ConfigError};
pub use consumer::{
    ConsumerAction, ConsumerConfig, ConsumerConfigBuilder, ConsumerEvent, ConsumerMachine,
    Delivered, DlqInfo, DlqReason, NackReason, RetryStrategy,
};
pub use error::{ErrorKind, KindSet};
pub use producer::{
    DlqFate, ProducerAction, ProducerConfig, ProducerConfigBuilder, ProducerEvent, ProducerMachine,
    ProducerOutcome,
};
pub use retry::{splitmix64, Backoff, RetryPolicy, RetryPolicyBuilder};
pub use slab::Key;
pub use time::Time;
pub use topic::topic_name_problem;
