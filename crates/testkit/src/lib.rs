//! backstop-testkit: simulate your own backstop consumers and tasks under broker faults, with
//! backstop's oracle and your own invariants checked; and the oracle and replay engine behind
//! backstop's own property tests, fuzz targets and simulator.
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//! use std::collections::BTreeMap;
//! use backstop_engine::runtime::{ConsumerSpec, HandlerError};
//! use backstop_testkit::{check_seeds, FaultProfile};
//!
//! #[test]
//! fn each_order_is_charged_once() {
//!     check_seeds(200, |sim| {
//!         let charged = Arc::new(Mutex::new(BTreeMap::<u64, u32>::new()));
//!         let c = charged.clone();
//!         sim.consumer(ConsumerSpec::new("orders", "billing"), move |order: u64| {
//!             let c = c.clone();
//!             async move { *c.lock().unwrap().entry(order).or_insert(0) += 1; Ok::<(), HandlerError>(()) }
//!         });
//!         for order in 0..20u64 { sim.publish_json("orders", &order); }
//!         sim.faults(FaultProfile::none().broker_restarts().lost_acks());
//!         sim.invariant("each order charged at most once", move || {
//!             match charged.lock().unwrap().iter().find(|(_, n)| **n > 1) {
//!                 Some((o, n)) => Err(format!("order {o} charged {n} times")),
//!                 None => Ok(()),
//!             }
//!         });
//!     });
//! }
//! ```
//!
//! | module | its one job |
//! |---|---|
//! | [`Simulation`] & co. (feature `sim`, on by default) | your handlers on a simulated network under faults (docs/testkit.md) |
//! | [`oracle`] | reference models that check the core machines from outside (docs/architecture.md, "The invariants") |
//! | [`replay`] | replays driver op sequences under the oracle, then checks liveness |
//! | [`feed`] | feeds the oracle from what a running runtime's observer reports |
#![warn(missing_docs)]

pub mod feed;
pub mod oracle;
pub mod replay;
#[cfg(feature = "sim")]
mod sim;

#[cfg(feature = "sim")]
pub use sim::{
    check_seeds, run_seeds, Broke, Counts, Dependency, Fault, FaultProfile, FirstViolation, Report,
    Seeds, Service, Simulation,
};
