//! The shared context every task and consumer runs in: broker, metrics, clock, producer cache
//! and breaker defaults (with the `CB_*` environment overrides applied).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::broker::{Broker, BrokerError, MessageId, OutgoingMessage, Producer};
use crate::core::{BreakerConfig, ConfigError, ErrorKind};

use super::clock::Clock;
use super::metrics::Metrics;
use super::observer::Observer;
use super::spec::Classifier;

/// The durable subscription backstop creates on dead-letter and parking topics before writing
/// to them, so the broker keeps every record until it is read; the `backstop` CLI reads and
/// redrives through it.
pub const RECORDS_SUBSCRIPTION: &str = "backstop-redrive";

/// A topic's producer, created once.
type ProducerCell = Arc<tokio::sync::OnceCell<Arc<dyn Producer>>>;

pub(crate) struct Inner {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) clock: Clock,
    pub(crate) breaker_defaults: BreakerConfig,
    pub(crate) producer_timeout: Duration,
    pub(crate) topic_prefix: String,
    pub(crate) observer: Option<Arc<dyn Observer>>,
    pub(crate) classifier: Option<Classifier>,
    /// Task calls under way (for [`Backstop::shutdown`]).
    calls: tokio::sync::watch::Sender<usize>,
    /// Set when a shutdown's grace ran out: calls still under way return their data.
    pub(crate) abort_calls: tokio::sync::watch::Sender<bool>,
    /// Consumers started in this context: how to stop each, and how to see it finished.
    consumers: std::sync::Mutex<Vec<ConsumerEntry>>,
    /// One producer per topic, shared by tasks, dead-letter and retry publishing; each cell
    /// is filled once at a time (concurrent first uses wait for one creation, never a storm).
    /// Read-locked on the hot path (a topic's producer, once made), write-locked to add or
    /// forget one.
    producers: RwLock<BTreeMap<String, ProducerCell>>,
    /// Record topics (DLQ, parking) already given their durable subscription.
    /// Concurrent first records wait for the one creation under way.
    retained: std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::OnceCell<()>>>>,
}

/// The context: cheap to clone, shared by every task and consumer of a service.
///
/// ```
/// # async fn demo(broker: std::sync::Arc<dyn backstop_engine::broker::Broker>) -> Result<(), backstop_engine::core::ConfigError> {
/// use backstop_engine::runtime::Backstop;
/// let bs = Backstop::builder(broker).build()?; // applies CB_FAILURE_THRESHOLD / CB_RECOVERY_TIMEOUT
/// println!("{}", bs.metrics().render());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Backstop {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Backstop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backstop")
            .field("breaker_defaults", &self.inner.breaker_defaults)
            .finish()
    }
}

/// Builds a [`Backstop`].
pub struct BackstopBuilder {
    broker: Arc<dyn Broker>,
    metrics: Option<Arc<Metrics>>,
    breaker: Option<BreakerConfig>,
    use_env: bool,
    env: Option<BTreeMap<String, String>>,
    wall_ms: Option<u64>,
    producer_timeout: Duration,
    topic_prefix: String,
    observer: Option<Arc<dyn Observer>>,
    classifier: Option<Classifier>,
}

impl BackstopBuilder {
    /// Classifies errors that `?` converted in every handler and task body of this context
    /// (a spec's own [`classify`](super::ConsumerSpec::classify) wins over it).
    ///
    /// ```
    /// # fn demo(broker: std::sync::Arc<dyn backstop_engine::broker::Broker>) -> Result<(), backstop_engine::core::ConfigError> {
    /// use backstop_engine::core::ErrorKind;
    /// use backstop_engine::runtime::Backstop;
    /// let bs = Backstop::builder(broker)
    ///     .classify(|e| e.to_string().contains("503").then_some(ErrorKind::Connection))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn classify<F>(mut self, f: F) -> Self
    where
        F: Fn(&(dyn std::error::Error + 'static)) -> Option<ErrorKind> + Send + Sync + 'static,
    {
        self.classifier = Some(Classifier::new(f));
        self
    }
    /// Uses these metrics (e.g. sharing one registry between several contexts).
    pub fn metrics(mut self, m: Arc<Metrics>) -> Self {
        self.metrics = Some(m);
        self
    }
    /// Breaker defaults for every task and consumer that does not set its own. The `CB_*`
    /// environment variables still override them unless [`ignore_env`](Self::ignore_env).
    pub fn breaker_defaults(mut self, b: BreakerConfig) -> Self {
        self.breaker = Some(b);
        self
    }
    /// Do not read `CB_FAILURE_THRESHOLD` / `CB_RECOVERY_TIMEOUT` from the process environment.
    pub fn ignore_env(mut self) -> Self {
        self.use_env = false;
        self
    }
    /// Reads the `CB_*` overrides from this map instead of the process environment (tests).
    pub fn env_from(mut self, vars: BTreeMap<String, String>) -> Self {
        self.env = Some(vars);
        self
    }
    /// Pins the wall-clock time of the runtime's epoch (ms since Unix epoch), for deterministic
    /// DLQ timestamps in simulations.
    pub fn wall_clock_epoch_ms(mut self, ms: u64) -> Self {
        self.wall_ms = Some(ms);
        self
    }
    /// How long creating a producer may take before it counts as a Timeout (default 10 s).
    pub fn producer_timeout(mut self, d: Duration) -> Self {
        self.producer_timeout = d;
        self
    }
    /// Prefixes every task and consumer topic (including DLQ topics) with `prefix`, e.g. a
    /// Pulsar namespace `persistent://tenant/ns/` or a per-environment tag. Empty by default.
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = prefix.into();
        self
    }
    /// Shows every core action and event to `observer` (simulation oracles, tests).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }
    /// Validates and builds. Must be called inside a tokio runtime (it starts the clock).
    pub fn build(self) -> Result<Backstop, ConfigError> {
        let base = self.breaker.unwrap_or_default();
        let mut b = BreakerConfig::builder()
            .failure_threshold(base.failure_threshold())
            .recovery_timeout(base.recovery_timeout())
            .half_open_probes(base.half_open_probes())
            .counted(base.counted());
        if let Some(env) = &self.env {
            b = b.env_overrides(|k| env.get(k).cloned())?;
        } else if self.use_env {
            b = b.env_overrides(|k| std::env::var(k).ok())?;
        }
        if self.producer_timeout.is_zero() {
            return Err(ConfigError::new(
                "producer_timeout",
                "must be greater than zero",
            ));
        }
        let clock = match self.wall_ms {
            Some(ms) => Clock::with_wall_ms(ms),
            None => Clock::start(),
        };
        Ok(Backstop {
            inner: Arc::new(Inner {
                broker: self.broker,
                metrics: self.metrics.unwrap_or_default(),
                clock,
                breaker_defaults: b.build()?,
                producer_timeout: self.producer_timeout,
                topic_prefix: self.topic_prefix,
                observer: self.observer,
                classifier: self.classifier,
                calls: tokio::sync::watch::Sender::new(0),
                abort_calls: tokio::sync::watch::Sender::new(false),
                consumers: std::sync::Mutex::new(Vec::new()),
                producers: RwLock::new(BTreeMap::new()),
                retained: std::sync::Mutex::new(BTreeMap::new()),
            }),
        })
    }
}

impl Backstop {
    /// A builder over `broker`.
    pub fn builder(broker: Arc<dyn Broker>) -> BackstopBuilder {
        BackstopBuilder {
            broker,
            metrics: None,
            breaker: None,
            use_env: true,
            env: None,
            wall_ms: None,
            producer_timeout: Duration::from_secs(10),
            topic_prefix: String::new(),
            observer: None,
            classifier: None,
        }
    }

    /// `topic` with the context's prefix applied.
    pub fn resolve_topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.inner.topic_prefix)
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// The breaker defaults in force (after environment overrides).
    pub fn breaker_defaults(&self) -> BreakerConfig {
        self.inner.breaker_defaults
    }

    /// The clock.
    pub fn clock(&self) -> Clock {
        self.inner.clock
    }

    /// A producer for `topic`, created on first use (with a timeout) and cached. Concurrent
    /// first uses wait for the one creation under way; a failed creation leaves the topic
    /// empty for the next use.
    pub async fn producer(&self, topic: &str) -> Result<Arc<dyn Producer>, BrokerError> {
        if let Some(p) = self.cached_producer(topic) {
            return Ok(p);
        }
        let cell = self
            .producer_cache()
            .entry(topic.to_string())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            tokio::time::timeout(
                self.inner.producer_timeout,
                self.inner.broker.producer(topic),
            )
            .await
            .map_err(|_| {
                BrokerError::new(
                    ErrorKind::Timeout,
                    format!("creating a producer for `{topic}` timed out"),
                )
            })?
        })
        .await
        .cloned()
    }

    /// `topic`'s producer if it is made already (a read lock, no wait for other sends).
    fn cached_producer(&self, topic: &str) -> Option<Arc<dyn Producer>> {
        self.inner
            .producers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .and_then(|c| c.get())
            .cloned()
    }

    /// Forgets a cached producer (after it failed), so the next use creates a fresh one.
    pub async fn drop_producer(&self, topic: &str) {
        self.producer_cache().remove(topic);
    }

    /// Publishes `msg` to `topic` through the shared producer: the one path every publish of
    /// backstop takes (task calls, dead-letter records, retry copies). A send that takes longer
    /// than `timeout` fails as Timeout; on a transient (Connection, Timeout) or Fatal failure the
    /// producer is replaced by the next send (once, however many sends failed on it). A confirmed
    /// send's latency is observed as `pulsar_latency_seconds{operation="publish"}`.
    ///
    /// ```
    /// # async fn demo(bs: backstop_engine::runtime::Backstop) -> Result<(), backstop_engine::broker::BrokerError> {
    /// use backstop_engine::broker::OutgoingMessage;
    /// use std::time::Duration;
    /// let id = bs.send("audit", OutgoingMessage::new("hello"), Duration::from_secs(5)).await?;
    /// # let _ = id; Ok(()) }
    /// ```
    pub async fn send(
        &self,
        topic: &str,
        msg: OutgoingMessage,
        timeout: Duration,
    ) -> Result<MessageId, BrokerError> {
        self.send_then(topic, msg, timeout, |secs| {
            self.metrics().observe_latency(topic, "publish", secs)
        })
        .await
        .0
    }

    /// [`send`](Self::send) observing the latency in `latency`, the caller's handle on
    /// `topic`'s `publish` series (looked up once instead of by label on each send); a
    /// confirmed send also returns when it was confirmed (the clock read its latency took).
    pub(crate) async fn send_observed(
        &self,
        topic: &str,
        msg: OutgoingMessage,
        timeout: Duration,
        latency: &prometheus::Histogram,
    ) -> (Result<MessageId, BrokerError>, Option<tokio::time::Instant>) {
        self.send_then(topic, msg, timeout, |secs| latency.observe(secs))
            .await
    }

    /// [`send`](Self::send), handing a confirmed send's latency (seconds) to `observe` and
    /// returning when it was confirmed.
    async fn send_then(
        &self,
        topic: &str,
        msg: OutgoingMessage,
        timeout: Duration,
        observe: impl FnOnce(f64),
    ) -> (Result<MessageId, BrokerError>, Option<tokio::time::Instant>) {
        let started = tokio::time::Instant::now();
        // The send's deadline counts from when the producer is at hand: from `started` when it
        // was cached (no second clock read), else from the end of its creation.
        let (producer, deadline) = match self.cached_producer(topic) {
            Some(p) => (p, started.checked_add(timeout)),
            None => match self.producer(topic).await {
                Ok(p) => (p, None),
                Err(e) => return (Err(e), None),
            },
        };
        let sent = producer.send(msg);
        let r = match deadline {
            Some(at) => tokio::time::timeout_at(at, sent).await,
            None => tokio::time::timeout(timeout, sent).await,
        };
        let r = match r {
            Ok(r) => r,
            Err(_) => Err(BrokerError::timeout(format!(
                "send to `{topic}` timed out after {timeout:?}"
            ))),
        };
        match &r {
            Err(e) if e.kind().is_transient() || e.kind() == ErrorKind::Fatal => {
                self.drop_producer_if(topic, &producer);
            }
            Err(_) => {}
            Ok(_) => {
                let confirmed = tokio::time::Instant::now();
                observe(confirmed.saturating_duration_since(started).as_secs_f64());
                return (r, Some(confirmed));
            }
        }
        (r, None)
    }

    /// Forgets the cached producer of `topic` only if it is still `failed`: many sends that
    /// failed on one producer replace it once, not once each (no producer-creation storm).
    fn drop_producer_if(&self, topic: &str, failed: &Arc<dyn Producer>) {
        let mut cache = self.producer_cache();
        if cache
            .get(topic)
            .and_then(|c| c.get())
            .is_some_and(|p| Arc::ptr_eq(p, failed))
        {
            cache.remove(topic);
        }
    }

    fn producer_cache(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ProducerCell>> {
        self.inner
            .producers
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Before the first record goes to the dead-letter or parking topic `topic`: asks the
    /// broker to keep what is written there for [`RECORDS_SUBSCRIPTION`] (see
    /// [`Broker::retain`]). Once per topic and context (concurrent first records wait for it);
    /// a failure is logged and the publish goes ahead (refusing it would leave the message
    /// unacked forever).
    pub(crate) async fn retain_records(&self, topic: &str) {
        let cell = self
            .inner
            .retained
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(topic.to_string())
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let r = tokio::time::timeout(
                self.inner.producer_timeout,
                self.inner.broker.retain(topic, RECORDS_SUBSCRIPTION),
            )
            .await
            .unwrap_or_else(|_| Err(BrokerError::timeout("creating the subscription timed out")));
            if let Err(e) = r {
                tracing::warn!(topic, subscription = RECORDS_SUBSCRIPTION, error = %e, "could not create the durable subscription of a record topic; without one (or a retention policy) the broker may delete its records");
            }
        })
        .await;
    }

    /// Counts a task call as under way until the guard drops.
    /// Only the count's return to zero notifies ([`shutdown`](Self::shutdown) waits for
    /// nothing else), so a call does not wake the watch's waiters twice.
    pub(crate) fn track_call(&self) -> CallGuard {
        self.inner.calls.send_if_modified(|n| {
            *n += 1;
            false
        });
        CallGuard {
            inner: self.inner.clone(),
        }
    }

    /// Task calls under way in this context.
    pub fn calls_in_progress(&self) -> usize {
        *self.inner.calls.borrow()
    }

    /// Remembers a consumer for [`shutdown`](Self::shutdown).
    pub(crate) fn register_consumer(
        &self,
        stop: std::sync::Weak<tokio::sync::watch::Sender<Option<Duration>>>,
        finished: tokio::sync::watch::Receiver<()>,
    ) {
        let mut c = self
            .inner
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        c.retain(|e| e.finished.has_changed().is_ok()); // forget consumers that ended
        c.push(ConsumerEntry { stop, finished });
    }

    /// Shuts the whole service down: every consumer of this context stops receiving and drains
    /// (in-flight handlers get up to `grace`, then their messages are nacked for redelivery),
    /// and task calls under way get until the same deadline to complete. Calls still under way
    /// then return a [`TaskFailure`](super::TaskFailure) with reason
    /// [`ShuttingDown`](super::FailureReason::ShuttingDown) that hands their arguments (and
    /// encoded result, if any) back to the caller: nothing is dropped silently.
    ///
    /// Returns what was still under way when it gave up waiting (zero on a clean drain).
    ///
    /// ```
    /// # async fn demo(bs: backstop_engine::runtime::Backstop) {
    /// let left = bs.shutdown(std::time::Duration::from_secs(30)).await;
    /// assert!(left.is_clean());
    /// # }
    /// ```
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let deadline = tokio::time::Instant::now() + grace;
        let entries: Vec<ConsumerEntry> = self
            .inner
            .consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for e in &entries {
            if let Some(stop) = e.stop.upgrade() {
                let _ = stop.send(Some(grace));
            }
        }
        let mut consumers_left = 0;
        for mut e in entries {
            let finished = async { while e.finished.changed().await.is_ok() {} };
            // Consumers nack what is left at their own deadline; allow them a moment past ours
            // to close their subscriptions.
            if tokio::time::timeout_at(deadline + Duration::from_secs(5), finished)
                .await
                .is_err()
            {
                consumers_left += 1;
            }
        }
        let mut calls = self.inner.calls.subscribe();
        let drained = tokio::time::timeout_at(deadline, calls.wait_for(|n| *n == 0))
            .await
            .is_ok();
        let mut calls_left = 0;
        if !drained {
            calls_left = *calls.borrow();
            tracing::warn!(
                calls = calls_left,
                "shutdown grace over: task calls under way return their data"
            );
            self.inner.abort_calls.send_replace(true);
            let _ = tokio::time::timeout(Duration::from_secs(5), calls.wait_for(|n| *n == 0)).await;
        }
        ShutdownReport {
            consumers_left,
            calls_left,
        }
    }

    /// Runs until SIGTERM or ctrl-c, then [`shutdown`](Self::shutdown)s with `grace`.
    ///
    /// ```no_run
    /// # async fn demo(bs: backstop_engine::runtime::Backstop) {
    /// // start consumers, serve requests that call tasks, …
    /// let report = bs.run_until_signal(std::time::Duration::from_secs(30)).await;
    /// println!("stopped: {report:?}");
    /// # }
    /// ```
    pub async fn run_until_signal(&self, grace: Duration) -> ShutdownReport {
        wait_for_signal().await;
        tracing::info!(grace = ?grace, "termination signal: draining");
        self.shutdown(grace).await
    }

    /// Makes this the context the macro-generated functions use.
    pub fn install(&self) {
        set_global(self.clone());
    }
}

/// What [`Backstop::shutdown`] could not drain in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Consumers that had not finished.
    pub consumers_left: usize,
    /// Task calls still under way at the deadline (they returned their data to their callers).
    pub calls_left: usize,
}

impl ShutdownReport {
    /// Whether everything drained within the grace period.
    pub fn is_clean(&self) -> bool {
        self.consumers_left == 0 && self.calls_left == 0
    }
}

struct ConsumerEntry {
    stop: std::sync::Weak<tokio::sync::watch::Sender<Option<Duration>>>,
    finished: tokio::sync::watch::Receiver<()>,
}

/// Keeps a task call counted as under way.
pub(crate) struct CallGuard {
    inner: Arc<Inner>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.inner.calls.send_if_modified(|n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

static GLOBAL: RwLock<Option<Backstop>> = RwLock::new(None);

/// Sets the context the macro-generated task functions and consumers use.
pub fn set_global(bs: Backstop) {
    *GLOBAL.write().unwrap_or_else(|e| e.into_inner()) = Some(bs);
}

/// The installed context, if any.
pub fn try_global() -> Option<Backstop> {
    GLOBAL.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The installed context.
///
/// # Panics
/// If none was installed with [`Backstop::install`]: calling a task before wiring the service to
/// a broker is a programming error, reported with what to do.
pub fn global() -> Backstop {
    try_global().expect("no backstop context installed: call Backstop::builder(broker).build()?.install() at startup")
}
