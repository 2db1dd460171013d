//! The turmoil tier: one seed as a simulated network — the in-memory broker served over TCP on
//! its own host, one or two service hosts running the real runtime — driven step by step
//! through its fault schedule, with every oracle checked after every step and liveness checked
//! after the faults heal.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use backstop_engine::core::BreakerState;
use backstop_mem::{Faults, MemBroker, Op, Server, ServerConfig};

use crate::ledger::{SUBSCRIPTION, TOPIC};
use crate::report::{Failure, Outcome, Passed, SeedStats, Tier};
use crate::scenario::{Fault, Options, Scenario};
use crate::service::{
    host_name, run_service, ServiceCtx, BROKER_HOST, BROKER_PORT, KEEPALIVE, SHUTDOWN_GRACE,
};
use crate::trace::{What, Who};
use crate::world::{lock, SharedWorld, World};

/// turmoil's default maximum message latency, restored when a latency window ends.
const BASE_LATENCY: Duration = Duration::from_millis(100);
/// How many trace lines a failure report shows.
const REPORT_LINES: usize = 60;

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Act {
    Start(usize),
    End(usize),
    Heal,
}

/// How long after its nominal length a seed may run on waiting for everything to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// What is currently broken, so overlapping windows undo correctly.
#[derive(Default)]
struct Broken {
    partitions: Vec<u32>,
    holds: Vec<u32>,
    latency: Vec<u32>,
    broker_down: bool,
    services_down: Vec<bool>,
    slow_ops: BTreeMap<Op, Vec<u32>>,
    offline: u32,
    events: u64,
    /// A fault that can lose an ack, a nack or a delivery while the connection stays up
    /// happened: the heal reconnects the clients so the broker gives those deliveries back.
    lost_settlement: bool,
}

/// One seed on the simulated network.
struct Run<'a> {
    scenario: &'a Scenario,
    sim: turmoil::Sim<'static>,
    broker: MemBroker,
    faults: Faults,
    server: Server,
    world: SharedWorld,
    broken: Broken,
}

fn ms(v: u32) -> Duration {
    Duration::from_millis(u64::from(v))
}

impl Run<'_> {
    fn note(&mut self, text: String) {
        let sim = self.sim.elapsed();
        lock(&self.world)
            .trace
            .push(sim, Who::Sim, None, What::Note(text));
    }

    fn fail(&self, detail: String) {
        lock(&self.world).fail(Who::Sim, None, detail);
    }

    /// Cuts (`true`) or restores one more layer of the link between the broker and `host`.
    fn cut(&mut self, host: u8, on: bool) {
        let n = &mut self.broken.partitions[usize::from(host)];
        if on {
            if *n == 0 {
                self.sim.partition(BROKER_HOST, host_name(host));
            }
            *n += 1;
        } else if *n > 0 {
            *n -= 1;
            if *n == 0 {
                self.sim.repair(BROKER_HOST, host_name(host));
            }
        }
    }

    fn start(&mut self, fault: Fault) {
        self.broken.events += 1;
        self.note(format!("fault {fault:?}"));
        let b = &mut self.broken;
        match fault {
            Fault::Partition { host, .. } => self.cut(host, true),
            Fault::Hold { host, .. } => {
                let n = &mut b.holds[usize::from(host)];
                if *n == 0 {
                    self.sim.hold(BROKER_HOST, host_name(host));
                }
                *n += 1;
            }
            Fault::Latency { max_ms, .. } => {
                b.latency.push(max_ms);
                let max = b.latency.iter().copied().max().unwrap_or(0);
                self.sim.set_max_message_latency(ms(max));
            }
            Fault::BrokerHostCrash { .. } => {
                if !b.broker_down {
                    b.broker_down = true;
                    // Power-loss semantics: the link goes first, so the dying host sends no
                    // FIN or RST. (It also keeps the crash deterministic: tokio drops a
                    // runtime's tasks in an order that depends on process-wide task ids, and
                    // every segment sent while dropping would draw its latency from turmoil's
                    // rng in that order.)
                    for h in 0..self.scenario.services {
                        self.cut(h, true);
                    }
                    self.sim.crash(BROKER_HOST);
                }
            }
            Fault::BrokerRestart { .. } => self.faults.crash(),
            Fault::BrokerOpFailure {
                op,
                count,
                kind,
                after_effect,
                ..
            } => {
                if matches!(op, Op::Ack | Op::Nack) && !after_effect
                    || op == Op::Receive && after_effect
                {
                    b.lost_settlement = true;
                }
                if op == Op::Receive && after_effect {
                    lock(&self.world).ledger.deliveries_may_be_lost();
                }
                if after_effect {
                    self.faults
                        .fail_next_after_effect(op, u32::from(count), kind);
                } else {
                    self.faults.fail_next(op, u32::from(count), kind);
                }
            }
            Fault::BrokerSlowOp { op, latency_ms, .. } => {
                let v = b.slow_ops.entry(op).or_default();
                v.push(latency_ms);
                let max = v.iter().copied().max().unwrap_or(0);
                self.faults.set_latency(op, ms(max));
            }
            Fault::BrokerOffline { .. } => {
                b.lost_settlement = true;
                b.offline += 1;
                self.faults.set_offline(true);
            }
            Fault::DropConnections { .. } => self.server.disconnect_all(),
            Fault::ServiceCrash { host, .. } => {
                let down = &mut b.services_down[usize::from(host)];
                if !*down {
                    *down = true;
                    lock(&self.world).crashed(host);
                    self.cut(host, true);
                    self.sim.crash(host_name(host));
                }
            }
            Fault::DownstreamOutage { kind, .. } => {
                lock(&self.world).downstream.outage.push(kind);
            }
            Fault::HandlerErrors { count, kind, .. } => {
                if count > 0 {
                    lock(&self.world).downstream.bursts.push_back((count, kind));
                }
            }
            Fault::SlowHandlers { extra_ms, .. } => {
                lock(&self.world).downstream.slow.push(extra_ms);
            }
        }
    }

    fn end(&mut self, fault: Fault) {
        let b = &mut self.broken;
        match fault {
            Fault::Partition { host, .. } => self.cut(host, false),
            Fault::Hold { host, .. } => {
                let n = &mut b.holds[usize::from(host)];
                if *n > 0 {
                    *n -= 1;
                    if *n == 0 {
                        self.sim.release(BROKER_HOST, host_name(host));
                    }
                }
            }
            Fault::Latency { max_ms, .. } => {
                if let Some(i) = b.latency.iter().position(|v| *v == max_ms) {
                    b.latency.remove(i);
                }
                let max = b.latency.iter().copied().max().map_or(BASE_LATENCY, ms);
                self.sim.set_max_message_latency(max);
            }
            Fault::BrokerHostCrash { .. } => {
                if b.broker_down {
                    b.broker_down = false;
                    self.sim.bounce(BROKER_HOST);
                    for h in 0..self.scenario.services {
                        self.cut(h, false);
                    }
                }
            }
            Fault::BrokerSlowOp { op, latency_ms, .. } => {
                let v = b.slow_ops.entry(op).or_default();
                if let Some(i) = v.iter().position(|x| *x == latency_ms) {
                    v.remove(i);
                }
                let max = v.iter().copied().max().unwrap_or(0);
                self.faults.set_latency(op, ms(max));
            }
            Fault::BrokerOffline { .. } => {
                if b.offline > 0 {
                    b.offline -= 1;
                    if b.offline == 0 {
                        self.faults.set_offline(false);
                    }
                }
            }
            Fault::ServiceCrash { host, .. } => {
                let down = &mut b.services_down[usize::from(host)];
                if *down {
                    *down = false;
                    self.sim.bounce(host_name(host));
                    self.cut(host, false);
                }
            }
            Fault::DownstreamOutage { kind, .. } => {
                let mut w = lock(&self.world);
                if let Some(i) = w.downstream.outage.iter().position(|k| *k == kind) {
                    w.downstream.outage.remove(i);
                }
            }
            Fault::SlowHandlers { extra_ms, .. } => {
                let mut w = lock(&self.world);
                if let Some(i) = w.downstream.slow.iter().position(|k| *k == extra_ms) {
                    w.downstream.slow.remove(i);
                }
            }
            Fault::BrokerRestart { .. }
            | Fault::BrokerOpFailure { .. }
            | Fault::DropConnections { .. }
            | Fault::HandlerErrors { .. } => {}
        }
    }

    /// Ends every fault: links repaired and released, latency back to normal, the broker
    /// healed, crashed hosts restarted, the downstream healthy.
    fn heal(&mut self) {
        self.note("heal: every fault ends".into());
        self.faults.heal();
        let b = &mut self.broken;
        for h in 0..self.scenario.services {
            let i = usize::from(h);
            if b.partitions[i] > 0 {
                b.partitions[i] = 0;
                self.sim.repair(BROKER_HOST, host_name(h));
            }
            if b.holds[i] > 0 {
                b.holds[i] = 0;
                self.sim.release(BROKER_HOST, host_name(h));
            }
            if b.services_down[i] {
                b.services_down[i] = false;
                self.sim.bounce(host_name(h));
            }
        }
        b.latency.clear();
        b.slow_ops.clear();
        b.offline = 0;
        self.sim.set_max_message_latency(BASE_LATENCY);
        if b.broker_down {
            b.broker_down = false;
            self.sim.bounce(BROKER_HOST);
        }
        lock(&self.world).downstream.heal();
        if std::mem::take(&mut self.broken.lost_settlement) {
            // A failed ack or nack over a live connection, or a delivery lost in transit, stays
            // with its consumer on the broker until the connection ends (Pulsar without an ack
            // timeout behaves the same): reconnecting gives those deliveries back.
            self.note("heal: reconnect every client (acks, nacks or deliveries were lost)".into());
            self.server.disconnect_all();
            lock(&self.world).ledger.deliveries_returned();
        }
    }

    /// Whether everything settled: nothing in the backlog or in progress, every running
    /// consumer idle with its breaker closed.
    fn settled(&self) -> bool {
        if self.broker.backlog(TOPIC, SUBSCRIPTION) != 0 {
            return false;
        }
        let w = lock(&self.world);
        if w.calls_in_progress() != 0 || w.live().len() != usize::from(self.scenario.services) {
            return false;
        }
        w.live()
            .iter()
            .all(|k| w.feeds.get(k).is_some_and(|f| f.oracle().held() == 0))
            && w.breakers_settled()
    }

    /// Liveness failed (nothing settled in time after the faults healed): says what is left.
    fn unsettled(&mut self) {
        let calls = lock(&self.world).calls_in_progress();
        if calls != 0 {
            self.fail(format!(
                "liveness: {calls} task call(s) still in progress long after the faults healed"
            ));
            return;
        }
        let stats = self.broker.subscription_stats(TOPIC, SUBSCRIPTION);
        let backlog = stats.map_or(0, |s| s.backlog());
        if backlog != 0 {
            self.fail(format!(
                "liveness: {backlog} message(s) still in the backlog after the faults healed: {stats:?}"
            ));
            return;
        }
        let mut w = lock(&self.world);
        for (h, i) in w.live() {
            let who = Who::Service {
                host: h,
                incarnation: i,
            };
            let Some(f) = w.feeds.get(&(h, i)) else {
                w.fail(who, None, "liveness: the consumer never started".into());
                return;
            };
            let (held, state) = (f.oracle().held(), f.oracle().breaker().state());
            if held != 0 || state != BreakerState::Closed && !w.breakers_settled() {
                w.fail(
                    who,
                    None,
                    format!(
                        "liveness: after the faults healed the consumer still holds {held} deliveries and its breaker is {}",
                        state.as_str()
                    ),
                );
                return;
            }
        }
        w.fail(
            Who::Sim,
            None,
            "liveness: not every service host is running long after the faults healed".into(),
        );
    }

    /// Liveness at the end: every consumer drained after its graceful shutdown; the broker-side
    /// ledger balances.
    fn final_check(&mut self) {
        let mut w = lock(&self.world);
        w.flush_all();
        for (h, i) in w.live() {
            let who = Who::Service {
                host: h,
                incarnation: i,
            };
            let r = match w.feeds.get(&(h, i)) {
                None => Err("the consumer never started".to_string()),
                Some(f) if !f.shutdown_announced() => {
                    Err("the consumer was never shut down".into())
                }
                Some(f) => f.check_settled().map_err(|v| v.to_string()),
            };
            if let Err(e) = r {
                w.fail(who, None, format!("liveness: {e}"));
                return;
            }
        }
        if let Err(e) = w.ledger.final_check(&self.broker) {
            w.fail(Who::Sim, None, format!("broker: {e}"));
        }
    }

    fn stats(&self) -> SeedStats {
        let w = lock(&self.world);
        let l = w.ledger.stats();
        let mut s = SeedStats {
            sim_time: self.sim.elapsed(),
            fault_events: self.broken.events,
            injected: self.broker.counters().injected_faults + w.downstream.injected,
            messages: l.published,
            handler_runs: l.handler_runs,
            dead_lettered: l.dlq_records,
            redeliveries: self.broker.counters().redelivered,
            duplicates: l.handled_twice + l.dead_lettered_twice + l.handled_and_dead_lettered,
            ordered_seeds: u64::from(self.scenario.consumer.ordered),
            order_checked: l.order_checked,
            order_excused: l.order_excused,
            ..SeedStats::default()
        };
        for f in w.feeds.values() {
            let o = f.oracle().stats();
            s.retries += o.retried;
            s.breaker_trips += o.breaker_opened;
            s.breaker_closes += o.breaker_closed;
            s.steps += f.steps();
            s.max_in_flight = s.max_in_flight.max(o.max_in_flight);
        }
        s
    }

    fn failure(&self, scenario_text: String, lines: usize) -> Box<Failure> {
        let w = lock(&self.world);
        let b = w.broken.clone().expect("called on failure");
        Box::new(Failure {
            seed: self.scenario.seed,
            tier: Tier::Turmoil,
            rule: b.violation.as_ref().map(|v| v.rule),
            detail: format!("{} (seen by {})", b.detail, b.who),
            at: b.sim,
            trace_tail: w.trace.render_tail(lines.max(REPORT_LINES)),
            scenario: scenario_text,
            planted: None,
            duration_secs: None,
        })
    }
}

/// Runs `scenario` on turmoil's simulated network and clock.
///
/// ```no_run
/// use backstop_sim::net;
/// use backstop_sim::scenario::{Options, Scenario};
/// let opts = Options::default();
/// let passed = net::run(&Scenario::from_seed(1, &opts), &opts).expect("seed 1 passes");
/// println!("{:x}", passed.hash);
/// ```
pub fn run(scenario: &Scenario, opts: &Options) -> Outcome {
    crate::quiet_injected_panics();
    let seed = scenario.seed;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_millis(crate::service::WALL_EPOCH_MS))
        .tick_duration(scenario.tick)
        .simulation_duration(ms(scenario.duration_ms) + Duration::from_secs(3600))
        .max_message_latency(BASE_LATENCY)
        .build();
    let broker = MemBroker::new();
    let server = Server::with_config(
        Arc::new(broker.clone()),
        ServerConfig {
            idle_timeout: Some(KEEPALIVE * 4),
        },
    );
    let world: SharedWorld = Arc::new(Mutex::new(World::new(scenario, opts.trace_lines)));
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
    let ctx = Arc::new(ServiceCtx {
        scenario: Arc::new(scenario.clone()),
        world: world.clone(),
    });
    for h in 0..scenario.services {
        let ctx = ctx.clone();
        sim.host(host_name(h), move || run_service(ctx.clone(), h));
    }
    let services = usize::from(scenario.services);
    let mut run = Run {
        scenario,
        sim,
        faults: broker.faults(),
        broker,
        server,
        world,
        broken: Broken {
            partitions: vec![0; services],
            holds: vec![0; services],
            services_down: vec![false; services],
            ..Broken::default()
        },
    };

    let mut timeline: Vec<(u32, Act)> = Vec::new();
    for (i, f) in scenario.faults.iter().enumerate() {
        let at = f.at_ms().min(scenario.heal_ms);
        timeline.push((at, Act::Start(i)));
        if f.dur_ms() > 0 {
            let end = at.saturating_add(f.dur_ms()).min(scenario.heal_ms);
            timeline.push((end, Act::End(i)));
        }
    }
    timeline.push((scenario.heal_ms, Act::Heal));
    timeline.sort();

    let earliest_stop = ms(scenario.stop_ms);
    let limit = ms(scenario.duration_ms) + SETTLE_LIMIT;
    let mut stopped_at: Option<Duration> = None;
    let mut next = 0;
    loop {
        let now = run.sim.elapsed();
        lock(&run.world).clock = now;
        while next < timeline.len() && ms(timeline[next].0) <= now {
            let act = timeline[next].1;
            next += 1;
            match act {
                Act::Start(i) => run.start(scenario.faults[i]),
                Act::End(i) => run.end(scenario.faults[i]),
                Act::Heal => run.heal(),
            }
        }
        match stopped_at {
            None if now >= earliest_stop && run.settled() => {
                run.note("settled: every service shuts down gracefully".into());
                lock(&run.world).stop = true;
                stopped_at = Some(now);
            }
            None if now >= limit => {
                run.unsettled();
                break;
            }
            Some(at) if now >= at + SHUTDOWN_GRACE + Duration::from_secs(2) => {
                run.final_check();
                break;
            }
            _ => {}
        }
        if lock(&run.world).broken.is_some() {
            break;
        }
        if let Err(e) = run.sim.step() {
            run.fail(format!("the simulation failed: {e}"));
            break;
        }
        let mut w = lock(&run.world);
        w.flush_all();
        if w.broken.is_none() {
            if let Err(e) = w.ledger.observe(&run.broker) {
                w.fail(Who::Sim, None, format!("broker: {e}"));
            }
        }
        if w.broken.is_some() {
            break;
        }
    }

    if lock(&run.world).broken.is_some() {
        return Err(run.failure(scenario.to_string(), opts.trace_lines));
    }
    let stats = run.stats();
    let mut w = lock(&run.world);
    let mut trace = std::mem::replace(&mut w.trace, crate::trace::Trace::new(0));
    w.ledger
        .fingerprint(&run.broker, |bytes| trace.mix_bytes(bytes));
    Ok(Passed {
        seed,
        tier: Tier::Turmoil,
        hash: trace.hash(),
        stats,
        trace: (opts.trace_lines > 0).then(|| trace.render_tail(opts.trace_lines)),
    })
}
