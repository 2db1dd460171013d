//! Deterministic fault-injection simulations of backstop: the real runtime and the in-memory
//! broker as turmoil hosts (and the bare sans-IO machines in a fast event-jump loop), faults
//! drawn from a seed, backstop-testkit's oracle (docs/architecture.md) checked after every step, and a seed runner.
//!
//! | module | its one job |
//! |---|---|
//! | [`rng`] | the seeded random source |
//! | [`scenario`] | what a turmoil seed simulates (swarm-drawn knobs, workload, fault schedule) |
//! | [`trace`] | the hashed, readable record of a run |
//! | [`ledger`] | broker-side bookkeeping and checks |
//! | [`world`] | the state a turmoil run's hosts and driver share |
//! | [`service`] | a service host's software (the real runtime) |
//! | [`net`] | the turmoil tier: one seed on a simulated network |
//! | [`core_sim`] | the pure-core tier: the machines in an event-jump loop |
//! | [`strategies`] | proptest strategies for fault schedules |
//! | [`runner`] | many seeds on worker threads, with a summary |
//! | [`report`] | what a seed reports (pass with stats, or failure with replay command) |
//!
//! ```no_run
//! use backstop_sim::scenario::{Options, Scenario};
//! let opts = Options::default();
//! match backstop_sim::net::run(&Scenario::from_seed(7, &opts), &opts) {
//!     Ok(p) => println!("seed 7 passed, trace hash {:016x}", p.hash),
//!     Err(f) => println!("{f}"),
//! }
//! ```
#![warn(missing_docs)]

pub mod core_sim;
pub mod ledger;
pub mod net;
pub mod report;
pub mod rng;
pub mod runner;
pub mod scenario;
pub mod service;
pub mod strategies;
pub mod trace;
pub mod world;

use std::sync::Once;

/// Installs (once per process) a panic hook that stays quiet about the panics the simulations
/// inject into handlers and task bodies, and reports every other panic as before.
pub fn quiet_injected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !text.contains(service::PANIC_MARKER) {
                previous(info);
            }
        }));
    });
}
