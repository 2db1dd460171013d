//! backstop's engine: the sans-IO [`core`] that decides every retry, dead-letter, parallelism
//! and circuit-breaker question, and (with the default `runtime` feature) the broker traits and
//! the tokio runtime that drives the core against a broker.
#![warn(missing_docs)]

pub mod core;

#[cfg(feature = "runtime")]
pub mod broker;

#[cfg(feature = "runtime")]
pub mod runtime;
