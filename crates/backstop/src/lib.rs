//! Safe-by-default message handling on Apache Pulsar: retries, DLQ, bounded parallelism, circuit breakers, metrics
//!
//! Placeholder: this crate is filled in by its own issue and does nothing yet.
