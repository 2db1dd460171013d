//! Feeds the engine's [`ConsumerOracle`] from what the runtime's observer reports: groups the
//! observed actions and events back into the machine's steps and infers each step's input.
//!
//! The runtime calls the machine (`handle_*` with `now`), then shows the observer every action
//! and then every event of that step, all with the same `now`. The oracle wants the input first,
//! then the outputs, then `end_step`. The observer does not report inputs, so they are
//! recovered from the events:
//!
//! | the step's first event | input fed to the oracle |
//! |---|---|
//! | `Received { key, poison, prior_runs, ordering_key }` | `delivered_observed(now, key, !poison, prior_runs, ordering_key)` |
//! | `Succeeded { key, .. }` / `Failed { key, kind, .. }` | `finished(now, key, Ok / Err(kind), accepted)` |
//! | `DeadLettered { key, .. }` / `DeadLetterFailed { key, kind }` | `dlq_result(now, key, Ok / Err(kind), accepted)` |
//! | `RetryPublished { key }` / `RetryPublishFailed { key, kind }` | `retry_result(now, key, Ok / Err(kind), accepted)` |
//! | anything else, or no event | `timeout(now)` (or the shutdown announced by the driver) |
//!
//! The machine puts an input's own event first in the step (before any retry, breaker or
//! invocation events its pump adds). A new step starts when an action follows an event, when an
//! input event follows any event, or when `now` changes. Steps the observer cannot see (no
//! output at all, such as a late result the machine ignored) change nothing the oracle models.
//! Graceful shutdown has no event of its own: the driver announces it
//! ([`ConsumerFeed::shutdown_requested`]) before asking the runtime to shut down.

use std::collections::BTreeSet;

use crate::oracle::{legal_edge, ConsumerOracle, Rule, Violation};
use backstop_engine::core::{
    BreakerState, ConsumerAction, ConsumerConfig, ConsumerEvent, Key, ProducerAction,
    ProducerEvent, Time,
};

#[derive(Default, Debug)]
struct Step {
    now: Time,
    actions: Vec<ConsumerAction>,
    events: Vec<ConsumerEvent>,
}

impl Step {
    fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.events.is_empty()
    }
}

fn is_input(e: &ConsumerEvent) -> bool {
    matches!(
        e,
        ConsumerEvent::Received { .. }
            | ConsumerEvent::Succeeded { .. }
            | ConsumerEvent::Failed { .. }
            | ConsumerEvent::DeadLettered { .. }
            | ConsumerEvent::DeadLetterFailed { .. }
            | ConsumerEvent::RetryPublished { .. }
            | ConsumerEvent::RetryPublishFailed { .. }
    )
}

/// One consumer (one runtime incarnation of one subscription) under its oracle.
///
/// ```
/// use backstop_engine::core::{ConsumerAction, ConsumerConfig, ConsumerEvent, ConsumerMachine, Time};
/// use backstop_testkit::feed::ConsumerFeed;
/// let cfg = ConsumerConfig::builder().build()?;
/// let mut m = ConsumerMachine::new(cfg);
/// let mut feed = ConsumerFeed::new(cfg);
/// // What an observer would see: the initial credit step, then a delivery.
/// let mut show = |m: &mut ConsumerMachine, feed: &mut ConsumerFeed, now| {
///     while let Some(a) = m.poll_action() { feed.action(now, a).unwrap(); }
///     while let Some(e) = m.poll_event() { feed.event(now, e).unwrap(); }
/// };
/// show(&mut m, &mut feed, Time::ZERO);
/// m.handle_delivered(Time::ZERO, true);
/// show(&mut m, &mut feed, Time::ZERO);
/// feed.flush().unwrap();
/// assert_eq!(feed.oracle().stats().invoked, 1);
/// # Ok::<(), backstop_engine::core::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct ConsumerFeed {
    oracle: ConsumerOracle,
    started: bool,
    step: Step,
    pending_shutdown: Option<(Time, Time)>,
    announced: bool,
    steps: u64,
}

impl ConsumerFeed {
    /// A feed for a consumer whose machine was built from `cfg`.
    pub fn new(cfg: ConsumerConfig) -> ConsumerFeed {
        ConsumerFeed {
            oracle: ConsumerOracle::new(cfg),
            started: false,
            step: Step::default(),
            pending_shutdown: None,
            announced: false,
            steps: 0,
        }
    }

    /// The oracle (its stats and reference breaker).
    pub fn oracle(&self) -> &ConsumerOracle {
        &self.oracle
    }

    /// Steps checked so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Whether a graceful shutdown was announced.
    pub fn shutdown_announced(&self) -> bool {
        self.announced
    }

    /// An observed action.
    pub fn action(&mut self, now: Time, a: ConsumerAction) -> Result<(), Violation> {
        if !self.started {
            // The machine's constructor emits exactly one action, its initial credit request,
            // and no event: that is the whole first step.
            self.started = true;
            self.steps += 1;
            self.oracle.action(&a)?;
            return self.oracle.end_step();
        }
        if !self.step.events.is_empty() || (now != self.step.now && !self.step.is_empty()) {
            self.flush()?;
        }
        self.step.now = now;
        self.step.actions.push(a);
        Ok(())
    }

    /// An observed event.
    pub fn event(&mut self, now: Time, e: ConsumerEvent) -> Result<(), Violation> {
        if (now != self.step.now && !self.step.is_empty())
            || (is_input(&e) && !self.step.events.is_empty())
        {
            self.flush()?;
        }
        self.step.now = now;
        self.step.events.push(e);
        Ok(())
    }

    /// The driver is about to shut the consumer down at `now` with `deadline`. Flushes what was
    /// observed before.
    pub fn shutdown_requested(&mut self, now: Time, deadline: Time) -> Result<(), Violation> {
        self.flush()?;
        self.pending_shutdown = Some((now, deadline));
        self.announced = true;
        Ok(())
    }

    /// Feeds the buffered step (if any) to the oracle and ends it. Call when the runtime cannot
    /// be in the middle of a step (between simulation steps), and before final checks.
    pub fn flush(&mut self) -> Result<(), Violation> {
        if self.step.is_empty() {
            if let Some((at, deadline)) = self.pending_shutdown.take() {
                // The runtime took the shutdown, and its step had no output.
                self.oracle.shutdown(at, deadline)?;
                self.oracle.end_step()?;
            }
            return Ok(());
        }
        let step = std::mem::take(&mut self.step);
        self.steps += 1;
        let input = step.events.first().copied().filter(is_input);
        if let Some((at, deadline)) = self.pending_shutdown.take() {
            self.oracle.shutdown(at, deadline)?;
            if input.is_none() && step.now == at {
                // This is the shutdown's own step.
                return self.outputs(&step);
            }
            // The shutdown's step had no output; this is a later one.
            self.oracle.end_step()?;
        }
        let now = step.now;
        match input {
            Some(ConsumerEvent::Received {
                key,
                poison,
                prior_runs,
                ordering_key,
            }) => self
                .oracle
                .delivered_observed(now, key, !poison, prior_runs, ordering_key)?,
            Some(ConsumerEvent::Succeeded { key, .. }) => {
                self.oracle.finished(now, key, Ok(()), true)?
            }
            Some(ConsumerEvent::Failed { key, kind, .. }) => {
                self.oracle.finished(now, key, Err(kind), true)?
            }
            Some(ConsumerEvent::DeadLettered { key, .. }) => {
                self.oracle.dlq_result(now, key, Ok(()), true)?
            }
            Some(ConsumerEvent::DeadLetterFailed { key, kind }) => {
                self.oracle.dlq_result(now, key, Err(kind), true)?
            }
            Some(ConsumerEvent::RetryPublished { key }) => {
                self.oracle.retry_result(now, key, Ok(()), true)?
            }
            Some(ConsumerEvent::RetryPublishFailed { key, kind }) => {
                self.oracle.retry_result(now, key, Err(kind), true)?
            }
            _ => self.oracle.timeout(now)?,
        }
        self.outputs(&step)
    }

    fn outputs(&mut self, step: &Step) -> Result<(), Violation> {
        for a in &step.actions {
            self.oracle.action(a)?;
        }
        for e in &step.events {
            self.oracle.event(e)?;
        }
        self.oracle.end_step()
    }

    /// Liveness once everything healed and the consumer was shut down gracefully: nothing held,
    /// `Drained` seen. (The machine's own timer is not visible through the observer; with
    /// nothing held and the breaker closed the machine has none left.)
    pub fn check_settled(&self) -> Result<(), Violation> {
        self.oracle.check_settled(None)
    }
}

/// Light checks of one task (producer) through the observer: no attempt beyond
/// `max_retries + 1`, exactly one `Complete` per call, breaker transitions along legal edges
/// from the state last reported. (The full [`ProducerOracle`](crate::oracle::ProducerOracle)
/// needs inputs the observer does not show — a body's success has no event — so the pure-core
/// tier runs it instead.)
#[derive(Debug)]
pub struct TaskWatch {
    max_attempts: u32,
    completed: BTreeSet<Key>,
    state: BreakerState,
    opened: u64,
}

impl TaskWatch {
    /// A watch for a task allowing `max_attempts` attempts per call.
    pub fn new(max_attempts: u32) -> TaskWatch {
        TaskWatch {
            max_attempts,
            completed: BTreeSet::new(),
            state: BreakerState::Closed,
            opened: 0,
        }
    }

    /// Times the task's breaker opened.
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// The breaker state last reported.
    pub fn breaker(&self) -> BreakerState {
        self.state
    }

    /// An observed action.
    pub fn action(&mut self, now: Time, a: &ProducerAction) -> Result<(), Violation> {
        let bad = |rule, key, detail: String| {
            Err(Violation {
                rule,
                at: now,
                key: Some(key),
                detail,
            })
        };
        match *a {
            ProducerAction::RunBody { call, attempt }
            | ProducerAction::Publish { call, attempt } => {
                if attempt > self.max_attempts {
                    return bad(
                        Rule::TooManyAttempts,
                        call,
                        format!("task attempt {attempt} of at most {}", self.max_attempts),
                    );
                }
                if self.completed.contains(&call) {
                    return bad(
                        Rule::AfterTerminal,
                        call,
                        "task action after Complete".into(),
                    );
                }
            }
            ProducerAction::PublishDlq { call, .. } => {
                if self.completed.contains(&call) {
                    return bad(
                        Rule::AfterTerminal,
                        call,
                        "task DLQ publish after Complete".into(),
                    );
                }
            }
            ProducerAction::Complete { call, outcome } => {
                if !self.completed.insert(call) {
                    return bad(
                        Rule::DoubleTerminal,
                        call,
                        format!("a second Complete ({outcome:?})"),
                    );
                }
            }
        }
        Ok(())
    }

    /// An observed event.
    pub fn event(&mut self, now: Time, e: &ProducerEvent) -> Result<(), Violation> {
        if let ProducerEvent::Breaker(t) = e {
            if t.from != self.state || !legal_edge(t.from, t.to) {
                return Err(Violation {
                    rule: Rule::IllegalTransition,
                    at: now,
                    key: None,
                    detail: format!(
                        "task breaker reported {} → {} while it was {}",
                        t.from.as_str(),
                        t.to.as_str(),
                        self.state.as_str()
                    ),
                });
            }
            if t.to == BreakerState::Open {
                self.opened += 1;
            }
            self.state = t.to;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_engine::core::{ConsumerMachine, ErrorKind, RetryPolicy};
    use std::time::Duration;

    /// Drives a machine and a feed side by side, showing the feed only what an observer sees.
    struct Pair {
        m: ConsumerMachine,
        f: ConsumerFeed,
    }

    impl Pair {
        fn new(cfg: ConsumerConfig) -> Pair {
            let mut p = Pair {
                m: ConsumerMachine::new(cfg),
                f: ConsumerFeed::new(cfg),
            };
            p.show(Time::ZERO).unwrap();
            p
        }

        fn show(&mut self, now: Time) -> Result<Vec<ConsumerAction>, Violation> {
            let mut out = Vec::new();
            while let Some(a) = self.m.poll_action() {
                out.push(a);
                self.f.action(now, a)?;
            }
            while let Some(e) = self.m.poll_event() {
                self.f.event(now, e)?;
            }
            Ok(out)
        }
    }

    fn cfg(dlq: bool) -> ConsumerConfig {
        ConsumerConfig::builder()
            .max_parallelism(2)
            .retry(
                RetryPolicy::builder()
                    .max_retries(1)
                    .retry_delay(Duration::from_secs(1))
                    .build()
                    .unwrap(),
            )
            .dead_letter(dlq)
            .build()
            .unwrap()
    }

    #[test]
    fn a_run_with_retries_dlq_and_shutdown_passes() {
        let mut p = Pair::new(cfg(true));
        let t = Time::from_millis;
        let a = p.m.handle_delivered(t(0), true);
        p.show(t(0)).unwrap();
        let b = p.m.handle_delivered(t(0), true);
        p.show(t(0)).unwrap();
        p.m.handle_finished(t(10), a, Err(ErrorKind::Timeout));
        p.show(t(10)).unwrap();
        p.m.handle_finished(t(10), b, Ok(()));
        p.show(t(10)).unwrap();
        // The retry is due at 1.01 s: a timeout step with only an invocation.
        p.m.handle_timeout(t(1010));
        p.show(t(1010)).unwrap();
        p.m.handle_finished(t(1020), a, Err(ErrorKind::Timeout));
        let out = p.show(t(1020)).unwrap();
        assert!(matches!(out[0], ConsumerAction::PublishDlq { .. }));
        p.m.handle_dlq_result(t(1030), a, Ok(()));
        p.show(t(1030)).unwrap();
        p.f.shutdown_requested(t(2000), t(3000)).unwrap();
        p.m.handle_shutdown(t(2000), t(3000));
        p.show(t(2000)).unwrap();
        p.f.flush().unwrap();
        p.f.check_settled().unwrap();
        assert_eq!(p.f.oracle().stats().dlq_confirmed, 1);
        assert_eq!(p.f.oracle().stats().acked, 2);
    }

    #[test]
    fn a_shutdown_with_only_runs_in_flight_is_fed_before_their_results() {
        let mut p = Pair::new(cfg(false));
        let t = Time::from_millis;
        let a = p.m.handle_delivered(t(0), true);
        p.show(t(0)).unwrap();
        p.f.shutdown_requested(t(5), t(500)).unwrap();
        p.m.handle_shutdown(t(5), t(500));
        assert!(p.show(t(5)).unwrap().is_empty(), "nothing to nack yet");
        // A retryable failure during shutdown is nacked, not retried.
        p.m.handle_finished(t(20), a, Err(ErrorKind::Handler));
        p.show(t(20)).unwrap();
        p.f.flush().unwrap();
        p.f.check_settled().unwrap();
    }

    #[test]
    fn an_ack_nothing_justified_is_caught() {
        let mut p = Pair::new(cfg(true));
        let t = Time::from_millis;
        let a = p.m.handle_delivered(t(0), true);
        p.show(t(0)).unwrap();
        // Forge what a broken runtime might report: an ack while the handler still runs.
        p.f.action(t(5), ConsumerAction::Ack { key: a }).unwrap();
        let v = p.f.flush().unwrap_err();
        assert_eq!(v.rule, crate::oracle::Rule::AckWithoutSuccess, "{v}");
    }
}
