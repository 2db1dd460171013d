//! The Apache Pulsar adapter for backstop
//!
//! Placeholder: this crate is filled in by its own issue and does nothing yet.
