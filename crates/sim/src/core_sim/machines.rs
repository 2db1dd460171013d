//! Performs what the machines ask for: handler runs, acks, nacks and DLQ publishes for the
//! consumer; bodies, publishes and DLQ publishes for the producer.

use backstop_engine::core::{ConsumerAction, ErrorKind, ProducerAction};

use crate::trace::What;

use super::state::{ms, CoreRun, Ev, Step};

impl CoreRun<'_> {
    /// Records the consumer's last step in the trace and performs its actions.
    pub(super) fn consumer_step(&mut self) -> Step {
        let (sim, who, now) = (self.sim(), self.who(), self.now);
        let actions: Vec<ConsumerAction> = self.c.last_actions().to_vec();
        for a in &actions {
            self.trace
                .push(sim, who, Some(now), What::ConsumerAction(*a));
        }
        for e in self.c.last_events() {
            self.trace
                .push(sim, who, Some(now), What::ConsumerEvent(*e));
        }
        for a in actions {
            match a {
                ConsumerAction::Invoke { key, .. } => {
                    let idx = self.held[&key];
                    let pid = self.log[idx].pid.unwrap_or(u64::MAX);
                    let run = {
                        let n = self.runs.entry(pid).or_insert(0);
                        *n += 1;
                        *n
                    };
                    self.stats.handler_runs += 1;
                    let (took, result) = self.downstream.decide(pid, run);
                    let inc = self.inc;
                    self.at(
                        took,
                        Ev::Handler {
                            inc,
                            key,
                            idx,
                            result,
                        },
                    );
                }
                ConsumerAction::Ack { key } => {
                    let idx = self.held.remove(&key).ok_or("ack of an unknown key")?;
                    self.broker_ack(idx)?;
                }
                ConsumerAction::Nack { key, .. } => {
                    let idx = self.held.remove(&key).ok_or("nack of an unknown key")?;
                    self.seq += 1;
                    let due = self.now + ms(self.sc.nack_delay_ms);
                    self.delayed.insert((due, self.seq), idx);
                    self.stats.redeliveries += 1;
                }
                ConsumerAction::PublishRetry { .. } => {
                    return Err("the core simulation does not draw the retry-topic strategy".into());
                }
                ConsumerAction::PublishDlq { key, .. } => {
                    let idx = self.held[&key];
                    let (inc, ok) = (self.inc, self.dlq_out == 0);
                    let took = self.rng.millis(1, 30);
                    self.at(took, Ev::Dlq { inc, key, idx, ok });
                }
                ConsumerAction::Request { .. } | ConsumerAction::Pause | ConsumerAction::Resume => {
                }
            }
        }
        Ok(())
    }

    pub(super) fn producer_step(&mut self) -> Step {
        let (sim, who, now) = (self.sim(), self.who(), self.now);
        let actions: Vec<ProducerAction> = self.p.last_actions().to_vec();
        for a in &actions {
            self.trace
                .push(sim, who, Some(now), What::ProducerAction(*a));
        }
        for e in self.p.last_events() {
            self.trace
                .push(sim, who, Some(now), What::ProducerEvent(*e));
        }
        for a in actions {
            match a {
                ProducerAction::RunBody { call, .. } => {
                    let info = self.calls.get_mut(&call).ok_or("body of an unknown call")?;
                    info.body_runs += 1;
                    let result = if info.body_runs <= info.body_fails {
                        Err(info.body_kind)
                    } else {
                        Ok(())
                    };
                    let took = self.rng.millis(0, 20);
                    self.at(took, Ev::Body { call, result });
                }
                ProducerAction::Publish { call, .. } => {
                    let result = if self.broker_out > 0 {
                        Err(ErrorKind::Connection)
                    } else if let Some((left, kind)) = self.publish_errors.front_mut() {
                        let kind = *kind;
                        *left -= 1;
                        if *left == 0 {
                            self.publish_errors.pop_front();
                        }
                        Err(kind)
                    } else {
                        Ok(())
                    };
                    let took = self.rng.millis(1, 50);
                    self.at(took, Ev::Publish { call, result });
                }
                ProducerAction::PublishDlq { call, .. } => {
                    let ok = self.dlq_out == 0 && self.broker_out == 0;
                    let took = self.rng.millis(1, 50);
                    self.at(took, Ev::TaskDlq { call, ok });
                }
                ProducerAction::Complete { call, .. } => {
                    self.calls.remove(&call);
                }
            }
        }
        Ok(())
    }
}
