//! One conformance suite every backstop broker adapter passes
//!
//! Placeholder: this crate is filled in by its own issue and does nothing yet.
