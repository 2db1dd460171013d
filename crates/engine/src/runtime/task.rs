//! Runs task calls through a [`ProducerMachine`]: the body, the publish, retries, the DLQ and
//! the breaker, with the caller's arguments handed back on failure.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Poll, Waker};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{Histogram, IntCounter, IntGauge};
use serde::Serialize;
use tracing::Instrument;

use crate::broker::{BrokerError, MessageId, OutgoingMessage};
use crate::core::{
    ConfigError, DlqFate, ErrorKind, Key, ProducerAction, ProducerEvent, ProducerMachine,
    ProducerOutcome, Time,
};

use super::backstop::Backstop;
use super::codec::{Encoder, Json};
use super::consumer::run_guarded;
use super::dlq::record_from;
use super::error::{DeadLetter, FailureReason, HandlerError, TaskFailure};
use super::spec::TaskSpec;

/// A published result.
#[derive(Debug, Clone, PartialEq)]
pub struct Published<T> {
    /// The body's value.
    pub value: T,
    /// The broker's id for the message.
    pub id: MessageId,
    /// Attempts it took.
    pub attempts: u32,
}

/// What a task call publishes besides the payload: key, ordering key, properties, event time.
///
/// ```
/// use backstop_engine::runtime::MessageOptions;
/// use std::time::{Duration, UNIX_EPOCH};
/// let o = MessageOptions::new()
///     .key("user-42")
///     .ordering_key(b"user-42".to_vec())
///     .property("source", "signup")
///     .event_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
/// let m = o.to_message(b"{}".to_vec());
/// assert_eq!(m.key.as_deref(), Some("user-42"));
/// assert_eq!(m.event_time_ms, Some(1_700_000_000_000));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageOptions {
    /// The key (Pulsar's partition key).
    pub key: Option<String>,
    /// The ordering key (Key_Shared routing, when set).
    pub ordering_key: Option<Vec<u8>>,
    /// Properties.
    pub properties: BTreeMap<String, String>,
    /// The event time.
    pub event_time: Option<SystemTime>,
}

impl MessageOptions {
    /// No key, no properties, no event time.
    pub fn new() -> MessageOptions {
        MessageOptions::default()
    }
    /// Sets the key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
    /// Sets the ordering key.
    pub fn ordering_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }
    /// Adds a property.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }
    /// Sets the event time.
    pub fn event_time(mut self, t: SystemTime) -> Self {
        self.event_time = Some(t);
        self
    }
    /// The message to publish with `payload`.
    pub fn to_message(&self, payload: Vec<u8>) -> OutgoingMessage {
        OutgoingMessage {
            payload,
            key: self.key.clone(),
            properties: self.properties.clone(),
            ordering_key: self.ordering_key.clone(),
            event_time_ms: self.event_time.map(|t| {
                t.duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64)
            }),
            deliver_after: None,
        }
    }
}

struct Shared {
    machine: ProducerMachine,
    /// One per slot of the machine's calls, indexed by [`Key::index`]: a call's actions wait
    /// here for its caller. Slots are reused with the machine's keys, so once the task has seen
    /// its peak of concurrent calls, a call allocates nothing here.
    mailboxes: Vec<Mailbox>,
}

/// A call's mailbox: the actions routed to it and, while its caller waits, the caller's waker.
#[derive(Default)]
struct Mailbox {
    /// The call it belongs to; `None` when free.
    key: Option<Key>,
    actions: VecDeque<ProducerAction>,
    waker: Option<Waker>,
}

impl Shared {
    /// Opens `key`'s mailbox.
    fn open(&mut self, key: Key) {
        let i = key.index();
        if self.mailboxes.len() <= i {
            self.mailboxes.resize_with(i + 1, Mailbox::default);
        }
        let m = &mut self.mailboxes[i];
        m.key = Some(key);
        m.actions.clear();
        m.waker = None;
    }

    /// `key`'s mailbox, if open.
    fn mailbox(&mut self, key: Key) -> Option<&mut Mailbox> {
        self.mailboxes
            .get_mut(key.index())
            .filter(|m| m.key == Some(key))
    }

    /// Closes `key`'s mailbox; whether it was open.
    fn close(&mut self, key: Key) -> bool {
        match self.mailbox(key) {
            Some(m) => {
                m.key = None;
                m.actions.clear();
                m.waker = None;
                true
            }
            None => false,
        }
    }

    /// Delivers `action` to `key`'s mailbox (waking its caller if it waits); whether it was
    /// open.
    fn deliver(&mut self, key: Key, action: ProducerAction) -> bool {
        match self.mailbox(key) {
            Some(m) => {
                m.actions.push_back(action);
                if let Some(w) = m.waker.take() {
                    w.wake();
                }
                true
            }
            None => false,
        }
    }

    /// The next action waiting in `key`'s mailbox.
    fn take(&mut self, key: Key) -> Option<ProducerAction> {
        self.mailbox(key)?.actions.pop_front()
    }
}

/// Metric series a task writes on every call, looked up once (on first use, so a series
/// appears exactly when it did before) instead of by label on each call.
struct Series {
    breaker_failures: IntGauge,
    sent: OnceLock<IntCounter>,
    send_latency: OnceLock<Histogram>,
    publish_latency: OnceLock<Histogram>,
    /// The size of the last payload encoded (a capacity hint for the next).
    payload_size: AtomicUsize,
}

/// A producer task: a topic, its retry/DLQ settings and its own circuit breaker. Clone-cheap.
///
/// ```
/// # async fn demo(bs: backstop_engine::runtime::Backstop) -> Result<(), Box<dyn std::error::Error>> {
/// use backstop_engine::runtime::{Task, TaskSpec, TaskError};
/// let task = Task::new(&bs, TaskSpec::new("user_updates").max_retries(3).build()?)?;
/// let sent = task
///     .call(7_i64, |id: &i64| {
///         let id = *id;
///         async move {
///             if id <= 0 { return Err(TaskError::invalid("user_id must be positive integer")); }
///             Ok(serde_json::json!({ "status": "success", "user_id": id }))
///         }
///     })
///     .await?;
/// println!("published {} after {} attempt(s)", sent.id, sent.attempts);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Task {
    bs: Backstop,
    spec: Arc<TaskSpec>,
    breaker_name: Arc<str>,
    shared: Arc<Mutex<Shared>>,
    driver: Arc<Driver>,
    series: Arc<Series>,
}

/// The one timer of a task: a tokio task that sleeps until the machine's `poll_timeout` (retry
/// delays, the breaker's recovery) and feeds it `handle_timeout`, woken early whenever a call
/// changes the machine. Started on first use (inside a runtime); stopped when the last clone of
/// the [`Task`] is dropped. Calls themselves only wait for their own actions.
struct Driver {
    wake: Arc<tokio::sync::Notify>,
    /// The deadline the driver sleeps until, in core nanoseconds (`u64::MAX`: none), written
    /// under the task's lock: a route wakes it only when the machine's deadline moved earlier.
    armed: Arc<std::sync::atomic::AtomicU64>,
    running: std::sync::OnceLock<tokio::task::AbortHandle>,
    /// The driver's own handle on the task: it never starts another driver.
    inert: bool,
}

impl Driver {
    fn new(inert: bool) -> Driver {
        Driver {
            wake: Arc::new(tokio::sync::Notify::new()),
            armed: Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX)),
            running: std::sync::OnceLock::new(),
            inert,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(h) = self.running.get() {
            h.abort();
        }
    }
}

impl Task {
    /// A task in context `bs`.
    pub fn new(bs: &Backstop, spec: TaskSpec) -> Result<Task, ConfigError> {
        let spec = spec.build()?.prefixed(&bs.inner.topic_prefix);
        let cfg = spec.producer_config(bs.breaker_defaults())?;
        let breaker_name: Arc<str> = Arc::from(format!("task:{}", spec.topic()));
        bs.metrics().register_breaker(&breaker_name);
        let series = Arc::new(Series {
            breaker_failures: bs
                .metrics()
                .breaker_failures
                .with_label_values(&[&breaker_name]),
            sent: OnceLock::new(),
            send_latency: OnceLock::new(),
            publish_latency: OnceLock::new(),
            payload_size: AtomicUsize::new(0),
        });
        Ok(Task {
            bs: bs.clone(),
            spec: Arc::new(spec),
            breaker_name,
            shared: Arc::new(Mutex::new(Shared {
                machine: ProducerMachine::new(cfg),
                mailboxes: Vec::new(),
            })),
            driver: Arc::new(Driver::new(false)),
            series,
        })
    }

    /// The settings.
    pub fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    /// The breaker's name in metrics and logs (`task:<topic>`).
    pub fn breaker_name(&self) -> &str {
        &self.breaker_name
    }

    /// Wakes the driver (starting it on first use) when the machine's deadline is earlier than
    /// the one it sleeps on. Called with the task's lock held, so the driver's `armed` value is
    /// never stale here.
    fn kick(&self, deadline: Option<Time>) {
        let d = &self.driver;
        if d.inert {
            return;
        }
        let Some(at) = deadline else { return };
        if d.running.get().is_some()
            && at.as_nanos() >= d.armed.load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        if d.running.get().is_none() {
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                return; // outside a runtime: the first call starts it
            };
            let mut inert = Driver::new(true);
            inert.armed = d.armed.clone();
            let own = Task {
                driver: Arc::new(inert),
                ..self.clone()
            };
            let wake = d.wake.clone();
            let _ = d
                .running
                .get_or_init(|| rt.spawn(drive(own, wake)).abort_handle());
        }
        d.wake.notify_one();
    }

    /// Calls under way (started, not completed).
    pub fn calls_in_progress(&self) -> usize {
        self.lock().machine.calls_in_progress()
    }

    /// Forces this task's breaker open (calls fail fast, no probe) or closed (failures not
    /// counted), or releases it (`None`); logged and counted in `backstop_control_actions_total`.
    pub fn force_breaker(&self, forced: Option<crate::core::ForcedState>) {
        let now = self.now();
        self.lock().machine.handle_force_breaker(now, forced);
        super::control::record(
            self.bs.metrics(),
            &self.breaker_name,
            super::control::Command::ForceBreaker(forced),
        );
        self.route(self.now());
    }

    /// The breaker's current state and failure count.
    pub fn breaker(&self) -> (crate::core::BreakerState, u32) {
        let s = self.lock();
        (s.machine.breaker_state(), s.machine.breaker_failures())
    }

    /// Runs `body(&args)`, publishes its `Ok` value as JSON to the topic, and retries, dead-letters
    /// or fails fast as configured. A panic in the body is a failed, retryable attempt. On failure
    /// the arguments come back inside the [`TaskFailure`].
    pub async fn call<A, T, F, Fut>(&self, args: A, body: F) -> Result<Published<T>, TaskFailure<A>>
    where
        A: Serialize,
        T: Serialize,
        F: FnMut(&A) -> Fut,
        Fut: Future<Output = Result<T, HandlerError>>,
    {
        self.call_using(args, Json, |_: &A, _: &T| MessageOptions::default(), body)
            .await
    }

    /// Like [`call`](Self::call), publishing with `options` (key, ordering key, properties,
    /// event time).
    ///
    /// ```
    /// # async fn demo(bs: backstop_engine::runtime::Backstop) -> Result<(), Box<dyn std::error::Error>> {
    /// use backstop_engine::runtime::{MessageOptions, Task, TaskSpec, TaskError};
    /// let task = Task::new(&bs, TaskSpec::new("user_updates").build()?)?;
    /// let options = MessageOptions::new().key("user-42").property("source", "signup");
    /// task.call_with_options(42_i64, options, |id: &i64| {
    ///     let id = *id;
    ///     async move { Ok::<_, TaskError>(serde_json::json!({ "user_id": id })) }
    /// })
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn call_with_options<A, T, F, Fut>(
        &self,
        args: A,
        options: MessageOptions,
        body: F,
    ) -> Result<Published<T>, TaskFailure<A>>
    where
        A: Serialize,
        T: Serialize,
        F: FnMut(&A) -> Fut,
        Fut: Future<Output = Result<T, HandlerError>>,
    {
        self.call_using(args, Json, move |_: &A, _: &T| options.clone(), body)
            .await
    }

    /// The general form: the `Ok` value is encoded by `codec` ([`Json`], [`Raw`](super::Raw),
    /// [`Text`](super::Text), `Protobuf`, or your own [`Encoder`]), and published with the
    /// [`MessageOptions`] that `options` derives from the arguments and the value (e.g. the key
    /// from a field).
    ///
    /// ```
    /// # async fn demo(bs: backstop_engine::runtime::Backstop) -> Result<(), Box<dyn std::error::Error>> {
    /// use backstop_engine::runtime::{MessageOptions, Task, TaskSpec, TaskError, Text};
    /// let task = Task::new(&bs, TaskSpec::new("audit_lines").build()?)?;
    /// task.call_using(
    ///     7_u32,
    ///     Text,
    ///     |user: &u32, _line: &String| MessageOptions::new().key(user.to_string()),
    ///     |user: &u32| { let user = *user; async move { Ok::<_, TaskError>(format!("user {user} logged in")) } },
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn call_using<A, T, C, O, F, Fut>(
        &self,
        args: A,
        codec: C,
        options: O,
        mut body: F,
    ) -> Result<Published<T>, TaskFailure<A>>
    where
        A: Serialize,
        C: Encoder<T>,
        O: Fn(&A, &T) -> MessageOptions,
        F: FnMut(&A) -> Fut,
        Fut: Future<Output = Result<T, HandlerError>>,
    {
        let _in_flight = self.bs.track_call();
        let topic = self.spec.topic();
        let classifier = self
            .spec
            .classifier
            .as_ref()
            .or(self.bs.inner.classifier.as_ref());
        let mut message_options = MessageOptions::default();
        let (key, mut next) = {
            let mut s = self.lock();
            let now = self.now();
            let key = s.machine.handle_call(now);
            s.open(key);
            self.route_locked(&mut s, now);
            (key, s.take(key))
        };
        let mut guard = MailboxGuard {
            task: self,
            key,
            completed: false,
        };
        let mut abort = self.bs.inner.abort_calls.subscribe();
        let mut value: Option<T> = None;
        let mut payload: Option<Vec<u8>> = None;
        let mut last_error = HandlerError::new(ErrorKind::Handler, "no attempt made");
        let mut message_id = MessageId::default();
        let mut dead_letter = DeadLetter::NotConfigured;
        let mut encode_error: Option<String> = None;
        loop {
            let action = match next.take() {
                Some(a) => Some(a),
                None => tokio::select! {
                biased;
                a = self.wait_action(key) => a,
                _ = abort.wait_for(|a| *a) => {
                    tracing::warn!(topic = %topic, "shutdown: task call abandoned, data returned to the caller");
                    return Err(self.failure(FailureReason::ShuttingDown, 0, dead_letter, args, payload));
                }
                },
            };
            let Some(action) = action else {
                // The mailbox is gone only if the task was torn down; report what we have.
                return Err(self.failure(
                    FailureReason::CircuitOpen,
                    0,
                    dead_letter,
                    args,
                    payload,
                ));
            };
            match action {
                ProducerAction::RunBody { attempt, .. } => {
                    let span = tracing::info_span!("backstop.task", topic = %topic, attempt);
                    let run = run_guarded(body(&args), self.spec.body_timeout).instrument(span);
                    let r = tokio::select! {
                        biased;
                        r = run => r,
                        _ = abort.wait_for(|a| *a) => {
                            tracing::warn!(topic = %topic, "shutdown: task body abandoned, data returned to the caller");
                            return Err(self.failure(FailureReason::ShuttingDown, attempt, dead_letter, args, payload));
                        }
                    };
                    let r = r.map_err(|e| e.reclassified(classifier.as_ref().map(|c| c.get())));
                    let r = match r {
                        Ok(v) => {
                            match codec.encode_sized(&v, self.series.payload_size.load(Relaxed)) {
                                Ok(bytes) => {
                                    // exact for a task whose payloads keep their size
                                    self.series.payload_size.store(bytes.len(), Relaxed);
                                    message_options = options(&args, &v);
                                    payload = Some(bytes);
                                    value = Some(v);
                                    Ok(())
                                }
                                Err(e) => {
                                    let text = format!("encoding the result failed: {e}");
                                    encode_error = Some(text.clone());
                                    last_error = HandlerError::new(ErrorKind::Invalid, text);
                                    Err(ErrorKind::Invalid)
                                }
                            }
                        }
                        Err(e) => {
                            let k = e.kind();
                            last_error = e;
                            Err(k)
                        }
                    };
                    if let Err(kind) = &r {
                        tracing::warn!(topic = %topic, attempt, kind = %kind, error = %last_error.message(), "task body failed");
                    }
                    next = self.step(key, |m, now| {
                        m.handle_body_result(now, key, r);
                    });
                }
                ProducerAction::Publish { attempt, .. } => {
                    let span = tracing::info_span!(
                        "backstop.publish",
                        topic = %topic,
                        key = message_options.key.as_deref().unwrap_or(""),
                        attempt,
                        message_id = tracing::field::Empty,
                    );
                    #[allow(unused_mut)]
                    let mut msg = message_options.to_message(payload.clone().unwrap_or_default());
                    #[cfg(feature = "otel")]
                    span.in_scope(|| super::otel::inject(&mut msg.properties));
                    let latency = self.series.publish_latency.get_or_init(|| {
                        self.bs
                            .metrics()
                            .latency
                            .with_label_values(&[topic, "publish"])
                    });
                    let send =
                        self.bs
                            .send_observed(topic, msg, self.spec.send_timeout_value(), latency);
                    // A disabled span (no subscriber wants it) is not entered on every poll.
                    let (r, confirmed) = if span.is_disabled() {
                        send.await
                    } else {
                        send.instrument(span.clone()).await
                    };
                    let r = match r {
                        Ok(id) => {
                            span.record("message_id", tracing::field::display(&id));
                            message_id = id;
                            Ok(())
                        }
                        Err(e) => {
                            tracing::warn!(topic = %topic, attempt, kind = %e.kind(), error = %e.message(), "publish failed");
                            let k = e.kind();
                            last_error = e.into();
                            Err(k)
                        }
                    };
                    let now = match confirmed {
                        Some(at) => self.bs.clock().time_of(at),
                        None => self.now(),
                    };
                    next = self.step_at(now, key, |m, now| {
                        m.handle_publish_result(now, key, r);
                    });
                }
                ProducerAction::PublishDlq { info, .. } => {
                    let dlq_topic = self.spec.dlq().unwrap_or_default().to_string();
                    let mut record = record_from(
                        &info,
                        topic,
                        last_error.kind(),
                        last_error.message().to_string(),
                        self.bs.clock().epoch_wall_ms(),
                    );
                    record.args = serde_json::to_value(&args).ok();
                    if let Some(p) = &payload {
                        record = record.with_payload(p);
                    }
                    let msg = super::dlq_fit::fitted_message(record, None);
                    self.bs.retain_records(&dlq_topic).await;
                    let r = self.send(&dlq_topic, msg).await;
                    let r = match r {
                        Ok(id) => {
                            tracing::warn!(topic = %topic, dlq = %dlq_topic, id = %id, attempts = info.attempts, "task dead-lettered");
                            dead_letter = DeadLetter::Published {
                                topic: dlq_topic,
                                id,
                            };
                            Ok(())
                        }
                        Err(e) => {
                            tracing::error!(topic = %topic, dlq = %dlq_topic, error = %e, "dead-letter publish failed; data returned to the caller");
                            let k = e.kind();
                            dead_letter = DeadLetter::Failed {
                                topic: dlq_topic,
                                error: e.to_string(),
                            };
                            Err(k)
                        }
                    };
                    next = self.step(key, |m, now| {
                        m.handle_dlq_result(now, key, r);
                    });
                }
                ProducerAction::Complete { outcome, .. } => {
                    guard.completed = true;
                    return match outcome {
                        ProducerOutcome::Sent { attempts } => Ok(Published {
                            value: value.expect("a publish follows a successful body"),
                            id: message_id,
                            attempts,
                        }),
                        ProducerOutcome::CircuitOpen { attempts } => {
                            tracing::debug!(topic = %topic, breaker = %self.breaker_name, "call refused: circuit open");
                            Err(self.failure(
                                FailureReason::CircuitOpen,
                                attempts,
                                dead_letter,
                                args,
                                payload,
                            ))
                        }
                        ProducerOutcome::Failed {
                            kind,
                            attempts,
                            dlq,
                        } => {
                            if dlq == DlqFate::NotConfigured {
                                dead_letter = DeadLetter::NotConfigured;
                            }
                            let reason = match encode_error.take() {
                                Some(e) => FailureReason::Encode(e),
                                None => FailureReason::Failed {
                                    kind,
                                    message: last_error.message().to_string(),
                                },
                            };
                            Err(self.failure(reason, attempts, dead_letter, args, payload))
                        }
                    };
                }
            }
        }
    }

    /// Feeds the machine one input for call `key` at the current time, routes what it decided
    /// and returns the call's own next action if one is ready: one lock for the lot.
    fn step(
        &self,
        key: Key,
        input: impl FnOnce(&mut ProducerMachine, Time),
    ) -> Option<ProducerAction> {
        self.step_at(self.now(), key, input)
    }

    /// [`step`](Self::step) at `now`, read from the clock already.
    fn step_at(
        &self,
        now: Time,
        key: Key,
        input: impl FnOnce(&mut ProducerMachine, Time),
    ) -> Option<ProducerAction> {
        let mut s = self.lock();
        input(&mut s.machine, now);
        self.route_locked(&mut s, now);
        s.take(key)
    }

    /// Waits for the next action in `key`'s mailbox; `None` if the mailbox is closed.
    fn wait_action(&self, key: Key) -> impl Future<Output = Option<ProducerAction>> + '_ {
        std::future::poll_fn(move |cx| {
            let mut s = self.lock();
            let Some(m) = s.mailbox(key) else {
                return Poll::Ready(None);
            };
            match m.actions.pop_front() {
                Some(a) => Poll::Ready(Some(a)),
                None => {
                    if !m.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        m.waker = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
            }
        })
    }

    fn failure<A>(
        &self,
        reason: FailureReason,
        attempts: u32,
        dead_letter: DeadLetter,
        args: A,
        payload: Option<Vec<u8>>,
    ) -> TaskFailure<A> {
        TaskFailure {
            topic: self.spec.topic().to_string(),
            reason,
            attempts,
            dead_letter,
            args,
            payload,
        }
    }

    async fn send(&self, topic: &str, msg: OutgoingMessage) -> Result<MessageId, BrokerError> {
        self.bs
            .send(topic, msg, self.spec.send_timeout_value())
            .await
    }

    fn now(&self) -> Time {
        self.bs.clock().now()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`route_locked`](Self::route_locked) under the task's lock.
    fn route(&self, now: Time) -> Option<Time> {
        let mut s = self.lock();
        self.route_locked(&mut s, now)
    }

    /// Delivers queued actions to their calls' mailboxes, records events, and returns the
    /// machine's next deadline. Actions for calls whose caller went away are answered with a
    /// fatal error so the call completes and frees its slot. `now` is the time of the input that
    /// the machine last handled.
    fn route_locked(&self, s: &mut Shared, now: Time) -> Option<Time> {
        loop {
            let mut progressed = false;
            while let Some(action) = s.machine.poll_action() {
                progressed = true;
                if let Some(o) = &self.bs.inner.observer {
                    o.producer_action(self.spec.topic(), now, &action);
                }
                let key = match action {
                    ProducerAction::RunBody { call, .. }
                    | ProducerAction::Publish { call, .. }
                    | ProducerAction::PublishDlq { call, .. }
                    | ProducerAction::Complete { call, .. } => call,
                };
                if !s.deliver(key, action) {
                    match action {
                        ProducerAction::RunBody { .. } => {
                            s.machine
                                .handle_body_result(now, key, Err(ErrorKind::Fatal));
                        }
                        ProducerAction::Publish { .. } => {
                            s.machine
                                .handle_publish_result(now, key, Err(ErrorKind::Fatal));
                        }
                        ProducerAction::PublishDlq { .. } => {
                            s.machine.handle_dlq_result(now, key, Err(ErrorKind::Fatal));
                        }
                        ProducerAction::Complete { .. } => {}
                    }
                }
            }
            while let Some(ev) = s.machine.poll_event() {
                progressed = true;
                if let Some(o) = &self.bs.inner.observer {
                    o.producer_event(self.spec.topic(), now, &ev);
                }
                self.record(&ev);
            }
            if !progressed {
                break;
            }
        }
        self.series
            .breaker_failures
            .set(i64::from(s.machine.breaker_failures()));
        let deadline = s.machine.poll_timeout();
        self.kick(deadline);
        deadline
    }

    fn record(&self, ev: &ProducerEvent) {
        let m = self.bs.metrics();
        let topic = self.spec.topic();
        match ev {
            ProducerEvent::Sent { latency, .. } => {
                let series = &self.series;
                series
                    .sent
                    .get_or_init(|| m.sent.with_label_values(&[topic]))
                    .inc();
                series
                    .send_latency
                    .get_or_init(|| m.latency.with_label_values(&[topic, "send"]))
                    .observe(latency.as_secs_f64());
            }
            ProducerEvent::Failed { kind, .. } => m.record_error(topic, *kind),
            ProducerEvent::RetryScheduled { next_attempt, .. } => {
                m.retried.with_label_values(&[topic]).inc();
                tracing::info!(topic, next_attempt, "task retry scheduled");
            }
            ProducerEvent::Rejected { .. } => m.rejected.with_label_values(&[topic]).inc(),
            ProducerEvent::DeadLettered { .. } => m.dead_lettered.with_label_values(&[topic]).inc(),
            ProducerEvent::DeadLetterFailed { kind, .. } => {
                m.record_error(self.spec.dlq().unwrap_or(topic), *kind);
            }
            ProducerEvent::Breaker(t) => {
                m.record_transition(&self.breaker_name, t);
                tracing::warn!(breaker = %self.breaker_name, from = t.from.as_str(), to = t.to.as_str(), failures = t.failures, "circuit breaker transition");
            }
        }
    }
}

struct MailboxGuard<'a> {
    task: &'a Task,
    key: Key,
    /// The call received its `Complete`: the machine is done with it already.
    completed: bool,
}

impl Drop for MailboxGuard<'_> {
    /// A call whose caller went away (future dropped) is cancelled in the machine, so it frees
    /// its slot and, if it held the half-open probe, the probe. A completed call only closes its
    /// mailbox.
    fn drop(&mut self) {
        if self.completed {
            self.task.lock().close(self.key);
            return;
        }
        let now = self.task.now();
        let mut s = self.task.lock();
        if s.close(self.key) {
            s.machine.handle_cancelled(now, self.key);
        }
        self.task.route_locked(&mut s, now);
    }
}

/// The driver's loop (see [`Driver`]): sleep until the machine's deadline or a kick, whichever
/// comes first; at the deadline, feed the machine `handle_timeout` and route what it decided.
async fn drive(task: Task, wake: Arc<tokio::sync::Notify>) {
    loop {
        let kicked = wake.notified();
        tokio::pin!(kicked);
        kicked.as_mut().enable();
        let deadline = {
            let mut s = task.lock();
            let deadline = s.machine.poll_timeout();
            let armed = deadline.map_or(u64::MAX, Time::as_nanos);
            task.driver
                .armed
                .store(armed, std::sync::atomic::Ordering::Release);
            deadline
        };
        match deadline {
            None => kicked.await,
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(task.bs.clock().instant(at)) => {
                        let now = task.now();
                        let mut s = task.lock();
                        s.machine.handle_timeout(now);
                        task.route_locked(&mut s, now);
                    }
                    _ = &mut kicked => {}
                }
            }
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_string()
    }
}
