//! Validated settings for a task and a consumer: the decorator arguments of the original guide
//! (`topic`, `max_retries`, `retry_delay`, `dlq_topic`, `subscription`, `max_parallelism`) and
//! the rest, rejected with a [`ConfigError`] naming the setting when they are built.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::SubscriptionType;
use crate::core::ErrorKind;

use super::error::ClassifyFn;

/// A user's error classifier (see [`ConsumerSpec::classify`]), shared and cheap to clone.
#[derive(Clone)]
pub(crate) struct Classifier(Arc<ClassifyFn>);

impl Classifier {
    pub(crate) fn new<F>(f: F) -> Classifier
    where
        F: Fn(&(dyn StdError + 'static)) -> Option<ErrorKind> + Send + Sync + 'static,
    {
        Classifier(Arc::new(f))
    }
    pub(crate) fn get(&self) -> &ClassifyFn {
        &*self.0
    }
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Classifier(..)")
    }
}
use crate::core::{
    BreakerConfig, ConfigError, ConsumerConfig, ProducerConfig, RetryPolicy, RetryStrategy,
};

fn check_topic(setting: &'static str, topic: &str) -> Result<(), ConfigError> {
    if topic.trim().is_empty() {
        return Err(ConfigError::new(setting, "must not be empty"));
    }
    if topic.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::new(
            setting,
            format!("`{topic}` contains whitespace or control characters"),
        ));
    }
    crate::core::topic_name_problem(topic).map_or(Ok(()), |why| Err(ConfigError::new(setting, why)))
}

/// Rejects an invalid DLQ topic, or one equal to the topic it serves.
fn check_dlq_topic(topic: &str, dlq: Option<&str>) -> Result<(), ConfigError> {
    if let Some(d) = dlq {
        check_topic("dlq_topic", d)?;
        if d == topic {
            return Err(ConfigError::new("dlq_topic", "must differ from topic"));
        }
    }
    Ok(())
}

/// The topic a partition belongs to (`orders` for `orders-partition-3`), as the Java client
/// names per-subscription topics after the partitioned topic.
fn base_topic(topic: &str) -> &str {
    match topic.rsplit_once("-partition-") {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => topic,
    }
}

/// Applies a context's topic prefix to a topic and its DLQ topic.
fn prefix_topics(prefix: &str, topic: &mut String, dlq: &mut Option<String>) {
    *topic = format!("{prefix}{topic}");
    if let Some(d) = dlq {
        *d = format!("{prefix}{d}");
    }
}

/// An explicit retry policy, or the fixed one made of `max_retries` and `retry_delay`.
fn resolve_retry(
    explicit: Option<RetryPolicy>,
    max_retries: u32,
    retry_delay: Duration,
) -> Result<RetryPolicy, ConfigError> {
    match explicit {
        Some(p) => Ok(p),
        None => RetryPolicy::builder()
            .max_retries(max_retries)
            .retry_delay(retry_delay)
            .build(),
    }
}

/// Settings of a producer task (`#[task(...)]`).
///
/// ```
/// use backstop_engine::runtime::TaskSpec;
/// use std::time::Duration;
/// let spec = TaskSpec::new("user_updates")
///     .max_retries(3)
///     .retry_delay(Duration::from_secs(5))
///     .dlq_topic("user_updates_dlq")
///     .build()?;
/// assert_eq!(spec.topic(), "user_updates");
/// assert!(TaskSpec::new("").build().is_err());
/// # Ok::<(), backstop_engine::core::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct TaskSpec {
    topic: String,
    max_retries: u32,
    retry_delay: Duration,
    dlq_topic: Option<String>,
    breaker: Option<BreakerConfig>,
    send_timeout: Duration,
    retry: Option<RetryPolicy>,
    pub(crate) body_timeout: Option<Duration>,
    pub(crate) classifier: Option<Classifier>,
}

impl TaskSpec {
    /// Settings for a task publishing to `topic`: 3 retries 5 s apart, no DLQ, the runtime's
    /// breaker defaults, 10 s send timeout.
    pub fn new(topic: impl Into<String>) -> TaskSpec {
        TaskSpec {
            topic: topic.into(),
            max_retries: 3,
            retry_delay: Duration::from_secs(5),
            dlq_topic: None,
            breaker: None,
            send_timeout: Duration::from_secs(10),
            retry: None,
            body_timeout: None,
            classifier: None,
        }
    }
    /// How long one run of the body may take: a run past it is cancelled and counts as a failed
    /// attempt of kind Timeout (retried, and counted by the breaker). Off by default.
    pub fn body_timeout(mut self, d: Duration) -> Self {
        self.body_timeout = Some(d);
        self
    }
    /// Classifies the body's errors that `?` converted (see [`ConsumerSpec::classify`]).
    pub fn classify<F>(mut self, f: F) -> Self
    where
        F: Fn(&(dyn StdError + 'static)) -> Option<ErrorKind> + Send + Sync + 'static,
    {
        self.classifier = Some(Classifier::new(f));
        self
    }
    /// Retries after the first attempt.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }
    /// Delay between attempts.
    pub fn retry_delay(mut self, d: Duration) -> Self {
        self.retry_delay = d;
        self
    }
    /// Dead-letter topic.
    pub fn dlq_topic(mut self, topic: impl Into<String>) -> Self {
        self.dlq_topic = Some(topic.into());
        self
    }
    /// Breaker settings for this task (default: the runtime's).
    pub fn breaker(mut self, b: BreakerConfig) -> Self {
        self.breaker = Some(b);
        self
    }
    /// A full retry policy (overrides `max_retries` and `retry_delay`), e.g. exponential backoff.
    pub fn retry_policy(mut self, p: RetryPolicy) -> Self {
        self.retry = Some(p);
        self
    }
    /// How long one publish may take before it counts as a Timeout.
    pub fn send_timeout(mut self, d: Duration) -> Self {
        self.send_timeout = d;
        self
    }
    /// Validates.
    pub fn build(self) -> Result<TaskSpec, ConfigError> {
        check_topic("topic", &self.topic)?;
        check_dlq_topic(&self.topic, self.dlq_topic.as_deref())?;
        if self.send_timeout.is_zero() {
            return Err(ConfigError::new(
                "send_timeout",
                "must be greater than zero",
            ));
        }
        if self.body_timeout.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "body_timeout",
                "must be greater than zero",
            ));
        }
        self.retry_policy_checked()?;
        Ok(self)
    }
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub(crate) fn prefixed(mut self, prefix: &str) -> TaskSpec {
        prefix_topics(prefix, &mut self.topic, &mut self.dlq_topic);
        self
    }
    /// The DLQ topic.
    pub fn dlq(&self) -> Option<&str> {
        self.dlq_topic.as_deref()
    }
    /// The send timeout.
    pub fn send_timeout_value(&self) -> Duration {
        self.send_timeout
    }
    fn retry_policy_checked(&self) -> Result<RetryPolicy, ConfigError> {
        resolve_retry(self.retry, self.max_retries, self.retry_delay)
    }
    /// The core settings a task built from this spec runs with, given the context's default
    /// breaker ([`Backstop::breaker_defaults`](crate::runtime::Backstop::breaker_defaults)):
    /// what an outside checker (backstop-testkit's oracle) needs to model the task.
    pub fn producer_config(
        &self,
        default_breaker: BreakerConfig,
    ) -> Result<ProducerConfig, ConfigError> {
        ProducerConfig::builder()
            .retry(self.retry_policy_checked()?)
            .breaker(self.breaker.unwrap_or(default_breaker))
            .dead_letter(self.dlq_topic.is_some())
            .build()
    }
}

/// Settings of a consumer (`#[consumer(...)]`).
///
/// ```
/// use backstop_engine::runtime::ConsumerSpec;
/// let spec = ConsumerSpec::new("user_updates", "user_service").max_parallelism(5).build()?;
/// assert_eq!(spec.max_parallelism_value(), 5);
/// let err = ConsumerSpec::new("user_updates", "s").max_parallelism(0).build().unwrap_err();
/// assert_eq!(err.setting(), "max_parallelism");
/// # Ok::<(), backstop_engine::core::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    pub(crate) topic: String,
    pub(crate) subscription: String,
    pub(crate) kind: SubscriptionType,
    max_parallelism: u32,
    max_retries: u32,
    retry_delay: Duration,
    pub(crate) dlq_topic: Option<String>,
    breaker: Option<BreakerConfig>,
    retry: Option<RetryPolicy>,
    pub(crate) shutdown_grace: Duration,
    max_held: u32,
    pub(crate) nack_delay: Duration,
    pub(crate) handler_timeout: Option<Duration>,
    pub(crate) classifier: Option<Classifier>,
    parking: bool,
    park_topic: Option<String>,
    strategy: RetryStrategy,
    retry_topic: Option<String>,
    ordered: Option<bool>,
}

impl ConsumerSpec {
    /// A Shared subscription, parallelism 1, 3 retries 5 s apart, no DLQ (failed messages are
    /// parked on `<topic>-<subscription>-PARKED`), 30 s shutdown grace.
    pub fn new(topic: impl Into<String>, subscription: impl Into<String>) -> ConsumerSpec {
        ConsumerSpec {
            topic: topic.into(),
            subscription: subscription.into(),
            kind: SubscriptionType::Shared,
            max_parallelism: 1,
            max_retries: 3,
            retry_delay: Duration::from_secs(5),
            dlq_topic: None,
            breaker: None,
            retry: None,
            shutdown_grace: Duration::from_secs(30),
            max_held: 0,
            nack_delay: Duration::from_secs(1),
            handler_timeout: None,
            classifier: None,
            parking: true,
            park_topic: None,
            strategy: RetryStrategy::InProcess,
            retry_topic: None,
            ordered: None,
        }
    }
    /// Per-key ordered retries (docs/retries.md): messages with the same ordering key (the
    /// ordering key, else the key) run one at a time in arrival order, so while a message of
    /// key K waits for its retry, later messages of K are held (they count toward `max_held`)
    /// and other keys flow. Default: on for Exclusive and Failover subscriptions with the
    /// in-process strategy, off otherwise. Allowed on Exclusive, Failover and Key_Shared, with
    /// the in-process strategy only (a retry that leaves the consumer cannot keep its place).
    pub fn ordered(mut self, on: bool) -> Self {
        self.ordered = Some(on);
        self
    }
    /// Whether this consumer keeps per-key order (see [`ordered`](Self::ordered)).
    pub fn is_ordered(&self) -> bool {
        self.ordered.unwrap_or(
            matches!(
                self.kind,
                SubscriptionType::Exclusive | SubscriptionType::Failover
            ) && self.strategy == RetryStrategy::InProcess,
        )
    }
    /// The retry topic under [`RetryStrategy::Topic`] (default
    /// `<topic>-<subscription>-RETRY`, the Java client's naming, `<topic>` without a
    /// `-partition-N` suffix). The consumer subscribes to it too, with the same subscription.
    pub fn retry_topic(mut self, topic: impl Into<String>) -> Self {
        self.retry_topic = Some(topic.into());
        self
    }
    /// The retry topic this consumer publishes retries to and consumes: `None` unless the
    /// strategy is [`RetryStrategy::Topic`].
    pub fn retry_topic_name(&self) -> Option<String> {
        (self.strategy == RetryStrategy::Topic).then(|| {
            self.retry_topic.clone().unwrap_or_else(|| {
                format!("{}-{}-RETRY", base_topic(&self.topic), self.subscription)
            })
        })
    }
    /// Where a failed message waits for its next attempt (docs/retries.md):
    /// [`RetryStrategy::InProcess`] (the default: a timer in the consumer, exact delays and
    /// backoff, no broker traffic), [`RetryStrategy::Nack`] (nacked; the broker redelivers it
    /// after the retry delay — the policy's base `retry_delay`, as Pulsar's nack delay is one
    /// per consumer — and nothing is held meanwhile) or [`RetryStrategy::Topic`] (a copy goes to
    /// the [retry topic](Self::retry_topic) with delayed delivery; durable). The attempt budget
    /// is the same under each.
    pub fn retry_strategy(mut self, s: RetryStrategy) -> Self {
        self.strategy = s;
        self
    }
    /// The redelivery delay the subscription is made with: the retry delay under
    /// [`RetryStrategy::Nack`], else [`nack_delay`](Self::nack_delay).
    pub(crate) fn subscription_nack_delay(&self) -> Duration {
        match self.strategy {
            RetryStrategy::Nack => self.retry.map_or(self.retry_delay, |p| p.retry_delay()),
            RetryStrategy::InProcess | RetryStrategy::Topic => self.nack_delay,
        }
    }
    /// Where a message that failed for good goes when there is no DLQ (default
    /// `<topic>-<subscription>-PARKED`, `<topic>` without a `-partition-N` suffix). A parked message is acked only after its record (the
    /// dead-letter record format) is confirmed on this topic; `backstop dlq redrive --dlq <it>`
    /// releases it. Ignored when a DLQ is set.
    pub fn park_topic(mut self, topic: impl Into<String>) -> Self {
        self.park_topic = Some(topic.into());
        self
    }
    /// Whether failed messages are parked when there is no DLQ (default `true`). With `false`,
    /// such a message is nacked instead; its redeliveries are not run again while this process
    /// remembers its runs (see docs/retries.md), so it cycles through the broker every
    /// `nack_delay` until an operator removes it.
    pub fn parking(mut self, on: bool) -> Self {
        self.parking = on;
        self
    }
    /// The topic failed messages are parked on: `None` when a DLQ is set or parking is off.
    pub fn parking_topic(&self) -> Option<String> {
        if self.dlq_topic.is_some() || !self.parking {
            return None;
        }
        Some(
            self.park_topic.clone().unwrap_or_else(|| {
                format!("{}-{}-PARKED", base_topic(&self.topic), self.subscription)
            }),
        )
    }
    /// Where a message that failed for good goes: the DLQ, else the parking topic.
    pub(crate) fn dead_letter_destination(&self) -> Option<String> {
        self.dlq_topic.clone().or_else(|| self.parking_topic())
    }
    /// How long one handler run may take: a run past it is cancelled, its parallelism slot freed
    /// at once, and it counts as a failed attempt of kind Timeout (retried, and counted by the
    /// breaker). Off by default.
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.handler_timeout = Some(d);
        self
    }
    /// Classifies the handler's errors that `?` converted: `f` sees each error of the source
    /// chain and may name its kind; `None` leaves it to the default table
    /// ([`classify`](super::classify)). Errors built with an explicit kind
    /// (`HandlerError::invalid(..)`, …) are not re-classified.
    ///
    /// ```
    /// use backstop_engine::core::ErrorKind;
    /// use backstop_engine::runtime::ConsumerSpec;
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("quota exceeded")]
    /// struct QuotaExceeded;
    /// let spec = ConsumerSpec::new("user_updates", "user_service")
    ///     .classify(|e| e.is::<QuotaExceeded>().then_some(ErrorKind::Rejected))
    ///     .build()?;
    /// # Ok::<(), backstop_engine::core::ConfigError>(())
    /// ```
    pub fn classify<F>(mut self, f: F) -> Self
    where
        F: Fn(&(dyn StdError + 'static)) -> Option<ErrorKind> + Send + Sync + 'static,
    {
        self.classifier = Some(Classifier::new(f));
        self
    }
    /// The subscription type.
    pub fn subscription_type(mut self, kind: SubscriptionType) -> Self {
        self.kind = kind;
        self
    }
    /// Handler runs in flight at once.
    pub fn max_parallelism(mut self, n: u32) -> Self {
        self.max_parallelism = n;
        self
    }
    /// Retries after the first attempt.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }
    /// Delay between attempts.
    pub fn retry_delay(mut self, d: Duration) -> Self {
        self.retry_delay = d;
        self
    }
    /// A full retry policy (overrides `max_retries` and `retry_delay`).
    pub fn retry_policy(mut self, p: RetryPolicy) -> Self {
        self.retry = Some(p);
        self
    }
    /// Dead-letter topic.
    pub fn dlq_topic(mut self, topic: impl Into<String>) -> Self {
        self.dlq_topic = Some(topic.into());
        self
    }
    /// Breaker settings (default: the runtime's).
    pub fn breaker(mut self, b: BreakerConfig) -> Self {
        self.breaker = Some(b);
        self
    }
    /// How long in-flight handlers may run after shutdown begins.
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = d;
        self
    }
    /// Deliveries held at once (0: 4 × max_parallelism).
    pub fn max_held(mut self, n: u32) -> Self {
        self.max_held = n;
        self
    }
    /// Redelivery delay hint for nacked messages.
    pub fn nack_delay(mut self, d: Duration) -> Self {
        self.nack_delay = d;
        self
    }
    /// Validates.
    pub fn build(self) -> Result<ConsumerSpec, ConfigError> {
        check_topic("topic", &self.topic)?;
        if self.subscription.trim().is_empty() {
            return Err(ConfigError::new("subscription", "must not be empty"));
        }
        check_dlq_topic(&self.topic, self.dlq_topic.as_deref())?;
        if let Some(p) = self.parking_topic() {
            check_topic("park_topic", &p)?;
            if p == self.topic {
                return Err(ConfigError::new("park_topic", "must differ from topic"));
            }
        }
        if self.ordered == Some(true) {
            if self.kind == SubscriptionType::Shared {
                return Err(ConfigError::new(
                    "ordered",
                    "per-key order needs an Exclusive, Failover or Key_Shared subscription",
                ));
            }
            if self.strategy != RetryStrategy::InProcess {
                return Err(ConfigError::new(
                    "ordered",
                    "per-key order needs the in_process retry strategy",
                ));
            }
        }
        if let Some(r) = self.retry_topic_name() {
            check_topic("retry_topic", &r)?;
            if r == self.topic || Some(&r) == self.dlq_topic.as_ref() {
                return Err(ConfigError::new(
                    "retry_topic",
                    "must differ from topic and dlq_topic",
                ));
            }
        }
        if self.handler_timeout.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new(
                "handler_timeout",
                "must be greater than zero",
            ));
        }
        self.consumer_config(BreakerConfig::default())?;
        Ok(self)
    }
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub(crate) fn prefixed(mut self, prefix: &str) -> ConsumerSpec {
        prefix_topics(prefix, &mut self.topic, &mut self.dlq_topic);
        for t in [&mut self.park_topic, &mut self.retry_topic]
            .into_iter()
            .flatten()
        {
            *t = format!("{prefix}{t}");
        }
        self
    }
    /// The subscription.
    pub fn subscription(&self) -> &str {
        &self.subscription
    }
    /// The parallelism bound.
    pub fn max_parallelism_value(&self) -> u32 {
        self.max_parallelism
    }
    /// The core settings a consumer built from this spec runs with, given the context's default
    /// breaker ([`Backstop::breaker_defaults`](crate::runtime::Backstop::breaker_defaults)):
    /// what an outside checker (backstop-testkit's oracle) needs to model the consumer.
    pub fn consumer_config(
        &self,
        default_breaker: BreakerConfig,
    ) -> Result<ConsumerConfig, ConfigError> {
        let retry = resolve_retry(self.retry, self.max_retries, self.retry_delay)?;
        ConsumerConfig::builder()
            .max_parallelism(self.max_parallelism)
            .max_held(self.max_held)
            .retry(retry)
            .breaker(self.breaker.unwrap_or(default_breaker))
            .dead_letter(self.dead_letter_destination().is_some())
            .retry_strategy(self.strategy)
            .ordered(self.is_ordered())
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parking_topic_follows_the_java_naming_and_yields_to_a_dlq() {
        let spec = |t: &str| ConsumerSpec::new(t, "svc").build().unwrap();
        assert_eq!(
            spec("orders").parking_topic().as_deref(),
            Some("orders-svc-PARKED")
        );
        assert_eq!(
            spec("persistent://public/default/orders-partition-2")
                .parking_topic()
                .as_deref(),
            Some("persistent://public/default/orders-svc-PARKED")
        );
        let s = ConsumerSpec::new("orders", "svc")
            .dlq_topic("orders-dlq")
            .build()
            .unwrap();
        assert_eq!(s.parking_topic(), None);
        assert_eq!(s.dead_letter_destination().as_deref(), Some("orders-dlq"));
        let s = ConsumerSpec::new("orders", "svc")
            .park_topic("parked")
            .build()
            .unwrap()
            .prefixed("t1-");
        assert_eq!(s.parking_topic().as_deref(), Some("t1-parked"));
        let off = ConsumerSpec::new("orders", "svc").parking(false);
        assert_eq!(off.parking_topic(), None);
        let cfg = off.consumer_config(BreakerConfig::default()).unwrap();
        assert!(!cfg.dead_letter(), "nothing to publish to: nacked instead");
        let err = ConsumerSpec::new("orders", "svc")
            .park_topic("orders")
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), "park_topic");
    }
}
