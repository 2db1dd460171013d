//! The README's "Simulate your own handlers" snippet, verbatim (plus two `rustfmt::skip`s that keep
//! it as printed), so that it compiles and passes.

use backstop::{ConsumerSpec, HandlerError};
use backstop_testkit::{check_seeds, FaultProfile};
#[rustfmt::skip]
use std::{collections::BTreeMap, sync::{Arc, Mutex}};

#[test]
#[rustfmt::skip] // kept as printed in the README
fn each_order_is_charged_once() {
    check_seeds(20, |sim| {
        let charged = Arc::new(Mutex::new(BTreeMap::<u64, u32>::new()));
        let c = charged.clone();
        sim.consumer(ConsumerSpec::new("orders", "billing"), move |order: u64| {
            let c = c.clone(); // idempotent: a redelivered order is not charged again
            async move { c.lock().unwrap().entry(order).or_insert(1); Ok::<(), HandlerError>(()) }
        });
        for order in 0..20u64 { sim.publish_json("orders", &order); }
        sim.faults(FaultProfile::none().broker_restarts().lost_acks());
        sim.invariant("each order charged at most once", move || {
            match charged.lock().unwrap().iter().find(|(_, n)| **n > 1) {
                Some((o, n)) => Err(format!("order {o} charged {n} times")), None => Ok(()),
            }
        });
    });
}
