//! The event loop: faults starting and ending, timed results arriving, the machines' timeouts,
//! and the settling phase (probes, graceful shutdown, liveness).

use std::time::Duration;

use backstop_engine::core::{BreakerState, ErrorKind, Time};

use super::state::{ms, Broke, CallInfo, CoreRun, Ev, Step, PROBES, STEP_LIMIT};
use super::CoreFault;

impl CoreRun<'_> {
    pub(super) fn fault(&mut self, i: usize, start: bool) -> Step {
        let f = self.sc.faults[i];
        if start {
            self.stats.fault_events += 1;
            self.note(format!("fault {f:?}"));
        }
        let d = &mut self.downstream;
        match (f, start) {
            (CoreFault::HandlerErrors { count, kind, .. }, true) if count > 0 => {
                d.bursts.push_back((count, kind));
            }
            (CoreFault::Outage { kind, .. }, true) => d.outage.push(kind),
            (CoreFault::Outage { kind, .. }, false) => {
                if let Some(i) = d.outage.iter().position(|k| *k == kind) {
                    d.outage.remove(i);
                }
            }
            (CoreFault::Slow { extra_ms, .. }, true) => d.slow.push(extra_ms),
            (CoreFault::Slow { extra_ms, .. }, false) => {
                if let Some(i) = d.slow.iter().position(|k| *k == extra_ms) {
                    d.slow.remove(i);
                }
            }
            (CoreFault::DlqOutage { .. }, true) => self.dlq_out += 1,
            (CoreFault::DlqOutage { .. }, false) => self.dlq_out = self.dlq_out.saturating_sub(1),
            (CoreFault::BrokerOutage { .. }, true) => self.broker_out += 1,
            (CoreFault::BrokerOutage { .. }, false) => {
                self.broker_out = self.broker_out.saturating_sub(1)
            }
            (CoreFault::PublishErrors { count, kind, .. }, true) if count > 0 => {
                self.publish_errors.push_back((count, kind));
            }
            (CoreFault::Crash { .. }, true) => self.crash()?,
            (CoreFault::Burst { count, .. }, true) => {
                for _ in 0..count {
                    let pid = self.next_pid;
                    self.next_pid += 1;
                    self.publish_msg(Some(pid));
                }
            }
            (CoreFault::Poison { .. }, true) if self.sc.consumer.dead_letter() => {
                // Without a DLQ a poison message is redelivered for ever: not a liveness bug.
                self.publish_msg(None)
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn event(&mut self, ev: Ev) -> Step {
        let now = self.now;
        match ev {
            Ev::Call(i) => {
                let call = self.sc.calls[i];
                let key = self.p.call(now)?;
                self.calls.insert(
                    key,
                    CallInfo {
                        pid: call.pid,
                        plan: call.plan,
                        body_fails: call.body_fails,
                        body_kind: call.body_kind,
                        body_runs: 0,
                    },
                );
                self.producer_step()?;
            }
            Ev::FaultStart(i) => self.fault(i, true)?,
            Ev::FaultEnd(i) => self.fault(i, false)?,
            Ev::Heal => {
                self.note("heal: every fault ends".into());
                self.downstream.heal();
                self.dlq_out = 0;
                self.broker_out = 0;
                self.publish_errors.clear();
            }
            Ev::Handler {
                inc,
                key,
                idx,
                result,
            } => {
                if result.is_ok() {
                    if let Some(pid) = self.log[idx].pid {
                        *self.successes.entry(pid).or_insert(0) += 1;
                    }
                }
                if inc == self.inc {
                    self.c.finish(now, key, result)?;
                    self.consumer_step()?;
                }
            }
            Ev::Dlq { inc, key, idx, ok } => {
                if ok {
                    self.log[idx].dlq_records += 1;
                    self.stats.dead_lettered += 1;
                }
                if inc == self.inc {
                    let r = if ok {
                        Ok(())
                    } else {
                        Err(ErrorKind::Connection)
                    };
                    self.c.dlq_result(now, key, r)?;
                    self.consumer_step()?;
                }
            }
            Ev::Body { call, result } => {
                self.p.body(now, call, result)?;
                self.producer_step()?;
            }
            Ev::Publish { call, result } => {
                if result.is_ok() {
                    if let Some(info) = self.calls.get(&call).copied() {
                        self.downstream.set_plan(info.pid, info.plan);
                        self.publish_msg(Some(info.pid));
                    }
                }
                self.p.publish(now, call, result)?;
                self.producer_step()?;
            }
            Ev::TaskDlq { call, ok } => {
                let r = if ok {
                    Ok(())
                } else {
                    Err(ErrorKind::Connection)
                };
                self.p.dlq(now, call, r)?;
                self.producer_step()?;
            }
        }
        Ok(())
    }

    /// One step: the earliest due thing happens. `Ok(false)` when nothing is left to happen.
    pub(super) fn step(&mut self) -> Result<bool, Broke> {
        self.deliver()?;
        let t_queue = self.queue.keys().next().map(|(t, _)| *t);
        let t_c = self.c.poll_timeout();
        let t_p = self.p.poll_timeout();
        let t_d = self.delayed.keys().next().map(|(t, _)| *t);
        let Some(next) = [t_queue, t_c, t_p, t_d].into_iter().flatten().min() else {
            return Ok(false);
        };
        self.now = self.now.max(next);
        let now = self.now;
        if t_queue.is_some_and(|t| t <= now) {
            let (k, ev) = self.queue.pop_first().expect("checked");
            let _ = k;
            self.event(ev)?;
        } else if t_c.is_some_and(|t| t <= now) {
            self.c.timeout(now)?;
            self.consumer_step()?;
        } else if t_p.is_some_and(|t| t <= now) {
            self.p.timeout(now)?;
            self.producer_step()?;
        }
        Ok(true)
    }

    pub(super) fn run(&mut self) -> Step {
        for (i, call) in self.sc.calls.iter().enumerate() {
            self.seq += 1;
            self.queue
                .insert((Time::ZERO + ms(call.at_ms), self.seq), Ev::Call(i));
        }
        for (i, f) in self.sc.faults.iter().enumerate() {
            let at = f.at_ms().min(self.sc.heal_ms);
            self.seq += 1;
            self.queue
                .insert((Time::ZERO + ms(at), self.seq), Ev::FaultStart(i));
            if f.dur_ms() > 0 {
                let end = at.saturating_add(f.dur_ms()).min(self.sc.heal_ms);
                self.seq += 1;
                self.queue
                    .insert((Time::ZERO + ms(end), self.seq), Ev::FaultEnd(i));
            }
        }
        self.seq += 1;
        self.queue
            .insert((Time::ZERO + ms(self.sc.heal_ms), self.seq), Ev::Heal);
        self.consumer_step()?;
        let mut steps = 0u64;
        loop {
            steps += 1;
            if steps > STEP_LIMIT {
                return Err(format!("liveness: no settling within {STEP_LIMIT} steps").into());
            }
            if self.step()? {
                continue;
            }
            // Nothing left to happen.
            if !self.shutting_down
                && self.c.machine().breaker_state() != BreakerState::Closed
                && self.probes < PROBES
            {
                self.probes += 1;
                let pid = self.next_pid;
                self.next_pid += 1;
                self.note(format!("probe message {pid} for the half-open breaker"));
                self.publish_msg(Some(pid));
                continue;
            }
            if !self.shutting_down {
                self.c.settle_check()?;
                self.p.settle_check()?;
                self.shutting_down = true;
                let now = self.now;
                self.c.shutdown(now, now + Duration::from_secs(5))?;
                self.consumer_step()?;
                continue;
            }
            break;
        }
        self.c.settle_check()?;
        if let Some((i, m)) = self.log.iter().enumerate().find(|(_, m)| !m.acked) {
            return Err(format!(
                "liveness: message #{i} (payload {:?}) was never acked",
                m.pid
            )
            .into());
        }
        Ok(())
    }
}
