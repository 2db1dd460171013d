//! Broker-side bookkeeping and checks: what handlers did per payload, what the broker shows
//! (topic log, acks, DLQ records), and the invariants between them — nothing acked that was not
//! handled or dead-lettered, every published message acked in the end, DLQ records that carry
//! the original payload — plus the duplicates crashes caused.
//!
//! # Per-key order across consumers and crashes
//!
//! With an ordered consumer ([`Ledger::checking_order`]), the ledger also checks that, per
//! key, the *first* handler run of each payload follows the topic log's order: if payload `a`
//! first appears in the log before payload `b` under the same key, `a`'s first run starts
//! before `b`'s — unless `a` was *excused* (below). Later runs (retries, redeliveries) are not
//! ordered across consumers and crashes, and the log order, not the task calls' order, is the
//! publish order (two concurrent calls may land either way round).
//!
//! Why this holds in the in-memory broker whatever else happens: a subscription hands out its
//! available positions oldest first; Failover serves only its first (oldest) consumer, and a
//! new consumer (a restarted or reconnected service) subscribes with a larger id, so the
//! active consumer changes only when the old one leaves; Key_Shared gives a key only to the
//! consumer already holding unacked messages of it. A consumer that leaves (crash found by
//! the idle timeout, dropped connection, broker host crash) or a broker restart returns its
//! deliveries to `available`, so whoever takes `b` next takes the older `a` first; and an
//! ordered consumer runs the deliveries of a key one at a time in arrival order. A consumer
//! that still holds a returned delivery may run it late, but that is a later run, not the
//! first. So `b` can run before `a` ever ran only if `a` left the order without a run:
//!
//! - `a` was nacked before any run (a shutdown nack, or a nack after a failed ack or DLQ
//!   publish): it waits out the nack delay while `b` is available;
//! - `a`'s delivery was lost while its consumer's connection lived (an injected receive
//!   failure after effect): the broker counts `a` as out with that consumer, which goes on to
//!   `b`, until the connection ends (at the latest at the heal, which resets every connection
//!   after such a fault).
//!
//! The ledger sees nacks on the broker's counters, between simulation steps: when the nacks
//! or the injected faults grow, every payload whose first run had not started by the previous
//! step is excused (conservatively: any nack or injected fault, of any message). A lost
//! delivery cannot be seen that way (the broker counts the fault when the receive starts,
//! maybe before the lost message is published), so from the moment the driver schedules a
//! receive failure after effect until the heal resets the connections
//! ([`Ledger::deliveries_may_be_lost`]) every payload without a first run is excused. Poison
//! messages never run and are left out; so are payloads published without a key (probes).

use std::collections::{BTreeMap, BTreeSet};

use backstop_engine::broker::MessageId;
use backstop_engine::runtime::DeadLetterRecord;
use backstop_mem::MemBroker;

/// The consumed topic.
pub const TOPIC: &str = "orders";
/// The consumers' subscription.
pub const SUBSCRIPTION: &str = "svc";
/// The consumers' dead-letter topic.
pub const DLQ_TOPIC: &str = "orders_dlq";
/// Where the consumers park failed messages when there is no DLQ (the runtime's default,
/// `<topic>-<subscription>-PARKED`): records in the DLQ format.
pub const PARKED_TOPIC: &str = "orders-svc-PARKED";
/// Where consumers with the retry-topic strategy publish retry copies, and which they consume
/// too (the runtime's default, `<topic>-<subscription>-RETRY`).
pub const RETRY_TOPIC: &str = "orders-svc-RETRY";
/// The task's dead-letter topic.
pub const TASK_DLQ_TOPIC: &str = "orders_task_dlq";

/// The payload id inside a published message: `{"id": n}`; `None` for poison (`{"poison": n}`).
pub fn payload_id(payload: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get("id")?.as_u64()
}

#[derive(Clone, Debug)]
struct Logged {
    id: MessageId,
    payload: Vec<u8>,
    pid: Option<u64>,
    key: Option<String>,
}

/// The per-key order check's state (see the module docs).
#[derive(Debug, Default)]
struct OrderCheck {
    /// First handler runs so far.
    first_runs: u64,
    /// Per payload: the number of its first run (0 for the first first run of the seed).
    first_run: BTreeMap<u64, u64>,
    /// `first_runs` when the ledger last observed the broker.
    runs_observed: u64,
    /// The broker's (nacks, injected faults) when last observed.
    disturbances: (u64, u64),
    /// Payloads whose first run may legitimately come late: a nack or an injected fault came
    /// while they had not run.
    excused: BTreeSet<u64>,
    /// `first_runs` when the order was last checked.
    checked: u64,
    /// Receives may lose their delivery in transit (from an injected receive failure after
    /// effect until every connection is reset at the heal).
    lossy: bool,
}

/// Counts of what the broker-side view saw.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerStats {
    /// Messages in the consumed topic's log (duplicates from ambiguous publishes included).
    pub published: u64,
    /// Dead-letter records written by consumers.
    pub dlq_records: u64,
    /// Handler runs.
    pub handler_runs: u64,
    /// Successful handler runs.
    pub handler_successes: u64,
    /// Messages handled successfully more often than they were published (a crash or lost ack
    /// made the broker redeliver a handled message).
    pub handled_twice: u64,
    /// Extra DLQ records for one message.
    pub dead_lettered_twice: u64,
    /// Messages both handled successfully and dead-lettered.
    pub handled_and_dead_lettered: u64,
    /// Retry copies published to the retry topic.
    pub retry_copies: u64,
    /// Task calls completed, and how many of them published.
    pub task_calls: u64,
    /// Task calls that published.
    pub task_sent: u64,
    /// Task calls whose data went to the task DLQ.
    pub task_dead_lettered: u64,
    /// Task calls that failed and handed their data back (no DLQ or DLQ failed, or circuit
    /// open).
    pub task_returned: u64,
    /// With the per-key order check: keyed payloads that ran, checked against every earlier
    /// payload of their key (at the end).
    pub order_checked: u64,
    /// With the per-key order check: keyed payloads that ran, excused from it.
    pub order_excused: u64,
}

/// The broker-side ledger of one run.
#[derive(Debug, Default)]
pub struct Ledger {
    runs: BTreeMap<u64, u32>,
    /// Payloads run on each service host's current incarnation.
    ran_on: BTreeMap<u8, BTreeSet<u64>>,
    /// Per payload: service crashes that hit it unfinished (run on the crashed incarnation,
    /// not yet acked at the broker), each of which may repeat its runs (at-least-once).
    crash_touched: BTreeMap<u64, u32>,
    successes: BTreeMap<u64, u32>,
    log: Vec<Logged>,
    by_id: BTreeMap<String, usize>,
    dlq_seen: usize,
    dlq_by_origin: BTreeMap<String, u32>,
    acked: BTreeSet<MessageId>,
    acked_plain: BTreeMap<u64, u32>,
    /// Retry copies seen: (copy id, origin id, `RECONSUMETIMES`).
    retry_log: Vec<(MessageId, String, u32)>,
    /// Origins that have a retry copy, with the highest `RECONSUMETIMES` among their copies.
    retried: BTreeMap<String, u32>,
    retry_acked: BTreeSet<MessageId>,
    /// Handler runs allowed per published copy of a message (`max_retries + 1`), if checked.
    budget: Option<u32>,
    last: (u64, u64),
    task_sent: Vec<(MessageId, Vec<u8>)>,
    task_dlq: Vec<MessageId>,
    /// The per-key order check, with an ordered consumer.
    order: Option<OrderCheck>,
    stats: LedgerStats,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// An empty ledger that also checks, at the end, the attempt budget across deliveries,
    /// retry copies and restarts: handler runs per payload ≤ `budget` × its copies in the
    /// topic log.
    pub fn with_budget(budget: u32) -> Ledger {
        Ledger {
            budget: Some(budget),
            ..Ledger::default()
        }
    }

    /// This ledger also checks per-key order (for an ordered consumer): per key, the first
    /// handler run of each payload follows the topic log, unless a nack or an injected broker
    /// fault came while the earlier payload had not run (the module docs say why).
    pub fn checking_order(mut self) -> Ledger {
        self.order = Some(OrderCheck::default());
        self
    }

    /// From now on, until [`deliveries_returned`](Ledger::deliveries_returned), a receive may
    /// lose its delivery in transit (an injected receive failure after effect): the lost
    /// message stays out with its consumer until the connection ends, and later messages of its
    /// key pass it. Every payload without a first run is excused meanwhile. (The broker counts
    /// the injected fault when the receive starts, possibly before the lost message is even
    /// published, so the counters alone cannot tell.)
    pub fn deliveries_may_be_lost(&mut self) {
        if let Some(o) = &mut self.order {
            o.lossy = true;
        }
    }

    /// Every connection was reset after the faults healed and no receive fails any more:
    /// lost deliveries return to the subscription, in order.
    pub fn deliveries_returned(&mut self) {
        if let Some(o) = &mut self.order {
            o.lossy = false;
        }
    }

    /// A handler run of payload `pid` starts on service host `host`; returns its run number (1
    /// for the first).
    pub fn handler_run(&mut self, pid: u64, host: u8) -> u32 {
        self.stats.handler_runs += 1;
        self.ran_on.entry(host).or_default().insert(pid);
        let n = self.runs.entry(pid).or_insert(0);
        *n += 1;
        if *n == 1 {
            if let Some(o) = &mut self.order {
                o.first_run.insert(pid, o.first_runs);
                o.first_runs += 1;
            }
        }
        *n
    }

    /// The per-key order check (if on): for each key, payloads in the order they first appear
    /// in the topic log; a payload's first run must not precede the first run of an earlier
    /// payload of its key that is not excused (and an earlier payload that has not run at all
    /// counts as later).
    fn check_order(&mut self) -> Result<(), String> {
        let Some(o) = &mut self.order else {
            return Ok(());
        };
        if o.checked == o.first_runs {
            return Ok(());
        }
        o.checked = o.first_runs;
        let mut seen: BTreeSet<u64> = BTreeSet::new();
        let mut by_key: BTreeMap<&str, Vec<(u64, &MessageId)>> = BTreeMap::new();
        for m in &self.log {
            let (Some(pid), Some(key)) = (m.pid, m.key.as_deref()) else {
                continue;
            };
            if seen.insert(pid) {
                by_key.entry(key).or_default().push((pid, &m.id));
            }
        }
        for (key, pids) in by_key {
            for (i, &(b, b_id)) in pids.iter().enumerate() {
                let Some(&fb) = o.first_run.get(&b) else {
                    continue;
                };
                for &(a, a_id) in &pids[..i] {
                    if o.excused.contains(&a) {
                        continue;
                    }
                    let late = o.first_run.get(&a).is_none_or(|&fa| fa > fb);
                    if late {
                        return Err(format!(
                            "key {key}: payload {b} ({b_id}) ran before payload {a} ({a_id}), \
                             published before it under the same key, had run, and no nack or \
                             injected fault came while {a} waited"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Service host `host` crashed: every payload it ran and the broker has not seen finished
    /// (every copy of it acked) may be run again, its outcome lost with the host — a run the
    /// crash killed, or an ack, nack or retry copy it had not sent yet.
    pub fn service_crashed(&mut self, host: u8) {
        for pid in self.ran_on.remove(&host).unwrap_or_default() {
            if !self.finished(pid) {
                *self.crash_touched.entry(pid).or_insert(0) += 1;
            }
        }
    }

    /// Whether the broker has an ack for every message of payload `pid`: its publishes to the
    /// topic and its retry copies.
    fn finished(&self, pid: u64) -> bool {
        let originals = self.log.iter().filter(|m| m.pid == Some(pid));
        let mut any = false;
        for m in originals {
            any = true;
            if !self.acked.contains(&m.id) {
                return false;
            }
            let origin = m.id.to_string();
            let copies = self.retry_log.iter().filter(|(_, o, _)| *o == origin);
            if copies
                .into_iter()
                .any(|(c, _, _)| !self.retry_acked.contains(c))
            {
                return false;
            }
        }
        any
    }

    /// A handler run of payload `pid` is about to return `Ok`.
    pub fn handler_success(&mut self, pid: u64) {
        self.stats.handler_successes += 1;
        *self.successes.entry(pid).or_insert(0) += 1;
    }

    /// A task call published message `id` with `payload`.
    pub fn task_sent(&mut self, id: MessageId, payload: Vec<u8>) {
        self.stats.task_calls += 1;
        self.stats.task_sent += 1;
        self.task_sent.push((id, payload));
    }

    /// A task call failed and its dead-letter record went out as `id`.
    pub fn task_dead_lettered(&mut self, id: MessageId) {
        self.stats.task_calls += 1;
        self.stats.task_dead_lettered += 1;
        self.task_dlq.push(id);
    }

    /// A task call failed and handed its data back to the caller.
    pub fn task_returned(&mut self) {
        self.stats.task_calls += 1;
        self.stats.task_returned += 1;
    }

    /// The counts so far.
    pub fn stats(&self) -> LedgerStats {
        self.stats
    }

    /// Reads what changed on the broker and checks every new ack: it must follow a successful
    /// handler run of its payload (one per ack of that payload) or a dead-letter record of that
    /// very message. Cheap when nothing was published or acked since the last call.
    pub fn observe(&mut self, broker: &MemBroker) -> Result<(), String> {
        let c = broker.counters();
        let disturbed = self.order.as_mut().is_some_and(|o| {
            let now = (c.nacks, c.injected_faults);
            std::mem::replace(&mut o.disturbances, now) != now || o.lossy
        });
        if (c.published, c.acks) == self.last && !disturbed {
            if let Some(o) = &mut self.order {
                o.runs_observed = o.first_runs;
            }
            return self.check_order();
        }
        self.last = (c.published, c.acks);
        let msgs = broker.topic_messages(TOPIC);
        for m in msgs.into_iter().skip(self.log.len()) {
            self.by_id.insert(m.id.to_string(), self.log.len());
            self.log.push(Logged {
                pid: payload_id(&m.payload),
                id: m.id,
                payload: m.payload,
                key: m.key,
            });
        }
        self.stats.published = self.log.len() as u64;
        if let Some(o) = &mut self.order {
            if disturbed {
                // Every payload that had not started its first run by the last observation
                // may have been nacked or lost in transit since.
                for pid in self.log.iter().filter_map(|m| m.pid) {
                    if o.first_run.get(&pid).is_none_or(|&f| f >= o.runs_observed) {
                        o.excused.insert(pid);
                    }
                }
            }
            o.runs_observed = o.first_runs;
        }
        self.check_order()?;
        // DLQ and parked records alike end a message (a scenario has one or the other).
        let mut dlq = broker.topic_messages(DLQ_TOPIC);
        dlq.extend(broker.topic_messages(PARKED_TOPIC));
        for m in dlq.into_iter().skip(self.dlq_seen) {
            self.dlq_seen += 1;
            self.stats.dlq_records += 1;
            let Some(origin) = m.properties.get("ORIGIN_MESSAGE_ID").cloned() else {
                return Err(format!("DLQ record {} names no origin message", m.id));
            };
            let Some(&idx) = self.by_id.get(&origin) else {
                return Err(format!(
                    "DLQ record {} names origin {origin}, which was never published to `{TOPIC}`",
                    m.id
                ));
            };
            let record: DeadLetterRecord = serde_json::from_slice(&m.payload)
                .map_err(|e| format!("DLQ record {} does not parse: {e}", m.id))?;
            let original = &self.log[idx].payload;
            if record.payload_text.as_deref().map(str::as_bytes) != Some(original.as_slice()) {
                return Err(format!(
                    "DLQ record {} for {origin} does not carry the original payload",
                    m.id
                ));
            }
            if record.origin_topic != TOPIC || record.attempts == 0 && record.reason != "decode" {
                return Err(format!(
                    "DLQ record {} for {origin} has wrong facts: {record:?}",
                    m.id
                ));
            }
            *self.dlq_by_origin.entry(origin).or_insert(0) += 1;
        }
        for m in broker
            .topic_messages(RETRY_TOPIC)
            .into_iter()
            .skip(self.retry_log.len())
        {
            self.stats.retry_copies += 1;
            let origin = m.properties.get("ORIGIN_MESSAGE_ID").cloned();
            let Some(origin) = origin.filter(|o| self.by_id.contains_key(o)) else {
                return Err(format!(
                    "retry copy {} names no origin message of `{TOPIC}`",
                    m.id
                ));
            };
            let idx = self.by_id[&origin];
            if m.payload != self.log[idx].payload {
                return Err(format!(
                    "retry copy {} of {origin} does not carry the original payload",
                    m.id
                ));
            }
            let runs: u32 = m
                .properties
                .get("RECONSUMETIMES")
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let top = self.retried.entry(origin.clone()).or_insert(0);
            *top = (*top).max(runs);
            self.retry_log.push((m.id, origin, runs));
        }
        for id in broker.acked_ids(TOPIC, SUBSCRIPTION) {
            if self.acked.contains(&id) {
                continue;
            }
            self.justify(&id)?;
            self.acked.insert(id);
        }
        for id in broker.acked_ids(RETRY_TOPIC, SUBSCRIPTION) {
            if self.retry_acked.contains(&id) {
                continue;
            }
            self.justify_copy(&id)?;
            self.retry_acked.insert(id);
        }
        Ok(())
    }

    /// An acked retry copy must have been handled, dead-lettered or copied on once more.
    fn justify_copy(&self, id: &MessageId) -> Result<(), String> {
        let Some((_, origin, runs)) = self.retry_log.iter().find(|(c, _, _)| c == id) else {
            return Err(format!(
                "acked {id} on `{RETRY_TOPIC}`, which is not in its log"
            ));
        };
        let pid = self.log[self.by_id[origin]].pid;
        let handled = pid.is_some_and(|p| self.successes.contains_key(&p));
        if handled
            || self.dlq_by_origin.contains_key(origin)
            || self.retried.get(origin).is_some_and(|top| top > runs)
        {
            Ok(())
        } else {
            Err(format!(
                "retry copy {id} of {origin} acked, but it was not handled, dead-lettered or \
                 copied on"
            ))
        }
    }

    fn justify(&mut self, id: &MessageId) -> Result<(), String> {
        let key = id.to_string();
        if self.dlq_by_origin.contains_key(&key) || self.retried.contains_key(&key) {
            return Ok(());
        }
        let Some(&idx) = self.by_id.get(&key) else {
            return Err(format!("acked {key}, which is not in the topic log"));
        };
        match self.log[idx].pid {
            None => Err(format!(
                "poison message {key} acked on the broker without a DLQ record"
            )),
            Some(pid) => {
                let acks = self.acked_plain.entry(pid).or_insert(0);
                *acks += 1;
                let ok = self.successes.get(&pid).copied().unwrap_or(0);
                if *acks > ok {
                    Err(format!(
                        "message {key} (payload {pid}) acked on the broker, but its handler \
                         succeeded {ok} time(s) for {acks} ack(s) and it has no DLQ record"
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Liveness at the end: every published message acked (after a success or a DLQ record),
    /// the subscription's backlog empty, every task outcome matching the broker; and counts the
    /// duplicates.
    pub fn final_check(&mut self, broker: &MemBroker) -> Result<(), String> {
        self.last = (u64::MAX, u64::MAX);
        self.observe(broker)?;
        if let Some(m) = self.log.iter().find(|m| !self.acked.contains(&m.id)) {
            let stats = broker.subscription_stats(TOPIC, SUBSCRIPTION);
            return Err(format!(
                "message {} (payload {:?}) never reached a terminal outcome; subscription: {stats:?}",
                m.id, m.pid
            ));
        }
        let backlog = broker.backlog(TOPIC, SUBSCRIPTION);
        if backlog != 0 {
            return Err(format!("the subscription's backlog is {backlog}, not 0"));
        }
        if let Some((id, origin, _)) = self
            .retry_log
            .iter()
            .find(|(c, _, _)| !self.retry_acked.contains(c))
        {
            return Err(format!(
                "retry copy {id} of {origin} never reached a terminal outcome"
            ));
        }
        let log_ids: BTreeMap<&MessageId, &[u8]> = self
            .log
            .iter()
            .map(|m| (&m.id, m.payload.as_slice()))
            .collect();
        for (id, payload) in &self.task_sent {
            if log_ids.get(id).copied() != Some(payload.as_slice()) {
                return Err(format!(
                    "a task call reported message {id} as published, but the topic log does not hold it with that payload"
                ));
            }
        }
        let task_dlq: BTreeSet<MessageId> = broker
            .topic_messages(TASK_DLQ_TOPIC)
            .into_iter()
            .map(|m| m.id)
            .collect();
        if let Some(id) = self.task_dlq.iter().find(|id| !task_dlq.contains(id)) {
            return Err(format!(
                "a task call reported dead-letter record {id}, which `{TASK_DLQ_TOPIC}` does not hold"
            ));
        }
        // Duplicates (at-least-once: counted and reported, not failures).
        let mut copies: BTreeMap<u64, u32> = BTreeMap::new();
        for m in &self.log {
            if let Some(pid) = m.pid {
                *copies.entry(pid).or_insert(0) += 1;
            }
        }
        self.budget_excess()?;
        if let Some(o) = &self.order {
            let keyed: BTreeSet<u64> = self
                .log
                .iter()
                .filter(|m| m.key.is_some())
                .filter_map(|m| m.pid)
                .filter(|pid| o.first_run.contains_key(pid))
                .collect();
            let excused = keyed.iter().filter(|p| o.excused.contains(p)).count() as u64;
            self.stats.order_excused = excused;
            self.stats.order_checked = keyed.len() as u64 - excused;
        }
        self.stats.handled_twice = self
            .successes
            .iter()
            .map(|(pid, n)| u64::from(n.saturating_sub(copies.get(pid).copied().unwrap_or(0))))
            .sum();
        self.stats.dead_lettered_twice = self
            .dlq_by_origin
            .values()
            .map(|n| u64::from(n.saturating_sub(1)))
            .sum();
        self.stats.handled_and_dead_lettered = self
            .log
            .iter()
            .filter(|m| {
                self.dlq_by_origin.contains_key(&m.id.to_string())
                    && m.pid.is_some_and(|p| self.successes.contains_key(&p))
            })
            .count() as u64;
        Ok(())
    }

    /// The attempt budget (if this ledger checks it): per payload, handler runs ≤ `budget` ×
    /// (its copies in the topic log + the service crashes that hit it unfinished). A crash can
    /// lose a run's outcome (ack, retry copy) after the run, so the redelivery starts a chain
    /// again; that duplicate is what at-least-once allows, and it is counted, not hidden: the
    /// check is exact for every payload no crash touched.
    pub fn budget_excess(&self) -> Result<(), String> {
        let mut copies: BTreeMap<u64, u32> = BTreeMap::new();
        for m in &self.log {
            if let Some(pid) = m.pid {
                *copies.entry(pid).or_insert(0) += 1;
            }
        }
        if let Some(budget) = self.budget {
            for (pid, runs) in &self.runs {
                let n = copies.get(pid).copied().unwrap_or(0).max(1);
                let touched = self.crash_touched.get(pid).copied().unwrap_or(0);
                if *runs > budget.saturating_mul(n + touched) {
                    return Err(format!(
                        "payload {pid}: {runs} handler runs for {n} published cop(ies) and \
                         {touched} crash(es) that hit it unfinished, over the attempt budget of \
                         {budget} per copy and crash (max_retries + 1)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The final broker state in a stable form, for the trace hash.
    pub fn fingerprint(&self, broker: &MemBroker, mut mix: impl FnMut(&[u8])) {
        for topic in [TOPIC, RETRY_TOPIC, DLQ_TOPIC, PARKED_TOPIC, TASK_DLQ_TOPIC] {
            for m in broker.topic_messages(topic) {
                mix(&m.id.0);
                mix(&m.payload);
            }
        }
        for id in broker.acked_ids(TOPIC, SUBSCRIPTION) {
            mix(&id.0);
        }
        let c = broker.counters();
        for v in [
            c.published,
            c.delivered,
            c.redelivered,
            c.acks,
            c.nacks,
            c.redundant_acks,
            c.rejected_acks,
            c.injected_faults,
        ] {
            mix(&v.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_ids_parse_and_poison_has_none() {
        assert_eq!(payload_id(br#"{"id":7}"#), Some(7));
        assert_eq!(payload_id(br#"{"poison":7}"#), None);
        assert_eq!(payload_id(b"not json"), None);
    }

    /// (topic, payload, properties) of a message to publish.
    type Record<'a> = (&'a str, &'a [u8], &'a [(&'a str, &'a str)]);

    fn broker_with(payloads: &[Record<'_>]) -> MemBroker {
        use backstop_engine::broker::{Broker, OutgoingMessage};
        let broker = MemBroker::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            for (topic, payload, props) in payloads {
                let mut m = OutgoingMessage::new(payload.to_vec());
                for (k, v) in *props {
                    m.properties.insert((*k).to_string(), (*v).to_string());
                }
                let p = broker.producer(topic).await.expect("producer");
                p.send(m).await.expect("send");
            }
        });
        broker
    }

    /// The budget check bites: a third handler run of a message published once, with
    /// `max_retries = 1`, fails the ledger; the same runs pass when a crash hit the message
    /// before the broker saw it finished, and fail again when the crash came after its ack.
    #[test]
    fn runs_over_the_budget_are_caught_unless_a_crash_hit_the_message_unfinished() {
        let broker = broker_with(&[(TOPIC, br#"{"id":1}"#, &[])]);
        let mut over = Ledger::with_budget(2);
        over.observe(&broker).unwrap();
        for _ in 0..3 {
            over.handler_run(1, 0);
        }
        assert!(over.budget_excess().unwrap_err().contains("attempt budget"));
        let mut crashed = Ledger::with_budget(2);
        crashed.observe(&broker).unwrap();
        crashed.handler_run(1, 0);
        crashed.service_crashed(0);
        crashed.handler_run(1, 1);
        crashed.handler_run(1, 1);
        assert_eq!(crashed.budget_excess(), Ok(()));
        let mut elsewhere = Ledger::with_budget(2);
        elsewhere.observe(&broker).unwrap();
        for _ in 0..3 {
            elsewhere.handler_run(1, 1);
        }
        elsewhere.service_crashed(0); // a crash of a host that never ran it
        assert!(elsewhere.budget_excess().is_err());
    }

    /// The per-key order check bites: payload 2 (published after payload 1 under key `a`)
    /// running first fails the ledger, a payload of another key does not, and a nack while
    /// payload 1 waited excuses it.
    #[test]
    fn a_first_run_out_of_key_order_is_caught_unless_a_nack_came_first() {
        use backstop_engine::broker::{Broker, OutgoingMessage, SubscriptionSpec};
        let broker = MemBroker::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let consumer = rt.block_on(async {
            let c = broker
                .subscribe(&SubscriptionSpec::new(TOPIC, SUBSCRIPTION))
                .await
                .expect("subscribe");
            let p = broker.producer(TOPIC).await.expect("producer");
            for (id, key) in [(1, "a"), (2, "b"), (3, "a")] {
                let mut m = OutgoingMessage::new(format!(r#"{{"id":{id}}}"#).into_bytes());
                m.key = Some(key.into());
                p.send(m).await.expect("send");
            }
            c
        });
        // In order per key: 1, then 2 (another key), then 3.
        let mut fine = Ledger::new().checking_order();
        fine.observe(&broker).unwrap();
        for pid in [2, 1, 3] {
            fine.handler_run(pid, 0);
            fine.observe(&broker).unwrap();
        }
        // 3 before 1 (both key a): caught as soon as 3 runs.
        let mut bad = Ledger::new().checking_order();
        bad.observe(&broker).unwrap();
        bad.handler_run(3, 0);
        let err = bad.observe(&broker).unwrap_err();
        assert!(err.contains("ran before payload 1"), "{err}");
        // Without the check, nothing is said.
        let mut off = Ledger::new();
        off.observe(&broker).unwrap();
        off.handler_run(3, 0);
        assert_eq!(off.observe(&broker), Ok(()));
        // A nack of message 1 (not run yet) excuses it: 3 may go first.
        let mut nacked = Ledger::new().checking_order();
        nacked.observe(&broker).unwrap();
        rt.block_on(async {
            let d = consumer.receive().await.expect("receive");
            consumer.nack(&d.id).await.expect("nack");
        });
        nacked.handler_run(3, 0);
        assert_eq!(nacked.observe(&broker), Ok(()));
        nacked.handler_run(1, 0);
        assert_eq!(nacked.observe(&broker), Ok(()));
    }

    /// A retry copy must name a published origin and carry its payload.
    #[test]
    fn retry_copies_must_name_their_origin() {
        let broker = broker_with(&[
            (TOPIC, br#"{"id":1}"#, &[]),
            (
                RETRY_TOPIC,
                br#"{"id":1}"#,
                &[("ORIGIN_MESSAGE_ID", "nope")],
            ),
        ]);
        let err = Ledger::new().observe(&broker).unwrap_err();
        assert!(err.contains("names no origin"), "{err}");
    }
}
