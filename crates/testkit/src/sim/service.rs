//! The software of the simulated hosts: the service (the real backstop runtime with the user's
//! consumers and hooks, over a TCP client to the broker host) and the load host that publishes
//! the simulation's messages.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use backstop_engine::broker::{Broker, OutgoingMessage};
use backstop_engine::core::ConfigError;
use backstop_engine::runtime::{
    Backstop, ConsumerHandle, ConsumerSpec, StartError, Task, TaskSpec,
};
use backstop_mem::{ClientConfig, MemBroker, RemoteBroker};

use super::world::{lock, sim_now, Shared, SimObserver};

/// The broker host's name.
pub(crate) const BROKER_HOST: &str = "broker";
/// The service host's name.
pub(crate) const SERVICE_HOST: &str = "service";
/// The load host's name.
pub(crate) const LOAD_HOST: &str = "load";
/// The broker's port.
pub(crate) const BROKER_PORT: u16 = 6650;
/// The pinned wall-clock time of the runtime's epoch (DLQ timestamps).
pub(crate) const WALL_EPOCH_MS: u64 = 1_700_000_000_000;
/// The client's keepalive; the server's idle timeout is four times this.
pub(crate) const KEEPALIVE: Duration = Duration::from_millis(500);
/// Grace given to in-flight handlers at the final graceful shutdown.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

type StartFuture = Pin<Box<dyn Future<Output = Result<ConsumerHandle, StartError>>>>;
/// Starts one of the user's consumers in a context.
pub(crate) type StartConsumer = Arc<dyn Fn(Backstop) -> StartFuture + Send + Sync>;
/// One of the user's service hooks.
pub(crate) type Hook = Arc<dyn Fn(Service) -> Pin<Box<dyn Future<Output = ()>>> + Send + Sync>;

/// A consumer the simulation runs.
#[derive(Clone)]
pub(crate) struct ConsumerReg {
    /// `topic/subscription`, as the runtime's observer names it.
    pub name: String,
    pub spec: ConsumerSpec,
    pub start: StartConsumer,
}

/// A message the load host publishes.
#[derive(Clone, Debug)]
pub(crate) struct Message {
    /// When; `None`: drawn from the seed within the fault window.
    pub at: Option<Duration>,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What the service host runs, shared by all its incarnations.
pub(crate) struct Ctx {
    pub world: Shared,
    pub consumers: Vec<ConsumerReg>,
    pub hooks: Vec<Hook>,
}

/// The running service, as a hook sees it: the backstop context of this incarnation.
///
/// A hook runs on every start of the service (again after each simulated crash), like the
/// start-up code of a real process.
#[derive(Clone)]
pub struct Service {
    bs: Backstop,
    world: Shared,
    incarnation: u32,
}

impl Service {
    /// The backstop context (its broker is the simulated one).
    pub fn backstop(&self) -> &Backstop {
        &self.bs
    }

    /// Which start of the service this is (0 first, +1 after each crash).
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    /// A task in this context, checked by the oracle (its attempts per call).
    ///
    /// # Errors
    /// The spec's settings are rejected.
    pub fn task(&self, spec: TaskSpec) -> Result<Task, ConfigError> {
        let cfg = spec.producer_config(self.bs.breaker_defaults())?;
        let task = Task::new(&self.bs, spec)?;
        lock(&self.world)
            .task_attempts
            .insert(task.spec().topic().to_string(), cfg.retry().max_attempts());
        Ok(task)
    }
}

fn note(world: &Shared, text: String) {
    lock(world).note(text);
}

/// One incarnation of the service: subscribes the user's consumers, runs the hooks, and once
/// the driver asks, shuts the consumers down gracefully.
pub(crate) async fn run_service(ctx: Arc<Ctx>) -> turmoil::Result {
    let world = ctx.world.clone();
    let inc = {
        let mut w = lock(&world);
        let inc = w.started;
        w.started += 1;
        w.live = Some(inc);
        w.subscribed = false;
        w.hooks_running = 0;
        inc
    };
    note(&world, format!("service starts (incarnation {inc})"));
    let remote = RemoteBroker::with_config(
        || turmoil::net::TcpStream::connect((BROKER_HOST, BROKER_PORT)),
        ClientConfig {
            call_timeout: Some(Duration::from_secs(2)),
            receive_timeout: None,
            keepalive: Some(KEEPALIVE),
        },
    );
    let bs = Backstop::builder(Arc::new(remote))
        .wall_clock_epoch_ms(WALL_EPOCH_MS)
        .env_from(BTreeMap::new())
        .producer_timeout(Duration::from_secs(3))
        .observer(Arc::new(SimObserver {
            world: world.clone(),
            incarnation: inc,
        }))
        .build()?;
    {
        let mut w = lock(&world);
        for c in &ctx.consumers {
            let cfg = c.spec.consumer_config(bs.breaker_defaults())?;
            w.consumer_cfgs.insert(c.name.clone(), cfg);
        }
    }
    let mut handles = Vec::new();
    for c in &ctx.consumers {
        loop {
            match (c.start)(bs.clone()).await {
                Ok(h) => {
                    handles.push((c.name.clone(), h));
                    break;
                }
                Err(e) => {
                    note(
                        &world,
                        format!("subscribing {} failed: {e}; retrying", c.name),
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    {
        let mut w = lock(&world);
        w.subscribed = true;
        w.ever_subscribed = true;
    }
    for hook in &ctx.hooks {
        lock(&world).hooks_running += 1;
        let svc = Service {
            bs: bs.clone(),
            world: world.clone(),
            incarnation: inc,
        };
        let (hook, world) = (hook.clone(), world.clone());
        tokio::task::spawn_local(async move {
            hook(svc).await;
            let mut w = lock(&world);
            if w.live == Some(inc) {
                w.hooks_running = w.hooks_running.saturating_sub(1);
            }
        });
    }
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if lock(&world).stop {
            break;
        }
    }
    let now = bs.clock().now();
    {
        let mut w = lock(&world);
        w.flush_all();
        let mut bad = None;
        for (name, _) in &handles {
            if let Some(f) = w.feeds.get_mut(&(name.clone(), inc)) {
                if let Err(v) = f.shutdown_requested(now, now + SHUTDOWN_GRACE) {
                    bad = Some((name.clone(), v));
                }
            }
        }
        if let Some((name, violation)) = bad {
            w.fail(super::report::Broke::Oracle {
                who: format!("consumer {name} (incarnation {inc})"),
                violation,
            });
        }
    }
    for (name, h) in handles {
        let report = h.shutdown_within(SHUTDOWN_GRACE).await;
        note(&world, format!("{name} stopped: {report:?}"));
    }
    {
        let mut w = lock(&world);
        w.flush_all();
        w.stopped = true;
    }
    std::future::pending::<()>().await;
    Ok(())
}

/// The load host: publishes each message at its time, straight into the broker (another
/// service's producer, outside the faults on the network), retrying while the broker fails.
/// It starts once the service's consumers have subscribed: a new subscription only sees
/// messages published after it exists (Pulsar's default, and the in-memory broker's).
pub(crate) async fn run_load(
    broker: MemBroker,
    world: Shared,
    messages: Arc<Vec<Message>>,
) -> turmoil::Result {
    while !lock(&world).ever_subscribed {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for m in messages.iter() {
        let now = sim_now();
        let at = m.at.unwrap_or_default();
        if at > now {
            tokio::time::sleep(at - now).await;
        }
        loop {
            let sent = match broker.producer(&m.topic).await {
                Ok(p) => p
                    .send(OutgoingMessage::new(m.payload.clone()))
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    lock(&world).published_all = true;
    std::future::pending::<()>().await;
    Ok(())
}
