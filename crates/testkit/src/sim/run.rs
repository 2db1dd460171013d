//! The driver of one seed: builds the simulated network (broker, service, load hosts), steps
//! it through the fault schedule, checks the oracle and the user's invariants after every step,
//! and, once the faults healed and everything settled, shuts the service down and checks
//! liveness.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use backstop_mem::{Faults, MemBroker, Op, Server, ServerConfig};

use super::faults::{schedule, Fault};
use super::report::{Broke, Counts, FirstViolation, Report};
use super::service::{
    run_load, run_service, Ctx, BROKER_HOST, BROKER_PORT, KEEPALIVE, LOAD_HOST, SERVICE_HOST,
    SHUTDOWN_GRACE, WALL_EPOCH_MS,
};
use super::world::{lock, Shared, World};
use super::Simulation;

/// How long after the faults healed a run may take to settle before it is a liveness failure.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);
/// The simulation's clock step.
const TICK: Duration = Duration::from_millis(5);

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Act {
    Start(usize),
    End(usize),
    Heal,
}

struct Driver<'a> {
    sim: turmoil::Sim<'static>,
    faults: Faults,
    server: Server,
    world: Shared,
    spec: &'a Simulation,
    cut: u32,
    service_down: bool,
    slow: Vec<(Op, Duration)>,
    lost_settlement: bool,
    injected: u64,
}

impl Driver<'_> {
    fn note(&self, text: String) {
        lock(&self.world).note(text);
    }

    fn link(&mut self, cut: bool) {
        if cut {
            if self.cut == 0 {
                self.sim.partition(BROKER_HOST, SERVICE_HOST);
            }
            self.cut += 1;
        } else if self.cut > 0 {
            self.cut -= 1;
            if self.cut == 0 {
                self.sim.repair(BROKER_HOST, SERVICE_HOST);
            }
        }
    }

    fn apply_slow(&self, op: Op) {
        let max = self
            .slow
            .iter()
            .filter(|(o, _)| *o == op)
            .map(|(_, d)| *d)
            .max()
            .unwrap_or(Duration::ZERO);
        self.faults.set_latency(op, max);
    }

    fn start(&mut self, f: Fault) {
        self.injected += 1;
        self.note(format!("fault: {f}"));
        match f {
            Fault::BrokerRestart => self.faults.crash(),
            Fault::Partition { .. } => self.link(true),
            Fault::SlowBroker { op, latency, .. } => {
                self.slow.push((op, latency));
                self.apply_slow(op);
            }
            Fault::FailingBroker { op, count, kind } => {
                if matches!(op, Op::Ack | Op::Nack | Op::Receive) {
                    self.lost_settlement = true;
                }
                self.faults.fail_next(op, count, kind);
            }
            Fault::ServiceCrash { .. } => {
                if !self.service_down {
                    self.service_down = true;
                    lock(&self.world).crashed();
                    // Power-loss semantics: the link goes first, so the dying host sends nothing.
                    self.link(true);
                    self.sim.crash(SERVICE_HOST);
                }
            }
            Fault::LostAcks { count, .. } => {
                self.lost_settlement = true;
                self.faults
                    .fail_next(Op::Ack, count, backstop_engine::core::ErrorKind::Connection);
            }
            Fault::Outage { dep, .. } => self.spec.deps[dep].outage(true),
            Fault::SlowDependency { dep, extra, .. } => self.spec.deps[dep].slow(extra, true),
        }
    }

    fn end(&mut self, f: Fault) {
        match f {
            Fault::Partition { .. } => self.link(false),
            Fault::SlowBroker { op, latency, .. } => {
                if let Some(i) = self.slow.iter().position(|s| *s == (op, latency)) {
                    self.slow.remove(i);
                }
                self.apply_slow(op);
            }
            Fault::ServiceCrash { .. } => self.restart_service(),
            Fault::LostAcks { .. } => {
                self.note("lost acks: every connection drops, the broker redelivers".into());
                self.server.disconnect_all();
            }
            Fault::Outage { dep, .. } => self.spec.deps[dep].outage(false),
            Fault::SlowDependency { dep, extra, .. } => self.spec.deps[dep].slow(extra, false),
            Fault::BrokerRestart | Fault::FailingBroker { .. } => {}
        }
    }

    fn restart_service(&mut self) {
        if self.service_down {
            self.service_down = false;
            self.sim.bounce(SERVICE_HOST);
            self.link(false);
        }
    }

    fn heal(&mut self) {
        self.note("heal: every fault ends".into());
        self.faults.heal();
        self.slow.clear();
        if self.cut > 0 {
            self.cut = 0;
            self.sim.repair(BROKER_HOST, SERVICE_HOST);
        }
        if self.service_down {
            self.service_down = false;
            self.sim.bounce(SERVICE_HOST);
        }
        for d in &self.spec.deps {
            d.heal();
        }
        if std::mem::take(&mut self.lost_settlement) {
            // A lost ack, nack or delivery stays with its consumer until the connection ends.
            self.note("heal: every connection drops (acks or deliveries were lost)".into());
            self.server.disconnect_all();
        }
    }

    /// Whether everything settled: every message published and handled, the service up with
    /// its consumers idle and its hooks finished.
    fn settled(&self, broker: &MemBroker) -> bool {
        let w = lock(&self.world);
        let Some(inc) = w.live else { return false };
        if !w.published_all || !w.subscribed || w.hooks_running > 0 {
            return false;
        }
        self.spec.consumers.iter().all(|c| {
            broker.backlog(c.spec.topic(), c.spec.subscription()) == 0
                && w.feeds
                    .get(&(c.name.clone(), inc))
                    .is_none_or(|f| f.oracle().held() == 0)
        })
    }

    fn unsettled(&self, broker: &MemBroker) -> String {
        let w = lock(&self.world);
        if !w.published_all {
            return "the load host could not publish every message".into();
        }
        let Some(inc) = w.live else {
            return "the service is not running".into();
        };
        if !w.subscribed {
            return "the service never subscribed every consumer".into();
        }
        if w.hooks_running > 0 {
            return format!("{} service hook(s) never finished", w.hooks_running);
        }
        for c in &self.spec.consumers {
            let backlog = broker.backlog(c.spec.topic(), c.spec.subscription());
            if backlog > 0 {
                return format!(
                    "{} message(s) of {} never acknowledged: {:?}",
                    backlog,
                    c.name,
                    broker.subscription_stats(c.spec.topic(), c.spec.subscription())
                );
            }
            if let Some(f) = w.feeds.get(&(c.name.clone(), inc)) {
                if f.oracle().held() > 0 {
                    return format!("{} still holds {} deliveries", c.name, f.oracle().held());
                }
            }
        }
        "unknown".into()
    }

    fn check_invariants(&self, invariants: &mut [super::Invariant]) {
        if lock(&self.world).broken.is_some() {
            return;
        }
        for (name, f) in invariants.iter_mut() {
            if let Err(detail) = f() {
                lock(&self.world).fail(Broke::Invariant {
                    name: name.clone(),
                    detail,
                });
                return;
            }
        }
    }

    /// Liveness at the end: each consumer of the last incarnation drained after its shutdown.
    fn final_check(&self) {
        let mut w = lock(&self.world);
        w.flush_all();
        let Some(inc) = w.live else { return };
        for c in &self.spec.consumers {
            let r = match w.feeds.get(&(c.name.clone(), inc)) {
                Some(f) => f.check_settled(),
                None => Ok(()),
            };
            if let Err(violation) = r {
                w.fail(Broke::Oracle {
                    who: format!("consumer {} (incarnation {inc})", c.name),
                    violation,
                });
                return;
            }
        }
    }

    fn counts(&self, broker: &MemBroker) -> Counts {
        let w = lock(&self.world);
        let b = broker.counters();
        let mut c = Counts {
            published: b.published,
            delivered: b.delivered,
            duplicates: b.redelivered,
            faults: self.injected + b.injected_faults,
            ..Counts::default()
        };
        for f in w.feeds.values() {
            let o = f.oracle().stats();
            c.handler_runs += o.invoked;
            c.retries += o.retried;
            c.dead_lettered += o.dlq_confirmed;
            c.breaker_trips += o.breaker_opened;
        }
        c
    }
}

thread_local! {
    static IN_SIM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While a simulation steps on this thread, a panic (a handler's, which backstop turns into a
/// failed attempt the trace shows) prints one line instead of a backtrace; other threads'
/// panics are reported as before.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_SIM.with(|c| c.get()) {
                let text = info
                    .payload()
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| info.payload().downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                eprintln!("[backstop-testkit] panic in simulated code: {text}");
            } else {
                previous(info);
            }
        }));
    });
}

struct InSim;

impl InSim {
    fn enter() -> InSim {
        quiet_panics();
        IN_SIM.with(|c| c.set(true));
        InSim
    }
}

impl Drop for InSim {
    fn drop(&mut self) {
        IN_SIM.with(|c| c.set(false));
    }
}

/// Runs `s` (see [`Simulation::run`]).
pub(crate) fn run(mut s: Simulation) -> Report {
    let seed = s.seed;
    let plan = schedule(&s.profile, seed, s.window, s.deps.len());
    let fault_lines: Vec<String> = plan
        .iter()
        .map(|(at, f)| format!("at {:.3}s: {f}", at.as_secs_f64()))
        .collect();
    let replay = s.replay.clone().unwrap_or_else(|| {
        format!(
            "Simulation::new({seed}) with the same setup (or BACKSTOP_SEED={seed} in check_seeds)"
        )
    });
    let world: Shared = Arc::new(Mutex::new(World::default()));
    let report = |world: &Shared, counts: Counts, sim_time: Duration| {
        let w = lock(world);
        Report {
            seed,
            violation: w.broken.clone().map(|b| FirstViolation {
                broke: b.broke,
                at: b.at,
                last_events: b.last_events,
            }),
            faults: fault_lines.clone(),
            counts,
            sim_time,
            replay: replay.clone(),
        }
    };
    if let Some(e) = s.setup_error.take() {
        lock(&world).fail(Broke::Setup(e));
        return report(&world, Counts::default(), Duration::ZERO);
    }

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_millis(WALL_EPOCH_MS))
        .tick_duration(TICK)
        .simulation_duration(s.window + SETTLE_LIMIT + Duration::from_secs(3600))
        .max_message_latency(Duration::from_millis(20))
        .build();
    let broker = s.broker.clone();
    let server = Server::with_config(
        Arc::new(broker.clone()),
        ServerConfig {
            idle_timeout: Some(KEEPALIVE * 4),
        },
    );
    {
        let server = server.clone();
        sim.host(BROKER_HOST, move || {
            let server = server.clone();
            async move {
                let listener = turmoil::net::TcpListener::bind((
                    IpAddr::from(Ipv4Addr::UNSPECIFIED),
                    BROKER_PORT,
                ))
                .await?;
                server.serve(listener).await?;
                Ok(())
            }
        });
    }
    let ctx = Arc::new(Ctx {
        world: world.clone(),
        consumers: s.consumers.clone(),
        hooks: s.hooks.clone(),
    });
    sim.host(SERVICE_HOST, move || run_service(ctx.clone()));
    {
        let mut messages = s.messages.clone();
        let spread = (s.window.as_millis() as u64 * 3 / 4).max(1);
        for (i, m) in messages.iter_mut().enumerate() {
            if m.at.is_none() {
                let ms = super::faults::Rng::new(seed, 0x10ad_0000 + i as u64).range(0, spread);
                m.at = Some(Duration::from_millis(ms));
            }
        }
        messages.sort_by_key(|m| m.at);
        let messages = Arc::new(messages);
        let (broker, world) = (broker.clone(), world.clone());
        sim.host(LOAD_HOST, move || {
            run_load(broker.clone(), world.clone(), messages.clone())
        });
    }

    let mut invariants = std::mem::take(&mut s.invariants);
    let mut at_end = std::mem::take(&mut s.at_end);
    let mut d = Driver {
        sim,
        faults: broker.faults(),
        server,
        world: world.clone(),
        spec: &s,
        cut: 0,
        service_down: false,
        slow: Vec::new(),
        lost_settlement: false,
        injected: 0,
    };
    let mut timeline: Vec<(Duration, Act)> = Vec::new();
    for (i, (at, f)) in plan.iter().enumerate() {
        timeline.push((*at, Act::Start(i)));
        if f.dur() > Duration::ZERO {
            timeline.push(((*at + f.dur()).min(s.window), Act::End(i)));
        }
    }
    timeline.push((s.window, Act::Heal));
    timeline.sort();

    let mut next = 0;
    let mut stop_at: Option<Duration> = None;
    loop {
        let now = d.sim.elapsed();
        lock(&world).clock = now;
        while next < timeline.len() && timeline[next].0 <= now {
            match timeline[next].1 {
                Act::Start(i) => d.start(plan[i].1),
                Act::End(i) => d.end(plan[i].1),
                Act::Heal => d.heal(),
            }
            next += 1;
        }
        match stop_at {
            None if now >= s.window && d.settled(&broker) => {
                d.note("settled: the service shuts down gracefully".into());
                lock(&world).stop = true;
                stop_at = Some(now);
            }
            None if now >= s.window + SETTLE_LIMIT => {
                let why = d.unsettled(&broker);
                lock(&world).fail(Broke::Liveness(format!(
                    "{why} ({SETTLE_LIMIT:?} after every fault healed)"
                )));
            }
            Some(at) if lock(&world).stopped => {
                let _ = at;
                d.final_check();
                if lock(&world).broken.is_none() {
                    for (name, f) in at_end.iter_mut() {
                        if let Err(detail) = f() {
                            lock(&world).fail(Broke::Invariant {
                                name: name.clone(),
                                detail,
                            });
                            break;
                        }
                    }
                }
                break;
            }
            Some(at) if now >= at + SHUTDOWN_GRACE + Duration::from_secs(10) => {
                lock(&world).fail(Broke::Liveness(
                    "the service did not finish its graceful shutdown".into(),
                ));
            }
            _ => {}
        }
        if lock(&world).broken.is_some() {
            break;
        }
        let stepped = {
            let _in_sim = InSim::enter();
            d.sim.step()
        };
        if let Err(e) = stepped {
            lock(&world).fail(Broke::Liveness(format!("the simulation failed: {e}")));
            break;
        }
        lock(&world).flush_all();
        d.check_invariants(&mut invariants);
        if lock(&world).broken.is_some() {
            break;
        }
    }
    let counts = d.counts(&broker);
    let elapsed = d.sim.elapsed();
    report(&world, counts, elapsed)
}
