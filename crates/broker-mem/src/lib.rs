//! An in-memory broker with fault injection for backstop, also served over TCP
//!
//! Placeholder: this crate is filled in by its own issue and does nothing yet.
