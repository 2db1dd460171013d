//! Operator control of running consumers — pause/resume, force the breaker open or closed (for
//! tasks: [`Task::force_breaker`](super::Task::force_breaker)) — and
//! the operator-facing series dashboards read (parallelism limit, parked counter).
//!
//! Every control action is logged (`warn` for pause and forcing, `info` for resume and release)
//! and counted in `backstop_control_actions_total{target, action}`; breaker transitions it causes
//! show in the breaker metrics as any other.

use tokio::sync::mpsc;

use super::metrics::Metrics;
use super::spec::ConsumerSpec;
use crate::core::{ConsumerMachine, ForcedState, Time};

/// What an operator asked of a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// `true`: pause; `false`: resume.
    Pause(bool),
    /// Force the breaker, or release it (`None`).
    ForceBreaker(Option<ForcedState>),
}

impl Command {
    fn action(self) -> &'static str {
        match self {
            Command::Pause(true) => "pause",
            Command::Pause(false) => "resume",
            Command::ForceBreaker(Some(ForcedState::Open)) => "force_open",
            Command::ForceBreaker(Some(ForcedState::Closed)) => "force_closed",
            Command::ForceBreaker(None) => "release",
        }
    }
}

/// The consumer is gone: its task ended, nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("consumer {0} has stopped; control action not applied")]
pub struct ConsumerStopped(pub String);

/// Controls one running consumer; get it from
/// [`ConsumerHandle::control`](super::ConsumerHandle::control). Cheap to clone, usable from any
/// task (an admin endpoint, a signal handler). Actions take effect on the consumer's task, in
/// the order given.
///
/// - [`pause`](Self::pause): no handler starts and no message is fetched; runs in flight finish
///   and are acked, retried or dead-lettered as usual. [`resume`](Self::resume) undoes it.
/// - [`force_breaker_open`](Self::force_breaker_open): the breaker opens and stays open (no
///   recovery timeout, no probe) — the consumer pauses as with any open breaker, and the
///   `circuit_breaker_state` gauge and its alert say so.
///   [`force_breaker_closed`](Self::force_breaker_closed): closed, failures not counted.
///   [`release_breaker`](Self::release_breaker): back to normal, closed with no failures.
#[derive(Debug, Clone)]
pub struct ConsumerControl {
    tx: mpsc::UnboundedSender<Command>,
    name: String,
}

impl ConsumerControl {
    pub(crate) fn new(name: String) -> (ConsumerControl, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ConsumerControl { tx, name }, rx)
    }

    fn send(&self, c: Command) -> Result<(), ConsumerStopped> {
        self.tx
            .send(c)
            .map_err(|_| ConsumerStopped(self.name.clone()))
    }

    /// Pauses the consumer.
    pub fn pause(&self) -> Result<(), ConsumerStopped> {
        self.send(Command::Pause(true))
    }

    /// Resumes a paused consumer.
    pub fn resume(&self) -> Result<(), ConsumerStopped> {
        self.send(Command::Pause(false))
    }

    /// Forces the consumer's breaker open until released.
    pub fn force_breaker_open(&self) -> Result<(), ConsumerStopped> {
        self.send(Command::ForceBreaker(Some(ForcedState::Open)))
    }

    /// Forces the consumer's breaker closed (failures not counted) until released.
    pub fn force_breaker_closed(&self) -> Result<(), ConsumerStopped> {
        self.send(Command::ForceBreaker(Some(ForcedState::Closed)))
    }

    /// Releases a forced breaker: closed, counting failures again.
    pub fn release_breaker(&self) -> Result<(), ConsumerStopped> {
        self.send(Command::ForceBreaker(None))
    }
}

/// Applies `c` to the consumer's machine, logs and counts it.
pub(crate) fn apply(machine: &mut ConsumerMachine, now: Time, c: Command, m: &Metrics, name: &str) {
    match c {
        Command::Pause(p) => machine.handle_operator_pause(now, p),
        Command::ForceBreaker(f) => machine.handle_force_breaker(now, f),
    }
    record(m, &format!("consumer:{name}"), c);
}

/// Logs and counts a control action on `target` (`consumer:<topic>/<sub>` or `task:<topic>`).
pub(crate) fn record(m: &Metrics, target: &str, c: Command) {
    let action = c.action();
    m.control.with_label_values(&[target, action]).inc();
    match c {
        Command::Pause(false) | Command::ForceBreaker(None) => {
            tracing::info!(target_name = %target, action, "operator control")
        }
        _ => tracing::warn!(target_name = %target, action, "operator control"),
    }
}

/// Sets up the operator series of a consumer when it starts: its parallelism limit (for "in
/// flight vs max_parallelism") and its parked counter at 0 (so an alert has a series before
/// the first park).
pub(crate) fn register_consumer(m: &Metrics, topic: &str, sub: &str, spec: &ConsumerSpec) {
    m.max_parallelism
        .with_label_values(&[topic, sub])
        .set(i64::from(spec.max_parallelism_value()));
    m.parked.with_label_values(&[topic, sub]).inc_by(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_consumer_exposes_its_limit_and_a_zero_parked_series() {
        let m = Metrics::new();
        let spec = ConsumerSpec::new("t", "s")
            .max_parallelism(7)
            .build()
            .unwrap();
        register_consumer(&m, "t", "s", &spec);
        let text = m.render();
        assert!(
            text.contains("pulsar_handlers_max_parallelism{subscription=\"s\",topic=\"t\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("pulsar_messages_parked_total{subscription=\"s\",topic=\"t\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn actions_are_applied_and_counted_and_a_stopped_consumer_is_an_error() {
        let m = Metrics::new();
        let mut machine =
            ConsumerMachine::new(crate::core::ConsumerConfig::builder().build().unwrap());
        apply(&mut machine, Time::ZERO, Command::Pause(true), &m, "t/s");
        assert!(machine.is_operator_paused());
        apply(
            &mut machine,
            Time::ZERO,
            Command::ForceBreaker(Some(ForcedState::Open)),
            &m,
            "t/s",
        );
        assert_eq!(machine.breaker_state(), crate::core::BreakerState::Open);
        let text = m.render();
        for action in ["pause", "force_open"] {
            assert!(
                text.contains(&format!(
                    "backstop_control_actions_total{{action=\"{action}\",target=\"consumer:t/s\"}} 1"
                )),
                "{text}"
            );
        }
        let (control, rx) = ConsumerControl::new("t/s".into());
        drop(rx);
        assert_eq!(control.pause(), Err(ConsumerStopped("t/s".into())));
    }
}
