//! The software of a service host: the real backstop runtime over a `RemoteBroker` to the
//! broker host, one consumer with a scripted handler, and a task publishing the workload.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backstop_engine::core::ErrorKind;
use backstop_engine::runtime::{
    Backstop, ConsumerSpec, DeadLetter, HandlerError, MessageOptions, Task, TaskSpec,
};
use backstop_mem::{ClientConfig, RemoteBroker};
use serde::Deserialize;

use crate::ledger::{DLQ_TOPIC, SUBSCRIPTION, TASK_DLQ_TOPIC, TOPIC};
use crate::scenario::{key_name, Plan, Publish, Scenario};
use crate::trace::{What, Who};
use crate::world::{lock, sim_now, SharedWorld, SimObserver, PROBE_BASE};

/// The broker host's name in the simulated network.
pub const BROKER_HOST: &str = "broker";
/// The broker's port.
pub const BROKER_PORT: u16 = 6650;
/// The pinned wall-clock time of every runtime's epoch (DLQ timestamps).
pub const WALL_EPOCH_MS: u64 = 1_700_000_000_000;
/// Text every injected panic carries (the runner's panic hook keeps them quiet).
pub const PANIC_MARKER: &str = "backstop-sim injected panic";
/// The clients' keepalive; the server's idle timeout is more than three times this.
pub const KEEPALIVE: Duration = Duration::from_millis(500);
/// Every broker call's limit.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Grace given to in-flight handlers at the final graceful shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A service host's name.
pub fn host_name(host: u8) -> String {
    format!("svc{host}")
}

/// What the consumer decodes. A payload without `id` (a poison message) does not decode.
#[derive(Deserialize)]
struct Msg {
    id: u64,
}

/// Everything a service host's software needs; shared by all its incarnations.
pub struct ServiceCtx {
    /// The scenario.
    pub scenario: Arc<Scenario>,
    /// The shared world.
    pub world: SharedWorld,
}

async fn sleep_until_sim(at_ms: u32) {
    let at = Duration::from_millis(u64::from(at_ms));
    let now = sim_now();
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}

fn note(world: &SharedWorld, who: Who, text: String) {
    lock(world)
        .trace
        .push(sim_now(), who, None, What::Note(text));
}

async fn handle(world: SharedWorld, host: u8, msg: Msg) -> Result<(), HandlerError> {
    let (delay, result) = {
        let mut w = lock(&world);
        let run = w.ledger.handler_run(msg.id, host);
        w.downstream.decide(msg.id, run)
    };
    tokio::time::sleep(delay).await;
    match result {
        Ok(()) => {
            lock(&world).ledger.handler_success(msg.id);
            Ok(())
        }
        Err(ErrorKind::Panic) => panic!("{PANIC_MARKER} (message {})", msg.id),
        Err(kind) => Err(HandlerError::new(
            kind,
            format!("injected {kind} for message {}", msg.id),
        )),
    }
}

/// Calls the task for one message and records how the call ended. With `keyed` (an ordered
/// consumer), the message goes out under its key as key and ordering key (a probe, which has
/// none, under a key of its own, so probes reach every Key_Shared consumer).
async fn publish(task: Task, world: SharedWorld, who: Who, p: Publish, keyed: bool) {
    let Who::Service { host, incarnation } = who else {
        return;
    };
    *lock(&world).calls.entry((host, incarnation)).or_insert(0) += 1;
    let value = if p.plan == Plan::Poison {
        serde_json::json!({ "poison": p.id })
    } else {
        serde_json::json!({ "id": p.id })
    };
    let key = match p.key {
        Some(k) => Some(key_name(k)),
        None if keyed => Some(format!("probe{}", p.id)),
        None => None,
    };
    let options = match key {
        Some(k) => MessageOptions::new()
            .ordering_key(k.clone().into_bytes())
            .key(k),
        None => MessageOptions::new(),
    };
    let runs = Arc::new(AtomicU32::new(0));
    let result = task
        .call_with_options(value, options, move |v: &serde_json::Value| {
            let n = runs.fetch_add(1, Ordering::Relaxed) + 1;
            let v = v.clone();
            async move {
                if n <= u32::from(p.body_fails) {
                    if p.body_kind == ErrorKind::Panic {
                        panic!("{PANIC_MARKER} (task body for {})", p.id);
                    }
                    return Err(HandlerError::new(p.body_kind, "injected task body failure"));
                }
                Ok(v)
            }
        })
        .await;
    let mut w = lock(&world);
    if let Some(n) = w.calls.get_mut(&(host, incarnation)) {
        *n -= 1;
    }
    let text = match result {
        Ok(sent) => {
            let payload = serde_json::to_vec(&sent.value).unwrap_or_default();
            w.ledger.task_sent(sent.id.clone(), payload);
            format!(
                "task call {} published as {} after {} attempt(s)",
                p.id, sent.id, sent.attempts
            )
        }
        Err(f) => {
            let text = format!("task call {} failed: {f}", p.id);
            match f.dead_letter {
                DeadLetter::Published { id, .. } => w.ledger.task_dead_lettered(id),
                _ => w.ledger.task_returned(),
            }
            text
        }
    };
    w.trace.push(sim_now(), who, None, What::Note(text));
}

/// One incarnation of service `host`: runs its workload, then (after the faults healed) waits
/// for the driver's stop, shuts its consumer down gracefully and idles.
pub async fn run_service(ctx: Arc<ServiceCtx>, host: u8) -> turmoil::Result {
    let s = ctx.scenario.clone();
    let world = ctx.world.clone();
    let inc = lock(&world).start_incarnation(host);
    let who = Who::Service {
        host,
        incarnation: inc,
    };
    note(&world, who, format!("{} starts", host_name(host)));
    let remote = RemoteBroker::with_config(
        || turmoil::net::TcpStream::connect((BROKER_HOST, BROKER_PORT)),
        ClientConfig {
            call_timeout: Some(CALL_TIMEOUT),
            // Receives wait for a message; a dead connection is found by the keepalive.
            receive_timeout: None,
            keepalive: Some(KEEPALIVE),
        },
    );
    let bs = Backstop::builder(Arc::new(remote))
        .wall_clock_epoch_ms(WALL_EPOCH_MS)
        .env_from(BTreeMap::new())
        .producer_timeout(Duration::from_secs(3))
        .observer(Arc::new(SimObserver::new(world.clone(), host, inc)))
        .build()?;

    let c = s.consumer;
    let mut spec = ConsumerSpec::new(TOPIC, SUBSCRIPTION)
        .max_parallelism(c.max_parallelism)
        .max_held(c.max_held)
        .retry_policy(c.retry)
        .breaker(c.breaker)
        .retry_strategy(c.strategy)
        .subscription_type(c.subscription)
        .ordered(c.ordered)
        .shutdown_grace(Duration::from_secs(5))
        .nack_delay(Duration::from_millis(u64::from(c.nack_delay_ms)));
    if c.dlq {
        spec = spec.dlq_topic(DLQ_TOPIC);
    }
    let consumer = loop {
        let w = world.clone();
        let handler = move |m: Msg| handle(w.clone(), host, m);
        match bs.spawn_consumer(spec.clone(), handler).await {
            Ok(h) => break h,
            Err(e) => {
                note(&world, who, format!("subscribing failed: {e}; retrying"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };

    let mut tspec = TaskSpec::new(TOPIC)
        .retry_policy(s.task.retry)
        .breaker(s.task.breaker)
        .send_timeout(Duration::from_secs(3));
    if s.task.dlq {
        tspec = tspec.dlq_topic(TASK_DLQ_TOPIC);
    }
    let task = Task::new(&bs, tspec)?;

    // The workload: this host's messages from now on (a restarted host does not replay what
    // was due while it was down).
    let started = sim_now();
    for p in s.workload.iter().filter(|p| p.host == host) {
        if Duration::from_millis(u64::from(p.at_ms)) < started {
            continue;
        }
        sleep_until_sim(p.at_ms).await;
        tokio::task::spawn_local(publish(task.clone(), world.clone(), who, *p, c.ordered));
    }

    // After healing, host 0 publishes probe messages while a consumer's breaker is not closed
    // (a half-open breaker closes only on a successful probe, which needs a message), until the
    // driver sees everything settled and asks the services to stop.
    sleep_until_sim(s.heal_ms).await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let id = {
            let mut w = lock(&world);
            if w.stop {
                break;
            }
            if host != 0 || !w.needs_probe() || w.probes >= 64 {
                continue;
            }
            w.probes += 1;
            PROBE_BASE + w.probes
        };
        let p = Publish {
            at_ms: 0,
            host,
            id,
            plan: Plan::Ok,
            body_fails: 0,
            body_kind: ErrorKind::Handler,
            key: None,
        };
        tokio::task::spawn_local(publish(task.clone(), world.clone(), who, p, c.ordered));
    }

    let now = bs.clock().now();
    {
        let mut w = lock(&world);
        let r = w
            .feeds
            .get_mut(&(host, inc))
            .map(|f| f.shutdown_requested(now, now + SHUTDOWN_GRACE));
        if let Some(Err(v)) = r {
            let detail = v.to_string();
            w.fail(who, Some(v), detail);
        }
    }
    let report = consumer.shutdown_within(SHUTDOWN_GRACE).await;
    note(&world, who, format!("consumer stopped: {report:?}"));
    // The runtime's own counts must match what its observer showed the oracle: nothing the
    // machine did went unobserved. (Its `nacked` also counts deliveries pulled after shutdown
    // began that never reached the machine.)
    {
        let mut w = lock(&world);
        w.flush_one(host, inc);
        if let Some(o) = w.feeds.get(&(host, inc)).map(|f| *f.oracle().stats()) {
            let seen = (o.delivered, o.invoked, o.acked, o.dlq_confirmed);
            let counted = (
                report.received,
                report.invoked,
                report.acked,
                // Parked records are DLQ publishes to the parking topic as far as the machine
                // knows.
                report.dead_lettered + report.parked,
            );
            if seen != counted || report.nacked < o.nacked {
                w.fail(
                    who,
                    None,
                    format!(
                        "the observer showed (received, invoked, acked, dead-lettered or parked) = {seen:?} and {} nacks, the runtime counted {counted:?} and {} nacks",
                        o.nacked, report.nacked
                    ),
                );
            }
        }
    }
    std::future::pending::<()>().await;
    Ok(())
}
