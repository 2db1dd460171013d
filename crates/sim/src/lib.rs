//! Deterministic fault-injection simulations of backstop (turmoil, proptest)
//!
//! Placeholder: this crate is filled in by its own issue and does nothing yet.
