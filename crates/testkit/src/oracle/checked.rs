//! A machine wrapped with its oracle: every input checked, every output drained into it.

use backstop_engine::core::{
    ConsumerAction, ConsumerConfig, ConsumerEvent, ConsumerMachine, Delivered, ErrorKind, Key,
    ProducerAction, ProducerConfig, ProducerEvent, ProducerMachine, Time,
};

use super::Violation;
use super::{ConsumerOracle, ProducerOracle};

/// A [`ConsumerMachine`] with its [`ConsumerOracle`]: every input is checked, every output
/// drained into the oracle, and the step's actions and events kept for the driver to act on.
#[derive(Clone, Debug)]
pub struct CheckedConsumer {
    machine: ConsumerMachine,
    oracle: ConsumerOracle,
    actions: Vec<ConsumerAction>,
    events: Vec<ConsumerEvent>,
    next_message: u64,
    message_keys: std::collections::BTreeMap<u64, Option<u64>>,
}

impl CheckedConsumer {
    /// A fresh machine and oracle; the machine's initial credit request is checked.
    pub fn new(cfg: ConsumerConfig) -> Result<CheckedConsumer, Violation> {
        let mut c = CheckedConsumer {
            machine: ConsumerMachine::new(cfg),
            oracle: ConsumerOracle::new(cfg),
            actions: Vec::new(),
            events: Vec::new(),
            next_message: 0,
            message_keys: std::collections::BTreeMap::new(),
        };
        c.step()?;
        Ok(c)
    }

    /// The machine (read-only: inputs go through this wrapper).
    pub fn machine(&self) -> &ConsumerMachine {
        &self.machine
    }

    /// Mutable access for `poll_timeout`, which prunes stale timers.
    pub fn poll_timeout(&mut self) -> Option<Time> {
        self.machine.poll_timeout()
    }

    /// The oracle.
    pub fn oracle(&self) -> &ConsumerOracle {
        &self.oracle
    }

    /// The actions of the last step.
    pub fn last_actions(&self) -> &[ConsumerAction] {
        &self.actions
    }

    /// The events of the last step.
    pub fn last_events(&self) -> &[ConsumerEvent] {
        &self.events
    }

    fn step(&mut self) -> Result<(), Violation> {
        self.actions.clear();
        self.events.clear();
        while let Some(a) = self.machine.poll_action() {
            self.actions.push(a);
            self.oracle.action(&a)?;
        }
        while let Some(e) = self.machine.poll_event() {
            self.events.push(e);
            self.oracle.event(&e)?;
        }
        self.oracle.end_step()?;
        self.oracle.check_machine(&self.machine)
    }

    /// A delivery of a new message (the oracle tracks it across later [`redeliver`](Self::redeliver)s).
    pub fn deliver(&mut self, now: Time, decoded: bool) -> Result<Key, Violation> {
        self.deliver_keyed(now, decoded, None)
    }

    /// A delivery of a new message with an ordering key (see [`ConsumerMachine::handle_delivery`]).
    pub fn deliver_keyed(
        &mut self,
        now: Time,
        decoded: bool,
        ordering_key: Option<u64>,
    ) -> Result<Key, Violation> {
        let message = self.next_message;
        self.next_message += 1;
        self.message_keys.insert(message, ordering_key);
        self.deliver_message(now, decoded, message, 0, ordering_key)
    }

    fn deliver_message(
        &mut self,
        now: Time,
        decoded: bool,
        message: u64,
        prior_runs: u32,
        ordering_key: Option<u64>,
    ) -> Result<Key, Violation> {
        let key = self.machine.handle_delivery(
            now,
            Delivered {
                decoded,
                prior_runs,
                ordering_key,
            },
        );
        self.oracle
            .delivered_keyed(now, key, decoded, message, prior_runs, ordering_key)?;
        self.step()?;
        Ok(key)
    }

    /// A new delivery of the message delivery `of` was of (a broker redelivery after a nack,
    /// or a duplicate after a lost ack), with the prior-run count a driver that knows every
    /// earlier run passes ([`ConsumerOracle::prior_runs_of`]).
    pub fn redeliver(&mut self, now: Time, decoded: bool, of: Key) -> Result<Key, Violation> {
        let message = self.oracle.message_of(of).unwrap_or_else(|| {
            let m = self.next_message;
            self.next_message += 1;
            m
        });
        let prior = self.oracle.prior_runs_of(message);
        let okey = self.message_keys.get(&message).copied().flatten();
        self.deliver_message(now, decoded, message, prior, okey)
    }

    /// A handler result; returns whether the machine accepted it.
    pub fn finish(
        &mut self,
        now: Time,
        key: Key,
        result: Result<(), ErrorKind>,
    ) -> Result<bool, Violation> {
        let accepted = self.machine.handle_finished(now, key, result);
        self.oracle.finished(now, key, result, accepted)?;
        self.step()?;
        Ok(accepted)
    }

    /// A DLQ publish result; returns whether the machine accepted it.
    pub fn dlq_result(
        &mut self,
        now: Time,
        key: Key,
        result: Result<(), ErrorKind>,
    ) -> Result<bool, Violation> {
        let accepted = self.machine.handle_dlq_result(now, key, result);
        self.oracle.dlq_result(now, key, result, accepted)?;
        self.step()?;
        Ok(accepted)
    }

    /// A retry-topic publish result; returns whether the machine accepted it.
    pub fn retry_result(
        &mut self,
        now: Time,
        key: Key,
        result: Result<(), ErrorKind>,
    ) -> Result<bool, Violation> {
        let accepted = self.machine.handle_retry_result(now, key, result);
        self.oracle.retry_result(now, key, result, accepted)?;
        self.step()?;
        Ok(accepted)
    }

    /// Shutdown with `deadline`.
    pub fn shutdown(&mut self, now: Time, deadline: Time) -> Result<(), Violation> {
        self.machine.handle_shutdown(now, deadline);
        self.oracle.shutdown(now, deadline)?;
        self.step()
    }

    /// A timeout at `now`.
    pub fn timeout(&mut self, now: Time) -> Result<(), Violation> {
        self.machine.handle_timeout(now);
        self.oracle.timeout(now)?;
        self.step()
    }

    /// [`ConsumerOracle::check_settled`] with the machine's `poll_timeout`.
    pub fn settle_check(&mut self) -> Result<(), Violation> {
        let t = self.machine.poll_timeout();
        self.oracle.check_settled(t)
    }
}

/// A [`ProducerMachine`] with its [`ProducerOracle`], like [`CheckedConsumer`].
#[derive(Clone, Debug)]
pub struct CheckedProducer {
    machine: ProducerMachine,
    oracle: ProducerOracle,
    actions: Vec<ProducerAction>,
    events: Vec<ProducerEvent>,
}

impl CheckedProducer {
    /// A fresh machine and oracle.
    pub fn new(cfg: ProducerConfig) -> CheckedProducer {
        CheckedProducer {
            machine: ProducerMachine::new(cfg),
            oracle: ProducerOracle::new(cfg),
            actions: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The machine.
    pub fn machine(&self) -> &ProducerMachine {
        &self.machine
    }

    /// The machine's next deadline.
    pub fn poll_timeout(&mut self) -> Option<Time> {
        self.machine.poll_timeout()
    }

    /// The oracle.
    pub fn oracle(&self) -> &ProducerOracle {
        &self.oracle
    }

    /// The actions of the last step.
    pub fn last_actions(&self) -> &[ProducerAction] {
        &self.actions
    }

    /// The events of the last step.
    pub fn last_events(&self) -> &[ProducerEvent] {
        &self.events
    }

    fn step(&mut self) -> Result<(), Violation> {
        self.actions.clear();
        self.events.clear();
        while let Some(a) = self.machine.poll_action() {
            self.actions.push(a);
            self.oracle.action(&a)?;
        }
        while let Some(e) = self.machine.poll_event() {
            self.events.push(e);
            self.oracle.event(&e)?;
        }
        self.oracle.end_step()?;
        self.oracle.check_machine(&self.machine)
    }

    /// A call.
    pub fn call(&mut self, now: Time) -> Result<Key, Violation> {
        let key = self.machine.handle_call(now);
        self.oracle.call(now, key)?;
        self.step()?;
        Ok(key)
    }

    /// A body result.
    pub fn body(
        &mut self,
        now: Time,
        key: Key,
        r: Result<(), ErrorKind>,
    ) -> Result<bool, Violation> {
        let ok = self.machine.handle_body_result(now, key, r);
        self.oracle.body_result(now, key, r, ok)?;
        self.step()?;
        Ok(ok)
    }

    /// A publish result.
    pub fn publish(
        &mut self,
        now: Time,
        key: Key,
        r: Result<(), ErrorKind>,
    ) -> Result<bool, Violation> {
        let ok = self.machine.handle_publish_result(now, key, r);
        self.oracle.publish_result(now, key, r, ok)?;
        self.step()?;
        Ok(ok)
    }

    /// A DLQ publish result.
    pub fn dlq(
        &mut self,
        now: Time,
        key: Key,
        r: Result<(), ErrorKind>,
    ) -> Result<bool, Violation> {
        let ok = self.machine.handle_dlq_result(now, key, r);
        self.oracle.dlq_result(now, key, r, ok)?;
        self.step()?;
        Ok(ok)
    }

    /// The caller went away.
    pub fn cancel(&mut self, now: Time, key: Key) -> Result<bool, Violation> {
        let ok = self.machine.handle_cancelled(now, key);
        self.oracle.cancelled(now, key, ok)?;
        self.step()?;
        Ok(ok)
    }

    /// A timeout.
    pub fn timeout(&mut self, now: Time) -> Result<(), Violation> {
        self.machine.handle_timeout(now);
        self.oracle.timeout(now)?;
        self.step()
    }

    /// [`ProducerOracle::check_settled`] with the machine's `poll_timeout`.
    pub fn settle_check(&mut self) -> Result<(), Violation> {
        let t = self.machine.poll_timeout();
        self.oracle.check_settled(t)
    }
}
