//! The example's own consumer, `process_user_update`, simulated with backstop-testkit under
//! broker restarts, lost acks and outages of its user store.
//!
//! The handler is not idempotent: it counts every run that succeeds. backstop delivers at least
//! once, so after a broker restart or a lost ack the same update comes back and is counted
//! twice. The first test shows the simulation finding exactly that (and the report it prints);
//! the second runs the fix, a handler that applies each update once, over many seeds.
//!
//! Replay one seed: `BACKSTOP_SEED=<n> cargo test -p backstop-example --test simulate`.

#[path = "../src/handlers.rs"]
#[allow(dead_code)]
mod handlers;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use backstop::{DeadLetterRecord, HandlerError};
use backstop_testkit::{check_seeds, run_seeds, Broke, FaultProfile, Simulation};
use handlers::{poisoned_user, process_user_update, UserUpdate, PROCESSED_USERS, STORE_DOWN};

const USERS: i64 = 30;
const DLQ: &str = "user_updates_consumer_dlq";

/// The handlers keep their counts in process-wide statics: one simulation at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// What both tests share: fresh statics, one update per user, the faults, the store's outage
/// switch, and the rule that no user's update is applied twice.
fn setup(sim: &mut Simulation) {
    handlers::reset();
    for user_id in 1..=USERS {
        let update = UserUpdate {
            status: "success".into(),
            user_id,
            data: serde_json::json!({ "update_id": user_id }),
        };
        sim.publish_json("user_updates", &update);
    }
    sim.faults(
        FaultProfile::none()
            .broker_restarts()
            .lost_acks()
            .downstream_outages(),
    );
    let _store = sim
        .dependency("user store")
        .on_outage(|down| STORE_DOWN.store(down, Ordering::SeqCst));
    sim.invariant("each update applied at most once", || {
        let users = PROCESSED_USERS.lock().unwrap();
        match users.iter().find(|(_, n)| **n > 1) {
            Some((user, n)) => Err(format!("the update of user {user} was applied {n} times")),
            None => Ok(()),
        }
    });
}

#[test]
fn the_example_handler_double_counts_under_broker_faults() {
    let _serial = serial();
    let seeds = run_seeds(50, |sim| {
        setup(sim);
        sim.consumer(
            process_user_update::spec().expect("valid spec"),
            process_user_update,
        );
    });
    let report = seeds
        .first_failure
        .expect("a redelivered update is applied twice within 50 seeds");
    println!("{report}");
    let broke = report.violation.as_ref().map(|v| &v.broke);
    assert!(
        matches!(broke, Some(Broke::Invariant { name, .. }) if name == "each update applied at most once"),
        "{report}"
    );
}

/// Updates applied or being applied: the claim a real store would make in the same
/// transaction as the write (a unique key on `update_id`).
#[derive(Clone, Default)]
struct Applied(Arc<Mutex<BTreeSet<u64>>>);

/// Gives an update back if its run did not succeed (an error or a panic), so the retry
/// applies it.
struct Claim {
    applied: Applied,
    id: u64,
    done: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.done {
            self.applied.0.lock().unwrap().remove(&self.id);
        }
    }
}

/// The fix: `process_user_update`, applied once per `update_id`.
async fn process_user_update_once(applied: Applied, m: UserUpdate) -> Result<(), HandlerError> {
    let Some(id) = m.data["update_id"].as_u64() else {
        return Err(HandlerError::invalid("update without update_id"));
    };
    if !applied.0.lock().unwrap().insert(id) {
        return Ok(()); // applied already (or being applied): a redelivery
    }
    let mut claim = Claim {
        applied,
        id,
        done: false,
    };
    process_user_update(m).await?;
    claim.done = true;
    Ok(())
}

#[test]
fn the_idempotent_handler_passes_every_seed() {
    let _serial = serial();
    let seeds = check_seeds(25, |sim| {
        setup(sim);
        let applied = Applied::default();
        sim.consumer(process_user_update::spec().expect("valid spec"), move |m| {
            process_user_update_once(applied.clone(), m)
        });
        let broker = sim.broker().clone();
        sim.at_end("every update applied once or dead-lettered", move || {
            let applied = PROCESSED_USERS.lock().unwrap();
            let dead: BTreeSet<i64> = broker
                .topic_payloads(DLQ)
                .iter()
                .filter_map(|p| serde_json::from_slice::<DeadLetterRecord>(p).ok())
                .filter_map(|r| r.payload_text)
                .filter_map(|t| serde_json::from_str::<UserUpdate>(&t).ok())
                .map(|u| u.user_id)
                .collect();
            for user in 1..=USERS {
                let once = applied.get(&user) == Some(&1);
                if !(once || dead.contains(&user)) || poisoned_user(user) && once {
                    return Err(format!(
                        "user {user}: applied {:?} times, dead-lettered: {}",
                        applied.get(&user),
                        dead.contains(&user)
                    ));
                }
            }
            Ok(())
        });
    });
    println!("{} seeds passed: {}", seeds.passed, seeds.counts);
    assert!(
        seeds.counts.duplicates > 0,
        "the faults caused redeliveries"
    );
}
