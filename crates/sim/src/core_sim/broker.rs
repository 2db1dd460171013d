//! The model broker: the message log, what is available and what waits for redelivery, the
//! broker-side ack check, and a crash that gives unacked deliveries back.

use backstop_testkit::oracle::CheckedConsumer;

use super::state::{BMsg, CoreRun, Step};

impl CoreRun<'_> {
    pub(super) fn publish_msg(&mut self, pid: Option<u64>) {
        self.log.push(BMsg {
            pid,
            acked: false,
            dlq_records: 0,
        });
        self.available.push_back(self.log.len() - 1);
    }

    /// The broker side of an ack: the message must have been handled (one success per plain
    /// ack of its payload) or have a DLQ record.
    pub(super) fn broker_ack(&mut self, idx: usize) -> Step {
        let m = &mut self.log[idx];
        if m.acked {
            return Ok(()); // a redundant ack (after a crash redelivery): counted at the end
        }
        m.acked = true;
        if m.dlq_records > 0 {
            return Ok(());
        }
        let Some(pid) = m.pid else {
            return Err(format!("broker: poison message #{idx} acked without a DLQ record").into());
        };
        let acks = self.acked_plain.entry(pid).or_insert(0);
        *acks += 1;
        let ok = self.successes.get(&pid).copied().unwrap_or(0);
        if *acks > ok {
            return Err(format!(
                "broker: message #{idx} (payload {pid}) acked, but its handler succeeded {ok} time(s) for {acks} ack(s) and it has no DLQ record"
            )
            .into());
        }
        Ok(())
    }

    pub(super) fn deliver(&mut self) -> Step {
        while let Some((&(due, seq), &idx)) = self.delayed.iter().next() {
            if due > self.now {
                break;
            }
            self.delayed.remove(&(due, seq));
            self.available.push_back(idx);
        }
        while self.broker_out == 0 && self.c.machine().credit() > 0 {
            let Some(idx) = self.available.pop_front() else {
                break;
            };
            let now = self.now;
            let poison = self.log[idx].pid.is_none();
            let key = self.c.deliver(now, !poison)?;
            self.held.insert(key, idx);
            self.consumer_step()?;
        }
        Ok(())
    }

    pub(super) fn crash(&mut self) -> Step {
        self.note("consumer crash: unacked deliveries return".into());
        let held = std::mem::take(&mut self.held);
        for (_, idx) in held {
            self.available.push_back(idx);
            self.stats.redeliveries += 1;
        }
        let fresh = CheckedConsumer::new(self.sc.consumer)?;
        let old = std::mem::replace(&mut self.c, fresh);
        self.retired.push(old);
        self.inc += 1;
        self.consumer_step()
    }
}
