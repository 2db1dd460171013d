//! The user-facing simulation, end to end: a calm run, a non-idempotent handler caught double
//! counting under broker restarts and lost acks (and the same seed replaying identically), the
//! idempotent fix passing, downstream outages through a `Dependency`, service crashes, tasks in
//! a service hook, and a rejected setup.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backstop_engine::runtime::{ConsumerSpec, HandlerError, TaskSpec};
use backstop_testkit::{check_seeds, run_seeds, Broke, FaultProfile, Simulation};

type Counter = Arc<Mutex<BTreeMap<u64, u32>>>;

fn at_most_once(c: &Counter) -> Result<(), String> {
    match c.lock().unwrap().iter().find(|(_, n)| **n > 1) {
        Some((id, n)) => Err(format!("order {id} charged {n} times")),
        None => Ok(()),
    }
}

fn all_once(c: &Counter, n: u64) -> Result<(), String> {
    let m = c.lock().unwrap();
    match (0..n).find(|id| m.get(id) != Some(&1)) {
        Some(id) => Err(format!("order {id} charged {:?} times", m.get(&id))),
        None => Ok(()),
    }
}

/// Charges each order by counting it: not idempotent.
fn naive(sim: &mut Simulation, orders: u64) -> Counter {
    let charged: Counter = Arc::default();
    let c = charged.clone();
    sim.consumer(
        ConsumerSpec::new("orders", "billing").max_parallelism(3),
        move |order: u64| {
            let c = c.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                *c.lock().unwrap().entry(order).or_insert(0) += 1;
                Ok::<(), HandlerError>(())
            }
        },
    );
    for order in 0..orders {
        sim.publish_json("orders", &order);
    }
    charged
}

#[test]
fn a_calm_run_handles_everything_once() {
    let mut sim = Simulation::new(3);
    let charged = naive(&mut sim, 20);
    let c = charged.clone();
    sim.at_end("every order charged once", move || all_once(&c, 20));
    let report = sim.run();
    assert!(report.passed(), "{report}");
    assert_eq!(report.counts.published, 20);
    assert_eq!(report.counts.handler_runs, 20);
    assert_eq!(report.counts.duplicates, 0);
    assert!(report.faults.is_empty());
}

#[test]
fn a_non_idempotent_handler_is_caught_and_the_seed_replays() {
    let build = |sim: &mut Simulation| {
        let charged = naive(sim, 30);
        sim.faults(FaultProfile::none().broker_restarts().lost_acks());
        sim.invariant("each order charged at most once", move || {
            at_most_once(&charged)
        });
    };
    let seeds = run_seeds(40, build);
    let report = seeds.first_failure.expect("some seed double-charges");
    println!("{report}");
    let Some(v) = &report.violation else {
        unreachable!()
    };
    assert!(
        matches!(&v.broke, Broke::Invariant { name, .. } if name == "each order charged at most once"),
        "{report}"
    );
    assert!(!v.last_events.is_empty());
    assert!(report
        .replay
        .contains(&format!("BACKSTOP_SEED={}", report.seed)));
    assert!(report.counts.duplicates > 0, "{report}");
    // The same seed fails the same way.
    let mut again = Simulation::new(report.seed);
    build(&mut again);
    let again = again.run();
    assert_eq!(again.violation, report.violation);
    assert_eq!(again.counts, report.counts);
}

#[test]
fn the_idempotent_handler_passes() {
    let s = check_seeds(15, |sim| {
        let charged: Counter = Arc::default();
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let c = charged.clone();
        sim.consumer(
            ConsumerSpec::new("orders", "billing").max_parallelism(3),
            move |order: u64| {
                let (c, seen) = (c.clone(), seen.clone());
                async move {
                    // The fix: remember charged orders (in the same transaction, in a real store).
                    if !seen.lock().unwrap().insert(order) {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    *c.lock().unwrap().entry(order).or_insert(0) += 1;
                    Ok::<(), HandlerError>(())
                }
            },
        );
        for order in 0..30u64 {
            sim.publish_json("orders", &order);
        }
        sim.faults(FaultProfile::none().broker_restarts().lost_acks());
        let c = charged.clone();
        sim.invariant("each order charged at most once", move || at_most_once(&c));
        sim.at_end("every order charged", move || all_once(&charged, 30));
    });
    assert_eq!(s.passed, s.runs);
    assert!(s.counts.duplicates > 0, "the faults caused redeliveries");
}

#[test]
fn downstream_outages_are_retried_or_dead_lettered() {
    let s = check_seeds(10, |sim| {
        let db = sim.dependency("db");
        let done: Counter = Arc::default();
        let d = done.clone();
        sim.consumer(
            ConsumerSpec::new("orders", "billing")
                .max_retries(2)
                .retry_delay(Duration::from_millis(500))
                .dlq_topic("orders-dlq"),
            move |order: u64| {
                let (db, d) = (db.clone(), d.clone());
                async move {
                    db.call().await?;
                    *d.lock().unwrap().entry(order).or_insert(0) += 1;
                    Ok(())
                }
            },
        );
        for order in 0..20u64 {
            sim.publish_json("orders", &order);
        }
        sim.faults(FaultProfile::none().downstream_outages().service_crashes());
    });
    assert!(s.counts.retries > 0, "{:?}", s.counts);
}

#[test]
fn tasks_in_a_service_hook_are_checked() {
    let s = check_seeds(5, |sim| {
        let got: Counter = Arc::default();
        let g = got.clone();
        sim.consumer(ConsumerSpec::new("out", "sink"), move |n: u64| {
            let g = g.clone();
            async move {
                *g.lock().unwrap().entry(n).or_insert(0) += 1;
                Ok::<(), HandlerError>(())
            }
        });
        sim.service(|svc| async move {
            if svc.incarnation() > 0 {
                return;
            }
            let task = svc
                .task(TaskSpec::new("out").max_retries(5))
                .expect("valid");
            for n in 0..10u64 {
                let _ = task
                    .call(n, |n: &u64| {
                        let n = *n;
                        async move { Ok::<u64, HandlerError>(n) }
                    })
                    .await;
            }
        });
        sim.faults(FaultProfile::none().failing_broker().slow_broker());
        sim.at_end("every call's message handled", move || {
            let n = got.lock().unwrap().len();
            if n == 10 {
                Ok(())
            } else {
                Err(format!("{n} of 10"))
            }
        });
    });
    assert_eq!(s.passed, 5);
}

#[test]
fn a_rejected_setup_is_reported() {
    let mut sim = Simulation::new(0);
    sim.consumer(
        ConsumerSpec::new("orders", "billing").max_parallelism(0),
        |_: u64| async { Ok::<(), HandlerError>(()) },
    );
    let report = sim.run();
    assert!(
        matches!(report.violation.map(|v| v.broke), Some(Broke::Setup(s)) if s.contains("max_parallelism"))
    );
}

#[test]
fn every_fault_kind_together() {
    let s = check_seeds(10, |sim| {
        let db = sim.dependency("db");
        let charged: Counter = Arc::default();
        let c = charged.clone();
        sim.consumer(
            ConsumerSpec::new("orders", "billing")
                .max_parallelism(4)
                .max_retries(5)
                .retry_delay(Duration::from_millis(300))
                .dlq_topic("orders-dlq"),
            move |order: u64| {
                let (db, c) = (db.clone(), c.clone());
                async move {
                    db.call().await?;
                    // Idempotent: charging twice sets the same flag.
                    c.lock().unwrap().insert(order, 1);
                    Ok::<(), HandlerError>(())
                }
            },
        );
        for order in 0..25u64 {
            sim.publish_json("orders", &order);
        }
        sim.faults(FaultProfile::all());
        let broker = sim.broker().clone();
        sim.at_end("every order charged or dead-lettered", move || {
            let charged = charged.lock().unwrap().len();
            let dead = broker.topic_payloads("orders-dlq").len();
            if charged + dead >= 25 {
                Ok(())
            } else {
                Err(format!("{charged} charged, {dead} dead-lettered, of 25"))
            }
        });
    });
    assert!(
        s.counts.faults > 0 && s.counts.duplicates > 0,
        "{:?}",
        s.counts
    );
}
