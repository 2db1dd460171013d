//! The user-facing simulation: your consumers, handlers and service code on a simulated
//! network with an in-memory broker, under seeded faults, with backstop's oracle and your own
//! invariants checked after every step.
//!
//! | module | its one job |
//! |---|---|
//! | (this one) | [`Simulation`]: what to run, which faults, which invariants |
//! | `faults` | [`FaultProfile`] and the schedule a seed draws from it |
//! | `dependency` | [`Dependency`]: outages injected into your own downstream |
//! | `world` | the state hosts and driver share; the observer feeding the oracle |
//! | `service` | the simulated hosts' software (your service, the load publisher) |
//! | `run` | the driver: one seed, step by step, to a [`Report`] |
//! | `report` | [`Report`], [`Counts`], [`Broke`] |
//! | `seeds` | [`check_seeds`] / [`run_seeds`]: many seeds from a cargo test |

mod dependency;
mod faults;
mod report;
mod run;
mod seeds;
mod service;
mod world;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backstop_engine::runtime::{ConsumerSpec, HandlerError};
use backstop_mem::MemBroker;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use dependency::Dependency;
pub use faults::{Fault, FaultProfile};
pub use report::{Broke, Counts, FirstViolation, Report};
pub use seeds::{check_seeds, run_seeds, Seeds};
pub use service::Service;

use service::{ConsumerReg, Hook, Message};

pub(crate) type Invariant = (String, Box<dyn FnMut() -> Result<(), String>>);

/// One simulated run of your service, reproducible from its seed.
///
/// The service host runs the real backstop runtime with your consumers (the same
/// [`ConsumerSpec`] and handler you ship, with your state captured in the handler closure) and
/// your start-up code ([`service`](Self::service)); a broker host serves the in-memory broker
/// over turmoil's simulated TCP; a load host publishes the messages you give. The seed draws
/// when each message is published and the fault schedule of the [`FaultProfile`]. Every step,
/// backstop's oracle checks what the runtime did (each delivery acked exactly once, after a
/// success or a confirmed DLQ record; attempts, parallelism and the breaker as configured), and
/// your [invariants](Self::invariant) run. After the fault window every fault heals; the run
/// waits until everything is handled, shuts the service down gracefully and checks liveness and
/// your [end checks](Self::at_end).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use backstop_engine::runtime::{ConsumerSpec, HandlerError};
/// use backstop_testkit::{FaultProfile, Simulation};
///
/// let seen = Arc::new(Mutex::new(Vec::<u64>::new()));
/// let mut sim = Simulation::new(1);
/// let s = seen.clone();
/// sim.consumer(ConsumerSpec::new("orders", "billing"), move |id: u64| {
///     let s = s.clone();
///     async move {
///         s.lock().unwrap().push(id);
///         Ok::<(), HandlerError>(())
///     }
/// });
/// for id in 0..5 {
///     sim.publish_json("orders", &id);
/// }
/// sim.faults(FaultProfile::none().broker_restarts());
/// let s = seen.clone();
/// sim.at_end("every order handled", move || {
///     let mut v = s.lock().unwrap().clone();
///     v.sort();
///     v.dedup();
///     if v.len() == 5 { Ok(()) } else { Err(format!("handled {v:?}")) }
/// });
/// let report = sim.run();
/// assert!(report.passed(), "{report}");
/// ```
pub struct Simulation {
    seed: u64,
    consumers: Vec<ConsumerReg>,
    hooks: Vec<Hook>,
    messages: Vec<Message>,
    profile: FaultProfile,
    window: Duration,
    deps: Vec<Dependency>,
    invariants: Vec<Invariant>,
    at_end: Vec<Invariant>,
    replay: Option<String>,
    setup_error: Option<String>,
    broker: MemBroker,
}

impl std::fmt::Debug for Simulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("seed", &self.seed)
            .field("consumers", &self.consumers.len())
            .field("messages", &self.messages.len())
            .field("profile", &self.profile)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Simulation {
    /// An empty simulation of `seed`: no consumers, no messages, no faults, a 30 s fault
    /// window.
    pub fn new(seed: u64) -> Simulation {
        Simulation {
            seed,
            consumers: Vec::new(),
            hooks: Vec::new(),
            messages: Vec::new(),
            profile: FaultProfile::none(),
            window: Duration::from_secs(30),
            deps: Vec::new(),
            invariants: Vec::new(),
            at_end: Vec::new(),
            replay: None,
            setup_error: None,
            broker: MemBroker::new(),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The simulated broker, for end checks that read what ended up on a topic (a DLQ's
    /// [`DeadLetterRecord`](backstop_engine::runtime::DeadLetterRecord)s, say) through
    /// [`MemBroker::topic_payloads`]. Clone it into the check.
    pub fn broker(&self) -> &MemBroker {
        &self.broker
    }

    /// Runs a consumer: `spec` and `handler` exactly as given to
    /// [`Backstop::spawn_consumer`](backstop_engine::runtime::Backstop::spawn_consumer) (with a
    /// macro consumer: `my_consumer::spec()?` and `my_consumer`). Settings that the runtime
    /// would reject make [`run`](Self::run) report a [`Broke::Setup`].
    pub fn consumer<M, F, Fut>(&mut self, spec: ConsumerSpec, handler: F) -> &mut Simulation
    where
        M: DeserializeOwned + Send + 'static,
        F: Fn(M) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let spec = match spec.build() {
            Ok(s) => s,
            Err(e) => {
                self.setup_error.get_or_insert_with(|| e.to_string());
                return self;
            }
        };
        let name = format!("{}/{}", spec.topic(), spec.subscription());
        let handler = Arc::new(handler);
        let start_spec = spec.clone();
        let start: service::StartConsumer = Arc::new(move |bs| {
            let (spec, handler) = (start_spec.clone(), handler.clone());
            Box::pin(async move { bs.spawn_consumer(spec, move |m: M| handler(m)).await })
        });
        self.consumers.push(ConsumerReg { name, spec, start });
        self
    }

    /// Runs `hook` on every start of the service (again after each simulated crash), like a
    /// process's start-up code: create tasks with [`Service::task`] and call them, start macro
    /// consumers with `my_consumer::start(svc.backstop())`. The run settles only once every
    /// hook returned.
    pub fn service<F, Fut>(&mut self, hook: F) -> &mut Simulation
    where
        F: Fn(Service) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.hooks.push(Arc::new(move |svc| Box::pin(hook(svc))));
        self
    }

    /// Publishes `payload` to `topic` at a time the seed draws within the fault window.
    ///
    /// Nothing is published before the service's consumers first subscribed: a subscription
    /// only sees messages published after it exists (as on Pulsar); earlier times wait.
    pub fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) -> &mut Simulation {
        self.messages.push(Message {
            at: None,
            topic: topic.to_string(),
            payload: payload.into(),
        });
        self
    }

    /// Publishes `value` as JSON (what backstop's consumers decode) to `topic`, at a time the
    /// seed draws within the fault window.
    pub fn publish_json<T: Serialize + ?Sized>(
        &mut self,
        topic: &str,
        value: &T,
    ) -> &mut Simulation {
        match serde_json::to_vec(value) {
            Ok(p) => self.publish(topic, p),
            Err(e) => {
                self.setup_error.get_or_insert_with(|| {
                    format!("a message for `{topic}` does not serialize: {e}")
                });
                self
            }
        }
    }

    /// Publishes `payload` to `topic` at simulated time `at`.
    pub fn publish_at(
        &mut self,
        at: Duration,
        topic: &str,
        payload: impl Into<Vec<u8>>,
    ) -> &mut Simulation {
        self.messages.push(Message {
            at: Some(at),
            topic: topic.to_string(),
            payload: payload.into(),
        });
        self
    }

    /// Which faults to inject (none by default).
    pub fn faults(&mut self, profile: FaultProfile) -> &mut Simulation {
        self.profile = profile;
        self
    }

    /// How long faults are injected (30 s of simulated time by default); messages without a
    /// time of their own are published in its first three quarters.
    pub fn fault_window(&mut self, window: Duration) -> &mut Simulation {
        self.window = window;
        self
    }

    /// A handle on one of your downstream dependencies: the fault profile's
    /// [`downstream_outages`](FaultProfile::downstream_outages) take it down or slow it.
    pub fn dependency(&mut self, name: &str) -> Dependency {
        let d = Dependency::new(name);
        self.deps.push(d.clone());
        d
    }

    /// A rule over your own state that must hold after every step (e.g. "each order charged at
    /// most once"): `Err(why)` fails the run.
    pub fn invariant(
        &mut self,
        name: &str,
        check: impl FnMut() -> Result<(), String> + 'static,
    ) -> &mut Simulation {
        self.invariants.push((name.to_string(), Box::new(check)));
        self
    }

    /// A rule checked once, after the faults healed, everything was handled and the service
    /// shut down (e.g. "every order charged").
    pub fn at_end(
        &mut self,
        name: &str,
        check: impl FnMut() -> Result<(), String> + 'static,
    ) -> &mut Simulation {
        self.at_end.push((name.to_string(), Box::new(check)));
        self
    }

    /// The command a report gives for replaying this seed (set by [`check_seeds`]).
    pub fn replay_command(&mut self, command: impl Into<String>) -> &mut Simulation {
        self.replay = Some(command.into());
        self
    }

    /// Runs the simulation to its end (or its first violation).
    pub fn run(self) -> Report {
        run::run(self)
    }
}
