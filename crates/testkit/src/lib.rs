//! backstop-testkit: check message handling with backstop's own oracle.
//!
//! | module | its one job |
//! |---|---|
//! | [`oracle`] | reference models that check the core machines from outside (docs/architecture.md, "The invariants") |
//! | [`replay`] | replays driver op sequences under the oracle, then checks liveness |
//! | [`feed`] | feeds the oracle from what a running runtime's observer reports |
#![warn(missing_docs)]

pub mod feed;
pub mod oracle;
pub mod replay;
