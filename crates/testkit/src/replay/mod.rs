//! Replays a sequence of driver operations against a machine under its [`oracle`](crate::oracle),
//! then heals everything and checks that it settles: the shared engine of the property tests,
//! the planted-bug proofs and the fuzz targets.
//!
//! Every op is valid in every state (a `pick` chooses among whatever is running, modulo its
//! count; ops with nothing to act on are skipped), so any sequence, random or fuzzed, is a
//! legal run. A replay stops at the first [`Violation`](crate::oracle::Violation).
//!
//! ```
//! use backstop_testkit::replay::{replay_consumer, ConsumerOp};
//! use backstop_engine::core::{ConsumerConfig, ErrorKind};
//! let cfg = ConsumerConfig::builder().max_parallelism(2).dead_letter(true).build()?;
//! let ops = [
//!     ConsumerOp::Deliver { poison: false },
//!     ConsumerOp::Finish { pick: 0, result: Err(ErrorKind::Timeout) },
//!     ConsumerOp::JumpToTimeout,
//!     ConsumerOp::Deliver { poison: true },
//! ];
//! let report = replay_consumer(cfg, &ops).unwrap();
//! assert_eq!(report.stats.delivered, 2);
//! assert_eq!(report.stats.acked, 2); // the retry succeeded, the poison one was dead-lettered
//! # Ok::<(), backstop_engine::core::ConfigError>(())
//! ```
//!
//! | module | its one job |
//! |---|---|
//! | `consumer` | [`ConsumerOp`] and [`replay_consumer`] |
//! | `producer` | [`ProducerOp`] and [`replay_producer`] |

use backstop_engine::core::Key;

mod consumer;
mod producer;

pub use consumer::{replay_consumer, ConsumerOp, ConsumerReport};
pub use producer::{replay_producer, ProducerOp, ProducerReport};

/// How many extra deliveries (or calls) the settling phase may make to give a half-open
/// breaker its probe.
pub(crate) const SETTLE_EXTRA: u32 = 16;
/// An upper bound on settling steps (a machine that never settles is a violation, not a hang).
pub(crate) const SETTLE_STEPS: u32 = 100_000;

pub(crate) fn take(v: &mut Vec<Key>, pick: u8) -> Option<Key> {
    if v.is_empty() {
        None
    } else {
        Some(v.remove(usize::from(pick) % v.len()))
    }
}

pub(crate) fn peek(v: &[Key], pick: u8) -> Option<Key> {
    (!v.is_empty()).then(|| v[usize::from(pick) % v.len()])
}
