//! Runs one subscription through a [`ConsumerMachine`]: a receiver task pulls deliveries within
//! the machine's credit, handlers run as tokio tasks within `max_parallelism`, panics are failed
//! attempts, acks/nacks/DLQ publishes go to the broker, and shutdown drains gracefully.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::Instrument;

use crate::broker::{BrokerError, ReceivedMessage, Subscription, SubscriptionSpec};
use crate::core::{
    ConfigError, ConsumerAction, ConsumerEvent, ConsumerMachine, ErrorKind, Key, NackReason,
};

use super::backstop::Backstop;
use super::codec::{Decoder, Json};
use super::delivery::Delivery;
use super::dlq::record_from;
use super::error::HandlerError;
use super::spec::{Classifier, ConsumerSpec};
use super::task::panic_text;

/// Why a consumer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Subscribing failed.
    #[error("subscribing failed: {0}")]
    Broker(#[from] BrokerError),
}

/// Counts of what a consumer did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerReport {
    /// Deliveries received.
    pub received: u64,
    /// Handler runs started.
    pub invoked: u64,
    /// Deliveries acked.
    pub acked: u64,
    /// Deliveries nacked.
    pub nacked: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Dead-letter records confirmed (on the DLQ; parked records are counted in `parked`).
    pub dead_lettered: u64,
    /// Messages parked: failed for good without a DLQ, their record confirmed on the parking
    /// topic ([`ConsumerSpec::park_topic`]), then acked.
    pub parked: u64,
    /// Deliveries that arrived with their attempt budget already spent by earlier runs, and so
    /// went to the DLQ or parking topic without a run.
    pub arrived_spent: u64,
    /// Handler runs that panicked.
    pub panicked: u64,
    /// Breaker transitions.
    pub breaker_transitions: u64,
    /// Most handler runs in flight at once.
    pub max_in_flight: u32,
}

/// A running consumer. Dropping the handle shuts the consumer down gracefully, like
/// [`ConsumerHandle::shutdown`] without waiting: keep it for as long as the consumer should run.
#[derive(Debug)]
pub struct ConsumerHandle {
    shutdown: Arc<watch::Sender<Option<Duration>>>,
    join: JoinHandle<ConsumerReport>,
    name: String,
    control: super::control::ConsumerControl,
}

impl ConsumerHandle {
    /// `topic/subscription`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Pause/resume and breaker forcing for this consumer.
    pub fn control(&self) -> super::control::ConsumerControl {
        self.control.clone()
    }

    /// Stops receiving, lets in-flight handlers finish for up to the spec's shutdown grace, nacks
    /// the rest, and returns the report.
    pub async fn shutdown(self) -> ConsumerReport {
        let _ = self.shutdown.send(Some(Duration::MAX));
        self.join.await.unwrap_or_default()
    }

    /// Like [`shutdown`](Self::shutdown) with a grace period of `grace` instead of the spec's.
    pub async fn shutdown_within(self, grace: Duration) -> ConsumerReport {
        let _ = self.shutdown.send(Some(grace));
        self.join.await.unwrap_or_default()
    }

    /// Whether the consumer task ended.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }
}

/// Metric series of one consumer, resolved once (label lookups hash strings; the hot path
/// should only touch atomics).
struct Meters {
    received: prometheus::IntCounter,
    acked: prometheus::IntCounter,
    in_flight: prometheus::IntGauge,
    breaker_failures: prometheus::IntGauge,
    handle_latency: prometheus::Histogram,
    retried: prometheus::IntCounter,
    dead_lettered: prometheus::IntCounter,
    parked: prometheus::IntCounter,
}

impl Meters {
    fn new(m: &super::metrics::Metrics, topic: &str, sub: &str, breaker: &str) -> Meters {
        Meters {
            received: m.received.with_label_values(&[topic, sub]),
            acked: m.acked.with_label_values(&[topic, sub]),
            in_flight: m.in_flight.with_label_values(&[topic, sub]),
            breaker_failures: m.breaker_failures.with_label_values(&[breaker]),
            handle_latency: m.latency.with_label_values(&[topic, "handle"]),
            retried: m.retried.with_label_values(&[topic]),
            dead_lettered: m.dead_lettered.with_label_values(&[topic]),
            parked: m.parked.with_label_values(&[topic, sub]),
        }
    }
}

/// What the acker task sends to the broker, in order (`true`: on the retry-topic
/// subscription).
enum Settle {
    Ack(crate::broker::MessageId, bool),
    Nack(crate::broker::MessageId, bool),
}

type BoxHandler<M> = Arc<
    dyn Fn(M, Delivery) -> std::pin::Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>
        + Send
        + Sync,
>;

type BoxDecoder<M> = Arc<dyn Decoder<M>>;

enum Done {
    Handler(Key, Result<(), HandlerError>),
    Dlq(Key, Result<(), BrokerError>),
    Retry(Key, Result<(), BrokerError>),
}

struct Slot<M> {
    key: Key,
    msg: Arc<ReceivedMessage>,
    decoded: Option<M>,
    last_error: Option<HandlerError>,
    abort: Option<AbortHandle>,
    /// Handler runs of the message known so far (earlier deliveries included).
    runs: u32,
    /// Whether it came from the retry topic.
    from_retry: bool,
}

impl Backstop {
    /// Subscribes per `spec` and runs `handler` on every decoded (JSON) message until
    /// [`ConsumerHandle::shutdown`].
    ///
    /// State goes in by capture: clone what the handler needs (a client, a pool) into the
    /// closure, and a cheap clone of it into each run.
    ///
    /// ```
    /// # async fn demo(bs: backstop_engine::runtime::Backstop) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use backstop_engine::runtime::{ConsumerSpec, HandlerError};
    /// #[derive(serde::Deserialize)]
    /// struct UserUpdate { user_id: i64 }
    /// struct Db { /* a pool */ }
    /// impl Db { async fn save(&self, _id: i64) -> std::io::Result<()> { Ok(()) } }
    ///
    /// let db = Arc::new(Db {});
    /// let spec = ConsumerSpec::new("user_updates", "user_service").max_parallelism(5).build()?;
    /// let handle = bs
    ///     .spawn_consumer(spec, move |m: UserUpdate| {
    ///         let db = db.clone();
    ///         async move {
    ///             if m.user_id <= 0 { return Err(HandlerError::invalid("Missing user_id in message")); }
    ///             db.save(m.user_id).await?; // io::Error: ConnectionRefused → Connection, …
    ///             Ok(())
    ///         }
    ///     })
    ///     .await?;
    /// let report = handle.shutdown().await;
    /// # let _ = report; Ok(()) }
    /// ```
    pub async fn spawn_consumer<M, F, Fut>(
        &self,
        spec: ConsumerSpec,
        handler: F,
    ) -> Result<ConsumerHandle, StartError>
    where
        M: DeserializeOwned + Send + 'static,
        F: Fn(M) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.spawn_consumer_using(spec, Json, move |m: M, _d: Delivery| handler(m))
            .await
    }

    /// Like [`spawn_consumer`](Self::spawn_consumer), with the handler also given the message's
    /// [`Delivery`] (key, properties, message id, redelivery count, attempt, times).
    pub async fn spawn_consumer_with_delivery<M, F, Fut>(
        &self,
        spec: ConsumerSpec,
        handler: F,
    ) -> Result<ConsumerHandle, StartError>
    where
        M: DeserializeOwned + Send + 'static,
        F: Fn(M, Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.spawn_consumer_using(spec, Json, handler).await
    }

    /// The general form: payloads decoded by `codec` ([`Json`], [`Raw`](super::Raw),
    /// [`Text`](super::Text), `Protobuf`, or your own [`Decoder`]), the handler given the
    /// decoded message and its [`Delivery`].
    ///
    /// ```
    /// # async fn demo(bs: backstop_engine::runtime::Backstop) -> Result<(), Box<dyn std::error::Error>> {
    /// use backstop_engine::runtime::{ConsumerSpec, Delivery, HandlerError, Text};
    /// let spec = ConsumerSpec::new("audit_lines", "archiver").build()?;
    /// let handle = bs
    ///     .spawn_consumer_using(spec, Text, |line: String, d: Delivery| async move {
    ///         println!("{} {line}", d.message_id());
    ///         Ok::<_, HandlerError>(())
    ///     })
    ///     .await?;
    /// # handle.shutdown().await; Ok(()) }
    /// ```
    pub async fn spawn_consumer_using<M, C, F, Fut>(
        &self,
        spec: ConsumerSpec,
        codec: C,
        handler: F,
    ) -> Result<ConsumerHandle, StartError>
    where
        M: Send + 'static,
        C: Decoder<M>,
        F: Fn(M, Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let spec = spec.build()?.prefixed(&self.inner.topic_prefix);
        let cfg = spec.consumer_config(self.breaker_defaults())?;
        let mut sub_spec = SubscriptionSpec::new(spec.topic.clone(), spec.subscription.clone())
            .with_type(spec.kind);
        sub_spec.nack_redelivery_delay = spec.subscription_nack_delay();
        let sub = tokio::time::timeout(
            self.inner.producer_timeout,
            self.broker().subscribe(&sub_spec),
        )
        .await
        .map_err(|_| {
            BrokerError::timeout(format!("subscribing to `{}` timed out", spec.topic))
        })??;
        let retry_sub = match spec.retry_topic_name() {
            None => None,
            Some(rt) => {
                let mut rs = sub_spec.clone();
                rs.topic = rt.clone();
                let r =
                    tokio::time::timeout(self.inner.producer_timeout, self.broker().subscribe(&rs))
                        .await
                        .map_err(|_| {
                            BrokerError::timeout(format!("subscribing to `{rt}` timed out"))
                        });
                match r {
                    Ok(Ok(s)) => Some(s),
                    Ok(Err(e)) | Err(e) => {
                        let _ = sub.close().await;
                        return Err(e.into());
                    }
                }
            }
        };
        let handler: BoxHandler<M> = Arc::new(move |m, d| Box::pin(handler(m, d)));
        let (shutdown, shutdown_rx) = watch::channel(None);
        let shutdown = Arc::new(shutdown);
        let (finished_tx, finished_rx) = watch::channel(());
        self.register_consumer(Arc::downgrade(&shutdown), finished_rx);
        let name = format!("{}/{}", spec.topic, spec.subscription);
        let spec_topic = spec.topic.clone();
        let spec_sub = spec.subscription.clone();
        let breaker_name = format!("consumer:{name}");
        let meters = Meters::new(self.metrics(), &spec_topic, &spec_sub, &breaker_name);
        super::control::register_consumer(self.metrics(), &spec_topic, &spec_sub, &spec);
        let classifier = spec
            .classifier
            .clone()
            .or_else(|| self.inner.classifier.clone());
        let mut driver = Driver {
            bs: self.clone(),
            name: name.clone(),
            breaker_name,
            machine: ConsumerMachine::new(cfg),
            spec,
            sub,
            handler,
            decoder: Arc::new(codec),
            classifier,
            slots: Vec::new(),
            report: ConsumerReport::default(),
            io: tokio::task::JoinSet::new(),
            settle: None,
            meters,
            topic: Arc::from(spec_topic.as_str()),
            subscription: Arc::from(spec_sub.as_str()),
            memory: RunMemory::new(RUN_MEMORY),
            parking: false,
            destination: None,
            retry_sub,
        };
        driver.destination = driver.spec.dead_letter_destination();
        driver.parking = driver.spec.dlq_topic.is_none() && driver.destination.is_some();
        self.metrics().register_breaker(&driver.breaker_name);
        let (control, control_rx) = super::control::ConsumerControl::new(name.clone());
        let join = tokio::spawn(async move {
            let report = driver.run(shutdown_rx, control_rx).await;
            drop(finished_tx); // tells Backstop::shutdown this consumer is done
            report
        });
        let handle = ConsumerHandle {
            shutdown,
            join,
            name,
            control,
        };
        Ok(handle)
    }
}

struct Driver<M> {
    bs: Backstop,
    name: String,
    spec: ConsumerSpec,
    breaker_name: String,
    machine: ConsumerMachine,
    sub: Arc<dyn Subscription>,
    handler: BoxHandler<M>,
    decoder: BoxDecoder<M>,
    classifier: Option<Classifier>,
    slots: Vec<Option<Slot<M>>>,
    report: ConsumerReport,
    /// DLQ publishes under way: awaited before the subscription closes.
    io: tokio::task::JoinSet<()>,
    /// Acks and nacks go to one acker task, in order; it is drained before the close, so no ack
    /// is lost to it.
    settle: Option<mpsc::UnboundedSender<Settle>>,
    meters: Meters,
    topic: Arc<str>,
    subscription: Arc<str>,
    /// Runs of messages this consumer nacked, for their redeliveries.
    memory: RunMemory,
    /// Whether failed messages go to the parking topic (no DLQ).
    parking: bool,
    /// The DLQ or parking topic.
    destination: Option<String>,
    /// The retry topic's subscription ([`RetryStrategy::Topic`](crate::core::RetryStrategy)).
    retry_sub: Option<Arc<dyn Subscription>>,
}

impl<M: Send + 'static> Driver<M> {
    async fn run(
        mut self,
        mut shutdown_rx: watch::Receiver<Option<Duration>>,
        mut control_rx: mpsc::UnboundedReceiver<super::control::Command>,
    ) -> ConsumerReport {
        let credit = Arc::new(Semaphore::new(0));
        let (deliver_tx, mut deliver_rx) =
            mpsc::channel::<(ReceivedMessage, bool)>(self.machine.config().max_held() as usize + 2);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let (stop_rx_tx, stop_rx) = watch::channel(false);
        let mut sources = vec![Source::new(
            self.sub.clone(),
            false,
            self.spec.topic.clone(),
        )];
        if let Some(rs) = self.retry_sub.clone() {
            let topic = self.spec.retry_topic_name().unwrap_or_default();
            sources.push(Source::new(rs, true, topic));
        }
        let receiver = tokio::spawn(receive_loop(
            sources,
            credit.clone(),
            deliver_tx,
            stop_rx,
            self.bs.clone(),
        ));
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        self.settle = Some(settle_tx);
        let acker = tokio::spawn(settle_loop(
            self.sub.clone(),
            self.retry_sub.clone(),
            settle_rx,
            self.bs.clone(),
            self.topic.clone(),
        ));
        tracing::info!(topic = %self.spec.topic, subscription = %self.spec.subscription, "consumer started");
        let mut shutting_down = false;
        // One wait for the shutdown signal for the whole run (a fresh `changed()` per loop turn
        // would register with the watch's waiter list once per message).
        let shutdown_signal = async {
            let changed = shutdown_rx.changed().await;
            (changed, *shutdown_rx.borrow())
        };
        tokio::pin!(shutdown_signal);
        loop {
            self.drain(&credit, &done_tx);
            if self.machine.is_drained() {
                break;
            }
            let deadline = self
                .machine
                .poll_timeout()
                .map(|t| self.bs.clock().instant(t));
            tokio::select! {
                biased;
                (changed, requested) = &mut shutdown_signal, if !shutting_down => {
                    let grace = match changed {
                        Ok(()) => requested.unwrap_or(self.spec.shutdown_grace),
                        Err(_) => self.spec.shutdown_grace, // handle dropped: shut down too
                    };
                    let grace = grace.min(self.spec.shutdown_grace);
                    shutting_down = true;
                    let _ = stop_rx_tx.send(true);
                    let now = self.bs.clock().now();
                    tracing::info!(topic = %self.spec.topic, subscription = %self.spec.subscription, grace = ?grace, in_flight = self.machine.in_flight(), "consumer shutting down");
                    self.machine.handle_shutdown(now, now + grace);
                }
                Some(done) = done_rx.recv() => {
                    let now = self.bs.clock().now();
                    match done {
                        Done::Handler(key, r) => {
                            let kind = r.as_ref().err().map(|e| e.kind());
                            if let Some(slot) = self.slot_mut(key) {
                                slot.abort = None;
                                if let Err(e) = r { slot.last_error = Some(e); }
                            }
                            self.machine.handle_finished(now, key, kind.map_or(Ok(()), Err));
                        }
                        Done::Dlq(key, r) => {
                            self.machine.handle_dlq_result(now, key, r.map_err(|e| e.kind()));
                        }
                        Done::Retry(key, r) => {
                            if let Err(e) = &r {
                                tracing::warn!(topic = %self.topic, error = %e, "retry-topic publish failed: nacking for redelivery");
                            }
                            self.machine.handle_retry_result(now, key, r.map_err(|e| e.kind()));
                        }
                    }
                }
                Some(c) = control_rx.recv() => {
                    super::control::apply(&mut self.machine, self.bs.clock().now(), c, self.bs.metrics(), &self.name);
                }
                Some((msg, from_retry)) = deliver_rx.recv() => {
                    let now = self.bs.clock().now();
                    let decoded = self.decoder.decode(&msg.payload);
                    let ok = decoded.is_ok();
                    let prior = prior_runs(&msg, &self.spec.topic, &self.memory, self.machine.config().retry().max_retries());
                    let ordering_key = ordering_hash(&msg);
                    let key = self.machine.handle_delivery(now, crate::core::Delivered { decoded: ok, prior_runs: prior, ordering_key });
                    let last_error = decoded.as_ref().err().map(|e| HandlerError::new(ErrorKind::Decode, format!("payload does not decode: {e}")));
                    self.put(Slot { key, msg: Arc::new(msg), decoded: decoded.ok(), last_error, abort: None, runs: prior, from_retry });
                }
                _ = sleep_until_opt(deadline) => {
                    let now = self.bs.clock().now();
                    self.machine.handle_timeout(now);
                }
            }
        }
        let _ = stop_rx_tx.send(true);
        let _ = receiver.await;
        while self.io.join_next().await.is_some() {}
        self.settle = None; // closes the channel: the acker finishes what is queued, then ends
        let _ = acker.await;
        // Deliveries the receiver pulled after shutdown began never reached the machine: give them back.
        deliver_rx.close();
        while let Some((msg, from_retry)) = deliver_rx.recv().await {
            let sub = match (&self.retry_sub, from_retry) {
                (Some(rs), true) => rs,
                _ => &self.sub,
            };
            let _ = sub.nack(&msg.id).await;
            self.report.nacked += 1;
        }
        let _ = self.sub.close().await;
        if let Some(rs) = &self.retry_sub {
            let _ = rs.close().await;
        }
        tracing::info!(topic = %self.spec.topic, subscription = %self.spec.subscription, report = ?self.report, "consumer stopped");
        self.report
    }

    fn drain(&mut self, credit: &Arc<Semaphore>, done_tx: &mpsc::UnboundedSender<Done>) {
        while self.io.try_join_next().is_some() {}
        loop {
            let mut progressed = false;
            while let Some(action) = self.machine.poll_action() {
                progressed = true;
                if let Some(o) = &self.bs.inner.observer {
                    o.consumer_action(&self.name, self.bs.clock().now(), &action);
                }
                self.perform(action, credit, done_tx);
            }
            while let Some(ev) = self.machine.poll_event() {
                progressed = true;
                if let Some(o) = &self.bs.inner.observer {
                    o.consumer_event(&self.name, self.bs.clock().now(), &ev);
                }
                self.record(ev);
            }
            if !progressed {
                break;
            }
        }
        self.meters
            .in_flight
            .set(i64::from(self.machine.in_flight()));
        self.meters
            .breaker_failures
            .set(i64::from(self.machine.breaker_failures()));
        self.report.max_in_flight = self.report.max_in_flight.max(self.machine.in_flight());
    }

    fn perform(
        &mut self,
        action: ConsumerAction,
        credit: &Arc<Semaphore>,
        done_tx: &mpsc::UnboundedSender<Done>,
    ) {
        match action {
            ConsumerAction::Request { count } => credit.add_permits(count as usize),
            ConsumerAction::Invoke { key, attempt } => {
                let decoder = self.decoder.clone();
                let Some(slot) = self.slot_mut(key) else {
                    return;
                };
                slot.runs = attempt;
                let value = match slot.decoded.take() {
                    Some(v) => Ok(v),
                    None => decoder.decode(&slot.msg.payload),
                };
                let msg = slot.msg.clone();
                let delivery = Delivery::new(msg.clone(), self.subscription.clone(), attempt);
                let handler = self.handler.clone();
                let done = done_tx.clone();
                let timeout = self.spec.handler_timeout;
                let classifier = self.classifier.clone();
                let span = tracing::info_span!(
                    "backstop.handle",
                    topic = %self.topic,
                    subscription = %self.subscription,
                    message_id = %delivery.message_id(),
                    key = delivery.key().unwrap_or(""),
                    attempt,
                );
                #[cfg(feature = "otel")]
                super::otel::continue_from(&span, delivery.properties());
                let task = tokio::spawn(
                    async move {
                        let r = match value {
                            Err(e) => Err(HandlerError::new(
                                ErrorKind::Decode,
                                format!("payload does not decode: {e}"),
                            )),
                            Ok(v) => run_guarded(handler(v, delivery), timeout).await,
                        };
                        let r = r.map_err(|e| e.reclassified(classifier.as_ref().map(|c| c.get())));
                        if let Err(e) = &r {
                            tracing::warn!(kind = %e.kind(), error = %e.message(), "handler failed");
                        }
                        let _ = done.send(Done::Handler(key, r));
                    }
                    .instrument(span),
                );
                if let Some(slot) = self.slot_mut(key) {
                    slot.abort = Some(task.abort_handle());
                }
            }
            ConsumerAction::Ack { key } => {
                if let Some(slot) = self.take(key) {
                    self.memory.forget(&slot.msg.id);
                    if let Some(tx) = &self.settle {
                        let _ = tx.send(Settle::Ack(slot.msg.id.clone(), slot.from_retry));
                    }
                }
            }
            ConsumerAction::Nack { key, reason } => {
                if let Some(slot) = self.take(key) {
                    if let Some(abort) = slot.abort {
                        abort.abort();
                    }
                    tracing::info!(topic = %self.topic, message_id = %slot.msg.id, reason = ?reason, runs = slot.runs, "nack");
                    self.memory
                        .remember(slot.msg.id.clone(), slot.runs, slot.msg.redelivery_count);
                    if let Some(tx) = &self.settle {
                        let _ = tx.send(Settle::Nack(slot.msg.id.clone(), slot.from_retry));
                    }
                }
            }
            ConsumerAction::PublishDlq { key, info } => {
                let Some(slot) = self.slot(key) else { return };
                let err = slot
                    .last_error
                    .clone()
                    .unwrap_or_else(|| HandlerError::new(info.kind, "failed"));
                let mut record = record_from(
                    &info,
                    &self.spec.topic,
                    err.kind(),
                    err.message().to_string(),
                    self.bs.clock().epoch_wall_ms(),
                );
                record.subscription = Some(self.spec.subscription.clone());
                record.origin_message_id = Some(origin_id(&slot.msg, slot.from_retry));
                let record = record.with_payload(&slot.msg.payload);
                let msg = super::dlq_fit::fitted_message(record, Some(&*slot.msg));
                let dlq_topic = self.destination.clone().unwrap_or_default();
                let bs = self.bs.clone();
                let done = done_tx.clone();
                self.io.spawn(async move {
                    bs.retain_records(&dlq_topic).await;
                    let r = publish_bounded(&bs, &dlq_topic, msg, "dead-letter").await;
                    let _ = done.send(Done::Dlq(key, r));
                });
            }
            ConsumerAction::PublishRetry {
                key,
                runs,
                delay_ms,
            } => {
                let delay = Duration::from_millis(delay_ms);
                let Some(slot) = self.slot(key) else { return };
                let Some(retry_topic) = self.spec.retry_topic_name() else {
                    return;
                };
                let msg = retry_copy(
                    &slot.msg,
                    slot.from_retry,
                    &self.spec.topic,
                    &retry_topic,
                    runs,
                    delay,
                );
                let bs = self.bs.clone();
                let done = done_tx.clone();
                self.io.spawn(async move {
                    let r = publish_bounded(&bs, &retry_topic, msg, "retry-topic").await;
                    let _ = done.send(Done::Retry(key, r));
                });
            }
            ConsumerAction::Pause => {
                tracing::warn!(topic = %self.spec.topic, subscription = %self.spec.subscription, breaker = %self.breaker_name, "breaker open: consumer paused");
            }
            ConsumerAction::Resume => {
                tracing::info!(topic = %self.spec.topic, subscription = %self.spec.subscription, breaker = %self.breaker_name, "breaker closed: consumer resumed");
            }
        }
    }

    fn record(&mut self, ev: ConsumerEvent) {
        let m = self.bs.metrics().clone();
        let (topic, sub) = (self.spec.topic.as_str(), self.spec.subscription.as_str());
        match ev {
            ConsumerEvent::Received {
                key,
                poison,
                prior_runs,
                ..
            } => {
                self.report.received += 1;
                self.meters.received.inc();
                if !poison && prior_runs > self.machine.config().retry().max_retries() {
                    self.report.arrived_spent += 1;
                    tracing::info!(topic, subscription = sub, key = %key, prior_runs, "redelivered with its attempt budget spent: not run again");
                }
                if poison {
                    m.record_error(topic, ErrorKind::Decode);
                    tracing::warn!(topic, subscription = sub, key = %key, "undecodable payload: dead-lettering it");
                }
            }
            ConsumerEvent::Invoked {
                key,
                attempt,
                probe,
            } => {
                self.report.invoked += 1;
                tracing::debug!(topic, subscription = sub, key = %key, attempt, probe, "handler invoked");
            }
            ConsumerEvent::Succeeded { latency, .. } => {
                self.meters.handle_latency.observe(latency.as_secs_f64());
            }
            ConsumerEvent::Failed { kind, latency, .. } => {
                if kind == ErrorKind::Panic {
                    self.report.panicked += 1;
                }
                m.record_error(topic, kind);
                self.meters.handle_latency.observe(latency.as_secs_f64());
            }
            ConsumerEvent::RetryScheduled {
                key, next_attempt, ..
            } => {
                self.report.retried += 1;
                self.meters.retried.inc();
                tracing::info!(topic, subscription = sub, key = %key, next_attempt, "retry scheduled");
            }
            ConsumerEvent::DeadLettered { key, info } if self.parking => {
                self.report.parked += 1;
                self.meters.parked.inc();
                let park_topic = self.destination.as_deref().unwrap_or_default();
                tracing::warn!(topic, subscription = sub, key = %key, park_topic, reason = info.reason.as_str(), attempts = info.attempts, kind = %info.kind, "parked: failed for good and no DLQ; release with `backstop dlq redrive --dlq {park_topic}`");
            }
            ConsumerEvent::DeadLettered { key, info } => {
                self.report.dead_lettered += 1;
                self.meters.dead_lettered.inc();
                tracing::warn!(topic, subscription = sub, key = %key, reason = info.reason.as_str(), attempts = info.attempts, kind = %info.kind, "dead-lettered");
            }
            ConsumerEvent::DeadLetterFailed { key, kind } => {
                m.record_error(self.destination.as_deref().unwrap_or(topic), kind);
                tracing::error!(topic, subscription = sub, key = %key, kind = %kind, "dead-letter publish failed: nacking for redelivery");
            }
            ConsumerEvent::Acked { .. } => {
                self.report.acked += 1;
                self.meters.acked.inc();
            }
            ConsumerEvent::Nacked { reason, .. } => {
                self.report.nacked += 1;
                let r = match reason {
                    NackReason::NoDeadLetter => "no_dead_letter",
                    NackReason::DeadLetterFailed => "dead_letter_failed",
                    NackReason::Shutdown => "shutdown",
                    NackReason::Retry => "retry",
                    NackReason::RetryFailed => "retry_failed",
                };
                m.nacked.with_label_values(&[topic, sub, r]).inc();
            }
            ConsumerEvent::Breaker(t) => {
                self.report.breaker_transitions += 1;
                m.record_transition(&self.breaker_name, &t);
                tracing::warn!(breaker = %self.breaker_name, from = t.from.as_str(), to = t.to.as_str(), failures = t.failures, "circuit breaker transition");
            }
            ConsumerEvent::RetryPublished { key } => {
                tracing::debug!(topic, subscription = sub, key = %key, "retry copy confirmed: acking the original");
            }
            ConsumerEvent::RetryPublishFailed { kind, .. } => {
                m.record_error(
                    self.spec.retry_topic_name().as_deref().unwrap_or(topic),
                    kind,
                );
            }
            ConsumerEvent::Drained => {
                tracing::info!(topic, subscription = sub, "consumer drained");
            }
        }
    }

    fn put(&mut self, slot: Slot<M>) {
        let i = slot.key.index();
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i] = Some(slot);
    }

    fn slot(&self, key: Key) -> Option<&Slot<M>> {
        self.slots
            .get(key.index())?
            .as_ref()
            .filter(|s| s.key == key)
    }

    fn slot_mut(&mut self, key: Key) -> Option<&mut Slot<M>> {
        self.slots
            .get_mut(key.index())?
            .as_mut()
            .filter(|s| s.key == key)
    }

    fn take(&mut self, key: Key) -> Option<Slot<M>> {
        let cell = self.slots.get_mut(key.index())?;
        if cell.as_ref().is_some_and(|s| s.key == key) {
            cell.take()
        } else {
            None
        }
    }
}

/// How many nacked messages a consumer remembers the runs of (oldest forgotten first).
const RUN_MEMORY: usize = 65_536;

/// The runs of messages this consumer nacked, so their redeliveries continue the budget
/// (bounded: the oldest entries are forgotten first; forgotten ones fall back to the broker's
/// count, see [`prior_runs`]).
#[derive(Debug)]
struct RunMemory {
    /// Message id → (runs when this consumer nacked it, its redelivery count then).
    runs: std::collections::HashMap<crate::broker::MessageId, Remembered>,
    order: std::collections::VecDeque<crate::broker::MessageId>,
    cap: usize,
}

impl RunMemory {
    fn new(cap: usize) -> RunMemory {
        RunMemory {
            runs: std::collections::HashMap::new(),
            order: std::collections::VecDeque::new(),
            cap,
        }
    }

    fn remember(&mut self, id: crate::broker::MessageId, runs: u32, redelivery_count: u32) {
        let r = Remembered {
            runs,
            redelivery_count,
        };
        if self.runs.insert(id.clone(), r).is_none() {
            self.order.push_back(id);
            while self.runs.len() > self.cap {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                self.runs.remove(&old);
            }
        }
    }

    fn forget(&mut self, id: &crate::broker::MessageId) {
        if self.runs.remove(id).is_some() {
            self.order.retain(|x| x != id);
        }
    }

    fn get(&self, id: &crate::broker::MessageId) -> Option<Remembered> {
        self.runs.get(id).copied()
    }
}

/// What a consumer knows of a message it nacked.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Remembered {
    /// Handler runs of it before the nack.
    runs: u32,
    /// The broker's redelivery count of the delivery it nacked.
    redelivery_count: u32,
}

/// Handler runs of `msg` before this delivery that backstop can know about (docs/retries.md):
/// - `RECONSUMETIMES` (the Java client's meaning: the runs of the message before this copy of
///   it was published to a retry topic) when its `REAL_TOPIC` names `topic`, so a copy made
///   for another topic (a DLQ record read by a DLQ consumer) starts afresh;
/// - plus the runs of this message id this consumer remembers from nacking it; or, when it does
///   not remember it (another process, a restart, forgotten), the broker's redelivery count,
///   capped at `max_retries`: a redelivery does not prove the handler ran (a shutdown nack, a
///   crash before the run), so the broker's count alone never spends the last run;
/// - when it remembers it but the broker delivered it elsewhere meanwhile (a Shared
///   subscription: the redelivery count rose by more than this consumer's own nack), each of
///   those deliveries counts as a run, under the same cap, so consumers taking turns on one
///   message cannot each spend a fresh budget.
fn prior_runs(msg: &ReceivedMessage, topic: &str, memory: &RunMemory, max_retries: u32) -> u32 {
    let copies = reconsume_times(msg, topic);
    match memory.get(&msg.id) {
        Some(r) => {
            let elsewhere = msg.redelivery_count.saturating_sub(r.redelivery_count + 1);
            let runs = r.runs + elsewhere.min(max_retries.saturating_sub(r.runs));
            runs.max(copies)
        }
        None => copies.saturating_add(msg.redelivery_count.min(max_retries)),
    }
}

/// The id a DLQ record names as the origin: a retry copy's `ORIGIN_MESSAGE_ID`, else the
/// delivery's own id.
fn origin_id(msg: &ReceivedMessage, from_retry: bool) -> String {
    match msg.properties.get("ORIGIN_MESSAGE_ID") {
        Some(o) if from_retry => o.clone(),
        _ => msg.id.to_string(),
    }
}

/// The retry-topic copy of `msg` after `runs` runs, delivered after `delay`: its payload, key,
/// ordering key, event time and properties, plus the Java client's retry properties
/// (`RECONSUMETIMES` = `runs`, `DELAY_TIME` in ms, `REAL_TOPIC` = `topic`, `RETRY_TOPIC`,
/// `ORIGIN_MESSAGE_ID` = the first delivery's id, kept across copies).
pub(crate) fn retry_copy(
    msg: &ReceivedMessage,
    from_retry: bool,
    topic: &str,
    retry_topic: &str,
    runs: u32,
    delay: Duration,
) -> crate::broker::OutgoingMessage {
    let mut properties = msg.properties.clone();
    let origin = origin_id(msg, from_retry);
    properties.insert("RECONSUMETIMES".into(), runs.to_string());
    properties.insert("DELAY_TIME".into(), delay.as_millis().to_string());
    properties.insert("REAL_TOPIC".into(), topic.to_string());
    properties.insert("RETRY_TOPIC".into(), retry_topic.to_string());
    properties.insert("ORIGIN_MESSAGE_ID".into(), origin);
    crate::broker::OutgoingMessage {
        payload: msg.payload.clone(),
        key: msg.key.clone(),
        properties,
        ordering_key: msg.metadata.ordering_key.clone(),
        event_time_ms: msg.metadata.event_time_ms,
        deliver_after: Some(delay),
    }
}

/// The hash an ordered consumer queues a message under: of its ordering key, else its key
/// (FNV-1a, the same in every process); `None` without either.
fn ordering_hash(msg: &ReceivedMessage) -> Option<u64> {
    let bytes: &[u8] = match (&msg.metadata.ordering_key, &msg.key) {
        (Some(o), _) => o,
        (None, Some(k)) => k.as_bytes(),
        (None, None) => return None,
    };
    Some(bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    }))
}

/// The `RECONSUMETIMES` property of a retry copy made for `topic`, else 0.
pub(crate) fn reconsume_times(msg: &ReceivedMessage, topic: &str) -> u32 {
    let real = msg.properties.get("REAL_TOPIC").map(String::as_str);
    if !real.is_some_and(|r| same_topic(r, topic)) {
        return 0;
    }
    msg.properties
        .get("RECONSUMETIMES")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether two topic names are the same topic, one perhaps fully qualified
/// (`persistent://tenant/ns/name`) and the other short.
fn same_topic(a: &str, b: &str) -> bool {
    a == b || a.ends_with(&format!("/{b}")) || b.ends_with(&format!("/{a}"))
}

/// Attempts of one DLQ, parking or retry-topic publish before it counts as failed (and the
/// message is nacked for redelivery).
const PUBLISH_ATTEMPTS: u32 = 3;

/// Publishes `msg` to `topic` for the consumer (a DLQ or parking record, a retry copy): each
/// attempt within 10 s; a transient failure (Connection, Timeout) is retried up to
/// [`PUBLISH_ATTEMPTS`] times with a doubling backoff from 200 ms, the message staying held
/// (unacked) meanwhile, and replaces the topic's cached producer only if it is still the one
/// that failed, so concurrent failures cause one new producer, not one each. Other failures
/// return at once.
async fn publish_bounded(
    bs: &Backstop,
    topic: &str,
    msg: crate::broker::OutgoingMessage,
    what: &str,
) -> Result<(), BrokerError> {
    let mut backoff = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        // The one publish path: shared producer, send timeout, a failed producer replaced once.
        let r = bs
            .send(topic, msg.clone(), Duration::from_secs(10))
            .await
            .map(|_| ());
        let Err(e) = r else { return Ok(()) };
        if !e.kind().is_transient() || attempt >= PUBLISH_ATTEMPTS {
            return Err(e); // counted by the machine's failure event
        }
        bs.metrics().record_error(topic, e.kind());
        tracing::warn!(topic, attempt, error = %e, retry_in = ?backoff, "{what} publish failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff *= 2;
        attempt += 1;
    }
}

/// Attempts of one ack or nack before the acker gives up on it (the broker then redelivers the
/// message after a reconnect or its ack timeout: a duplicate, never a loss).
const SETTLE_ATTEMPTS: u32 = 4;

/// Sends acks and nacks to the broker in the order the machine decided them. A settle that
/// fails with a transient kind (Connection, Timeout) is retried a few times with a short
/// backoff: left alone, a failed ack on a connection that stays up would leave the delivery
/// unacked on the broker indefinitely (found by the simulation).
async fn settle_loop(
    main: Arc<dyn Subscription>,
    retry: Option<Arc<dyn Subscription>>,
    mut rx: mpsc::UnboundedReceiver<Settle>,
    bs: Backstop,
    topic: Arc<str>,
) {
    while let Some(s) = rx.recv().await {
        let (id, ack, from_retry) = match s {
            Settle::Ack(id, r) => (id, true, r),
            Settle::Nack(id, r) => (id, false, r),
        };
        let sub = match (&retry, from_retry) {
            (Some(r), true) => r,
            _ => &main,
        };
        let mut backoff = Duration::from_millis(50);
        for attempt in 1..=SETTLE_ATTEMPTS {
            let r = if ack {
                sub.ack(&id).await
            } else {
                sub.nack(&id).await
            };
            let Err(e) = r else { break };
            bs.metrics().record_error(&topic, e.kind());
            let transient = e.kind().is_transient();
            if !transient || attempt == SETTLE_ATTEMPTS {
                tracing::warn!(topic = %topic, message_id = %id, ack, attempt, error = %e, "settling failed; the broker redelivers the message later");
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
}

/// Runs one handler or task body: a panic is a failed attempt of kind Panic, and a run past
/// `timeout` is cancelled (its future dropped) and is a failed attempt of kind Timeout.
pub(crate) async fn run_guarded<T>(
    fut: impl Future<Output = Result<T, HandlerError>>,
    timeout: Option<Duration>,
) -> Result<T, HandlerError> {
    let guarded = AssertUnwindSafe(fut).catch_unwind();
    let r = match timeout {
        None => guarded.await,
        Some(t) => match tokio::time::timeout(t, guarded).await {
            Ok(r) => r,
            Err(_) => {
                return Err(HandlerError::timeout(format!(
                    "run cancelled after its timeout of {t:?}"
                )))
            }
        },
    };
    r.unwrap_or_else(|p| Err(HandlerError::new(ErrorKind::Panic, panic_text(&p))))
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// One subscription the receiver reads: the consumed topic or its retry topic.
struct Source {
    sub: Arc<dyn Subscription>,
    from_retry: bool,
    topic: String,
    /// After a receive error: no receive from this source before then.
    resume: Option<tokio::time::Instant>,
    backoff: Duration,
}

impl Source {
    fn new(sub: Arc<dyn Subscription>, from_retry: bool, topic: String) -> Source {
        Source {
            sub,
            from_retry,
            topic,
            resume: None,
            backoff: RECEIVE_BACKOFF,
        }
    }

    /// The next delivery, or never while the source is backing off (or absent).
    async fn receive(
        source: Option<&Source>,
    ) -> Option<(Result<ReceivedMessage, BrokerError>, bool)> {
        match source {
            Some(s) if s.resume.is_none() => Some((s.sub.receive().await, s.from_retry)),
            _ => std::future::pending().await,
        }
    }
}

/// The first pause after a receive error (doubled per error, up to 5 s).
const RECEIVE_BACKOFF: Duration = Duration::from_millis(100);

/// Pulls deliveries while the machine grants credit, from the consumed topic and (with the
/// retry-topic strategy) its retry topic; backs a source off on broker errors.
///
/// One credit is one delivery from *either* subscription: a receive waits on both at once and
/// the loser is dropped (receives are cancel-safe). Two loops each holding a credit while they
/// wait would starve one topic whenever the machine grants a single credit (`max_held` 1, or
/// the last free slot): a retry copy would wait behind an idle main topic, or the main topic
/// behind an empty retry topic. Which subscription is asked first alternates, so neither
/// starves the other.
async fn receive_loop(
    mut sources: Vec<Source>,
    credit: Arc<Semaphore>,
    tx: mpsc::Sender<(ReceivedMessage, bool)>,
    stop: watch::Receiver<bool>,
    bs: Backstop,
) {
    let mut flip = false;
    // One wait for the stop signal for the whole loop, not a fresh one per receive.
    let stopped = async move {
        let mut stop = stop;
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let permit = tokio::select! {
            biased;
            _ = &mut stopped => return,
            p = credit.acquire() => match p { Ok(p) => p, Err(_) => return },
        };
        loop {
            flip = !flip;
            let (first, second) = match (sources.first(), sources.get(1)) {
                (a, Some(b)) if flip => (Some(b), a),
                (a, b) => (a, b),
            };
            let resume = sources.iter().filter_map(|s| s.resume).min();
            let got = tokio::select! {
                biased;
                _ = &mut stopped => return,
                Some(r) = Source::receive(first) => r,
                Some(r) = Source::receive(second) => r,
                _ = sleep_until_opt(resume) => {
                    let now = tokio::time::Instant::now();
                    for s in &mut sources {
                        if s.resume.is_some_and(|t| t <= now) {
                            s.resume = None;
                        }
                    }
                    continue;
                }
            };
            let source = sources
                .iter_mut()
                .find(|s| s.from_retry == got.1)
                .expect("a delivery comes from one of the sources");
            match got.0 {
                Ok(msg) => {
                    permit.forget();
                    source.backoff = RECEIVE_BACKOFF;
                    if tx.send((msg, got.1)).await.is_err() {
                        return;
                    }
                    break;
                }
                Err(e) => {
                    bs.metrics().record_error(&source.topic, e.kind());
                    tracing::warn!(topic = %source.topic, error = %e, retry_in = ?source.backoff, "receive failed");
                    source.resume = Some(tokio::time::Instant::now() + source.backoff);
                    source.backoff = (source.backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;
    use crate::broker::MessageId;

    fn msg(id: u8, redelivery_count: u32, props: &[(&str, &str)]) -> ReceivedMessage {
        ReceivedMessage {
            id: MessageId(vec![id]),
            topic: "in".into(),
            payload: Vec::new(),
            key: None,
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            redelivery_count,
            metadata: Default::default(),
        }
    }

    #[test]
    fn prior_runs_prefers_what_this_consumer_remembers_and_caps_the_brokers_count() {
        let mut mem = RunMemory::new(2);
        // Unknown here: the broker's count, never the whole budget.
        assert_eq!(prior_runs(&msg(1, 0, &[]), "in", &mem, 3), 0);
        assert_eq!(prior_runs(&msg(1, 2, &[]), "in", &mem, 3), 2);
        assert_eq!(prior_runs(&msg(1, 9, &[]), "in", &mem, 3), 3);
        // Remembered: exact, also 0 for a message nacked before it ran.
        mem.remember(MessageId(vec![1]), 4, 0);
        mem.remember(MessageId(vec![2]), 0, 0);
        assert_eq!(prior_runs(&msg(1, 1, &[]), "in", &mem, 3), 4);
        assert_eq!(prior_runs(&msg(2, 1, &[]), "in", &mem, 3), 0);
        // Bounded: the oldest is forgotten first; an ack forgets.
        mem.remember(MessageId(vec![3]), 1, 0);
        assert_eq!(mem.get(&MessageId(vec![1])).map(|r| r.runs), None);
        mem.forget(&MessageId(vec![3]));
        assert_eq!(mem.get(&MessageId(vec![3])), None);
        assert_eq!(mem.get(&MessageId(vec![2])).map(|r| r.runs), Some(0));
    }

    /// Found by the turmoil tier (nack strategy, two services on a Shared subscription): a
    /// consumer that nacked a message after one run, and gets it back after another consumer
    /// ran it too, counts that run; it never spends more than the cap on deliveries it did not
    /// see, and its own exact count still wins when higher.
    #[test]
    fn prior_runs_count_the_deliveries_made_elsewhere_since_this_consumers_nack() {
        let mut mem = RunMemory::new(4);
        mem.remember(MessageId(vec![1]), 1, 0); // ran once here, nacked at count 0
        assert_eq!(
            prior_runs(&msg(1, 1, &[]), "in", &mem, 2),
            1,
            "straight back"
        );
        assert_eq!(
            prior_runs(&msg(1, 2, &[]), "in", &mem, 2),
            2,
            "one run elsewhere"
        );
        assert_eq!(
            prior_runs(&msg(1, 9, &[]), "in", &mem, 2),
            2,
            "capped: one run left"
        );
        mem.remember(MessageId(vec![2]), 3, 0); // spent here
        assert_eq!(prior_runs(&msg(2, 5, &[]), "in", &mem, 2), 3);
    }

    #[test]
    fn reconsumetimes_counts_only_on_a_copy_made_for_this_topic() {
        let copy = |real: &str| msg(5, 0, &[("REAL_TOPIC", real), ("RECONSUMETIMES", "2")]);
        assert_eq!(reconsume_times(&copy("in"), "in"), 2);
        assert_eq!(
            reconsume_times(&copy("persistent://public/default/in"), "in"),
            2
        );
        assert_eq!(reconsume_times(&copy("other"), "in"), 0);
        assert_eq!(
            reconsume_times(&msg(5, 0, &[("RECONSUMETIMES", "2")]), "in"),
            0
        );
        let mem = RunMemory::new(4);
        assert_eq!(prior_runs(&copy("in"), "in", &mem, 5), 2);
    }
}
