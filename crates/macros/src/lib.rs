//! The task and consumer attribute macros of backstop
//!
//! Placeholder: this crate is filled in by its own issue and does nothing yet.
